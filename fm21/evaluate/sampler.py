"""Any-to-any generation with a trained :class:`~fm21.train.model.FourM` (apple/ml-4m `fourm/models/generate.py`).

Grid targets (image, feature and global tokens) decode with MaskGIT (keep the most
confident ``num_select`` samples per step) or ROAR (decode a random ``num_select``
subset per step); each step's tokens become encoder inputs of the next. Sequence
targets decode autoregressively (no KV cache). Classifier-free guidance runs the
conditional and the unconditional mod_dict in one batch:
``logits = uncond + s * (cond - uncond)``.

A finished target is left in the mod_dict as a full input, so generation chains:
``generate(..., target="tok_depth")`` then ``generate(..., target="tok_normal")``
conditions the normals on rgb and the generated depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import torch

from fm21.modalities import ModalitySpec
from fm21.train.masking import EOS_ID, grid_decoder_attention_mask, sentinel_id
from fm21.train.model import FourM

ModDict = dict[str, dict[str, torch.Tensor]]
GREEDY_BELOW = 1e-5  # temperatures at or below this decode greedily (argmax)


# ------------------------------------------------------------------------------ mod_dict helpers
def _batch_size(mod_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[int, torch.device]:
    first = next(iter(mod_dict.values()))["tensor"]
    return first.shape[0], first.device


def clone_mod_dict(mod_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> ModDict:
    return {m: {k: v.clone() for k, v in d.items()} for m, d in mod_dict.items()}


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


def blank_conditions(mod_dict: ModDict, *, keep: str, specs: Mapping[str, ModalitySpec]) -> ModDict:
    """The unconditional twin for guidance: every modality but ``keep`` loses its inputs
    (grids: all masked; sequences: ``[S_1]`` only; vectors: one zero vector)."""
    out = clone_mod_dict(mod_dict)
    for name, d in out.items():
        if name == keep:
            continue
        spec = specs[name]
        d["target_mask"][:] = True
        d["decoder_attention_mask"][:] = 0
        d["input_mask"][:] = True
        if spec.kind == "sequence":
            d["tensor"][:] = 0
            d["tensor"][:, 0] = sentinel_id(1)
            d["input_mask"][:, 0] = False
        elif spec.kind == "embedding":
            d["tensor"][:] = 0
            d["input_mask"][:, 0] = False
    return out


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


# ------------------------------------------------------------------------------ sampling
def filter_logits(
    logits: torch.Tensor, *, top_k: int | float | None, top_p: float | None
) -> torch.Tensor:
    """Top-k (an int, or a float fraction of the vocab) and nucleus filtering on (..., V)."""
    V = logits.shape[-1]
    if top_k is not None and top_k > 0:
        k = max(1, int(top_k * V) if isinstance(top_k, float) and top_k < 1 else int(top_k))
        if k < V:
            kth = torch.topk(logits, k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the first token always
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor, *, temperature: float, top_k: int | float | None = None,
    top_p: float | None = None, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits -> (ids, probability of each chosen id), both (...)."""
    logits = logits.float()
    if temperature <= GREEDY_BELOW:
        probs = filter_logits(logits, top_k=top_k, top_p=top_p).softmax(dim=-1)
        ids = probs.argmax(dim=-1)
    else:
        probs = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        ids = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    return ids, probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def guided_logits(
    model: FourM, mod_dict: ModDict, *, target: str, cfg_scale: float
) -> torch.Tensor:
    """(B, L, V) logits for ``target``; with guidance, cond and uncond in one batch."""
    if cfg_scale == 1.0:
        return model.forward_logits(mod_dict, targets=[target])[target].float()
    uncond = blank_conditions(mod_dict, keep=target, specs=model.specs)
    both = {m: {k: torch.cat([v, uncond[m][k]]) for k, v in d.items()} for m, d in mod_dict.items()}
    logits = model.forward_logits(both, targets=[target])[target].float()  # (2B, L, V)
    cond_logits, uncond_logits = logits.chunk(2)
    return uncond_logits + cfg_scale * (cond_logits - uncond_logits)


def _choose(scores: torch.Tensor, remaining: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (B, N): the k highest-scoring still-unknown slots of each sample."""
    scores = scores.masked_fill(~remaining, float("-inf"))
    chosen = torch.zeros_like(remaining)
    chosen.scatter_(1, torch.topk(scores, k, dim=1).indices, True)
    return chosen & remaining


@dataclass(frozen=True)
class Sampling:
    """How each step turns logits into tokens."""

    top_k: int | float | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    generator: torch.Generator | None = None

    def logits(self, model: FourM, mod_dict: ModDict, target: str) -> torch.Tensor:
        return guided_logits(model, mod_dict, target=target, cfg_scale=self.cfg_scale)

    def sample(self, logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_tokens(logits, temperature=temperature, top_k=self.top_k, top_p=self.top_p,
                             generator=self.generator)


def _generate_grid(model: FourM, md: ModDict, *, target: str, scheme: str, steps: list[int],
                   temps: list[float], sampling: Sampling) -> ModDict:
    d = md[target]
    remaining = d["input_mask"].clone()  # (B, N) True = still unknown
    for num_select, temp in zip(steps, temps):
        if scheme == "roar":  # decode a random subset, chosen before the forward pass
            noise = torch.rand(remaining.shape, generator=sampling.generator)
            queries = _choose(noise.to(remaining.device), remaining, num_select)
        elif scheme == "maskgit":  # query everything unknown, keep the most confident
            queries = remaining
        else:
            raise ValueError(f"unknown scheme {scheme!r} (maskgit | roar)")
        d["target_mask"] = ~queries
        d["decoder_attention_mask"] = grid_decoder_attention_mask(d["target_mask"])
        ids, conf = sampling.sample(sampling.logits(model, md, target), temp)  # (B, N) each
        chosen = queries if scheme == "roar" else _choose(conf, remaining, num_select)
        d["tensor"] = torch.where(chosen, ids, d["tensor"])
        d["input_mask"] = d["input_mask"] & ~chosen  # decoded tokens become inputs
        remaining = remaining & ~chosen
    d["target_mask"] = torch.ones_like(remaining)
    d["decoder_attention_mask"] = torch.zeros_like(d["decoder_attention_mask"])
    return md


def _generate_sequence(model: FourM, md: ModDict, *, target: str, temperature: float,
                       sampling: Sampling) -> ModDict:
    """Autoregressive decoding from the empty template until ``[S_2]`` (or EOS)."""
    d = md[target]
    B, L = d["tensor"].shape
    dev = d["tensor"].device
    tokens = d["tensor"].clone()
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    lengths = torch.full((B,), L - 2, dtype=torch.long, device=dev)  # generated ids per sample
    stop = torch.tensor([sentinel_id(2), EOS_ID], device=dev)
    for k in range(1, L - 1):  # slot k holds the last known token and predicts position k+1
        target_mask = torch.ones(B, L, dtype=torch.bool, device=dev)
        target_mask[:, 1:k + 2] = False
        d.update(tensor=tokens, target_mask=target_mask,
                 decoder_attention_mask=(~target_mask).int())  # causal
        logits = sampling.logits(model, md, target)[:, k + 1]  # (B, V)
        ids, _ = sampling.sample(logits, temperature)
        ids = torch.where(finished, torch.zeros_like(ids), ids)
        tokens[:, k + 1] = ids
        newly = ~finished & torch.isin(ids, stop)
        lengths = torch.where(newly, torch.full_like(lengths, k - 1), lengths)  # ids 2..k
        finished |= newly
        if bool(finished.all()):
            break
    # the result becomes a full input: the generated ids, closed by EOS
    out = torch.zeros_like(tokens)
    positions = torch.arange(L, device=dev)[None]
    body = positions < lengths[:, None]  # (B, L)
    out[body] = tokens[:, 2:][body[:, : L - 2]]
    out[torch.arange(B, device=dev), lengths.clamp(max=L - 1)] = EOS_ID
    md[target] = {
        "tensor": out,
        "input_mask": positions > lengths[:, None],
        "target_mask": torch.ones_like(body),
        "decoder_attention_mask": torch.zeros_like(d["decoder_attention_mask"]),
    }
    return md


@torch.no_grad()
def generate(
    model: FourM,
    mod_dict: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    target: str,
    scheme: Literal["maskgit", "roar"] = "maskgit",
    num_steps: int = 8,
    token_schedule_kind: Literal["cosine", "linear"] = "cosine",
    temperature: float = 1.0,
    temperature_schedule: str = "constant",
    top_k: int | float | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> ModDict:
    """Fill ``target`` in a copy of ``mod_dict`` (which must hold it, e.g. from
    :func:`init_empty_target`) and return the copy, the target now a full input.
    Sequence targets ignore ``scheme``/``num_steps`` and decode autoregressively."""
    was_training = model.training
    model.eval()
    md = clone_mod_dict(mod_dict)
    spec = model.specs[target]
    sampling = Sampling(top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, generator=generator)
    try:
        if spec.is_sequence:
            return _generate_sequence(model, md, target=target, temperature=temperature,
                                      sampling=sampling)
        unknown = md[target]["input_mask"].sum(dim=1)
        if bool((unknown != unknown[0]).any()):
            raise ValueError(f"every sample must have the same number of unknown {target} tokens")
        total = int(unknown[0])
        if total == 0:
            return md
        steps = token_schedule(num_steps, total, token_schedule_kind)
        temps = temperature_schedule_values(temperature, temperature_schedule, steps)
        return _generate_grid(model, md, target=target, scheme=scheme, steps=steps, temps=temps,
                              sampling=sampling)
    finally:
        model.train(was_training)
