"""The feature-network specialists (CLIP, DINOv2, ImageBind) at tiny configs of their real
architectures: random-init checkpoints saved to tmp_path and loaded through the specialists'
own loading code (``weights: path``), compared with direct computations through open_clip's
and transformers' own modules. No hub is contacted (HF_HUB_OFFLINE, conftest)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fm21.config import ConfigError, SpecialistConfig
from fm21.pseudolabel.specialists import SPECIALISTS
from fm21.pseudolabel.specialists.clip import ClipFeatures
from fm21.pseudolabel.specialists.dinov2 import Dinov2Features
from fm21.pseudolabel.specialists.feature import FeatureMapSpecialist
from fm21.pseudolabel.specialists.imagebind import ImageBindFeatures
from fm21.pseudolabel.specialists.weights import CLIP_MEAN, CLIP_STD

S = 24  # the run's image size: the specialists resize to their own input size
INPUT, PATCH, GRID = 32, 8, 4
CLIP_PRE = {"input_size": INPUT, "mean": CLIP_MEAN, "std": CLIP_STD}
TINY_VIT = {"embed_dim": 16,
            "vision_cfg": {"image_size": INPUT, "layers": 2, "width": 32, "head_width": 16, "patch_size": PATCH},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


def images(n: int = 3, size: int = S) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def batch(n: int = 3) -> dict:
    return {"key": [f"k{i}" for i in range(n)], "rgb": images(n), "meta": [{}] * n, "gt": [None] * n}


def make(cls, weights: str, path=None, **options):
    return cls(SpecialistConfig(weights=weights, path=str(path) if path else None, batch_size=2, options=options),
               image_size=S)


@pytest.fixture(scope="module")
def open_clip_ckpt(tmp_path_factory):
    """A tiny open_clip ViT config (the real CLIP class) and random-init state dicts of it,
    saved with GELU (ImageBind's ViT-H) and with QuickGELU (OpenAI CLIP)."""
    import open_clip

    root = tmp_path_factory.mktemp("open_clip")
    arch = root / "fm21-test-tiny-vit.json"
    arch.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(arch)
    out = {"arch": str(arch)}
    for quick in (False, True):
        torch.manual_seed(1)
        model = open_clip.create_model(arch.stem, force_quick_gelu=quick).eval()
        path = root / f"tiny-{'quick' if quick else 'gelu'}.pt"
        torch.save(model.state_dict(), path)
        out[quick] = (model, path)
    return out


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dinov2") / "tiny-dinov2"
    torch.manual_seed(2)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=PATCH,
                          image_size=INPUT)
    model = Dinov2Model(config).eval()
    model.save_pretrained(path)
    return model, path


def _check_outputs(specialist, out: dict, n: int) -> None:
    fields = {f.name: f for f in specialist.columns()}
    assert set(out) == set(fields)
    for name, field in fields.items():
        shape = json.loads(field.metadata[b"shape"])
        assert len(out[name]) == n
        for v in out[name]:
            assert v.dtype == np.float16 and v.size == np.prod(shape) and np.isfinite(v).all()
            assert np.abs(v).max() > 0
        assert field.metadata[b"dtype"] == b"float16"


def _pixels(specialist, rgb):
    return specialist.options.preprocess(rgb)  # (B, 3, INPUT, INPUT) as the specialist sees them


# ---------------------------------------------------------------------------- CLIP
def test_clip_patch_features_are_ln_post_tokens_times_proj(open_clip_ckpt):
    model, path = open_clip_ckpt[True]
    clip = make(ClipFeatures, "path", path, arch=open_clip_ckpt["arch"], quick_gelu=True, preprocess=CLIP_PRE)
    assert [f.name for f in clip.columns()] == ["clip"]
    assert json.loads(clip.columns()[0].metadata[b"shape"]) == [GRID, GRID, 16]
    out = clip(batch())
    _check_outputs(clip, out, 3)
    maps = np.stack(out["clip"]).reshape(3, GRID, GRID, 16)
    # Direct: open_clip's own forward_intermediates (last block, ln_post applied) @ proj,
    # on the model object that was saved (so loading is checked too).
    with torch.no_grad():
        x = _pixels(clip, images())
        inter = model.visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_fmt="NLC",
                                                   intermediates_only=True)["image_intermediates"][-1]  # (B, g², W)
        direct = (inter @ model.visual.proj).reshape(3, GRID, GRID, 16).numpy()
    np.testing.assert_allclose(maps.astype(np.float32), direct, rtol=1e-2, atol=2e-3)
    # features() (the tokens job's call) gives the same maps for the same pixels
    np.testing.assert_array_equal(clip.features(images())["clip"], maps)


def test_clip_interpolates_the_positional_embedding_to_another_grid(open_clip_ckpt):
    _, path = open_clip_ckpt[True]
    clip = make(ClipFeatures, "path", path, arch=open_clip_ckpt["arch"], quick_gelu=True,
                preprocess={**CLIP_PRE, "input_size": 48})
    maps = clip.features(images(2, 40))["clip"]
    assert maps.shape == (2, 6, 6, 16) and maps.dtype == np.float16 and np.isfinite(maps).all()
    assert json.loads(clip.columns()[0].metadata[b"shape"]) == [6, 6, 16]


def test_clip_random_init_is_seeded_and_tagged(open_clip_ckpt):
    a, b = (make(ClipFeatures, "random", arch=open_clip_ckpt["arch"], preprocess=CLIP_PRE) for _ in range(2))
    np.testing.assert_array_equal(a.features(images())["clip"], b.features(images())["clip"])
    assert a.provenance()["random"] is True and a.provenance()["weights"] == "random"
    assert all(f.metadata[b"random"] == b"true" for f in a.columns())


def test_clip_config_errors_name_their_keys(open_clip_ckpt):
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.clip\.path"):
        make(ClipFeatures, "path", "/nonexistent/clip.pt", arch=open_clip_ckpt["arch"]).load()
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.clip\.options\.quick_gelu"):
        make(ClipFeatures, "pretrained", quick_gelu=False).load()  # OpenAI weights need QuickGELU; no download tried
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.clip\.options\.arch"):
        make(ClipFeatures, "random", arch="no-such-vit").columns()
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.clip\.options"):
        make(ClipFeatures, "random", input_size=3)  # preprocessing lives under options.preprocess


def test_open_clip_weights_are_looked_up_where_open_clip_downloads_them(tmp_path, monkeypatch):
    """``fm21 weights fetch`` fills the cache through open_clip (hub repo of the tag); a
    worker then sees the file there. The hub layout is made by hand: no download."""
    monkeypatch.setenv("FM21_WEIGHTS_CACHE", str(tmp_path))
    clip = make(ClipFeatures, "pretrained")  # ViT-B-16 / openai -> timm/vit_base_patch16_clip_224.openai
    assert not clip.is_cached()
    repo = tmp_path / "open_clip" / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "open_clip_model.safetensors").write_bytes(b"x")
    assert clip.is_cached() and not make(ImageBindFeatures, "pretrained").is_cached()


def test_bad_pixels_name_the_sample(open_clip_ckpt):
    _, path = open_clip_ckpt[True]
    clip = make(ClipFeatures, "path", path, arch=open_clip_ckpt["arch"], quick_gelu=True, preprocess=CLIP_PRE)
    b = batch(2)
    b["rgb"] = [b["rgb"][0], np.zeros((S, S + 1, 3), np.uint8)]
    with pytest.raises(ValueError, match="'k1'"):
        clip(b)


# ---------------------------------------------------------------------------- ImageBind
def test_imagebind_tokens_and_global_are_open_clip_vit_tokens(open_clip_ckpt):
    model, path = open_clip_ckpt[False]
    ib = make(ImageBindFeatures, "path", path, arch=open_clip_ckpt["arch"], preprocess=CLIP_PRE)
    out = ib(batch())
    _check_outputs(ib, out, 3)
    maps = np.stack(out["imagebind"]).reshape(3, GRID, GRID, 32)
    glob = np.stack(out["imagebind_global"])
    assert glob.shape == (3, 32)
    with torch.no_grad():
        x = _pixels(ib, images())
        inter = model.visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_fmt="NLC",
                                                   intermediates_only=True)["image_intermediates"][-1]
        pooled = model.encode_image(x).numpy()  # open_clip: ln_post(class token) @ proj
    np.testing.assert_allclose(maps.astype(np.float32), inter.reshape(3, GRID, GRID, 32).numpy(), rtol=1e-2, atol=3e-3)
    np.testing.assert_allclose(glob.astype(np.float32) @ model.visual.proj.detach().numpy(), pooled, rtol=2e-2,
                               atol=5e-3)
    np.testing.assert_array_equal(ib.features(images())["imagebind"], maps)


def test_imagebind_random_init_is_seeded_and_tagged(open_clip_ckpt):
    a, b = (make(ImageBindFeatures, "random", arch=open_clip_ckpt["arch"], preprocess=CLIP_PRE) for _ in range(2))
    oa, ob = a(batch(2)), b(batch(2))
    for c in ("imagebind", "imagebind_global"):
        np.testing.assert_array_equal(np.stack(oa[c]), np.stack(ob[c]))
    assert a.provenance()["random"] is True


# ---------------------------------------------------------------------------- DINOv2
def test_dinov2_maps_and_global_are_the_final_layernorm_tokens(dinov2_dir):
    model, path = dinov2_dir
    dino = make(Dinov2Features, "path", path, hidden_size=32, patch_size=PATCH, preprocess={"input_size": INPUT})
    out = dino(batch())
    _check_outputs(dino, out, 3)
    maps = np.stack(out["dinov2"]).reshape(3, GRID, GRID, 32)
    glob = np.stack(out["dinov2_global"])
    with torch.no_grad():
        tokens = model(pixel_values=_pixels(dino, images())).last_hidden_state.numpy()  # (B, 1 + g², D)
    np.testing.assert_allclose(maps.astype(np.float32), tokens[:, 1:].reshape(3, GRID, GRID, 32), rtol=1e-2, atol=3e-3)
    np.testing.assert_allclose(glob.astype(np.float32), tokens[:, 0], rtol=1e-2, atol=3e-3)
    # "normalised" = after the final LayerNorm (identity affine at init): zero mean, unit
    # variance over channels, not unit L2 length
    g = glob.astype(np.float32)
    np.testing.assert_allclose(g.mean(axis=1), 0, atol=1e-2)
    np.testing.assert_allclose(g.std(axis=1), 1, atol=1e-2)
    np.testing.assert_array_equal(dino.features(images())["dinov2"], maps)


def test_dinov2_options_must_match_the_checkpoint(dinov2_dir):
    _, path = dinov2_dir
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.dinov2\.options\.hidden_size"):
        make(Dinov2Features, "path", path, hidden_size=64, patch_size=PATCH).load()
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.dinov2\.path"):
        make(Dinov2Features, "path", path.parent / "missing").load()


def test_dinov2_random_init_is_seeded_and_tagged():
    opts = {"hidden_size": 32, "patch_size": PATCH, "num_layers": 1, "num_heads": 2,
            "preprocess": {"input_size": INPUT}}
    a, b = make(Dinov2Features, "random", **opts), make(Dinov2Features, "random", **opts)
    oa, ob = a(batch(2)), b(batch(2))
    for c in ("dinov2", "dinov2_global"):
        np.testing.assert_array_equal(np.stack(oa[c]), np.stack(ob[c]))
    assert a.provenance()["random"] is True and all(f.metadata[b"random"] == b"true" for f in a.columns())


def test_default_columns_are_the_real_scale_grids():
    """At the defaults (no load): CLIP-B/16 14x14x512, DINOv2-B/14 16x16x768 + 768,
    ImageBind-H/14 16x16x1280 + 1280 at 224 px."""
    expected = {"clip": {"clip": [14, 14, 512]},
                "dinov2": {"dinov2": [16, 16, 768], "dinov2_global": [768]},
                "imagebind": {"imagebind": [16, 16, 1280], "imagebind_global": [1280]}}
    for name, columns in expected.items():
        cls = SPECIALISTS[name]
        assert issubclass(cls, FeatureMapSpecialist)
        spec = cls(SpecialistConfig(weights="pretrained"), image_size=64)
        assert {f.name: json.loads(f.metadata[b"shape"]) for f in spec.columns()} == columns
        assert spec.default_model_id in ("openai", "facebook/dinov2-base", "laion2b_s32b_b79k")


def test_stored_maps_decode_to_the_features_the_tokens_job_recomputes(open_clip_ckpt):
    """The job stores ``__call__``'s columns (encode_column); the tokens job decodes them
    (decode_feature_maps) or calls ``features`` on the crop: the same float16 numbers."""
    from fm21.pseudolabel.specialists.feature import decode_feature_maps
    from fm21.store.labels import encode_column

    _, path = open_clip_ckpt[False]
    ib = make(ImageBindFeatures, "path", path, arch=open_clip_ckpt["arch"], preprocess=CLIP_PRE)
    fields = {f.name: f for f in ib.columns()}
    out = ib(batch())
    stored = {c: encode_column(out[c], fields[c]) for c in fields}
    assert stored["imagebind_global"].type == fields["imagebind_global"].type and stored["imagebind"].null_count == 0
    decoded = decode_feature_maps(stored["imagebind"], fields["imagebind"])
    np.testing.assert_array_equal(np.stack(decoded), ib.features(images())["imagebind"])
