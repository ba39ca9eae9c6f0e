"""The project's one learning-rate schedule: linear warmup, then cosine decay.

Used by the 4M trainer (``fm21.train.loop.lr_at``) and every tokenizer trainer
(``fm21.tokenize``), so a schedule fix or a test covers them all. The shape is the
reference's (apple/ml-4m `run_training_4m.py` and `run_training_vqvae.py`: linear warmup
from 0, then half a cosine period down to a floor).
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, steps: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """LR of optimizer step ``step`` (0-based) of ``steps``.

    ``peak * step / warmup`` during the first ``warmup`` steps (0 at step 0, ``peak`` at
    step ``warmup``), then ``floor + (peak - floor) * (1 + cos(pi * t)) / 2`` with ``t`` going
    from 0 at ``warmup`` to 1 at ``steps``; it stays at ``floor`` past ``steps``.
    """
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
