"""human_poses and sam_instance serialisations: exact formats, crops/flips, round trips
through the WordPiece tokenizer, the SERIALIZERS entries and the corpus markers."""

from __future__ import annotations

import numpy as np
import pytest

from fm21.tokenize.crops import Crop, apply_crop
from fm21.tokenize.instances import box_crops, crop_instances, decode_rle
from fm21.tokenize.sequences import MASK_ENCODER, POSE_ENCODER, SERIALIZERS, corpus_of, serialize
from fm21.tokenize.serialize_instances import (
    BODY_MIRROR,
    HUMAN_POSE_WORDS,
    SAM_INSTANCE_WORDS,
    mirror_body_pose,
    mirror_rotations,
    parse_human_poses,
    parse_sam_instance,
    pose_inputs,
    serialize_human_poses,
    serialize_sam_instance,
)
from fm21.tokenize.text import TextTokenizer, train_text_tokenizer

S = 48
FULL = Crop(0, 0, S, S, False)


def _rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major, zeros first), as the sam specialist writes it."""
    flat = mask.T.ravel()
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _human(rng: np.random.Generator, box=None) -> dict:
    if box is None:
        x0, y0 = rng.uniform(0, 0.6, 2)
        box = [x0, y0, x0 + rng.uniform(0.1, 0.4), y0 + rng.uniform(0.1, 0.4)]
    return {
        "box": box, "score": 0.9,
        "global_orient": _rotation(rng).ravel().tolist(),
        "body_pose": np.stack([_rotation(rng) for _ in range(23)]).ravel().tolist(),
        "betas": rng.uniform(-2.9, 2.9, 10).tolist(),
        "cam": [rng.uniform(0.5, 1.5), rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)],
        "keypoints": None,
    }


def _scene(rng: np.random.Generator, n: int = 5) -> list[dict]:
    """Overlapping random ellipses as stored SAM instances (RLE at S x S)."""
    yy, xx = np.mgrid[:S, :S]
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(8, S - 8, 2)
        ax, ay = rng.uniform(4, 16, 2)
        mask = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
        out.append({"rle": _rle(mask), "box": [0, 0, 1, 1], "score": 0.9, "stability_score": 0.9,
                    "area": int(mask.sum())})
    return out


@pytest.fixture(scope="module")
def text_tok() -> TextTokenizer:
    corpus = corpus_of([{"caption": "a red cube on the grass", "human_poses": [], "sam_instances": None}] * 5,
                       ["caption", "human_poses", "sam_instance"], size=S, seed=0)
    return train_text_tokenizer(corpus, vocab_size=4400)


def _through(tok: TextTokenizer, text: str) -> str:
    return tok.decode(tok.encode(text))


# --------------------------------------------------------------------------- human poses
def test_human_poses_round_trip_within_half_a_bin(text_tok: TextTokenizer) -> None:
    rng = np.random.default_rng(0)
    humans = [_human(rng) for _ in range(4)]
    ids = rng.integers(0, 1024, (4, 8))
    text = serialize_human_poses(humans, ids, crop=FULL, size=S, rng=np.random.default_rng(1))
    tokens = text_tok.encode(text)
    assert len(tokens) == 39 * 4 and text_tok.unk_id not in tokens  # 1 + 4 + 9 + 10 + 4 + 11
    parsed = parse_human_poses(_through(text_tok, text))
    assert len(parsed) == 4
    for h, p, i in zip(humans, parsed, ids):
        assert p["pose_ids"] == i.tolist()
        assert np.abs(np.subtract(p["box"], h["box"])).max() <= 0.5 / 999 + 1e-9
        assert np.abs(np.subtract(p["global_orient"], h["global_orient"])).max() <= 0.5 / 499.5 + 1e-9
        assert np.abs(np.subtract(p["betas"], h["betas"])).max() <= 0.5 / 166.5 + 1e-9
        assert np.abs(np.subtract(p["cam"], h["cam"])).max() <= 0.5 / 49.95 + 1e-9
    # the four groups come in a seeded random order, the human and its box first
    orders = {tuple(w for w in serialize_human_poses(humans[:1], ids[:1], crop=FULL, size=S,
                                                     rng=np.random.default_rng(s)).split() if not w.startswith("v"))
              for s in range(12)}
    assert len(orders) > 1 and all(o[0] == "human" and sorted(o[1:]) == sorted(HUMAN_POSE_WORDS[1:5]) for o in orders)


def test_human_poses_exact_format_and_clipping() -> None:
    human = {"box": [0.0, 0.5, 0.25, 1.0], "global_orient": np.eye(3).ravel().tolist(),
             "body_pose": [0.0] * 207, "betas": [3.5, -3.5, 0, 0, 0, 0, 0, 0, 0, 1.0], "cam": [25.0, -2.0, 0.0]}
    text = serialize_human_poses([human], np.array([[0, 511, 512, 1023, 1, 2, 3, 600]]), crop=FULL, size=S,
                                 rng=np.random.default_rng(0))
    groups = {g.split()[0]: g for g in ("pose v0=0 v0=511 v1=0 v1=511 v0=1 v0=2 v0=3 v1=88",
                                        "global v0=999 v0=500 v0=500 v0=500 v0=999 v0=500 v0=500 v0=500 v0=999",
                                        "shape v0=999 v0=0 " + "v0=500 " * 7 + "v0=666",
                                        "camera v0=999 v0=0 v0=50")}  # betas clip to +-3, camera to [-1, 19]
    words = text.split()
    assert words[:5] == ["human", "v0=0", "v1=500", "v2=250", "v3=999"]
    order = [w for w in words[5:] if not w.startswith("v")]
    assert " ".join(words[5:]) == " ".join(groups[g] for g in order)
    assert serialize_human_poses([], np.zeros((0, 8)), crop=FULL, size=S, rng=np.random.default_rng(0)) == "none"


def test_human_poses_crop_drop_and_flip() -> None:
    rng = np.random.default_rng(2)
    inside, outside = _human(rng, [0.5, 0.5, 0.9, 0.9]), _human(rng, [0.0, 0.0, 0.2, 0.2])
    crop = Crop(top=S // 2, left=S // 4, height=S // 2, width=S // 2, hflip=True)  # window x 12..36, y 24..48
    ids = np.arange(16).reshape(2, 8)
    parsed = parse_human_poses(serialize_human_poses([outside, inside], ids, crop=crop, size=S, rng=rng))
    assert len(parsed) == 1 and parsed[0]["pose_ids"] == ids[1].tolist()
    # x: (0.5*48 - 12) / 24 = 0.5 .. clipped to 1, then mirrored; y: 0 .. (0.9*48 - 24) / 24 = 0.8
    np.testing.assert_allclose(parsed[0]["box"], [0.0, 0.0, 0.5, 0.8], atol=1 / 999)
    want = mirror_rotations(np.reshape(inside["global_orient"], (3, 3))).ravel()
    np.testing.assert_allclose(parsed[0]["global_orient"], want, atol=1 / 999)
    assert parsed[0]["cam"][1] == pytest.approx(-inside["cam"][1], abs=0.02)
    assert serialize_human_poses([outside], ids[:1], crop=crop, size=S, rng=rng) == "none"
    # the pose tokenizer sees the mirrored body on a flipped crop; mirroring twice is the identity
    poses = pose_inputs([inside], crop)
    np.testing.assert_allclose(mirror_body_pose(poses), pose_inputs([inside], FULL), atol=1e-6)
    mirrored = poses.reshape(23, 3, 3)
    assert BODY_MIRROR[0] == 1 and BODY_MIRROR[15] == 16  # L_hip <-> R_hip, L_shoulder <-> R_shoulder
    np.testing.assert_allclose(mirrored[0], mirror_rotations(np.reshape(inside["body_pose"], (23, 3, 3))[1]),
                               atol=1e-6)


# --------------------------------------------------------------------------- SAM instances
def test_sam_instance_round_trip_exact(text_tok: TextTokenizer) -> None:
    rng = np.random.default_rng(3)
    masks, boxes = crop_instances(_scene(rng, 6), FULL, size=S)
    ids = rng.integers(0, 1024, (len(masks), 16))
    text = serialize_sam_instance(masks, boxes, ids, rng=np.random.default_rng(4), num_points=12)
    tokens = text_tok.encode(text)
    assert text_tok.unk_id not in tokens
    parsed = parse_sam_instance(_through(text_tok, text))
    hits = sum(len(p["instances"]) for p in parsed)
    empty = sum(not p["instances"] for p in parsed)
    assert len(tokens) == 3 * len(parsed) + empty + 21 * hits
    assert 0 < hits and 0 < len(parsed) <= 12
    for p in parsed:
        x, y = p["point"]
        inside = set(np.flatnonzero(masks[:, y, x]).tolist())
        got = {tuple(inst["box"]): inst["mask_ids"] for inst in p["instances"]}
        assert set(got) == {tuple(boxes[k].tolist()) for k in inside}
        for k in inside:
            assert got[tuple(boxes[k].tolist())] == ids[k].tolist()
            x0, y0, x1, y1 = boxes[k]
            assert x0 <= x <= x1 and y0 <= y <= y1
    assert "point v0=" in text and text.split()[0] == "point"
    # no instance at all: every point reads "none"
    none = serialize_sam_instance(np.zeros((0, S, S), bool), np.zeros((0, 4)), np.zeros((0, 16)),
                                  rng=np.random.default_rng(0))
    assert set(none.split()[3::4]) == {"none"} and none.count("point") == len(parse_sam_instance(none))


def test_sam_instance_format_of_one_instance() -> None:
    mask = np.zeros((1, S, S), bool)
    mask[0, 10:20, 5:30] = True
    ids = np.array([list(range(8)) + [512, 1023, 0, 0, 0, 0, 0, 7]])
    for seed in range(20):  # some seed draws a point inside the box
        text = serialize_sam_instance(mask, np.array([[5, 10, 29, 19]]), ids, rng=np.random.default_rng(seed))
        if "polygon" in text:
            break
    part = text[text.index("polygon"):].split(" point")[0]
    assert part == ("polygon v0=5 v1=10 v2=29 v3=19 v0=0 v0=1 v0=2 v0=3 v0=4 v0=5 v0=6 v0=7 "
                    "v1=0 v1=511 v0=0 v0=0 v0=0 v0=0 v0=0 v0=7")
    y, x = (int(v.split("=")[1]) for v in text[:text.index(" polygon")].split()[-2:])
    assert mask[0, y, x]  # the point right before it (v0 = y, v1 = x) lies in the mask


def test_crop_instances_follow_the_crop_and_flip() -> None:
    rng = np.random.default_rng(5)
    scene = _scene(rng, 4)
    crop = Crop(top=6, left=10, height=30, width=36, hflip=True)
    masks, boxes = crop_instances(scene, crop, size=S)
    want = [apply_crop(crop_instances([inst], FULL, size=S)[0][0].astype(np.uint8), crop, kind="classes",
                       out_size=S).astype(bool) for inst in scene]
    want = [m for m in want if m.any()]
    assert len(masks) == len(boxes) <= len(want)
    for m, b in zip(masks, boxes):
        ys, xs = np.nonzero(m)
        assert list(b) == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert any((m == w).all() for w in want)
    assert box_crops(masks, boxes).shape == (len(masks), 64, 64)


# --------------------------------------------------------------------------- stage entries
def test_serializers_registered_and_read_the_row() -> None:
    assert {"human_poses", "sam_instance"} <= set(SERIALIZERS)
    rng = np.random.default_rng(6)
    seen: dict[str, np.ndarray] = {}

    def encode_pose(x: np.ndarray) -> np.ndarray:
        seen["pose"] = x
        return np.arange(len(x) * 8).reshape(len(x), 8)

    def encode_masks(x: np.ndarray) -> np.ndarray:
        seen["masks"] = x
        return np.full((len(x), 16), 700)

    humans = [_human(rng), _human(rng)]
    crop = Crop(0, 0, S, S, True)
    row = {"human_poses": humans, "sam_instances": _scene(rng, 3), POSE_ENCODER: encode_pose,
           MASK_ENCODER: encode_masks}
    text = serialize("human_poses", row, crop, size=S, rng=np.random.default_rng(0))
    assert seen["pose"].shape == (2, 207)
    np.testing.assert_allclose(seen["pose"], pose_inputs(humans, crop))  # mirrored: the crop is flipped
    assert [p["pose_ids"] for p in parse_human_poses(text)] == [list(range(8)), list(range(8, 16))]
    text = serialize("sam_instance", row, crop, size=S, rng=np.random.default_rng(0))
    assert seen["masks"].shape[1:] == (64, 64) and seen["masks"].dtype == np.uint8
    assert all(i["mask_ids"] == [700] * 16 for p in parse_sam_instance(text) for i in p["instances"])
    assert serialize("human_poses", {"human_poses": None}, crop, size=S, rng=rng) is None
    assert serialize("human_poses", {"human_poses": []}, crop, size=S, rng=rng) == "none"
    keypoints_only = [{**humans[0], "body_pose": None}]
    assert serialize("human_poses", {"human_poses": keypoints_only}, crop, size=S, rng=rng) is None
    assert serialize("sam_instance", {"sam_instances": None}, crop, size=S, rng=rng) is None


def test_marker_words_are_single_tokens(text_tok: TextTokenizer) -> None:
    corpus = corpus_of([{"caption": "x", "human_poses": None, "sam_instances": None}], ["human_poses", "sam_instance"],
                       size=S, seed=0)
    assert set(" ".join(corpus).split()) == set(HUMAN_POSE_WORDS) | set(SAM_INSTANCE_WORDS)
    for word in {*HUMAN_POSE_WORDS, *SAM_INSTANCE_WORDS}:
        ids = text_tok.encode(word)
        assert len(ids) == 1 and ids[0] != text_tok.unk_id, word


def test_rle_decoding_matches_the_sam_specialist() -> None:
    from fm21.pseudolabel.specialists.sam import encode_rle  # what writes the column

    rng = np.random.default_rng(7)
    for shape, p in [((7, 9), 0.3), ((5, 5), 0.0), ((4, 6), 1.0), ((S, S), 0.5)]:
        mask = rng.random(shape) < p
        assert encode_rle(mask) == _rle(mask)
        np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)
