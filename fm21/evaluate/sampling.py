"""Turning logits into tokens: top-k/top-p filtering, sampling, and classifier-free guidance
(apple/ml-4m `fourm/models/generate.py`), shared by every decoding scheme of
:mod:`fm21.evaluate.sampler`.

Guidance runs every pass it needs (conditional, unconditional, one per weighted
condition) as one batch of ``passes * B`` rows through a single forward, then mixes them:

- single scale ``s``: ``uncond + s * (cond - uncond)``; the unconditional pass blanks
  ``cond_domains`` (the reference's ``cfg_cond_domains``; default every modality but the target);
- weighted conditions ``{m_i: w_i}`` (the reference's ``generate_multi_guided``, Liu et al. 2022,
  "Compositional Visual Generation"): ``uncond + sum_i w_i * (cond_i - uncond)``, where
  ``cond_i`` blanks every weighted condition but ``m_i`` and ``uncond`` blanks them all.
  Modalities not named stay visible in every pass.

Randomness: one ``torch.Generator`` for the whole batch, or one per row
(:data:`Generators`): then row ``b`` draws only from its own generator, with the same
draws it would make alone in a batch of one, so its output does not depend on its batch
mates (``fm21 generate`` batches samples this way, each seeded as if run alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Union

import torch

from fm21.modalities import ModalitySpec
from fm21.train.masking import sentinel_id

ModDict = dict[str, dict[str, torch.Tensor]]
Generators = Union[torch.Generator, Sequence[torch.Generator], None]  # one for the batch, or one per row
GREEDY_BELOW = 1e-5  # temperatures at or below this decode greedily (argmax)


def clone_mod_dict(mod_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> ModDict:
    return {m: {k: v.clone() for k, v in d.items()} for m, d in mod_dict.items()}


def blank_conditions(
    mod_dict: ModDict, *, keep: str, specs: Mapping[str, ModalitySpec],
    only: Iterable[str] | None = None,
) -> ModDict:
    """The unconditional twin for guidance: every modality but ``keep`` (or only those in
    ``only``) loses its inputs (grids: all masked; sequences: ``[S_1]`` only; vectors: one
    zero vector)."""
    out = clone_mod_dict(mod_dict)
    blank = set(out) if only is None else set(only)
    for name, d in out.items():
        if name == keep or name not in blank:
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


def concat_mod_dicts(dicts: list[ModDict]) -> ModDict:
    """Stack mod_dicts of the same layout along the batch dimension."""
    first = dicts[0]
    return {m: {k: torch.cat([d[m][k] for d in dicts]) for k in first[m]} for m in first}


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance of one target. ``scale`` 1 and no ``conditions``: none."""

    scale: float = 1.0
    cond_domains: tuple[str, ...] | None = None  # blanked by the uncond pass; None = all but target
    conditions: tuple[tuple[str, float], ...] = ()  # weighted multi-condition guidance

    @classmethod
    def make(cls, cfg_scale: float = 1.0, cfg_conditions: Mapping[str, float] | None = None,
             cfg_cond_domains: Iterable[str] | None = None) -> Guidance:
        if cfg_conditions and cfg_scale != 1.0:
            raise ValueError("give either cfg_scale or cfg_conditions (weights per condition), not both")
        return cls(scale=cfg_scale,
                   cond_domains=None if cfg_cond_domains is None else tuple(cfg_cond_domains),
                   conditions=tuple((cfg_conditions or {}).items()))

    @property
    def passes(self) -> int:
        if self.conditions:
            return len(self.conditions) + 1
        return 1 if self.scale == 1.0 or self.cond_domains == () else 2

    def batch(self, md: ModDict, target: str, specs: Mapping[str, ModalitySpec]) -> ModDict:
        """The ``passes * B`` rows of one forward: ``md`` itself without guidance."""
        if self.passes == 1:
            return md
        if not self.conditions:  # [cond, uncond]
            return concat_mod_dicts(
                [md, blank_conditions(md, keep=target, specs=specs, only=self.cond_domains)])
        names = [m for m, _ in self.conditions]
        missing = [m for m in names if m not in md]
        if missing:
            raise ValueError(f"guidance conditions {missing} are not in the mod_dict")
        conds = [blank_conditions(md, keep=target, specs=specs, only=[o for o in names if o != m])
                 for m in names]
        return concat_mod_dicts([*conds, blank_conditions(md, keep=target, specs=specs, only=names)])

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """(passes * B, ...) logits of :meth:`batch` -> guided (B, ...) logits."""
        if self.passes == 1:
            return logits
        parts = logits.float().chunk(self.passes)
        if not self.conditions:
            cond, uncond = parts
            return uncond + self.scale * (cond - uncond)
        uncond = parts[-1]
        return uncond + sum(w * (c - uncond) for (_, w), c in zip(self.conditions, parts[:-1]))


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


def per_row(generator: Generators, batch: int) -> list[torch.Generator] | None:
    """The per-row generators of a batch of ``batch`` rows, or None for a shared one."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"{len(gens)} generators for a batch of {batch} rows (give one per row)")
    return gens


def uniform(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """U[0, 1) noise of ``shape`` (B, ...): from the shared generator, or row by row."""
    gens = per_row(generator, shape[0])
    if gens is None:
        noise = torch.rand(shape, generator=generator)
    else:
        noise = torch.cat([torch.rand((1, *shape[1:]), generator=g) for g in gens])
    return noise.to(device)


def sample_tokens(
    logits: torch.Tensor, *, temperature: float, top_k: int | float | None = None,
    top_p: float | None = None, generator: Generators = None, active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, ..., V) logits -> (ids, probability of each chosen id), both (B, ...).

    With one generator per row, row b samples from its own, and rows where ``active`` (B,)
    is False draw nothing (id 0): a finished row leaves its generator as it was."""
    logits = logits.float()
    if temperature <= GREEDY_BELOW:
        probs = filter_logits(logits, top_k=top_k, top_p=top_p).softmax(dim=-1)
        ids = probs.argmax(dim=-1)
        return ids, probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    probs = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    V = probs.shape[-1]
    gens = per_row(generator, probs.shape[0])
    if gens is None:
        ids = torch.multinomial(probs.reshape(-1, V), 1, generator=generator).reshape(probs.shape[:-1])
    else:
        ids = torch.zeros(probs.shape[:-1], dtype=torch.long, device=probs.device)
        for b, g in enumerate(gens):
            if active is None or bool(active[b]):  # the same draws as this row alone
                ids[b] = torch.multinomial(probs[b].reshape(-1, V), 1, generator=g).reshape(ids.shape[1:])
    return ids, probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class Sampling:
    """How each step turns logits into tokens."""

    top_k: int | float | None = None
    top_p: float | None = None
    guidance: Guidance = field(default_factory=Guidance)
    generator: Generators = None  # one for the batch, or one per row

    def logits(self, model, mod_dict: ModDict, target: str) -> torch.Tensor:
        """(B, L, V) guided logits of ``target`` from one (batched) forward."""
        batch = self.guidance.batch(mod_dict, target, model.specs)
        return self.guidance.combine(model.forward_logits(batch, targets=[target])[target].float())

    def sample(self, logits: torch.Tensor, temperature: float, active: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_tokens(logits, temperature=temperature, top_k=self.top_k, top_p=self.top_p,
                             generator=self.generator, active=active)

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return uniform(shape, self.generator, device)
