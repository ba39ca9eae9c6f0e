"""Aligned multi-crop: the same crop window and flip for every modality of a sample.

Crop 0 is always the full, unflipped image; crops 1.. are RandomResizedCrop windows
(scale ``min_crop_scale``..1, ratio 3/4..4/3) flipped with p = 0.5 (apple/ml-4m `save_vq_tokens.py`).
Windows are drawn from a generator seeded by (seed, key, crop index), so every worker
and every re-run produces the same crops for the same sample.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import cv2
import numpy as np

NEAREST = {"classes", "edges"}  # label kinds of categorical/binary maps: never interpolated
UNIT_VECTORS = {"normal"}  # label kinds of unit-vector maps: x flips with the image, renormalised
MAP_KINDS = {"rgb", "depth", "feature", *NEAREST, *UNIT_VECTORS}  # label kinds that are (S, S[, C]) maps


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    height: int
    width: int
    hflip: bool


def _rng(seed: int, key: str, index: int) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}:{key}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def crop_window(size: int, *, key: str, index: int, seed: int, min_scale: float) -> Crop:
    """The crop window of crop ``index`` of sample ``key`` on a ``size x size`` image."""
    if index == 0:
        return Crop(0, 0, size, size, False)
    rng = _rng(seed, key, index)
    area = size * size
    for _ in range(10):  # torchvision's RandomResizedCrop rule
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= size and 0 < h <= size:
            top = int(rng.integers(0, size - h + 1))
            left = int(rng.integers(0, size - w + 1))
            return Crop(top, left, h, w, bool(rng.random() < 0.5))
    return Crop(0, 0, size, size, bool(rng.random() < 0.5))


def apply_crop(label: np.ndarray, crop: Crop, *, kind: str, out_size: int) -> np.ndarray:
    """Crop a (S, S[, C]) map, resize it to ``out_size`` and flip it, as its label kind
    ``kind`` (``ModalitySpec.label_kind``) needs."""
    if kind not in MAP_KINDS:  # an unknown kind would be interpolated: class ids blended
        raise ValueError(f"apply_crop: {kind!r} is not a label kind of maps; have {sorted(MAP_KINDS)}")
    patch = label[crop.top:crop.top + crop.height, crop.left:crop.left + crop.width]
    if patch.shape[:2] != (out_size, out_size):
        shrinking = out_size < max(patch.shape[:2])
        interp = cv2.INTER_NEAREST if kind in NEAREST else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        src = patch.astype(np.float32) if patch.dtype == np.float16 else patch
        patch = cv2.resize(src, (out_size, out_size), interpolation=interp).astype(label.dtype)
    if crop.hflip:
        patch = patch[:, ::-1].copy()
        if kind in UNIT_VECTORS:
            patch[..., 0] = -patch[..., 0]  # a mirrored surface faces the other way in x
    if kind in UNIT_VECTORS:
        n = patch.astype(np.float32)
        patch = (n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)).astype(label.dtype)
    return np.ascontiguousarray(patch)


def crop_boxes(instances: list[dict], crop: Crop, *, size: int) -> list[dict]:
    """Boxes (normalised 0..1 on the full image) moved into the crop window; empty ones drop."""
    out = []
    for inst in instances or []:
        x0, y0, x1, y1 = (float(v) for v in inst["box"])
        nx0 = (x0 * size - crop.left) / crop.width
        nx1 = (x1 * size - crop.left) / crop.width
        ny0 = (y0 * size - crop.top) / crop.height
        ny1 = (y1 * size - crop.top) / crop.height
        nx0, nx1, ny0, ny1 = (min(1.0, max(0.0, v)) for v in (nx0, nx1, ny0, ny1))
        if nx1 - nx0 <= 0 or ny1 - ny0 <= 0:
            continue
        if crop.hflip:
            nx0, nx1 = 1.0 - nx1, 1.0 - nx0
        out.append({**inst, "box": [nx0, ny0, nx1, ny1]})
    return out


def key_hash(key: str) -> int:
    """A stable 32-bit hash of a sample key (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "little")


def is_val_key(key: str, fraction: float) -> bool:
    """Deterministic split by key hash: stable across runs, workers and crops."""
    return key_hash(key) / 2**32 < fraction
