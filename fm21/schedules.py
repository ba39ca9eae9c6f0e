"""The project's one learning-rate schedule: linear warmup, then cosine decay.

Used by the 4M trainer (``fm21.train.loop.lr_at``) and every tokenizer trainer
(``fm21.tokenize``), so a schedule fix or a test covers them all. The shape is the
reference's (apple/ml-4m `run_training_4m.py` and `run_training_vqvae.py`: linear warmup
from 0, then half a cosine period down to a floor).

The schedule is stated in any unit that grows linearly with training: optimizer steps
(the tokenizer trainers, a steps-configured 4M run) or tokens seen (a 4M run configured by
``train.warmup_tokens`` / ``train.total_tokens``, as the reference's `--warmup_tokens` /
`--total_tokens`): ``warmup_cosine(tokens, steps=total_tokens, warmup=warmup_tokens)``.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, steps: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """LR at position ``step`` (0-based; a step or a token count) of ``steps`` (same unit).

    ``peak * step / warmup`` during the first ``warmup`` steps (0 at step 0, ``peak`` at
    step ``warmup``), then ``floor + (peak - floor) * (1 + cos(pi * t)) / 2`` with ``t`` going
    from 0 at ``warmup`` to 1 at ``steps``; it stays at ``floor`` past ``steps``.
    """
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
