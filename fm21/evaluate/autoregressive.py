"""Autoregressive decoding of sequence targets, with or without a K/V cache.

The empty target is the template ``[S_1] [S_1] PAD ... [S_2]`` (apple/ml-4m
`fourm/models/generate.py`, ``empty_seq_modality``): decoder slot ``k`` embeds the token at
index ``k`` and predicts index ``k + 1``, starting from the second ``[S_1]``. Without the cache
every step re-runs the encoder and the whole decoder (what the reference does); with it the
encoder runs once, the cross-attention K/V of its output are projected once per layer, and
each step runs the decoder on the one new slot, reusing the self-attention K/V of the
earlier slots (:meth:`fm21.train.model.FourM.decode_cached`). Both give the same logits up
to float rounding.

Each row stops at its own end token: EOS or any sentinel. A finished row is fed PAD and
keeps PAD (with per-row generators it draws nothing more), and the loop ends when every row
has finished. The reference instead reads the end token (``[S_2]``) off batch element 0 and
stops the whole batch on it. Any sentinel ends a row because the empty target is one span
(``[S_1] ... [S_2]``): the reference's merge (``merge_span_masking`` in
`fourm/utils/tokenizer/text_tokenizer.py`) drops whatever follows a sentinel that the
input does not hold, and a sentinel left in the body would read as a mask placeholder
when the result is fed back as an input.

Length: a sequence never exceeds its modality's ``max_seq_len`` tokens, EOS included (the
reference's ``max_tokens``, :func:`fm21.train.masking.max_budget`): at most
``max_seq_len - 1`` generated ids, and a row still unfinished there is closed by EOS at
its cap. The template itself is longer (``seq_tensor_len``, the span-masking layout), so
the cap, not the tensor, bounds the loop.
"""

from __future__ import annotations

from typing import Callable

import torch

from fm21.evaluate.sampling import ModDict, Sampling
from fm21.train.masking import EOS_ID, NUM_SENTINELS, SENTINEL_BASE, max_budget
from fm21.train.model import FourM


def _uncached_step(model: FourM, md: ModDict, target: str, sampling: Sampling
                   ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    d = md[target]
    B, L = d["tensor"].shape
    dev = d["tensor"].device

    def step(tokens: torch.Tensor, k: int) -> torch.Tensor:
        target_mask = torch.ones(B, L, dtype=torch.bool, device=dev)
        target_mask[:, 1:k + 2] = False
        d.update(tensor=tokens.clone(), target_mask=target_mask,
                 decoder_attention_mask=(~target_mask).int())  # causal
        return sampling.logits(model, md, target)[:, k + 1]  # (B, V)

    return step


def _cached_step(model: FourM, md: ModDict, target: str, sampling: Sampling
                 ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    guidance = sampling.guidance
    # the encoder input (conditions + the target's [S_1]) never changes while decoding
    context, context_ignore = model.encode(guidance.batch(md, target, model.specs))
    cache = model.new_decode_cache()
    head = model.decoder_embeddings[target]

    def step(tokens: torch.Tensor, k: int) -> torch.Tensor:
        ids = tokens[:, k:k + 1].repeat(guidance.passes, 1)  # every pass decodes the same tokens
        # slot k is the k-th target slot (targets start at index 1): position id k - 1
        y = model.decode_cached(model.sequence_queries(target, ids, k - 1), context,
                                context_ignore, cache)
        return guidance.combine(head.logits(y[:, 0]).float())

    return step


def is_end_token(ids: torch.Tensor) -> torch.Tensor:
    """EOS or any sentinel ``[S_0]`` .. ``[S_199]`` (each ends a generated row)."""
    return (ids == EOS_ID) | ((ids >= SENTINEL_BASE) & (ids < SENTINEL_BASE + NUM_SENTINELS))


def max_generated_ids(model: FourM, target: str, tensor_len: int) -> int:
    """Most ids a generated ``target`` may hold before its EOS: ``max_seq_len - 1`` (the EOS
    is the last of the ``max_seq_len`` tokens), and never more than the template's slots."""
    return max(0, min(max_budget(model.specs[target]) - 1, tensor_len - 2))


def generate_sequence(model: FourM, md: ModDict, *, target: str, temperature: float,
                      sampling: Sampling, kv_cache: bool = True, use_eos: bool = True) -> ModDict:
    """Decode ``target`` from its empty template; the result is written back as a full
    input (the generated ids closed by EOS, ``max_seq_len`` tokens at most).
    ``use_eos=False`` decodes up to that cap whatever the model emits."""
    d = md[target]
    B, L = d["tensor"].shape
    dev = d["tensor"].device
    tokens = d["tensor"].clone()
    cap = max_generated_ids(model, target, L)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    lengths = torch.full((B,), cap, dtype=torch.long, device=dev)  # generated ids per sample
    step = (_cached_step if kv_cache else _uncached_step)(model, md, target, sampling) if cap else None
    for k in range(1, cap + 1):  # slot k holds the last known token and predicts position k+1
        ids, _ = sampling.sample(step(tokens, k), temperature, active=~finished)
        ids = torch.where(finished, torch.zeros_like(ids), ids)  # finished rows keep PAD
        tokens[:, k + 1] = ids
        if use_eos:
            newly = ~finished & is_end_token(ids)
            lengths = torch.where(newly, torch.full_like(lengths, k - 1), lengths)  # ids 2..k
            finished |= newly
            if bool(finished.all()):
                break
    # the result becomes a full input: the generated ids, closed by EOS (at the cap if unfinished)
    out = torch.zeros_like(tokens)
    positions = torch.arange(L, device=dev)[None]
    body = positions < lengths[:, None]  # (B, L)
    out[body] = tokens[:, 2:][body[:, : L - 2]]
    out[torch.arange(B, device=dev), lengths] = EOS_ID
    md[target] = {
        "tensor": out,
        "input_mask": positions > lengths[:, None],
        "target_mask": torch.ones_like(body),
        "decoder_attention_mask": torch.zeros_like(d["decoder_attention_mask"]),
    }
    return md
