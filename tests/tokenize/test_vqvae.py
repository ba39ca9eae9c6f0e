"""VQ-VAE tokenizers and preprocessors, generated from the registry: every image-token
modality whose label kind has a preprocessor is built, encoded and decoded at 32 px.
Scenes are keyed by label column, preprocessors by label kind."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fm21.config import VQTokenizerConfig
from fm21.modalities import MODALITIES, ModalitySpec
from fm21.tokenize.image_tokenizer import TokenizerConfig
from fm21.tokenize.families import family_module
from fm21.tokenize.preprocess import PREPROCESSORS, preprocessor_for, robust_standardize
from fm21.tokenize.vqvae import VQVAE, build_tokenizer

TINY = VQTokenizerConfig(hidden_dim=32, num_layers=1, steps=10, batch_size=8)

IMAGE_TOKEN_SPECS = [
    s for s in MODALITIES.values()
    if s.kind == "image_tokens" and s.label_kind in PREPROCESSORS
]

# label kind -> (decoded dtype, per-sample decoded shape at 32 px)
DECODED = {
    "rgb": (np.uint8, (32, 32, 3)),
    "depth": (np.float32, (32, 32)),
    "normal": (np.float32, (32, 32, 3)),
    "classes": (np.uint8, (32, 32)),
    "edges": (np.uint8, (32, 32)),
}


def _tiny(spec: ModalitySpec) -> TokenizerConfig:
    return TokenizerConfig.from_spec(spec.at(resolution=32, patch_size=8, vocab_size=64), TINY)


def test_registry_tokenizers_are_covered() -> None:
    names = {s.name for s in IMAGE_TOKEN_SPECS}
    dense = {"tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge", "tok_sam_edge"}
    assert dense <= names
    assert set(DECODED) == set(PREPROCESSORS) - {"feature"}  # feature maps: test below
    assert isinstance(family_module("vqvae").build(_tiny(IMAGE_TOKEN_SPECS[0])), VQVAE)
    with pytest.raises(ValueError, match="family 'nope'"):
        build_tokenizer(dataclasses.replace(_tiny(IMAGE_TOKEN_SPECS[0]), family="nope"))


def test_legacy_preprocess_names_resolve_to_label_kinds() -> None:
    """Checkpoints written before label kinds name the label column they read."""
    assert preprocessor_for("semseg") is PREPROCESSORS["classes"]
    assert preprocessor_for("canny_edge") is preprocessor_for("sam_edge") is PREPROCESSORS["edges"]
    with pytest.raises(KeyError, match="no preprocessor"):
        preprocessor_for("clip")


@pytest.mark.parametrize("spec", [s for s in MODALITIES.values() if s.kind == "feature_tokens"],
                         ids=lambda s: s.name)
def test_feature_map_tokenizers_read_the_token_grid_at_patch_1(spec: ModalitySpec) -> None:
    """CLIP/DINOv2/ImageBind-style feature maps (g, g, C): one token per feature vector."""
    torch.manual_seed(0)
    small = spec.at(resolution=32, patch_size=8, vocab_size=64)
    cfg = TokenizerConfig.from_spec(small, TINY)
    assert (cfg.preprocess, cfg.resolution, cfg.patch_size) == ("feature", 4, 1) and small.label_size == 4
    tok = build_tokenizer(cfg).eval()
    feats = np.random.default_rng(0).normal(size=(2, 4, 4, spec.num_channels)).astype(np.float16)
    ids = tok.encode_labels(feats)
    assert ids.shape == (2, 16) and ids.dtype == np.int16
    assert tok.decode_labels(ids).shape == (2, 4, 4, spec.num_channels)


@pytest.mark.parametrize("spec", IMAGE_TOKEN_SPECS, ids=lambda s: s.name)
def test_encode_decode_shapes(spec: ModalitySpec, scenes32: dict[str, np.ndarray]) -> None:
    torch.manual_seed(0)
    cfg = _tiny(spec)
    tok = build_tokenizer(cfg).eval()
    labels = scenes32[spec.label_columns[0]][:3]
    ids = tok.encode_labels(labels)
    assert ids.dtype == np.int16 and ids.shape == (3, 16)
    assert ids.min() >= 0 and ids.max() < 64
    dtype, shape = DECODED[cfg.preprocess]
    decoded = tok.decode_labels(ids)
    assert decoded.dtype == dtype and decoded.shape == (3, *shape)
    # torch level: (B, h, w) ids; decode gives model-space maps (class logits for semseg)
    x = tok.preprocessor.to_model(labels)
    grid = tok.encode(x)
    assert grid.shape == (3, 4, 4) and torch.equal(grid.flatten(1), torch.from_numpy(ids).long())
    out = tok.decode(grid)
    channels = spec.num_channels if tok.preprocessor.categorical else tok.preprocessor.channels
    assert out.shape == (3, channels, 32, 32)


def test_preprocessors_round_trip(scenes32: dict[str, np.ndarray]) -> None:
    rgb = scenes32["rgb"][:4]
    x = PREPROCESSORS["rgb"].to_model(rgb)
    assert x.shape == (4, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(PREPROCESSORS["rgb"].from_model(x), rgb)

    normal = scenes32["normal"][:4]
    n = PREPROCESSORS["normal"].to_model(normal)
    back = PREPROCESSORS["normal"].from_model(n * 3.0)  # decode renormalises
    assert np.allclose(back, normal.astype(np.float32), atol=2e-3)
    flipped = PREPROCESSORS["normal"].hflip(n)
    assert torch.allclose(flipped[:, 0], -n[:, 0].flip(-1))
    assert torch.allclose(flipped[:, 1:], n[:, 1:].flip(-1))

    edges = scenes32["canny_edge"][:4]
    e = PREPROCESSORS["edges"].to_model(edges)
    assert set(np.unique(e.numpy())) <= {-1.0, 1.0}
    logits = e * 5.0  # confident logits of the same map
    assert np.array_equal(PREPROCESSORS["edges"].from_model(logits), edges)
    soft = PREPROCESSORS["edges"].soft(logits)
    assert soft.dtype == np.float32 and 0 <= soft.min() and soft.max() <= 1

    seg = scenes32["semseg"][:4]
    s = PREPROCESSORS["classes"].to_model(seg)
    assert s.dtype == torch.int64
    onehot = torch.nn.functional.one_hot(s, 134).permute(0, 3, 1, 2).float()
    assert np.array_equal(PREPROCESSORS["classes"].from_model(onehot), seg)


def test_depth_robust_standardisation(scenes32: dict[str, np.ndarray]) -> None:
    depth = scenes32["depth"][:4].astype(np.float32)
    std = robust_standardize(depth)
    for d in std:
        lo, hi = np.quantile(d, [0.1, 0.9])
        kept = d[(d >= lo) & (d <= hi)]
        assert abs(kept.mean()) < 1e-4 and abs(kept.std() - 1) < 1e-3
    # invariant to the metric scale and shift the evaluator aligns away
    assert np.allclose(robust_standardize(depth * 3.0 + 1.0), std, atol=1e-3)
    assert PREPROCESSORS["depth"].to_model(depth).shape == (4, 1, 32, 32)
    with_inf = depth.copy()
    with_inf[0, 0, 0] = np.inf
    assert np.isfinite(robust_standardize(with_inf)).all()


def test_metrics_perfect_reconstruction(scenes32: dict[str, np.ndarray]) -> None:
    assert PREPROCESSORS["rgb"].metrics(scenes32["rgb"], scenes32["rgb"])["psnr"] > 90
    n = scenes32["normal"].astype(np.float32)
    assert PREPROCESSORS["normal"].metrics(n, n)["mean_angle_deg"] < 0.1
    seg = scenes32["semseg"]
    assert PREPROCESSORS["classes"].metrics(seg, seg) == {"pixel_accuracy": 1.0, "miou": 1.0}
    edges = scenes32["canny_edge"]
    assert PREPROCESSORS["edges"].metrics(edges, edges)["f1"] == 1.0
    d = scenes32["depth"].astype(np.float32)
    m = PREPROCESSORS["depth"].metrics(robust_standardize(d), d)
    assert m["mse_standardized"] < 1e-8 and m["abs_rel_aligned"] < 1e-3


def test_edge_f1_with_one_pixel_tolerance() -> None:
    true = np.zeros((1, 16, 16), np.uint8)
    true[0, 8, 2:14] = 255  # a horizontal 1-px line
    shifted = np.roll(true, 1, axis=1)  # the same edge one pixel lower
    far = np.roll(true, 3, axis=1)
    m = PREPROCESSORS["edges"].metrics(shifted, true)
    assert m["f1"] == 0.0 and m["f1_tol1"] == 1.0
    assert PREPROCESSORS["edges"].metrics(far, true)["f1_tol1"] == 0.0
    thick = true | np.roll(true, 1, axis=1) | np.roll(true, -1, axis=1)  # 3 px wide
    m = PREPROCESSORS["edges"].metrics(thick, true)
    assert m["recall_tol1"] == 1.0 and m["precision"] == pytest.approx(1 / 3)
