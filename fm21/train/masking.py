"""4M multimodal masking (apple/ml-4m `fourm/data/masking.py`, UnifiedMasking and span masking): one sample -> a per-sample mod_dict.

Per sample: pick a mixture component, draw input and target token budgets from its
Dirichlets, then mask each modality within its budgets: a random permutation for
grids (inputs and targets disjoint), span masking with sentinels for sequences
(chunk-wise for chunked sequences such as metadata), input-side span masking for
vector sequences (T5). In every mask, True means ignored.

Special text ids are fixed (apple/ml-4m `fourm/utils/tokenizer/text_tokenizer.py`): PAD=0, EOS=3, sentinel ``[S_k]`` = 4 + k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from fm21.modalities import ModalitySpec

if TYPE_CHECKING:
    from fm21.config import MixtureComponent

PAD_ID = 0
SOS_ID = 2
EOS_ID = 3
SENTINEL_BASE = 4  # [S_k] = 4 + k; [S_0] is never used, [S_1] = 5
NUM_SENTINELS = 200
KEEP_PROB_DECAY = 0.9  # keep_prob shrink factor while the input is over budget
_VECTOR_OFFSET = 1 << 40  # fake ids of T5 vectors, far above any sentinel id


def sentinel_id(k: int) -> int:
    if not 1 <= k < NUM_SENTINELS:
        raise ValueError(f"sentinel index {k} out of range 1..{NUM_SENTINELS - 1}")
    return SENTINEL_BASE + k


def grid_decoder_attention_mask(target_mask: torch.Tensor) -> torch.Tensor:
    """Compressed decoder mask of grid targets (B, N) -> (B, N) int32: the first target
    slot holds the number of targets, the rest 0 (bidirectional within the modality)."""
    targets = ~target_mask
    out = torch.zeros(target_mask.shape, dtype=torch.int32, device=target_mask.device)
    first = torch.argmax(targets.int(), dim=1)  # (B,) index of the first target slot
    rows = torch.arange(target_mask.shape[0], device=target_mask.device)
    out[rows, first] = targets.sum(dim=1).int()
    return out


def max_budget(spec: ModalitySpec) -> int:
    """Most tokens a modality can take from a budget: its grid, or its sequence. A
    sequence's ``max_seq_len`` counts the appended EOS, as the reference's ``max_tokens``
    does (apple/ml-4m `fourm/data/masking.py`, sequence_mask: ``seq_ids.append(eos_id)``
    then ``seq_ids[:max_tokens]``): a 256-token caption keeps 256 tokens and loses its EOS."""
    if spec.is_image_like:
        return spec.num_tokens
    return int(spec.max_seq_len)


def empty_modality(spec: ModalitySpec) -> dict[str, np.ndarray]:
    """A fully masked modality (missing from the sample): every slot ignored."""
    if spec.kind == "pixels":
        tensor = np.zeros((3, spec.resolution, spec.resolution), np.float32)
        n = spec.num_tokens
    elif spec.kind == "embedding":
        tensor = np.zeros((spec.max_seq_len, spec.embedding_dim), np.float32)
        n = spec.max_seq_len
    elif spec.is_sequence:
        n = spec.seq_tensor_len
        tensor = np.zeros(n, np.int64)
    else:
        n = spec.num_tokens
        tensor = np.zeros(n, np.int64)
    return {"tensor": tensor, "input_mask": np.ones(n, bool), "target_mask": np.ones(n, bool),
            "decoder_attention_mask": np.zeros(n, np.int32)}


# ------------------------------------------------------------------------------ spans
@dataclass
class SpanMasked:
    input_ids: list[int]
    target_ids: list[int]
    sentinel_positions: list[int]  # where the sentinels sit in target_ids


def span_mask(
    units: Sequence[Sequence[int]], keep_prob: float, rng: np.random.Generator
) -> SpanMasked:
    """Mask each unit (a token, or a chunk of tokens) with probability 1 - keep_prob; each
    maximal masked run becomes one sentinel in the input. The target is
    ``[S_1] span_1 [S_2] span_2 ... [S_{n+1}]`` (apple/ml-4m `fourm/data/masking.py`)."""
    masked = rng.random(len(units)) >= keep_prob  # (U,) keep_prob 1: none, 0: all
    inp: list[int] = []
    tgt: list[int] = []
    sentinels: list[int] = []
    count, prev = 0, False
    for unit, is_masked in zip(units, masked):
        if is_masked:
            if not prev:
                count += 1
                inp.append(sentinel_id(count))
                sentinels.append(len(tgt))
                tgt.append(sentinel_id(count))
            tgt.extend(unit)
        else:
            inp.extend(unit)
        prev = bool(is_masked)
    sentinels.append(len(tgt))
    tgt.append(sentinel_id(count + 1))
    return SpanMasked(inp, tgt, sentinels)


def draw_keep_prob(scheme: str, rng: np.random.Generator) -> float:
    if scheme == "random":
        return float(rng.uniform())
    if scheme == "all":
        return 1.0
    if scheme == "binary":
        return float(rng.integers(2))
    raise ValueError(f"unknown keep scheme {scheme!r} (random | all | binary)")


def span_mask_within(
    units: Sequence[Sequence[int]], *, input_budget: int, keep: str, rng: np.random.Generator
) -> SpanMasked:
    """Span masking whose input fits ``input_budget``: keep_prob shrinks by 0.9 until it
    does; a zero budget masks everything (``[S_1] <all> [S_2]``)."""
    if input_budget == 0:
        out = span_mask(units, 0.0, rng)
        return SpanMasked([], out.target_ids, out.sentinel_positions)
    keep_prob = draw_keep_prob(keep, rng)
    out = span_mask(units, keep_prob, rng)
    while len(out.input_ids) > input_budget:
        keep_prob *= KEEP_PROB_DECAY
        out = span_mask(units, keep_prob, rng)
    return out


def target_window(masked: SpanMasked, target_budget: int, rng: np.random.Generator) -> list[int]:
    """An over-budget target is cut to a window that starts at a sentinel: a random one
    (not the last), or, if its tail is too short, the earliest whose tail fits."""
    tgt, sentinels = masked.target_ids, masked.sentinel_positions
    if len(tgt) <= target_budget:
        return tgt
    start = sentinels[int(rng.integers(max(1, len(sentinels) - 1)))]
    if len(tgt) - start >= target_budget:
        return tgt[start:start + target_budget]
    start = next(s for s in sentinels if len(tgt) - s <= target_budget)
    return tgt[start:]


def sequence_layout(input_ids: Sequence[int], target_ids: Sequence[int], *, input_budget: int,
                    length: int) -> dict[str, np.ndarray]:
    """Inputs at [0, len_in), targets from index ``input_budget``, PAD elsewhere."""
    if input_budget + len(target_ids) > length or len(input_ids) > input_budget:
        raise ValueError(f"span-masked sequence does not fit its tensor of length {length}")
    tensor = np.full(length, PAD_ID, np.int64)
    input_mask = np.ones(length, bool)
    target_mask = np.ones(length, bool)
    dam = np.zeros(length, np.int32)
    tensor[: len(input_ids)] = input_ids
    input_mask[: len(input_ids)] = False
    end = input_budget + len(target_ids)
    tensor[input_budget:end] = target_ids
    target_mask[input_budget:end] = False
    dam[input_budget:end] = 1  # causal within the sequence
    return {"tensor": tensor, "input_mask": input_mask, "target_mask": target_mask,
            "decoder_attention_mask": dam}


def sequence_units(value: Any, max_tokens: int) -> list[list[int]]:
    """Sample value -> masking units with EOS appended, truncated to ``max_tokens``.

    A flat id list gives one unit per token; a list of chunks (metadata) keeps its
    chunks, with EOS as an extra chunk, dropping chunks past ``max_tokens``.
    """
    items = list(value)
    if items and isinstance(items[0], (list, tuple, np.ndarray)):
        chunks = [[int(t) for t in c] for c in items] + [[EOS_ID]]
        counts = np.cumsum([len(c) for c in chunks])
        return [c for c, n in zip(chunks, counts) if n <= max_tokens]
    ids = [int(t) for t in items] + [EOS_ID]
    return [[t] for t in ids[:max_tokens]]


def closed_sequence(value: Any, spec: ModalitySpec) -> list[int]:
    """A sequence given whole as an input (a generation condition): its ids closed by EOS
    and cut as training cuts them (:func:`sequence_units` at :func:`max_budget`)."""
    return [t for unit in sequence_units(value, max_budget(spec)) for t in unit]


# ------------------------------------------------------------------------------ masking
def dirichlet_budget(alphas: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """floor(Dirichlet(alphas) * total), the remainder handed out one token at a time to
    the argmax of fresh draws (so near-zero alphas get nothing); sums to ``total``
    (apple/ml-4m `fourm/data/masking.py`, input_token_budget)."""
    budget = np.floor(rng.dirichlet(alphas) * total).astype(np.int64)
    remainder = int(total - budget.sum())
    if remainder > 0:
        winners = rng.dirichlet(alphas, size=remainder).argmax(axis=1)
        budget += np.bincount(winners, minlength=len(alphas))
    return budget


class UnifiedMasking:
    """Samples budgets from a mixture of Dirichlets and masks every modality of a sample."""

    def __init__(
        self,
        specs: Mapping[str, ModalitySpec],
        *,
        num_input_tokens: int,
        num_target_tokens: int,
        mixture: Sequence[MixtureComponent],
        seed: int | None = None,
    ) -> None:
        if not mixture:
            raise ValueError("the masking mixture needs at least one component")
        self.specs = dict(specs)
        self.names = list(self.specs)
        self.num_input_tokens = num_input_tokens
        self.num_target_tokens = num_target_tokens
        self.mixture = list(mixture)
        weights = np.array([c.weight for c in self.mixture], dtype=np.float64)
        if weights.sum() <= 0:  # no weights given: components are equally likely
            weights = np.ones(len(weights))
        self.weights = weights / weights.sum()
        self.max_tokens = np.array([max_budget(s) for s in self.specs.values()])
        self.is_grid = np.array([s.is_image_like for s in self.specs.values()])
        self.can_target = np.array([s.can_be_target for s in self.specs.values()])
        self._rng = np.random.default_rng(seed)

    def _alphas(self, component: MixtureComponent, *, target: bool) -> np.ndarray:
        """Per-modality alphas of a component, clamped to >= 1e-9 as in the reference.
        Input-only modalities get target alpha 0: the reference draws a target budget for
        t5_caption too and then drops it (a sample loses those targets); here the other
        targets share it."""
        if target:
            default = component.default_target_alpha
            alphas = [component.target_alphas.get(n, default) for n in self.names]
            alphas = np.where(self.can_target, alphas, 0.0)  # input-only: never a target
        else:
            default = component.default_input_alpha
            alphas = [component.input_alphas.get(n, default) for n in self.names]
        return np.clip(np.asarray(alphas, dtype=np.float64), 1e-9, None)

    def sample_budgets(
        self, rng: np.random.Generator
    ) -> tuple[int, dict[str, int], dict[str, int]]:
        """-> (component index, input budget per modality, target budget per modality)."""
        idx = int(rng.choice(len(self.mixture), p=self.weights))
        comp = self.mixture[idx]
        inp = dirichlet_budget(self._alphas(comp, target=False), self.num_input_tokens, rng)
        inp = np.minimum(inp, self.max_tokens)
        # grids lose the slots their inputs took; sequences are not reduced (§5.1)
        room = np.where(self.is_grid, self.max_tokens - inp, self.max_tokens)
        room = np.where(self.can_target, room, 0)
        tgt = dirichlet_budget(self._alphas(comp, target=True), self.num_target_tokens, rng)
        tgt = np.minimum(tgt, room)
        return idx, dict(zip(self.names, inp.tolist())), dict(zip(self.names, tgt.tolist()))

    def __call__(
        self, sample: Mapping[str, Any], rng: np.random.Generator | None = None
    ) -> dict[str, dict]:
        rng = self._rng if rng is None else rng
        idx, inp, tgt = self.sample_budgets(rng)
        keep = self.mixture[idx].keep
        out: dict[str, dict[str, np.ndarray]] = {}
        for name, spec in self.specs.items():
            value = sample.get(name)
            if value is None:
                out[name] = empty_modality(spec)
            elif spec.is_image_like:
                out[name] = self.mask_grid(spec, value, inp[name], tgt[name], rng)
            elif spec.kind == "embedding":
                out[name] = self.mask_vectors(spec, value, inp[name], keep.get(name, "random"), rng)
            else:
                out[name] = self.mask_sequence(spec, value, inp[name], tgt[name],
                                               keep=keep.get(name, "random"), rng=rng)
        return out

    @staticmethod
    def mask_grid(spec: ModalitySpec, value: Any, input_budget: int, target_budget: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random permutation: the first ``input_budget`` slots are inputs, the next
        ``target_budget`` targets (disjoint); the rest is dropped."""
        n = spec.num_tokens
        dtype = np.float32 if spec.kind == "pixels" else np.int64
        tensor = np.asarray(value, dtype=dtype)
        order = rng.permutation(n)
        input_mask = np.ones(n, bool)
        input_mask[order[:input_budget]] = False
        target_mask = np.ones(n, bool)
        target_mask[order[input_budget:input_budget + target_budget]] = False
        dam = np.zeros(n, np.int32)
        if target_budget > 0:
            dam[np.flatnonzero(~target_mask)[0]] = int((~target_mask).sum())
        return {"tensor": tensor, "input_mask": input_mask, "target_mask": target_mask,
                "decoder_attention_mask": dam}

    @staticmethod
    def mask_sequence(spec: ModalitySpec, value: Any, input_budget: int, target_budget: int, *,
                      keep: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        units = sequence_units(value, max_budget(spec))
        masked = span_mask_within(units, input_budget=input_budget, keep=keep, rng=rng)
        target = target_window(masked, target_budget, rng)
        return sequence_layout(masked.input_ids, target, input_budget=input_budget,
                               length=spec.seq_tensor_len)

    @staticmethod
    def mask_vectors(spec: ModalitySpec, value: Any, input_budget: int, keep: str,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Input-side span masking of (L, E) vectors; sentinel slots are zero vectors."""
        vectors = np.asarray(value, dtype=np.float32)[: spec.max_seq_len]  # (L, E)
        units = [[_VECTOR_OFFSET + i] for i in range(len(vectors))]
        masked = span_mask_within(units, input_budget=input_budget, keep=keep, rng=rng)
        n = spec.max_seq_len
        tensor = np.zeros((n, vectors.shape[1]), np.float32)
        for slot, fake_id in enumerate(masked.input_ids):
            if fake_id >= _VECTOR_OFFSET:
                tensor[slot] = vectors[fake_id - _VECTOR_OFFSET]
        input_mask = np.ones(n, bool)
        input_mask[: len(masked.input_ids)] = False
        return {"tensor": tensor, "input_mask": input_mask, "target_mask": np.ones(n, bool),
                "decoder_attention_mask": np.zeros(n, np.int32)}


def collate_mod_dicts(
    samples: list[dict[str, dict[str, Any]]],
) -> dict[str, dict[str, torch.Tensor]]:
    """Stack per-sample mod_dicts into a batch: every tensor gains a leading B."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, dict[str, torch.Tensor]] = {}
    for name, first in samples[0].items():
        batch[name] = {
            key: torch.as_tensor(np.stack([np.asarray(s[name][key]) for s in samples]))
            for key in first
        }
    return batch
