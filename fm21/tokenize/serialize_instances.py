"""4M-21 text serialisations of human poses and SAM instances, and their parsers
(apple/ml-4m `fourm/data/modality_transforms.py`: HumanPoseTransform, SAMInstanceTokTransform).

- human_poses, per human: ``human v0=x0 v1=y0 v2=x1 v3=y1`` (box ``round(c * 999)``),
  then the four groups in random order: ``pose`` + 8 pose-token ids, ``global`` + the 9
  entries of the root rotation ``round(499.5 x + 499.5)``, ``shape`` + 10 betas
  ``round(166.5 x + 499.5)`` (x clipped to [-3, 3]), ``camera`` + ``[s, tx, ty]``
  clipped to [-1, 19] as ``round(49.95 x + 49.95)``. Humans space-separated; no human in
  the crop -> ``none``.
- sam_instance: 7 query points (7 x and 7 y values drawn and paired), in random order,
  each ``point v0=<y> v1=<x>`` followed by every instance whose mask contains it, in
  random order, as ``polygon v0=xmin v1=ymin v2=xmax v3=ymax`` (inclusive pixel box in
  the crop's pixel grid) + its 16 mask-token ids; ``none`` when no mask contains it.

A token id ``i`` of the pose or mask tokenizer (1024 codes) is written ``v0=i`` when
``i < 512``, else ``v1=i-512``. Parsers accept the text tokenizer's decoded string and
skip malformed parts (a generated sequence may be cut short).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from fm21.tokenize.crops import Crop, crop_boxes

COORD_BINS = 1000
NUM_POSE_TOKENS = 8
NUM_MASK_TOKENS = 16
NUM_QUERY_POINTS = 7  # points_per_side of SAMInstanceTokTransform(point_order='random')

HUMAN_POSE_WORDS = ("human", "pose", "global", "shape", "camera", "none")
SAM_INSTANCE_WORDS = ("point", "polygon", "none")

# SMPL joints 1..23 (body_pose order) under a left/right mirror: L_hip <-> R_hip, ...
# (SMPL's joint table: 1 L_hip 2 R_hip 4 L_knee 5 R_knee 7 L_ankle 8 R_ankle 10 L_foot
# 11 R_foot 13 L_collar 14 R_collar 16 L_shoulder 17 R_shoulder 18 L_elbow 19 R_elbow
# 20 L_wrist 21 R_wrist 22 L_hand 23 R_hand)
_SMPL_MIRROR = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22)
BODY_MIRROR = tuple(j - 1 for j in _SMPL_MIRROR[1:])  # index into the 23 body joints
_FLIP_X = np.diag([-1.0, 1.0, 1.0])


def _id_token(i: int) -> str:
    i = int(i)
    if not 0 <= i < 1024:
        raise ValueError(f"token id {i} outside 0..1023")
    return f"v0={i}" if i < 512 else f"v1={i - 512}"


def _values(x: np.ndarray, scale: float, offset: float) -> list[str]:
    return [f"v0={int(round(scale * float(v) + offset))}" for v in np.ravel(x)]


# --------------------------------------------------------------------------- human poses
def mirror_rotations(rotations: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of a body seen in a horizontally flipped image:
    ``S R S`` with ``S = diag(-1, 1, 1)`` (x is the image's and SMPL's lateral axis)."""
    return _FLIP_X @ np.asarray(rotations, dtype=np.float64) @ _FLIP_X


def mirror_body_pose(body_pose: np.ndarray) -> np.ndarray:
    """``(..., 207)`` SMPL body pose -> the mirrored body's: each rotation mirrored and
    left/right joints swapped (what the pose tokenizer must see on a flipped crop)."""
    rot = np.asarray(body_pose, dtype=np.float64).reshape(*np.shape(body_pose)[:-1], 23, 3, 3)
    return mirror_rotations(rot[..., BODY_MIRROR, :, :]).reshape(np.shape(body_pose)).astype(np.float32)


def pose_inputs(humans: Sequence[Mapping], crop: Crop) -> np.ndarray:
    """``(P, 207)`` float32 body poses of every stored human as seen in ``crop`` (mirrored
    on a flipped crop): what the pose tokenizer encodes into ``pose_ids`` for that crop."""
    poses = np.asarray([h["body_pose"] for h in humans], dtype=np.float32).reshape(len(humans), 207)
    return mirror_body_pose(poses) if crop.hflip else poses


def serialize_human_poses(
    humans: Sequence[Mapping], pose_ids: np.ndarray, *, crop: Crop, size: int, rng: np.random.Generator
) -> str:
    """Humans of the ``human_poses`` column (boxes normalised on the ``size`` image) and
    their pose-token ids ``(P, 8)`` (of :func:`pose_inputs` for this crop) -> text.

    Humans outside the crop are dropped, boxes clipped to [0, 1]. On a flipped crop the
    box, the root rotation and the camera's ``tx`` are mirrored (the reference ignores the
    flip; fm21 flips every modality of a crop together)."""
    pose_ids = np.asarray(pose_ids).reshape(len(humans), NUM_POSE_TOKENS)
    parts = []
    for human, ids in zip(humans, pose_ids):
        cropped = crop_boxes([{"box": human["box"]}], crop, size=size)
        if not cropped:
            continue
        box = np.round(np.asarray(cropped[0]["box"]) * (COORD_BINS - 1)).astype(int)
        orient = np.asarray(human["global_orient"], dtype=np.float64).reshape(3, 3)
        cam = np.asarray(human["cam"], dtype=np.float64).copy()
        if crop.hflip:
            orient = mirror_rotations(orient)
            cam[1] = -cam[1]  # weak-perspective [s, tx, ty]: tx mirrors with the box
        groups = [
            ["pose", *(_id_token(i) for i in ids)],
            ["global", *_values(np.clip(orient, -1, 1), 499.5, 499.5)],
            ["camera", *_values(np.clip(cam, -1, 19), 49.95, 49.95)],
            ["shape", *_values(np.clip(human["betas"], -3, 3), 166.5, 499.5)],
        ]
        words = ["human", *(f"v{k}={b}" for k, b in enumerate(box))]
        for g in rng.permutation(len(groups)):
            words += groups[g]
        parts.append(" ".join(words))
    return " ".join(parts) if parts else "none"


_TOKEN = re.compile(r"v(\d)=(\d+)")
_GROUPS = {"pose": NUM_POSE_TOKENS, "global": 9, "shape": 10, "camera": 3}


def _split(text: str, starter: str) -> list[list[str]]:
    """Whitespace tokens grouped into runs that begin with ``starter``."""
    runs: list[list[str]] = []
    for word in text.split():
        if word == starter:
            runs.append([])
        elif runs:
            runs[-1].append(word)
    return runs


def _take_values(words: list[str], start: int, count: int) -> list[tuple[int, int]] | None:
    vals = [_TOKEN.fullmatch(w) for w in words[start:start + count]]
    if len(vals) < count or not all(vals):
        return None
    return [(int(m.group(1)), int(m.group(2))) for m in vals]


def _decode_id(kind: int, value: int) -> int:
    return value if kind == 0 else value + 512


def _kinds_ok(human: dict) -> bool:
    """Pose ids are v0/v1 tokens; every other value is a v0 token."""
    return all(k in (0, 1) for k, _ in human["pose"]) and all(
        k == 0 for g in ("global", "shape", "camera") for k, _ in human[g])


def parse_human_poses(text: str) -> list[dict]:
    """Text -> ``[{"box", "pose_ids", "global_orient", "betas", "cam"}]`` (box in [0, 1],
    root rotation row-major). Values are the bin centres: within half a bin of the input
    (box 1/1998, rotation 1/999, betas 1/333, camera 1/99.9)."""
    out = []
    for words in _split(text, "human"):
        box = _take_values(words, 0, 4)
        if box is None or [k for k, _ in box] != [0, 1, 2, 3]:
            continue
        human: dict = {"box": [v / (COORD_BINS - 1) for _, v in box]}
        i = 4
        while i < len(words) and words[i] in _GROUPS:
            vals = _take_values(words, i + 1, _GROUPS[words[i]])
            if vals is None:
                break
            human[words[i]] = vals
            i += 1 + _GROUPS[words[i]]
        if not set(_GROUPS) <= set(human) or not _kinds_ok(human):
            continue
        out.append({
            "box": human["box"],
            "pose_ids": [_decode_id(k, v) for k, v in human["pose"]],
            "global_orient": [(v - 499.5) / 499.5 for _, v in human["global"]],
            "betas": [(v - 499.5) / 166.5 for _, v in human["shape"]],
            "cam": [(v - 49.95) / 49.95 for _, v in human["camera"]],
        })
    return out


# --------------------------------------------------------------------------- SAM instances
def query_points(size: int, rng: np.random.Generator, *, num_points: int = NUM_QUERY_POINTS) -> list[tuple[int, int]]:
    """``num_points`` random ``(x, y)`` pixels: x and y drawn separately, then paired
    (not a grid); repeated points collapse, as the reference's dict of points does."""
    y = rng.integers(0, size, num_points)
    x = rng.integers(0, size, num_points)
    return list(dict.fromkeys((int(a), int(b)) for a, b in zip(x, y)))


def serialize_sam_instance(
    masks: np.ndarray, boxes: np.ndarray, mask_ids: np.ndarray, *, rng: np.random.Generator,
    num_points: int = NUM_QUERY_POINTS,
) -> str:
    """Instances of one crop -> text. ``masks`` ``(K, S, S)`` bool in the crop's pixel grid,
    ``boxes`` ``(K, 4)`` inclusive ``xmin, ymin, xmax, ymax`` pixels, ``mask_ids``
    ``(K, 16)`` (from :func:`fm21.tokenize.instances.crop_instances` and the mask
    tokenizer). A point belongs to an instance when its pixel is in the mask (the
    reference tests the instance polygon, ``cv2.pointPolygonTest >= 0``)."""
    if np.ndim(masks) != 3:
        raise ValueError(f"masks must be (K, S, S) (K may be 0), got shape {np.shape(masks)}")
    size = masks.shape[-1]
    if size > COORD_BINS:
        raise ValueError(f"pixel coordinates of a {size}-px crop do not fit v-tokens (0..999)")
    mask_ids = np.asarray(mask_ids).reshape(len(masks), NUM_MASK_TOKENS)
    points = query_points(size, rng, num_points=num_points)
    words: list[str] = []
    for p in rng.permutation(len(points)):
        x, y = points[p]
        words += ["point", f"v0={y}", f"v1={x}"]  # v0 is y
        inside = np.flatnonzero(masks[:, y, x])
        if inside.size == 0:
            words.append("none")
        for k in inside[rng.permutation(inside.size)]:
            words.append("polygon")
            words += [f"v{j}={int(c)}" for j, c in enumerate(boxes[k])]
            words += [_id_token(i) for i in mask_ids[k]]
    return " ".join(words)


def parse_sam_instance(text: str) -> list[dict]:
    """Text -> ``[{"point": (x, y), "instances": [{"box": [xmin, ymin, xmax, ymax],
    "mask_ids": [16 ids]}]}]`` in string order (exact: pixels and ids are not binned)."""
    out = []
    for words in _split(text, "point"):
        yx = _take_values(words, 0, 2)
        if yx is None or [k for k, _ in yx] != [0, 1]:
            continue
        instances = []
        for inst in _split(" ".join(words[2:]), "polygon"):
            vals = _take_values(inst, 0, 4 + NUM_MASK_TOKENS)
            if vals is None or [k for k, _ in vals[:4]] != [0, 1, 2, 3] or any(k > 1 for k, _ in vals[4:]):
                continue
            instances.append({"box": [v for _, v in vals[:4]], "mask_ids": [_decode_id(k, v) for k, v in vals[4:]]})
        out.append({"point": (yx[1][1], yx[0][1]), "instances": instances})
    return out
