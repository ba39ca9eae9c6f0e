"""SAM instance masks as the ``sam_instance`` modality sees them: decoded, moved into a
crop, cut to their boxes (the mask tokenizer's input) and pasted back.

Boxes here are integer pixel boxes ``(xmin, ymin, xmax, ymax)`` with INCLUSIVE maxima, in
the pixel grid of the crop (``size x size``), which is what the 4M-21 string writes
(apple/ml-4m `fourm/data/modality_transforms.py`, SAMInstanceTokTransform: ``polygon
v0=xmin v1=ymin v2=xmax v3=ymax``, 0..223 at 224 px). Instances whose box covers less
than 0.05 % of the crop are dropped, as the reference drops them before tokenizing
(SAMInstanceTransform, ``bbox_area_threshold=0.0005``).
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from fm21.tokenize.crops import Crop, apply_crop

MASK_SIZE = 64  # side of a box-cropped instance mask (the reference's ``mask_size``)
MIN_BOX_FRACTION = 0.0005  # (xmax - xmin) * (ymax - ymin) / size**2 below this: dropped


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO uncompressed RLE ``{"size": [H, W], "counts": [...]}`` -> (H, W) bool.

    Column-major runs, zeros first (the layout of segment-anything's
    ``mask_to_rle_pytorch``, which ``fm21.pseudolabel.specialists.sam`` writes with)."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, not {h} x {w}")
    return flat.reshape(w, h).T  # column-major


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(H, W) bool -> inclusive pixel box ``(xmin, ymin, xmax, ymax)``; None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def is_tiny(box: Sequence[int], size: int, *, min_fraction: float = MIN_BOX_FRACTION) -> bool:
    """The reference's rule: box extent (max - min) area over the image area."""
    xmin, ymin, xmax, ymax = box
    return (xmax - xmin) * (ymax - ymin) / float(size * size) < min_fraction


def crop_instances(
    instances: Sequence[dict] | None, crop: Crop, *, size: int, min_fraction: float = MIN_BOX_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """The ``sam_instances`` of one sample as seen in ``crop``, resized to ``size``.

    ``crop`` is a window on the stored image (the RLE's grid), as every modality of the
    sample gets it. Returns masks ``(K, size, size)`` bool and boxes ``(K, 4)`` int32,
    in the column's order; instances empty in the crop or tiny are dropped.
    """
    masks, boxes = [], []
    for inst in instances or []:
        full = decode_rle(inst["rle"]).astype(np.uint8)  # (S0, S0)
        mask = apply_crop(full, crop, kind="classes", out_size=size).astype(bool)  # binary: nearest + flip
        box = mask_box(mask)
        if box is None or is_tiny(box, size, min_fraction=min_fraction):
            continue
        masks.append(mask)
        boxes.append(box)
    if not masks:
        return np.zeros((0, size, size), bool), np.zeros((0, 4), np.int32)
    return np.stack(masks), np.asarray(boxes, dtype=np.int32)


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (h, w) -> (height, width): area averaging when shrinking, bilinear otherwise."""
    shrink = height * width < x.shape[0] * x.shape[1]
    return cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def box_crops(masks: np.ndarray, boxes: np.ndarray, *, mask_size: int = MASK_SIZE) -> np.ndarray:
    """Masks ``(K, S, S)`` cut to their boxes and resized -> ``(K, mask_size, mask_size)`` uint8 0/1."""
    out = np.zeros((len(masks), mask_size, mask_size), np.uint8)
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        patch = mask[y0:y1 + 1, x0:x1 + 1].astype(np.float32)
        out[k] = _resize(patch, mask_size, mask_size) >= 0.5
    return out


def paste_masks(probs: np.ndarray, boxes: np.ndarray, *, size: int) -> np.ndarray:
    """Box-cropped masks or probabilities ``(K, m, m)`` -> ``(K, size, size)`` bool, each
    resized into its inclusive box and thresholded at 0.5 (the reference's sigmoid > 0.5)."""
    out = np.zeros((len(probs), size, size), bool)
    for k, (p, box) in enumerate(zip(probs, boxes)):
        x0, y0, x1, y1 = (int(v) for v in np.clip(box, 0, size - 1))
        if x1 < x0 or y1 < y0:
            continue
        patch = _resize(np.asarray(p, np.float32), y1 - y0 + 1, x1 - x0 + 1)
        out[k, y0:y1 + 1, x0:x1 + 1] = patch > 0.5
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-mask IoU of two ``(K, H, W)`` bool stacks (1.0 where both are empty)."""
    a, b = a.astype(bool).reshape(len(a), -1), b.astype(bool).reshape(len(b), -1)
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
