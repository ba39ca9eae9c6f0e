"""Human poses: HMR2's released-checkpoint key map, person crops, SMPL outputs; YOLO-pose.

Tiny configs at random init stand in for the released weights (no network here): the
checkpoint tests save a random-init tiny HMR2 under the released names and load it back
through the real loader (``weights: path`` and ``weights: pretrained`` from the cache).
"""

from __future__ import annotations

import sys
import tarfile
import types

import numpy as np
import pytest
import torch

from fm21.config import ConfigError, SpecialistConfig
from fm21.pseudolabel.specialists import SPECIALISTS, specialist_class
from fm21.pseudolabel.specialists.hmr2_model import (
    ARCHS, CHECKPOINT_MEMBER, HMR2, KEY_MAP, fm21_to_released, load_released_state_dict, released_to_fm21,
)
from fm21.pseudolabel.specialists.human_pose import HMR2_URL, person_crops
from fm21.pseudolabel.specialists.weights import Preprocess
from fm21.store import labels as store

S = 32
TINY = {"size": "tiny", "preprocess": {"input_size": 32}}


def make(weights="random", *, options=None, **cfg):
    return specialist_class("human_pose", weights)(
        SpecialistConfig(weights=weights, options={**TINY, **(options or {})}, **cfg), image_size=S)


def released_state_dict(model: HMR2) -> dict[str, torch.Tensor]:
    """A checkpoint ``state_dict`` under the released names, plus training-only entries."""
    sd = {fm21_to_released(k): v.clone() for k, v in model.state_dict().items()}
    sd["discriminator.D_conv1.weight"] = torch.zeros(32, 9, 1, 1)
    sd["smpl.v_template"] = torch.zeros(6890, 3)
    sd["initialized"] = torch.tensor(True)
    return sd


def batch(dets: list[list[dict]]) -> dict:
    rng = np.random.default_rng(0)
    n = len(dets)
    return {"key": [f"s{i}" for i in range(n)], "rgb": rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8),
            "meta": [{}] * n, "gt": [None] * n, "det": dets}


PERSON = {"box": [0.2, 0.1, 0.5, 0.9], "class_name": "person", "score": 0.9}


# ------------------------------------------------------------------------ key map
def test_key_map_is_a_bijection_over_the_architecture():
    own = HMR2(ARCHS["tiny"]).state_dict()
    released = [fm21_to_released(k) for k in own]
    assert None not in released and len(set(released)) == len(own)
    assert all(released_to_fm21(r) == k for r, k in zip(released, own))
    assert {r.split(".")[0] for r in released} == {"backbone", "smpl_head"}
    assert len(KEY_MAP) == 27


def test_released_checkpoint_round_trips_through_the_path_loader(tmp_path):
    torch.manual_seed(1)
    src = HMR2(ARCHS["tiny"])
    # the Lightning layout, with hyper-parameters of a class this environment cannot import
    fake = types.ModuleType("fm21_test_absent_yacs")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = fake.__name__, "CfgNode"
    fake.CfgNode = CfgNode
    sys.modules[fake.__name__] = fake
    path = tmp_path / "epoch=35-step=1000000.ckpt"
    torch.save({"state_dict": released_state_dict(src), "hyper_parameters": {"cfg": CfgNode(MODEL={"x": 1})}}, path)
    del sys.modules[fake.__name__]

    spec = make("path", path=str(path))
    spec.load()
    loaded = spec.model.state_dict()
    for key, value in src.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_unknown_missing_or_misshapen_keys_are_errors():
    model = HMR2(ARCHS["tiny"])
    sd = released_state_dict(model)
    with pytest.raises(KeyError, match=r"backbone\.mystery"):
        load_released_state_dict(model, {**sd, "backbone.mystery": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"backbone\.blocks\.9\.norm1\.weight"):  # a block tiny doesn't have
        load_released_state_dict(model, {**sd, "backbone.blocks.9.norm1.weight": torch.zeros(32)})
    missing = dict(sd)
    del missing["smpl_head.deccam.bias"]
    with pytest.raises(KeyError, match=r"head\.cam_out\.bias"):
        load_released_state_dict(model, missing)
    with pytest.raises(ValueError, match=r"backbone\.pos_embed"):
        load_released_state_dict(model, {**sd, "backbone.pos_embed": torch.zeros(1, 5, 32)})


def test_pretrained_reads_the_release_tarball_from_the_cache(tmp_path):
    torch.manual_seed(2)
    src = HMR2(ARCHS["tiny"])
    ckpt = tmp_path / "ckpt"
    torch.save({"state_dict": released_state_dict(src)}, ckpt)
    spec = make("pretrained")
    assert spec.model_id == HMR2_URL and not spec.is_cached()
    tarball = tmp_path / "cache" / "url" / "hmr2_data.tar.gz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(ckpt, arcname=CHECKPOINT_MEMBER)
    assert spec.is_cached()
    spec.load()  # no download: the tarball is in the cache
    assert torch.equal(spec.model.state_dict()["head.init_cam"], src.state_dict()["head.init_cam"])


# ------------------------------------------------------------------------ crops and outputs
def test_person_crop_follows_hmr2_geometry():
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[8:24, 8:16] = 255  # a white person, 8 wide and 16 tall (x 8..16, y 8..24)
    pre = Preprocess(input_size=32, mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear")
    crop = person_crops(rgb, np.array([[8, 8, 16, 24]]) / S, pre)[0]  # (3, 32, 24)
    assert crop.shape == (3, 32, 24)
    # the box is grown to a 16x16 square (x 4..20), 2 crop px per image px; 4 columns cut per side
    white = crop[0].mean(0) > 0.5  # per crop column
    assert white.nonzero().flatten().tolist() == list(range(4, 20))
    column = crop[0, :, 10]  # rows span exactly the person's height (bilinear: edge rows half-blend)
    assert column[1:-1].min() > 0.99 and column[0] == pytest.approx(0.75) and column[-1] == pytest.approx(0.75)


def test_outputs_for_persons_and_for_none():
    spec = make()
    spec.load()
    dets = [
        [PERSON, {"box": [0.6, 0.6, 0.9, 0.9], "class_name": "car", "score": 0.99},
         {**PERSON, "score": 0.2}],  # below min_score
        [],
    ]
    out = spec(batch(dets))["human_poses"]
    assert len(out) == 2 and len(out[0]) == 1 and out[1] == []
    person = out[0][0]
    assert person["box"] == pytest.approx(PERSON["box"]) and person["score"] == pytest.approx(0.9)
    assert len(person["betas"]) == 10 and len(person["cam"]) == 3 and person["keypoints"] is None
    rot = np.array([person["global_orient"], *np.reshape(person["body_pose"], (23, 9))]).reshape(24, 3, 3)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (24, 3, 3)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    field = spec.columns()[0]
    arr = store.encode_column(out, field)  # what the job stores
    assert arr.type == field.type and field.metadata[b"random"] == b"true"
    assert spec(batch([[], []]))["human_poses"] == [[], []]
    bad = batch([[PERSON]])
    bad["rgb"] = bad["rgb"][:, :16]
    with pytest.raises(ValueError, match="'s0'"):
        spec(bad)


def test_registration_and_options():
    assert SPECIALISTS["human_pose"].requires == ("det",)
    with pytest.raises(ConfigError, match=r"human_pose\.options\.bakend"):
        make(options={"bakend": "hmr2"})
    with pytest.raises(ConfigError, match=r"human_pose\.weights"):
        SPECIALISTS["human_pose"](SpecialistConfig(), image_size=S)  # weights: none has no network


# ------------------------------------------------------------------------ YOLO-pose
def test_yolo_pose_from_a_saved_random_checkpoint(tmp_path, monkeypatch):
    import ultralytics.utils.downloads as downloads
    from ultralytics import YOLO

    def no_download(*args, **kwargs):
        raise AssertionError(f"ultralytics tried to download: {args} {kwargs}")

    monkeypatch.setattr(downloads, "safe_download", no_download)
    torch.manual_seed(0)
    path = tmp_path / "yolo-pose-random.pt"
    YOLO("yolo11n-pose.yaml", task="pose").save(path)
    spec = make("path", path=str(path), options={"backend": "yolo_pose", "min_score": 0.0, "yolo_imgsz": 32})
    out = spec(batch([[], []]))["human_poses"]  # YOLO-pose finds its own persons
    assert len(out) == 2 and len(out[0]) > 0  # min_score 0 keeps random-init candidates
    for person in out[0]:
        assert len(person["keypoints"]) == 51 and person["global_orient"] is None and person["betas"] is None
        assert 0.0 <= min(person["box"]) and max(person["box"]) <= 1.0
    arr = store.encode_column(out, spec.columns()[0])
    assert arr.type == spec.columns()[0].type
    assert not (tmp_path / "cache").exists()  # nothing fetched into the weights cache
    random = make(options={"backend": "yolo_pose"})
    random.load()  # from ultralytics' bundled yaml
    assert random.model.task == "pose" and random.is_random
