"""Any-to-any generation with a trained :class:`~fm21.train.model.FourM` (apple/ml-4m `fourm/models/generate.py`).

API (all in this module unless noted)::

    md = init_full_input({"rgb": {"tensor": pixels}}, "rgb", specs)     # a condition
    md = init_empty_target(md, "tok_depth", specs)                      # a target
    md = generate(model, md, target="tok_depth", scheme="roar", num_steps=8,
                  temperature=3.0, temperature_schedule="onex:0.5:0.5", top_p=0.8,
                  cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    md = run_preset(model, md, PRESETS["rgb2x"], generator=g)           # fm21.evaluate.presets

Schemes for grid targets (image, feature and global tokens): ``maskgit`` (query every
unknown slot, keep the ``num_select`` most confident samples per step), ``roar`` (decode a
random ``num_select`` subset per step) and ``autoregressive`` (one token per step in raster
order; ``num_steps`` is ignored). Each step's tokens become encoder inputs of the next.
Sequence targets always decode autoregressively (:mod:`fm21.evaluate.autoregressive`), by
default with a K/V cache (``kv_cache=False``: the reference's full recomputation), each row
of the batch stopping at its own end token (``use_eos=False``: decode up to the cap), and
never past the modality's ``max_seq_len`` tokens, EOS included.

``generator``: one ``torch.Generator`` for the batch, or a list of one per row (each row
then samples exactly as it would alone: :mod:`fm21.evaluate.sampling`).

Guidance (:mod:`fm21.evaluate.sampling`), all passes in one batched forward:
``cfg_scale=s`` gives ``uncond + s * (cond - uncond)``, the uncond pass blanking
``cfg_cond_domains`` (default: every modality but the target);
``cfg_conditions={m: w, ...}`` gives ``uncond + sum_i w_i * (cond_i - uncond)``.

A finished target is left in the mod_dict as a full input, so generation chains:
``generate(..., target="tok_depth")`` then ``generate(..., target="tok_normal")``
conditions the normals on rgb and the generated depth.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Mapping

import numpy as np
import torch

from fm21.evaluate.autoregressive import generate_sequence
from fm21.evaluate.sampling import (  # noqa: F401  (re-exported: the sampler's public API)
    GREEDY_BELOW, Generators, Guidance, ModDict, Sampling, blank_conditions, clone_mod_dict,
    filter_logits, sample_tokens,
)
from fm21.modalities import ModalitySpec
from fm21.train.masking import EOS_ID, grid_decoder_attention_mask, sentinel_id
from fm21.train.model import FourM

SCHEMES = ("maskgit", "roar", "autoregressive")


# ------------------------------------------------------------------------------ mod_dict helpers
def _batch_size(mod_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[int, torch.device]:
    first = next(iter(mod_dict.values()))["tensor"]
    return first.shape[0], first.device


def init_full_input(mod_dict: ModDict, name: str, specs: Mapping[str, ModalitySpec]) -> ModDict:
    """Make ``name`` a fully visible condition. Its tensor is (B, 3, R, R) pixels, (B, N)
    grid ids, (B, L) sequence ids (input = everything up to and including the first EOS)
    or (B, L, E) vectors."""
    spec, d = specs[name], mod_dict[name]
    tensor = d["tensor"]
    B = tensor.shape[0]
    n = spec.num_tokens if spec.kind == "pixels" else tensor.shape[1]
    input_mask = torch.zeros(B, n, dtype=torch.bool, device=tensor.device)
    if spec.kind == "sequence":
        is_eos = tensor == EOS_ID
        has_eos = is_eos.any(dim=1, keepdim=True)
        first_eos = torch.argmax(is_eos.int(), dim=1, keepdim=True)  # (B, 1)
        positions = torch.arange(n, device=tensor.device)[None]
        input_mask = torch.where(has_eos, positions > first_eos, tensor == 0)
    mod_dict[name] = {
        "tensor": tensor,
        "input_mask": input_mask,
        "target_mask": torch.ones(B, n, dtype=torch.bool, device=tensor.device),
        "decoder_attention_mask": torch.zeros(B, n, dtype=torch.int32, device=tensor.device),
    }
    return mod_dict


def init_empty_target(
    mod_dict: ModDict,
    target: str,
    specs: Mapping[str, ModalitySpec],
    *,
    batch_size: int | None = None,
) -> ModDict:
    """Add ``target`` with nothing known. Grids: all slots targets; sequences: the
    template ``[S_1] [S_1] PAD ... [S_2]`` with position 0 the only input."""
    spec = specs[target]
    if not spec.can_be_target:
        raise ValueError(f"{target} is input-only and cannot be generated")
    if batch_size is None:
        batch_size, device = _batch_size(mod_dict)
    else:
        device = _batch_size(mod_dict)[1] if mod_dict else torch.device("cpu")
    B = batch_size
    if spec.is_image_like:
        n = spec.num_tokens
        target_mask = torch.zeros(B, n, dtype=torch.bool, device=device)
        mod_dict[target] = {
            "tensor": torch.zeros(B, n, dtype=torch.long, device=device),
            "input_mask": torch.ones(B, n, dtype=torch.bool, device=device),
            "target_mask": target_mask,
            "decoder_attention_mask": grid_decoder_attention_mask(target_mask),
        }
        return mod_dict
    n = spec.seq_tensor_len
    tensor = torch.zeros(B, n, dtype=torch.long, device=device)
    tensor[:, [0, 1]] = sentinel_id(1)
    tensor[:, -1] = sentinel_id(2)
    input_mask = torch.ones(B, n, dtype=torch.bool, device=device)
    input_mask[:, 0] = False
    dam = torch.ones(B, n, dtype=torch.int32, device=device)
    dam[:, 0] = 0
    mod_dict[target] = {"tensor": tensor, "input_mask": input_mask, "target_mask": ~input_mask,
                        "decoder_attention_mask": dam}
    return mod_dict


# ------------------------------------------------------------------------------ schedules
def token_schedule(num_steps: int, total: int, kind: str = "cosine") -> list[int]:
    """Tokens decoded per step; sums to ``total``. ``linear``: equal chunks, larger first;
    ``cosine``: few, many, few (apple/ml-4m `fourm/models/generate.py`). At least one token per step."""
    num_steps = max(1, min(num_steps, total))
    if kind == "linear":
        chunks = np.diff(np.linspace(0, total, num_steps + 1).astype(int))
        return sorted(chunks.tolist(), reverse=True)
    if kind == "cosine":
        levels = [0.5 * (1 + math.cos(math.pi * i / num_steps)) for i in range(num_steps)]
        steps = [round(total * (a - b)) for a, b in zip(levels[:-1], levels[1:])]
        steps.append(total - sum(steps))
        if min(steps) < 1:  # too few tokens for the curve: fall back to equal chunks
            return token_schedule(num_steps, total, "linear")
        return steps
    raise ValueError(f"unknown token schedule {kind!r} (cosine | linear)")


def temperature_schedule_values(
    temperature: float, schedule: str, tokens: list[int]
) -> list[float]:
    """``constant``; ``linear`` (decays with the tokens left); ``onex:{min_t}:{power}``."""
    counts = np.asarray(tokens, dtype=np.float64)
    done = np.cumsum(counts) / counts.sum()
    if schedule == "constant":
        return [temperature] * len(tokens)
    if schedule == "linear":
        vals = np.concatenate([[temperature], temperature * (1 - done)[:-1]])
        return np.clip(vals, 1e-9, None).tolist()
    if schedule.startswith("onex:"):
        _, min_t, power = schedule.split(":")
        x = np.linspace(1, 100, num=int(counts.sum()))
        y = 1 / x ** float(power)
        y = (y - y.min()) / (y.max() - y.min())
        per_step = [(1 - d) * y[i] for i, d in enumerate(done)]
        vals = float(min_t) + (temperature - float(min_t)) * np.asarray(per_step)
        return np.clip(vals, 1e-9, None).tolist()
    raise ValueError(
        f"unknown temperature schedule {schedule!r} (constant | linear | onex:MIN:POWER)"
    )


# ------------------------------------------------------------------------------ decoding
def guided_logits(
    model: FourM, mod_dict: ModDict, *, target: str, cfg_scale: float
) -> torch.Tensor:
    """(B, L, V) logits for ``target`` with single-scale guidance (cond and uncond in one batch)."""
    return Sampling(guidance=Guidance(scale=cfg_scale)).logits(model, mod_dict, target)


def _choose(scores: torch.Tensor, remaining: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (B, N): the k highest-scoring still-unknown slots of each sample."""
    scores = scores.masked_fill(~remaining, float("-inf"))
    chosen = torch.zeros_like(remaining)
    chosen.scatter_(1, torch.topk(scores, k, dim=1).indices, True)
    return chosen & remaining


def _generate_grid(model: FourM, md: ModDict, *, target: str, scheme: str, steps: list[int],
                   temps: list[float], sampling: Sampling) -> ModDict:
    d = md[target]
    remaining = d["input_mask"].clone()  # (B, N) True = still unknown
    for num_select, temp in zip(steps, temps):
        if scheme == "roar":  # decode a random subset, chosen before the forward pass
            noise = sampling.uniform(tuple(remaining.shape), remaining.device)
            queries = _choose(noise, remaining, num_select)
        elif scheme == "maskgit":  # query everything unknown, keep the most confident
            queries = remaining
        elif scheme == "autoregressive":  # the first unknown slots in raster order
            raster = -torch.arange(remaining.shape[1], device=remaining.device, dtype=torch.float32)
            queries = _choose(raster.expand(remaining.shape), remaining, num_select)
        else:
            raise ValueError(f"unknown scheme {scheme!r} ({' | '.join(SCHEMES)})")
        d["target_mask"] = ~queries
        d["decoder_attention_mask"] = grid_decoder_attention_mask(d["target_mask"])
        ids, conf = sampling.sample(sampling.logits(model, md, target), temp)  # (B, N) each
        chosen = _choose(conf, remaining, num_select) if scheme == "maskgit" else queries
        d["tensor"] = torch.where(chosen, ids, d["tensor"])
        d["input_mask"] = d["input_mask"] & ~chosen  # decoded tokens become inputs
        remaining = remaining & ~chosen
    d["target_mask"] = torch.ones_like(remaining)
    d["decoder_attention_mask"] = torch.zeros_like(d["decoder_attention_mask"])
    return md


@torch.no_grad()
def generate(
    model: FourM,
    mod_dict: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    target: str,
    scheme: Literal["maskgit", "roar", "autoregressive"] = "maskgit",
    num_steps: int = 8,
    token_schedule_kind: Literal["cosine", "linear"] = "cosine",
    temperature: float = 1.0,
    temperature_schedule: str = "constant",
    top_k: int | float | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    generator: Generators = None,
    cfg_conditions: Mapping[str, float] | None = None,
    cfg_cond_domains: Iterable[str] | None = None,
    kv_cache: bool = True,
    use_eos: bool = True,
) -> ModDict:
    """Fill ``target`` in a copy of ``mod_dict`` (which must hold it, e.g. from
    :func:`init_empty_target`) and return the copy, the target now a full input.

    Sequence targets ignore ``scheme``/``num_steps``/schedules and decode autoregressively
    (``kv_cache``, ``use_eos``: see :func:`fm21.evaluate.autoregressive.generate_sequence`).
    Grid targets with ``scheme="autoregressive"`` decode one token per step in raster order.
    Guidance: ``cfg_scale`` (+ ``cfg_cond_domains``, the modalities its unconditional pass
    blanks) or weighted ``cfg_conditions`` (see :class:`fm21.evaluate.sampling.Guidance`).
    ``generator``: shared by the batch, or a sequence of one per row."""
    was_training = model.training
    model.eval()
    md = clone_mod_dict(mod_dict)
    spec = model.specs[target]
    guidance = Guidance.make(cfg_scale, cfg_conditions, cfg_cond_domains)
    sampling = Sampling(top_k=top_k, top_p=top_p, guidance=guidance, generator=generator)
    try:
        if spec.is_sequence:
            return generate_sequence(model, md, target=target, temperature=temperature,
                                     sampling=sampling, kv_cache=kv_cache, use_eos=use_eos)
        unknown = md[target]["input_mask"].sum(dim=1)
        if bool((unknown != unknown[0]).any()):
            raise ValueError(f"every sample must have the same number of unknown {target} tokens")
        total = int(unknown[0])
        if total == 0:
            return md
        if scheme == "autoregressive":
            steps = [1] * total
        else:
            steps = token_schedule(num_steps, total, token_schedule_kind)
        temps = temperature_schedule_values(temperature, temperature_schedule, steps)
        return _generate_grid(model, md, target=target, scheme=scheme, steps=steps, temps=temps,
                              sampling=sampling)
    finally:
        model.train(was_training)
