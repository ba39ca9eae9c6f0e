"""Label rows -> the 4M text serialisations of each sequence modality, for one crop.

The serialisers themselves live in ``fm21.tokenize.serialize`` and
``fm21.tokenize.serialize_instances``; this module only picks the label column each
sequence modality reads and applies the crop (boxes move with the crop window; the
palettes of every size k are kept, the training loader draws k per load).

Two serialisations embed the ids of a small tokenizer, which the caller puts in the row
next to the label column (a callable, so the ids are those of this crop):

- ``human_poses``: ``row[POSE_ENCODER]``: ``(P, 207)`` float32 SMPL body poses ->
  ``(P, 8)`` pose-token ids (the Memcodes pose tokenizer's ``encode_labels``);
- ``sam_instance``: ``row[MASK_ENCODER]``: ``(K, 64, 64)`` uint8 box-cropped masks ->
  ``(K, 16)`` mask-token ids (``fm21.tokenize.sam_mask``'s ``encode_labels``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fm21.tokenize.crops import Crop, crop_boxes
from fm21.tokenize.instances import box_crops, crop_instances
from fm21.tokenize.serialize import serialize_color_palette, serialize_det, serialize_metadata
from fm21.tokenize.serialize_instances import (
    HUMAN_POSE_WORDS,
    NUM_MASK_TOKENS,
    NUM_POSE_TOKENS,
    SAM_INSTANCE_WORDS,
    pose_inputs,
    serialize_human_poses,
    serialize_sam_instance,
)

POSE_ENCODER = "encode_pose"  # row key: (P, 207) body poses -> (P, 8) ids
MASK_ENCODER = "encode_masks"  # row key: (K, 64, 64) uint8 masks -> (K, 16) ids
# serialisation -> the row key its embedded tokenizer's encoder goes under
ENCODER_KEYS: dict[str, str] = {"human_poses": POSE_ENCODER, "sam_instance": MASK_ENCODER}
_SMPL_FIELDS = ("global_orient", "body_pose", "betas", "cam")


def _caption(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> str | None:
    return row.get("caption")


def _det(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> str | None:
    if row.get("det") is None:
        return None
    return serialize_det(crop_boxes(row["det"], crop, size=size))


def _color_palette(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> list[str] | None:
    """The palettes for every stored k (1..7), in k order: the training loader draws k per
    load (apple/ml-4m `fourm/data/modality_transforms.py`, ColorPaletteTransform: k uniform
    in 1..7 each time a sample is loaded; ``fm21.tokenize.serialize.split_palettes``)."""
    palettes = row.get("color_palette")
    if not palettes:
        return None
    out = []
    for k, flat in enumerate(palettes, start=1):
        flat = list(flat)
        colors = [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]
        out.append(serialize_color_palette({k: colors}, k))
    return out


def _metadata(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> list[str] | None:
    fields = row.get("metadata")
    if not fields:
        return None
    present = {k: v for k, v in fields.items() if v is not None}
    return serialize_metadata(present) if present else None


def _human_poses(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> str | None:
    humans = row.get("human_poses")
    if humans is None:
        return None
    if any(h.get(f) is None for h in humans for f in _SMPL_FIELDS):
        return None  # keypoint-only humans (yolo_pose backend) do not feed this serialisation
    ids = np.zeros((0, NUM_POSE_TOKENS), np.int64)
    if humans:
        ids = np.asarray(row[POSE_ENCODER](pose_inputs(humans, crop)))  # (P, 8)
    return serialize_human_poses(humans, ids, crop=crop, size=size, rng=rng)


def _sam_instance(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> str | None:
    instances = row.get("sam_instances")
    if instances is None:
        return None
    masks, boxes = crop_instances(instances, crop, size=size)  # (K, S, S) bool, (K, 4) pixels
    ids = np.zeros((0, NUM_MASK_TOKENS), np.int64)
    if len(masks):
        ids = np.asarray(row[MASK_ENCODER](box_crops(masks, boxes)))  # (K, 16)
    return serialize_sam_instance(masks, boxes, ids, rng=rng)


SERIALIZERS: dict[str, Callable[[dict, Crop, int, np.random.Generator], Any]] = {
    "caption": _caption,
    "det": _det,
    "color_palette": _color_palette,
    "metadata": _metadata,
    "human_poses": _human_poses,
    "sam_instance": _sam_instance,
}

# Every word these serialisations write besides the fixed ``vN=k`` tokens. Their strings
# teach WordPiece nothing else, so the corpus holds these words instead (once per row,
# whether or not the row has a human or an instance, and without decoding any mask).
MARKER_WORDS: dict[str, tuple[str, ...]] = {"human_poses": HUMAN_POSE_WORDS, "sam_instance": SAM_INSTANCE_WORDS}


def serialize(name: str, row: dict, crop: Crop, *, size: int, rng: np.random.Generator) -> str | list[str] | None:
    try:
        fn = SERIALIZERS[name]
    except KeyError:
        raise KeyError(f"no serialisation for sequence modality {name!r} yet (have: {sorted(SERIALIZERS)})") from None
    return fn(row, crop, size, rng)


def corpus_of(rows: list[dict], names: list[str], *, size: int, seed: int) -> list[str]:
    """Every serialised string of ``rows`` (crop 0): what the WordPiece vocabulary learns."""
    rng = np.random.default_rng(seed)
    full = Crop(0, 0, size, size, False)
    markers = [" ".join(MARKER_WORDS[n]) for n in names if n in MARKER_WORDS]
    serialized = [n for n in names if n not in MARKER_WORDS]
    texts: list[str] = []
    for row in rows:
        texts.extend(markers)
        for name in serialized:
            value = serialize(name, row, full, size=size, rng=rng)
            if isinstance(value, list):
                texts.extend(value)
            elif value:
                texts.append(value)
    return texts
