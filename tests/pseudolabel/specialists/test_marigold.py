"""Marigold normals, the ``backend: marigold`` of the normal network: a tiny random-init
``MarigoldNormalsPipeline`` of the real architecture, saved to tmp_path and loaded through the
specialist's own ``from_pretrained`` path (``weights: path``); hubs are never contacted."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fm21.config import ConfigError, SpecialistConfig
from fm21.pseudolabel.specialists import NETWORKS, specialist_class
from fm21.pseudolabel.specialists.normal_dpt import NormalDPT
from fm21.pseudolabel.specialists.normal_marigold import (
    MARIGOLD_NORMALS_V1_1, MarigoldArchitecture, NormalMarigold, random_pipeline, sample_generators, to_frame,
)
from fm21.store import labels as store

S = 24  # the run's image size; the pipeline works at 32 px (a multiple of its VAE's factor 2)
TINY = {"unet_block_out_channels": (16, 32), "unet_attention_head_dim": (2, 4), "unet_layers_per_block": 1,
        "cross_attention_dim": 16, "vae_block_out_channels": (8, 16), "vae_layers_per_block": 1,
        "norm_num_groups": 8, "text_num_hidden_layers": 1, "text_num_attention_heads": 2,
        "text_intermediate_size": 32, "text_vocab_size": 8, "text_max_position_embeddings": 8}
OPTIONS = {"backend": "marigold", "processing_resolution": 32, "num_inference_steps": 2, "architecture": TINY}


def batch(n: int = 2, seed: int = 0) -> dict:
    rgb = np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)
    return {"key": [f"k{i}" for i in range(n)], "rgb": rgb, "gt": [None] * n, "meta": [{}] * n}


def make(options: dict, weights: str = "random", **cfg):
    """The normal network as the job builds it (the registry's class, then the backend option)."""
    return specialist_class("normal", weights)(SpecialistConfig(options=options, weights=weights, **cfg), image_size=S)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random-init pipeline (seed 0, not the specialist's random seed) and its folder."""
    torch.manual_seed(0)
    pipe = random_pipeline(MarigoldArchitecture(**TINY))
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp("marigold") / "pipeline"
    pipe.save_pretrained(path)
    return pipe, path


def reference(pipe, b: dict, **options) -> np.ndarray:
    """The pipeline's own call with the specialist's per-sample generators: (B, S, S, 3), Marigold frame."""
    o = NormalMarigold.Options(**options)
    out = pipe(b["rgb"], num_inference_steps=o.num_inference_steps, processing_resolution=o.processing_resolution,
               generator=sample_generators(b["key"], seed=o.seed, ensemble_size=1), batch_size=len(b["key"]),
               output_type="np")
    return out.prediction  # (B, S, S, 3): match_input_resolution resizes back to S


# ------------------------------------------------------------------------ the option
def test_backend_option_picks_the_class():
    assert NETWORKS["normal"] is NormalDPT
    assert type(make(OPTIONS)) is NormalMarigold
    assert type(make({"backend": "dpt"})) is NormalDPT and type(make({})) is NormalDPT
    assert make({}).weights_fingerprint() == make({"backend": "dpt"}).weights_fingerprint()
    with pytest.raises(ConfigError, match=r"normal\.options\.backend.*'diffusion'.*dpt, marigold"):
        make({"backend": "diffusion"})
    with pytest.raises(ConfigError, match=r"normal\.options\.num_inference_steps"):
        make({"num_inference_steps": 4})  # a Marigold key without backend: marigold
    with pytest.raises(ConfigError, match=r"normal\.options\.preprocess"):
        make({"backend": "marigold", "preprocess": {"input_size": 32}})  # a DPT key under Marigold
    spec = make(OPTIONS, weights="pretrained")
    assert spec.model_id == MARIGOLD_NORMALS_V1_1 and spec.source == "hf" and not spec.is_cached()
    field = spec.columns()[0]
    assert field.name == "normal" and field.metadata[b"random"] == b"false"
    assert field.type == make({}, weights="pretrained").columns()[0].type  # the DPT's column, the oracle's


# ------------------------------------------------------------------------ axes
def test_marigold_axes_become_opencv_by_hand():
    """Marigold: x right, y up, z towards the viewer. OpenCV: x right, y down, z forward."""
    marigold = np.zeros((2, 3, 3), np.float32)  # a 2x3 hand-made normal map
    marigold[0, 0] = (0, 0, 1)  # a wall facing the camera
    marigold[0, 1] = (0, 1, 0)  # a floor (normal up)
    marigold[0, 2] = (1, 0, 0)  # a surface facing right
    marigold[1, 0] = (0, -2, 2)  # a ceiling tilted towards the camera, not unit length
    marigold[1, 1] = (0, 0, 0)  # no length: faces the camera
    marigold[1, 2] = (-0.6, 0, 0.8)
    want = np.array([[(0, 0, -1), (0, -1, 0), (1, 0, 0)],
                     [(0, 2 ** -0.5, -(2 ** -0.5)), (0, 0, -1), (-0.6, 0, -0.8)]], np.float32)
    np.testing.assert_allclose(to_frame(marigold, frame="opencv"), want, atol=1e-6)
    native = to_frame(marigold, frame="marigold")
    np.testing.assert_allclose(native, want * (1, -1, -1), atol=1e-6)
    np.testing.assert_allclose(native[0], marigold[0])


# ------------------------------------------------------------------------ through the pipeline
def test_path_loads_the_saved_pipeline(saved):
    pipe, path = saved
    spec = make(OPTIONS, weights="path", path=str(path))
    b = batch()
    out = spec(b)["normal"]
    assert len(out) == 2 and all(n.dtype == np.float16 and n.shape == (S * S * 3,) for n in out)
    normal = np.stack(out).astype(np.float32).reshape(2, S, S, 3)
    np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=2e-3)
    want = to_frame(reference(pipe, b, **OPTIONS), frame="opencv")  # the saved weights, not a fresh init
    np.testing.assert_allclose(normal, want, atol=2e-3)
    native = make(OPTIONS | {"frame": "marigold"}, weights="path", path=str(path))(b)["normal"]
    np.testing.assert_array_equal(np.stack(native).reshape(2, S, S, 3), normal * np.float16([1, -1, -1]))
    field = spec.columns()[0]
    decoded = store.column_to_python(store.encode_column(out, field), field)
    assert np.abs(decoded.astype(np.float32) - normal).max() <= 1 / 254 + 2**-11


def test_pretrained_reads_the_hub_cache(saved, tmp_path):
    """``weights: pretrained`` loads the default hub id from the weights cache, offline (the
    layout ``fm21 weights fetch`` leaves: ``<cache>/hf/models--prs-eth--marigold-normals-v1-1``)."""
    _, path = saved
    spec = make(OPTIONS, weights="pretrained")
    repo = tmp_path / "cache" / "hf" / f"models--{MARIGOLD_NORMALS_V1_1.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(path, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    assert spec.is_cached()
    spec.load()
    saved_unet = saved[0].unet.state_dict()
    for key, value in spec.model.unet.state_dict().items():
        assert torch.equal(saved_unet[key], value), key


def test_random_mode_is_deterministic_seeded_and_batch_independent():
    a = make(OPTIONS)(batch())["normal"]
    b = make(OPTIONS)(batch())["normal"]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other_seed = make(OPTIONS | {"seed": 1})(batch())["normal"]
    assert not np.array_equal(np.stack(a), np.stack(other_seed))  # the noise is seeded from options
    alone = batch()
    alone = {k: v[1:] for k, v in alone.items()}  # sample k1 without k0: its own noise, same label
    np.testing.assert_allclose(make(OPTIONS)(alone)["normal"][0].astype(np.float32), a[1].astype(np.float32),
                               atol=2e-3)
    spec = make(OPTIONS)
    assert spec.columns()[0].metadata[b"random"] == b"true" and spec.is_cached()


def test_ensemble_and_output_resizing():
    """Ensembles of 3 and ``match_input_resolution: false`` (the 32 px map antialiased to S here)
    still give unit vectors at S."""
    opts = OPTIONS | {"ensemble_size": 3, "match_input_resolution": False}
    normal = np.stack(make(opts)(batch())["normal"]).astype(np.float32).reshape(2, S, S, 3)
    np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=2e-3)


def test_bad_input_names_the_sample():
    b = batch()
    b["rgb"] = np.zeros((2, S + 1, S, 3), np.uint8)
    with pytest.raises(ValueError, match="'k0'"):
        make(OPTIONS)(b)


def test_processing_resolution_must_fit_the_vae():
    with pytest.raises(ConfigError, match=r"normal\.options\.processing_resolution"):
        make(OPTIONS | {"processing_resolution": 33}).load()
