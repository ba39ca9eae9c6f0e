"""UnifiedMasking: budgets (§5.1), grid masks, span masking layout (§3.8), collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fourm_tiny import NUM_INPUT, NUM_TARGET, random_sample, tiny_masking, tiny_specs

from fm21.config import MixtureComponent
from fm21.train.masking import (
    EOS_ID, PAD_ID, UnifiedMasking, collate_mod_dicts, max_budget, sentinel_id, sequence_units,
    span_mask, span_mask_within, target_window,
)

S1, S2, S3 = sentinel_id(1), sentinel_id(2), sentinel_id(3)


class ScriptedRng:
    """Stands in for np.random.Generator where a test needs exact draws."""

    def __init__(self, *, random=(), uniform=(), integers=()):
        self._random, self._uniform, self._integers = list(random), list(uniform), list(integers)

    def random(self, n):
        out = np.asarray(self._random[:n], dtype=float)
        self._random = self._random[n:]
        return out

    def uniform(self):
        return self._uniform.pop(0)

    def integers(self, n):
        value = self._integers.pop(0)
        assert value < n
        return value


def merge_spans(inp: list[int], tgt: list[int]) -> list[int]:
    """Undo span masking: replace each input sentinel by its span from the target."""
    spans, current = {}, None
    for t in tgt:
        if 5 <= t < 204:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in inp:
        out.extend(spans[t] if 5 <= t < 204 else [t])
    return out


MIXTURE = [
    MixtureComponent(weight=1.0, default_input_alpha=0.5, default_target_alpha=0.5),
    MixtureComponent(weight=1.0, input_alphas={"rgb": 1000.0}, default_input_alpha=0.0),
    MixtureComponent(weight=0.5, default_input_alpha=0.01, default_target_alpha=10.0),
]


def test_budgets_respect_totals_max_tokens_and_input_only():
    specs = tiny_specs()
    masking = tiny_masking(specs, mixture=MIXTURE)
    rng = np.random.default_rng(0)
    seen_rgb2all = False
    for _ in range(300):
        idx, inp, tgt = masking.sample_budgets(rng)
        assert sum(inp.values()) <= NUM_INPUT and sum(tgt.values()) <= NUM_TARGET
        for name, spec in specs.items():
            assert 0 <= inp[name] <= max_budget(spec)
            if spec.is_image_like:
                assert inp[name] + tgt[name] <= spec.num_tokens
            else:
                assert tgt[name] <= max_budget(spec)
        assert tgt["rgb"] == 0  # input-only
        if idx == 1:  # rgb alpha 1000, the rest ~0: rgb takes everything it can hold
            seen_rgb2all = True
            assert inp["rgb"] == specs["rgb"].num_tokens
            assert sum(v for k, v in inp.items() if k != "rgb") == 0
    assert seen_rgb2all


def test_budgets_fill_the_total_when_nothing_is_clamped():
    specs = tiny_specs()
    masking = UnifiedMasking(specs, num_input_tokens=7, num_target_tokens=5, mixture=[MixtureComponent()])
    rng = np.random.default_rng(1)
    for _ in range(100):
        _, inp, tgt = masking.sample_budgets(rng)
        assert sum(inp.values()) == 7  # no modality can overflow 7 tokens: nothing is clamped
        assert sum(tgt.values()) <= 5


def test_grid_masks_are_disjoint_and_match_budgets():
    spec = tiny_specs()["tok_depth"]
    ids = np.arange(spec.num_tokens)
    out = UnifiedMasking.mask_grid(spec, ids, 5, 7, np.random.default_rng(0))
    inputs, targets = ~out["input_mask"], ~out["target_mask"]
    assert inputs.sum() == 5 and targets.sum() == 7 and not (inputs & targets).any()
    first = np.flatnonzero(targets)[0]
    assert out["decoder_attention_mask"][first] == 7 and out["decoder_attention_mask"].sum() == 7


def test_every_sample_masks_input_only_modalities_as_inputs_only_and_missing_ones_fully():
    specs = tiny_specs()
    masking = tiny_masking(specs, mixture=MIXTURE)
    rng = np.random.default_rng(2)
    for _ in range(50):
        sample = random_sample(specs, rng)
        del sample["tok_normal"]
        out = masking(sample, rng)
        assert out["rgb"]["target_mask"].all()
        assert out["tok_normal"]["input_mask"].all() and out["tok_normal"]["target_mask"].all()
        total_inputs = sum(int((~d["input_mask"]).sum()) for d in out.values())
        assert total_inputs <= NUM_INPUT


def test_span_masking_hand_example_layout():
    spec = tiny_specs()["caption"]  # max_seq_len 12 -> tensor length 26
    rng = ScriptedRng(uniform=[0.5], random=[0.1, 0.7, 0.9, 0.2, 0.8])
    # units 10 11 12 13 EOS; draws >= keep_prob 0.5 are masked: 11 12 and EOS
    out = UnifiedMasking.mask_sequence(spec, [10, 11, 12, 13], 5, 10, keep="random", rng=rng)
    assert out["tensor"].shape == (26,)
    assert out["tensor"][:4].tolist() == [10, S1, 13, S2]
    assert out["tensor"][4] == PAD_ID  # input budget 5: targets start at index 5
    assert out["tensor"][5:11].tolist() == [S1, 11, 12, S2, EOS_ID, S3]
    assert (out["tensor"][11:] == PAD_ID).all()
    assert np.flatnonzero(~out["input_mask"]).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(~out["target_mask"]).tolist() == list(range(5, 11))
    assert np.flatnonzero(out["decoder_attention_mask"]).tolist() == list(range(5, 11))
    assert out["decoder_attention_mask"].max() == 1


def test_span_masking_empty_input_and_target_window():
    units = sequence_units([10, 11, 12, 13], 20)
    empty = span_mask_within(units, input_budget=0, keep="random", rng=np.random.default_rng(0))
    assert empty.input_ids == [] and empty.target_ids == [S1, 10, 11, 12, 13, EOS_ID, S2]
    masked = span_mask(units, 0.5, ScriptedRng(random=[0.1, 0.7, 0.9, 0.2, 0.8]))
    assert masked.target_ids == [S1, 11, 12, S2, EOS_ID, S3]
    # a random sentinel other than the last starts the window
    assert target_window(masked, 3, ScriptedRng(integers=[0])) == [S1, 11, 12]
    assert target_window(masked, 3, ScriptedRng(integers=[1])) == [S2, EOS_ID, S3]
    # the tail from [S_2] (3 tokens) is too short for 4: the earliest sentinel that fits
    assert target_window(masked, 4, ScriptedRng(integers=[1])) == [S2, EOS_ID, S3]


@pytest.mark.parametrize("keep", ["random", "all", "binary"])
def test_span_masking_fits_budget_and_round_trips(keep):
    rng = np.random.default_rng(3)
    for _ in range(100):
        seq = rng.integers(204, 300, int(rng.integers(1, 12))).tolist()
        units = sequence_units(seq, 13)
        budget = int(rng.integers(1, 6))
        out = span_mask_within(units, input_budget=budget, keep=keep, rng=rng)
        assert len(out.input_ids) <= budget  # the 0.9 shrink loop
        assert merge_spans(out.input_ids, out.target_ids) == seq + [EOS_ID]
        assert out.target_ids[-1] == sentinel_id(sum(5 <= t < 204 for t in out.input_ids) + 1)


def test_metadata_is_masked_chunk_wise():
    chunks = [[210, 211], [220, 221], [230, 231], [240, 241]]
    units = sequence_units(chunks, 8)  # 4 chunks + EOS = 9 tokens > 8: the EOS chunk is dropped
    assert units == chunks
    rng = np.random.default_rng(4)
    for _ in range(50):
        out = span_mask_within(units, input_budget=5, keep="random", rng=rng)
        assert merge_spans(out.input_ids, out.target_ids) == sum(chunks, [])
        content = [t for t in out.input_ids if not 5 <= t < 204]
        # whole chunks only: every kept v1 id sits right before its v0 id
        assert all(content[i + 1] == content[i] + 1 for i in range(0, len(content), 2))


def test_collate_stacks_a_batch_with_contract_dtypes():
    specs = tiny_specs()
    masking = tiny_masking(specs)
    rng = np.random.default_rng(5)
    batch = collate_mod_dicts([masking(random_sample(specs, rng), rng) for _ in range(3)])
    assert batch["rgb"]["tensor"].shape == (3, 3, 32, 32) and batch["rgb"]["tensor"].dtype == torch.float32
    assert batch["rgb"]["input_mask"].shape == (3, 16)
    assert batch["tok_depth"]["tensor"].dtype == torch.int64
    assert batch["caption"]["tensor"].shape == (3, specs["caption"].seq_tensor_len)
    for d in batch.values():
        assert d["input_mask"].dtype == torch.bool and d["target_mask"].dtype == torch.bool
        assert d["decoder_attention_mask"].dtype == torch.int32
