"""Dense-prediction network specialists: DPT depth, DPT normals (Omnidata port), Mask2Former
semseg. Every network is a tiny random-init model of the real architecture, saved to tmp_path
and loaded through the specialist's own loading code (``weights: path``); hubs are never
contacted."""

from __future__ import annotations

from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch

from fm21.config import ConfigError, SpecialistConfig
from fm21.pseudolabel.specialists import NETWORKS, SPECIALISTS, specialist_class
from fm21.pseudolabel.specialists.depth_dpt import DepthDPT
from fm21.pseudolabel.specialists.dpt import (
    OMNIDATA_UNUSED, DPTArchitecture, dense_dpt_class, dpt_config, load_omnidata, omnidata_key_map,
)
from fm21.pseudolabel.specialists.normal_dpt import NormalDPT
from fm21.pseudolabel.specialists.semseg_mask2former import (
    Mask2FormerArchitecture, SemsegMask2Former, mask2former_class, mask2former_config, panoptic_maps,
)
from fm21.store import labels as store

S = 24  # the run's image size (the networks take 32 px: outputs are resized)
R = 32
TINY_HYBRID = {"hybrid": True, "image_size": R, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "intermediate_size": 64, "backbone_out_indices": (0, 1, 0, 1), "neck_hidden_sizes": (16, 32, 32, 32),
               "fusion_hidden_size": 16, "bit_depths": (1, 2, 1), "bit_hidden_sizes": (16, 32, 64),
               "bit_embedding_size": 8, "bit_num_groups": 4}
TINY_VIT = {"hybrid": False, "image_size": R, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
            "intermediate_size": 64, "backbone_out_indices": (0, 1, 2, 3), "neck_hidden_sizes": (8, 16, 32, 32),
            "reassemble_factors": (4, 2, 1, 0.5), "fusion_hidden_size": 16}
ARCHS = {"hybrid": TINY_HYBRID, "vit": TINY_VIT}
TINY_M2F = {"swin_embed_dim": 16, "swin_depths": (1, 1, 1, 1), "swin_num_heads": (1, 1, 2, 2), "swin_window_size": 4,
            "feature_size": 32, "mask_feature_size": 32, "hidden_dim": 32, "encoder_layers": 1,
            "encoder_feedforward_dim": 32, "decoder_layers": 2, "dim_feedforward": 32, "num_attention_heads": 2,
            "num_queries": 8, "num_labels": 5}
DPT_PRE = {"input_size": R, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
M2F_OPTIONS = {"architecture": TINY_M2F, "preprocess": {"input_size": 64}, "num_thing_classes": 5, "threshold": 0.0,
               "mask_threshold": 0.0, "overlap_mask_area_threshold": 0.0}  # keep every query: random init


def batch(n: int = 2, size: int = S, seed: int = 0) -> dict:
    rgb = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return {"key": [f"k{i}" for i in range(n)], "rgb": rgb, "gt": [None] * n, "meta": [{}] * n}


def random_dpt(arch: dict, channels: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    return dense_dpt_class()(dpt_config(DPTArchitecture(**arch), num_output_channels=channels)).eval()


def make(cls, options: dict, **cfg):
    return cls(SpecialistConfig(options=options, **cfg), image_size=S)


def reference(model, options, rgb: np.ndarray) -> np.ndarray:
    """The saved model's own forward on the specialist's preprocessing, resized to S: (B, C, S, S)."""
    x = options.preprocess(rgb)
    with torch.no_grad():
        out = model(pixel_values=x).predicted_depth
    out = out[:, None] if out.ndim == 3 else out
    return torch.nn.functional.interpolate(out, size=(S, S), mode="bilinear", align_corners=False,
                                           antialias=True).numpy()


def omnidata_checkpoint(model) -> dict:
    """An Omnidata-format state dict made from ``model`` by inverting the key map (qkv: the
    three targets concatenated), plus timm's unused classifier: a Lightning checkpoint."""
    sd = model.state_dict()
    out = {src: torch.cat([sd[d] for d in dsts]) if len(dsts) > 1 else sd[dsts[0]].clone()
           for src, dsts in omnidata_key_map(model.config).items()}
    out |= {OMNIDATA_UNUSED[0]: torch.zeros(1000, model.config.hidden_size), OMNIDATA_UNUSED[1]: torch.zeros(1000)}
    return {"state_dict": {f"model.{k}": v for k, v in out.items()}, "epoch": 3}


# ------------------------------------------------------------------------ registry and columns
def test_networks_are_registered_behind_the_oracles():
    for name, cls in [("depth", DepthDPT), ("normal", NormalDPT), ("semseg", SemsegMask2Former)]:
        assert NETWORKS[name] is cls and cls.name == name
        assert specialist_class(name, "none") is SPECIALISTS[name]
        for mode in ("pretrained", "path", "random"):
            assert specialist_class(name, mode) is cls


@pytest.mark.parametrize("name", ["depth", "normal", "semseg"])
def test_columns_match_the_oracle(name):
    net = NETWORKS[name](SpecialistConfig(weights="random"), image_size=S)
    oracle = SPECIALISTS[name](SpecialistConfig(), image_size=S)
    for mine, theirs in zip(net.columns(), oracle.columns(), strict=True):
        assert mine.name == theirs.name and mine.type == theirs.type
        for key in (b"shape", b"dtype", b"encoding"):
            assert mine.metadata[key] == theirs.metadata[key]
        assert mine.metadata[b"random"] == b"true" and mine.metadata[b"oracle"] == b"false"
    assert net.provenance()["random"] is True


# ------------------------------------------------------------------------ depth
@pytest.mark.parametrize("kind", ["hybrid", "vit"])
def test_depth_from_a_saved_folder(tmp_path, kind):
    model = random_dpt(ARCHS[kind])
    model.save_pretrained(tmp_path / "dpt")
    spec = make(DepthDPT, {"preprocess": DPT_PRE}, weights="path", path=str(tmp_path / "dpt"))
    b = batch()
    out = spec(b)["depth"]
    assert len(out) == 2 and all(d.dtype == np.float16 and d.shape == (S * S,) for d in out)
    depth = np.stack(out).astype(np.float32).reshape(2, S, S)
    assert np.isfinite(depth).all() and depth.min() >= 0  # the head ends in a ReLU
    want = reference(model, spec.options, b["rgb"])[:, 0]
    np.testing.assert_allclose(depth, want, rtol=2e-3, atol=1e-4)  # the saved weights, not a fresh init
    field = spec.columns()[0]
    assert field.metadata[b"depth_semantics"] == b"relative"  # the default: Omnidata, larger is farther
    decoded = store.column_to_python(store.encode_column(out, field), field)
    np.testing.assert_array_equal(decoded, np.stack(out).reshape(2, S, S))  # lossless


def test_depth_random_mode_is_deterministic_and_tagged():
    opts = {"preprocess": DPT_PRE, "architecture": TINY_HYBRID}
    a = make(DepthDPT, opts, weights="random")(batch())["depth"]
    b = make(DepthDPT, opts, weights="random")(batch())["depth"]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert make(DepthDPT, opts, weights="random").columns()[0].metadata[b"random"] == b"true"


def test_hybrid_rejects_another_input_size():
    spec = make(DepthDPT, {"preprocess": {**DPT_PRE, "input_size": 48}, "architecture": TINY_HYBRID},
                weights="random")
    with pytest.raises(ConfigError, match=r"depth\.options\.preprocess\.input_size"):
        spec.load()


@pytest.mark.parametrize("name", ["depth", "normal", "semseg"])
def test_bad_input_names_the_sample(name):
    options = M2F_OPTIONS if name == "semseg" else {"preprocess": DPT_PRE, "architecture": TINY_VIT}
    spec = make(NETWORKS[name], options, weights="random")
    b = batch()
    b["rgb"] = np.zeros((2, S + 1, S, 3), np.uint8)
    with pytest.raises(ValueError, match="'k0'"):
        spec(b)


# ------------------------------------------------------------------------ Omnidata key map
@pytest.mark.parametrize("kind", ["hybrid", "vit"])
def test_omnidata_key_map_covers_every_tensor_once(kind):
    model = random_dpt(ARCHS[kind])
    key_map = omnidata_key_map(model.config)
    targets = Counter(t for dsts in key_map.values() for t in dsts)
    assert set(targets) == set(model.state_dict()) and max(targets.values()) == 1
    fresh = random_dpt(ARCHS[kind], seed=1)
    load_omnidata(fresh, {k.removeprefix("model."): v for k, v in omnidata_checkpoint(model)["state_dict"].items()})
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_omnidata_names_are_timm_hybrid_names():
    """The ``pretrained.model.*`` names and shapes are those of timm's hybrid ViT (the
    ``vit_base_resnet50_384`` family Omnidata builds), made tiny."""
    timm = pytest.importorskip("timm")
    from timm.layers import GroupNormAct, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import HybridEmbed

    assert timm.__version__
    stem = ResNetV2(layers=(1, 2, 1), channels=(16, 32, 64), stem_chs=8, num_classes=0, global_pool="",
                    preact=False, stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8),
                    norm_layer=partial(GroupNormAct, num_groups=4))
    vit = VisionTransformer(img_size=R, patch_size=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                            embed_layer=partial(HybridEmbed, backbone=stem), num_classes=1000)
    timm_sd = {f"pretrained.model.{k}": v for k, v in vit.state_dict().items()}
    model = random_dpt(TINY_HYBRID)
    key_map = {k: v for k, v in omnidata_key_map(model.config).items() if k.startswith("pretrained.model.")}
    assert set(timm_sd) - set(OMNIDATA_UNUSED) == set(key_map)
    target = model.state_dict()
    for src, dsts in key_map.items():
        assert timm_sd[src].shape[0] == sum(target[d].shape[0] for d in dsts), src
        assert timm_sd[src].shape[1:] == target[dsts[0]].shape[1:], src


def test_omnidata_mismatch_names_the_keys():
    model = random_dpt(TINY_HYBRID)
    sd = {k.removeprefix("model."): v for k, v in omnidata_checkpoint(model)["state_dict"].items()}
    with pytest.raises(ValueError, match=r"scratch\.bogus\.weight"):
        load_omnidata(random_dpt(TINY_HYBRID), sd | {"scratch.bogus.weight": torch.zeros(1)})
    missing = dict(sd)
    del missing["scratch.refinenet2.out_conv.bias"]
    with pytest.raises(ValueError, match=r"scratch\.refinenet2\.out_conv\.bias"):
        load_omnidata(random_dpt(TINY_HYBRID), missing)
    wrong = sd | {"scratch.layer1_rn.weight": torch.zeros(3, 3, 3, 3)}
    with pytest.raises(AssertionError, match=r"scratch\.layer1_rn\.weight"):
        load_omnidata(random_dpt(TINY_HYBRID), wrong)


def test_depth_from_an_omnidata_checkpoint(tmp_path):
    model = random_dpt(TINY_HYBRID)
    torch.save(omnidata_checkpoint(model), tmp_path / "omnidata_dpt_depth_v2.ckpt")
    opts = {"preprocess": DPT_PRE, "architecture": TINY_HYBRID, "depth_semantics": "relative"}
    spec = make(DepthDPT, opts, weights="path", path=str(tmp_path / "omnidata_dpt_depth_v2.ckpt"))
    b = batch()
    depth = np.stack(spec(b)["depth"]).astype(np.float32).reshape(2, S, S)
    np.testing.assert_allclose(depth, reference(model, spec.options, b["rgb"])[:, 0], rtol=2e-3, atol=1e-4)
    assert spec.columns()[0].metadata[b"depth_semantics"] == b"relative"


# ------------------------------------------------------------------------ normals
@pytest.mark.parametrize("fmt", ["ckpt", "folder"])
def test_normals_are_unit_vectors(tmp_path, fmt):
    model = random_dpt(TINY_HYBRID, channels=3)
    if fmt == "ckpt":
        path = tmp_path / "omnidata_dpt_normal_v2.ckpt"
        torch.save(omnidata_checkpoint(model), path)
    else:
        path = tmp_path / "normal"
        model.save_pretrained(path)
    opts = {"preprocess": DPT_PRE, "architecture": TINY_HYBRID}
    spec = make(NormalDPT, opts, weights="path", path=str(path))
    b = batch()
    out = spec(b)["normal"]
    assert all(n.dtype == np.float16 and n.shape == (S * S * 3,) for n in out)
    normal = np.stack(out).astype(np.float32).reshape(2, S, S, 3)
    np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=2e-3)
    # opencv frame = Omnidata's (2x - 1) negated, renormalised
    omni = 2 * np.clip(reference(model, spec.options, b["rgb"]), 0, 1).transpose(0, 2, 3, 1) - 1
    cos = (-omni * normal).sum(-1) / np.maximum(np.linalg.norm(omni, axis=-1), 1e-6)
    assert np.mean(cos > 0.999) > 0.99
    flipped = make(NormalDPT, opts | {"frame": "omnidata"}, weights="path", path=str(path))(b)["normal"]
    np.testing.assert_array_equal(np.stack(flipped), -np.stack(out))
    field = spec.columns()[0]
    decoded = store.column_to_python(store.encode_column(out, field), field)
    assert np.abs(decoded.astype(np.float32) - normal).max() <= 1 / 254 + 2**-11


def test_normal_pretrained_reads_the_cached_omnidata_file(tmp_path):
    """``weights: pretrained`` with the default URL: the file already in the weights cache is
    loaded without a download (what ``fm21 weights fetch`` leaves behind)."""
    model = random_dpt(TINY_HYBRID, channels=3)
    cached = tmp_path / "cache" / "url" / "omnidata_dpt_normal_v2.ckpt"
    opts = {"preprocess": DPT_PRE, "architecture": TINY_HYBRID}
    spec = make(NormalDPT, opts, weights="pretrained")
    assert spec.model_id.endswith("/omnidata_dpt_normal_v2.ckpt") and not spec.is_cached()
    cached.parent.mkdir(parents=True)
    torch.save(omnidata_checkpoint(model), cached)
    assert spec.is_cached()
    spec.load()
    for key, value in model.state_dict().items():
        assert torch.equal(spec.model.state_dict()[key], value), key


# ------------------------------------------------------------------------ semseg
def test_semseg_from_a_saved_folder(tmp_path):
    torch.manual_seed(0)  # preprocessing is in the options: the folder holds the model only
    model = mask2former_class()(mask2former_config(Mask2FormerArchitecture(**TINY_M2F)))
    model.save_pretrained(tmp_path / "m2f")
    b = batch(seed=3)
    results = {}
    for mode in ("panoptic", "semantic"):
        spec = make(SemsegMask2Former, M2F_OPTIONS | {"semseg_from": mode}, weights="path", path=str(tmp_path / "m2f"))
        results[mode] = out = spec(b)
        for column in ("semseg", "instance"):
            assert all(m.dtype == np.uint8 and m.shape == (S * S,) for m in out[column])
        semseg, instance = np.stack(out["semseg"]), np.stack(out["instance"])
        assert semseg.max() <= TINY_M2F["num_labels"] and instance.max() <= 255
        for column, field in zip(("semseg", "instance"), spec.columns()):
            assert store.encode_column(out[column], field).null_count == 0
    pan, sem = results["panoptic"], results["semantic"]
    semseg, instance = np.stack(pan["semseg"]), np.stack(pan["instance"])
    assert semseg.max() >= 1 and instance.max() >= 1  # threshold 0: segments are found
    # every class is a thing here: an instance exactly where a class is
    np.testing.assert_array_equal(instance > 0, semseg > 0)
    stuff = make(SemsegMask2Former, M2F_OPTIONS | {"num_thing_classes": 0}, weights="path",
                 path=str(tmp_path / "m2f"))(b)
    np.testing.assert_array_equal(np.stack(stuff["semseg"]), semseg)  # same segments ...
    assert not np.stack(stuff["instance"]).any()  # ... but stuff has no instances
    assert (np.stack(sem["semseg"]) >= 1).all()  # argmax labels every pixel
    np.testing.assert_array_equal(np.stack(sem["instance"]), instance)


def test_panoptic_maps_by_hand():
    seg = torch.tensor([[0, 1, 1], [2, 2, 3], [4, 4, 3]], dtype=torch.int32)
    infos = [{"id": 1, "label_id": 0}, {"id": 2, "label_id": 90}, {"id": 3, "label_id": 0},
             {"id": 4, "label_id": 79}]
    classes, instance = panoptic_maps({"segmentation": seg, "segments_info": infos}, num_thing_classes=80)
    np.testing.assert_array_equal(classes, [[0, 1, 1], [91, 91, 1], [80, 80, 1]])
    np.testing.assert_array_equal(instance, [[0, 1, 1], [0, 0, 2], [3, 3, 2]])
    empty = panoptic_maps({"segmentation": torch.full((2, 2), -1.0), "segments_info": []}, num_thing_classes=80)
    assert all(m.dtype == np.uint8 and not m.any() for m in empty)


def test_semseg_random_mode_is_deterministic():
    a = make(SemsegMask2Former, M2F_OPTIONS, weights="random")(batch())
    b = make(SemsegMask2Former, M2F_OPTIONS, weights="random")(batch())
    for column in ("semseg", "instance"):
        assert all(np.array_equal(x, y) for x, y in zip(a[column], b[column]))
