"""The registry: every 4M-21 modality, numbers from the reference, derived never mutated.

Tests are generated from the registry: a new modality is covered with no new test code.
"""

from __future__ import annotations

import dataclasses

import pytest

from fm21.config import load_config
from fm21.modalities import MODALITIES, TEXT_VOCAB_SIZE, get_spec, resolve_specs

EXPECTED_KEYS = {
    "rgb", "tok_rgb", "caption", "t5_caption", "det", "tok_depth", "tok_normal", "tok_semseg",
    "tok_clip", "tok_dinov2", "tok_dinov2_global", "tok_imagebind", "tok_imagebind_global",
    "tok_canny_edge", "tok_sam_edge", "sam_instance", "human_poses", "color_palette", "metadata",
}
# apple/ml-4m `fourm/data/modality_info.py` and the 4M-21 paper (arXiv 2406.09406), at 224 px.
REFERENCE_TOKENS = {
    "rgb": 196, "tok_rgb": 196, "tok_depth": 196, "tok_normal": 196, "tok_semseg": 196, "tok_clip": 196,
    "tok_dinov2": 256, "tok_imagebind": 256, "tok_dinov2_global": 16, "tok_imagebind_global": 16,
    "tok_canny_edge": 196, "tok_sam_edge": 196, "caption": 256, "det": 256, "t5_caption": 77,
    "metadata": 40, "color_palette": 23, "human_poses": 275, "sam_instance": 290,
}
REFERENCE_VOCAB = {
    "tok_rgb": 16384, "tok_depth": 8192, "tok_normal": 8192, "tok_semseg": 4096, "tok_clip": 8192,
    "tok_dinov2": 8192, "tok_imagebind": 8192, "tok_dinov2_global": 8192, "tok_imagebind_global": 8192,
    "tok_canny_edge": 8192, "tok_sam_edge": 8192,
}


def test_registry_has_exactly_the_19_keys():
    assert set(MODALITIES) == EXPECTED_KEYS
    assert len(MODALITIES) == 19


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_spec_is_consistent(name):
    spec = MODALITIES[name]
    assert spec.name == name
    assert spec.num_tokens == REFERENCE_TOKENS[name]
    assert spec.label_columns, "every modality says which label column(s) it is made from"
    if spec.is_sequence:
        assert spec.seq_tensor_len == (spec.max_seq_len + 1) * 2
        if spec.kind == "sequence":
            assert spec.tokenizer == "wordpiece" and spec.vocab_size == TEXT_VOCAB_SIZE
    else:
        assert spec.seq_tensor_len is None
    if name in REFERENCE_VOCAB:
        assert spec.vocab_size == REFERENCE_VOCAB[name]
    assert spec.input_only == (name in {"rgb", "t5_caption"})
    assert spec.can_be_target != spec.input_only


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_tiny_scale_is_derived_not_written_back(name):
    before = dataclasses.asdict(MODALITIES[name])
    tiny = MODALITIES[name].at(resolution=64, patch_size=8, vocab_size=256)
    assert dataclasses.asdict(MODALITIES[name]) == before
    if tiny.kind in ("pixels", "image_tokens", "feature_tokens"):
        assert tiny.num_tokens == 64
    if tiny.vocab_size is not None:
        assert tiny.vocab_size == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.vocab_size = 3


def test_resolve_specs_follows_config_and_order():
    cfg = load_config()
    specs = cfg.specs()
    assert list(specs) == cfg.modalities.enabled
    assert specs["tok_depth"].num_tokens == (cfg.modalities.resolution // cfg.modalities.patch_size) ** 2
    assert specs["caption"].vocab_size == cfg.modalities.text_vocab_size
    real = resolve_specs(["tok_dinov2", "tok_rgb"])
    assert real["tok_dinov2"].num_tokens == 256 and real["tok_rgb"].num_tokens == 196


def test_unknown_modality_error_lists_known():
    with pytest.raises(KeyError, match="tok_rgb"):
        get_spec("tok_rgbb")
