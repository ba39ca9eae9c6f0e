"""UnifiedMasking: budgets (§5.1), grid masks, span masking layout (§3.8), collation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fourm_tiny import NUM_INPUT, NUM_TARGET, random_sample, tiny_masking, tiny_specs

from fm21.config import MixtureComponent
from fm21.train.masking import (
    EOS_ID, PAD_ID, UnifiedMasking, collate_mod_dicts, dirichlet_budget, max_budget, sentinel_id, sequence_units,
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


# ------------------------------------------------------------------------------ the 4M-21 objective
# apple/ml-4m `cfgs/default/4m/alphas_mixture/main/mix_mod21_all2allmix_rgb2all_capT5bias.yaml`,
# transcribed per modality (the registry's names; "@224" dropped): inputs, targets, keep.
_ALL2ALL = [0.01, 0.1, 1.0, 10.0]
_OTHER_IN, _OTHER_TGT = [*_ALL2ALL, 0.0, 0.05, 0.05], [*_ALL2ALL, 0.5, 0.5, 0.5]
REFERENCE_4M21 = {
    "rgb": ([*_ALL2ALL, 1000.0, 0.05, 0.05], [0.0] * 7, None),
    "caption": ([*_ALL2ALL, 0.0, 5.0, 0.0], [*_ALL2ALL, 0.5, 0.0, 0.5], ["random"] * 5 + ["all", "random"]),
    "t5_caption": ([*_ALL2ALL, 0.0, 0.0, 5.0], [*_ALL2ALL, 0.5, 0.5, 0.0], ["random"] * 6 + ["all"]),
    "color_palette": (_OTHER_IN, _OTHER_TGT, ["binary"] * 7),
    **{n: (_OTHER_IN, _OTHER_TGT, ["random"] * 7) for n in ("det", "human_poses", "metadata", "sam_instance")},
    **{n: (_OTHER_IN, _OTHER_TGT, None) for n in (
        "tok_rgb", "tok_normal", "tok_depth", "tok_semseg", "tok_clip", "tok_dinov2", "tok_dinov2_global",
        "tok_imagebind", "tok_imagebind_global", "tok_canny_edge", "tok_sam_edge")},
}
REFERENCE_4M21_WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


def all19_specs():
    """Every registry modality at toy sizes (T5 vectors 8 wide)."""
    from fm21.modalities import MODALITIES, resolve_specs

    specs = resolve_specs(list(MODALITIES), resolution=32, patch_size=8, image_vocab_size=64, text_vocab_size=300,
                          max_seq_len=12)
    return {n: dataclasses.replace(s, embedding_dim=8) if s.kind == "embedding" else s for n, s in specs.items()}


def mixture_4m21():
    from pathlib import Path

    from fm21.config import load_config

    root = Path(__file__).resolve().parents[2]
    return load_config(root / "flows.yaml", recipe=root / "configs" / "4m21-b.yaml").train.mixture


def test_4m21_recipe_ships_the_reference_mixture():
    from fm21.modalities import MODALITIES

    mixture = mixture_4m21()
    assert sorted(REFERENCE_4M21) == sorted(MODALITIES)  # every modality of 4M-21 is transcribed
    assert [c.weight for c in mixture] == REFERENCE_4M21_WEIGHTS
    specs = all19_specs()
    masking = UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET, mixture=mixture)
    for i, comp in enumerate(mixture):
        inputs = dict(zip(masking.names, masking._alphas(comp, target=False)))
        targets = dict(zip(masking.names, masking._alphas(comp, target=True)))
        for name, (ref_in, ref_tgt, ref_keep) in REFERENCE_4M21.items():
            assert inputs[name] == max(ref_in[i], 1e-9), (i, name)
            # input-only modalities never get a target budget (see MixtureComponent)
            expected = ref_tgt[i] if specs[name].can_be_target else 0.0
            assert targets[name] == max(expected, 1e-9), (i, name)
            assert comp.keep.get(name, "random") == (ref_keep[i] if ref_keep else "random"), (i, name)


def test_dirichlet_budgets_sum_to_the_total_with_remainder_assignment():
    rng = np.random.default_rng(10)
    for _ in range(300):
        n = int(rng.integers(2, 20))
        alphas = np.clip(rng.choice([0.0, 0.01, 0.5, 5.0, 1000.0], n), 1e-9, None)
        total = int(rng.integers(0, 300))
        budget = dirichlet_budget(alphas, total, rng)
        assert budget.sum() == total and (budget >= 0).all()
        if (alphas > 1e-9).any():  # the near-zero modalities get nothing (argmax remainder)
            assert budget[alphas <= 1e-9].sum() <= 1


def test_4m21_budgets_fill_the_totals_unless_a_modality_is_full():
    specs = all19_specs()
    masking = UnifiedMasking(specs, num_input_tokens=64, num_target_tokens=64, mixture=mixture_4m21())
    full = np.array([max_budget(s) for s in specs.values()])
    rng = np.random.default_rng(11)
    components = set()
    for _ in range(400):
        idx, inp, tgt = masking.sample_budgets(rng)
        components.add(idx)
        inp, tgt = np.array(list(inp.values())), np.array(list(tgt.values()))
        assert (inp <= full).all() and (tgt >= 0).all()
        # clamping to a modality's max is the only way a budget falls short of its total
        assert inp.sum() == 64 or (inp == full).any()
        room = np.where([s.is_image_like for s in specs.values()], full - inp, full)
        room = np.where([s.can_be_target for s in specs.values()], room, 0)
        assert tgt.sum() == 64 or (tgt == room).any()
        if idx == 4:  # rgb2all: the pixels alone
            assert inp[masking.names.index("rgb")] == specs["rgb"].num_tokens and inp.sum() == specs["rgb"].num_tokens
    assert components == set(range(7))


def test_4m21_samples_never_overlap_and_spans_decode_back():
    specs = all19_specs()
    mixture = mixture_4m21()
    masking = UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=64, mixture=mixture)
    rng = np.random.default_rng(12)
    decoded = 0
    for _ in range(300):
        sample = random_sample(specs, rng)
        out = masking(sample, rng)
        assert sum(int((~d["input_mask"]).sum()) for d in out.values()) <= NUM_INPUT
        assert sum(int((~d["target_mask"]).sum()) for d in out.values()) <= 64
        for name, spec in specs.items():
            d = out[name]
            assert not (~d["input_mask"] & ~d["target_mask"]).any(), name  # no slot is both
            if not spec.can_be_target:
                assert d["target_mask"].all(), name
            if spec.kind == "embedding":  # input-side spans: kept vectors in order, zeros at sentinels
                rows = [r for r in d["tensor"][~d["input_mask"]] if r.any()]
                kept = [i for i, v in enumerate(sample[name]) if any(np.array_equal(v, r) for r in rows)]
                assert len(kept) == len(rows) and kept == sorted(kept), name
                continue
            if not spec.is_sequence:
                continue
            tensor = d["tensor"]
            inp, tgt = tensor[~d["input_mask"]].tolist(), tensor[~d["target_mask"]].tolist()
            inp = inp or [S1]  # a zero input budget: the whole sequence is the span of [S_1]
            n_sentinels = sum(5 <= t < 204 for t in inp)
            whole_target = tgt[:1] == [S1] and tgt[-1:] == [sentinel_id(n_sentinels + 1)]
            if whole_target:  # the target was not cut to a window: inputs + spans = the sequence
                units = sequence_units(sample[name], max_budget(spec))
                assert merge_spans(inp, tgt) == sum(units, []), name
                decoded += 1
    assert decoded > 80  # of ~2,000 sequences: most get no target or a cut window


def test_keep_schemes_all_and_binary_in_the_4m21_mixture():
    specs = all19_specs()
    caption_biased = mixture_4m21()[5]
    masking = UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET,
                             mixture=[caption_biased])
    rng = np.random.default_rng(13)
    whole_captions = 0
    for _ in range(100):
        sample = random_sample(specs, rng)
        out = masking(sample, rng)
        caption = out["caption"]
        inp = caption["tensor"][~caption["input_mask"]].tolist()
        units = sequence_units(sample["caption"], max_budget(specs["caption"]))
        if len(inp) == len(units):  # budget held it all: keep=all gives the caption whole
            assert inp == sum(units, [])
            whole_captions += 1
    assert whole_captions > 20
    # binary (color_palette): with room in the budget, the input is the whole sequence or [S_1]
    units = sequence_units([210, 211, 212, 213], 20)
    seen = set()
    for _ in range(100):
        out = span_mask_within(units, input_budget=10, keep="binary", rng=rng)
        assert out.input_ids in ([210, 211, 212, 213, EOS_ID], [S1])
        seen.add(len(out.input_ids))
    assert seen == {1, 5}
