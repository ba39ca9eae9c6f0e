"""Metadata: the MetadataTransform fields (apple/ml-4m `fourm/data/modality_transforms.py`), from image statistics and earlier pseudo labels.

The reference's extraction code is not public (apple/ml-4m `fourm/data/modality_transforms.py`, MetadataTransform), so the definitions here
are fm21's, chosen to match the field names and the binning ranges:

- ``original_width``/``original_height``: ``meta["original_size"]`` (``[w, h]``).
- ``caption_n_chars``/``_n_words``/``_n_sentences``: of the ``caption`` column;
  sentences are runs of text ended by ``.``, ``!``, ``?`` or the end of the caption.
- ``n_humans``: people the ``human_pose`` specialist found (its ``human_poses`` list;
  null when the run has no human-pose specialist).
- ``n_sam_instances``: SAM's instances (the ``sam_instances`` list) when the run has SAM,
  else distinct non-zero ids of the ``instance`` column (synthetic truth, or Mask2Former's
  thing segments).
- ``n_coco_instances``/``coco_instance_diversity``: ``det`` boxes with
  ``score >= det_min_score`` (the det serializer's 0.6) and their distinct class names.
- ``colorfulness``: Hasler & Süsstrunk (2003), ``sigma_rgyb + 0.3 mu_rgyb``.
- ``brightness``/``contrast``: mean/std of the BT.601 luma (0..255).
- ``saturation``: mean HSV saturation (0..255). ``entropy``: Shannon entropy in bits of
  the 256-bin luma histogram (0..8).
- ``walkability``: fraction of pixels whose semseg class name is in
  :data:`WALKABLE_CLASSES`; names of synthetic ids come from
  ``meta["synthetic"]["classes"]`` (a list indexed by semantic id, entry 0 = no class,
  or a ``{id: name}`` dict). Null without class names.
- ``objectness``: fraction of "thing" pixels (instance id != 0).
- ``semantic_diversity``: distinct non-zero semseg classes.
- ``geometric_complexity``: ``1 - |mean unit normal|`` over pixels with a normal
  (0 for a plane facing one way, towards 1 for normals spread over the sphere).
- ``occlusion_score``: fraction of pixels on a depth discontinuity: the second
  difference of inverse depth (zero on any plane, so the receding ground is not an
  occlusion) above ``occlusion_threshold`` times the inverse depth, i.e. a relative
  depth jump of about 10% or more to a 4-neighbour.
- ``watermark_score``/``aesthetic_score``: null (they need learned models).

A field whose input column is absent from the run (e.g. normals disabled) or null for
the sample is null, never an error.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.pseudolabel.specialists.base import (
    Specialist,
    num_samples,
    sample_image,
    sample_map,
)

_INT, _FLOAT = pa.int32(), pa.float32()
# (name, Arrow type) in the MetadataTransform id order (apple/ml-4m `fourm/data/modality_transforms.py`): the field's id is its index.
METADATA_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("original_width", _INT),
    ("original_height", _INT),
    ("caption_n_chars", _INT),
    ("caption_n_words", _INT),
    ("caption_n_sentences", _INT),
    ("n_humans", _INT),
    ("n_sam_instances", _INT),
    ("n_coco_instances", _INT),
    ("coco_instance_diversity", _INT),
    ("colorfulness", _FLOAT),
    ("brightness", _FLOAT),
    ("contrast", _FLOAT),
    ("saturation", _FLOAT),
    ("entropy", _FLOAT),
    ("walkability", _FLOAT),
    ("objectness", _FLOAT),
    ("semantic_diversity", _INT),
    ("geometric_complexity", _FLOAT),
    ("occlusion_score", _FLOAT),
    ("watermark_score", _FLOAT),
    ("aesthetic_score", _FLOAT),
)
METADATA_STRUCT = pa.struct(METADATA_FIELDS)

# Semantic classes one can walk on: the synthetic scenes' ground plane, and the COCO
# panoptic stuff classes (Mask2Former names) for the real semseg specialist.
WALKABLE_CLASSES = frozenset(
    {
        "ground",  # synthetic scenes
        "road", "pavement-merged", "floor-wood", "floor-other-merged", "rug-merged",
        "grass-merged", "dirt-merged", "sand", "snow", "gravel", "playingfield",
        "railroad", "platform", "stairs", "bridge",
    }
)
_SENTENCE_END = re.compile(r"[.!?]+")


class MetadataOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    det_min_score: float = Field(0.6, ge=0, le=1)
    occlusion_threshold: float = Field(0.1, gt=0)  # |second difference of 1/d| / (1/d)


# ------------------------------------------------------------------------ per-input stats
def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Colour and luma statistics of one (S, S, 3) uint8 RGB image."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    sigma = np.hypot(rg.std(), yb.std())
    mu = np.hypot(rg.mean(), yb.mean())
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # (S, S) uint8, BT.601 weights
    hist = np.bincount(luma.reshape(-1), minlength=256) / luma.size
    p = hist[hist > 0]
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]  # (S, S) uint8, 0..255
    return {
        "colorfulness": float(sigma + 0.3 * mu),
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "entropy": float(max(0.0, -(p * np.log2(p)).sum())),
    }


def caption_counts(caption: str | None) -> dict[str, int | None]:
    if not caption:
        return {"caption_n_chars": None, "caption_n_words": None, "caption_n_sentences": None}
    return {
        "caption_n_chars": len(caption),
        "caption_n_words": len(caption.split()),
        "caption_n_sentences": sum(1 for part in _SENTENCE_END.split(caption) if part.strip()),
    }


def detection_counts(det: list[dict] | None, *, min_score: float) -> dict[str, int | None]:
    if det is None:
        return {"n_coco_instances": None, "coco_instance_diversity": None}
    kept = [d for d in det if d.get("score", 1.0) >= min_score]
    return {
        "n_coco_instances": len(kept),
        "coco_instance_diversity": len({d["class_name"] for d in kept}),
    }


def class_names(meta: dict | None) -> dict[int, str] | None:
    """Names of the semantic ids of a synthetic sample, or None when unknown."""
    classes = ((meta or {}).get("synthetic") or {}).get("classes")
    if isinstance(classes, dict):
        return {int(k): str(v) for k, v in classes.items()}
    if isinstance(classes, (list, tuple)):
        return {i: str(v) for i, v in enumerate(classes)}
    return None


def semantic_statistics(
    semseg: np.ndarray | None, names: dict[int, str] | None
) -> dict[str, float | int | None]:
    if semseg is None:
        return {"semantic_diversity": None, "walkability": None}
    walkable = None
    if names is not None:
        ids = [i for i, n in names.items() if n in WALKABLE_CLASSES]
        walkable = float(np.isin(semseg, ids).mean())
    ids_present = np.unique(semseg)
    return {"semantic_diversity": int((ids_present != 0).sum()), "walkability": walkable}


def instance_statistics(instance: np.ndarray | None) -> dict[str, float | int | None]:
    if instance is None:
        return {"n_sam_instances": None, "objectness": None}
    ids = np.unique(instance)
    return {"n_sam_instances": int((ids != 0).sum()), "objectness": float((instance != 0).mean())}


def geometric_complexity(normal: np.ndarray | None) -> float | None:
    """1 - |mean unit normal| over pixels with a normal. normal: (S, S, 3)."""
    if normal is None:
        return None
    n = normal.reshape(-1, 3).astype(np.float64)  # (S*S, 3)
    norms = np.linalg.norm(n, axis=1)
    valid = norms > 0.5  # zero vectors mark pixels without a surface
    if not valid.any():
        return None
    unit = n[valid] / norms[valid, None]
    return float(np.clip(1.0 - np.linalg.norm(unit.mean(axis=0)), 0.0, 1.0))


def occlusion_score(depth: np.ndarray | None, *, threshold: float) -> float | None:
    """Fraction of occlusion-edge pixels: where the inverse depth q = 1/d has a second
    difference along a row or column above ``threshold`` * q. On any plane q is affine
    in pixel coordinates, so slanted surfaces (the ground up to the horizon) score 0;
    a depth cliff of relative size r marks the pixels on both sides once r > ~10%.
    Infinite depth (sky) is q = 0; non-positive or NaN depths are ignored."""
    if depth is None:
        return None
    d = depth.astype(np.float64)  # (S, S)
    valid = (d > 0) & ~np.isnan(d)
    if not valid.any():
        return None
    with np.errstate(divide="ignore"):
        q = np.where(valid, 1.0 / np.where(valid, d, 1.0), 0.0)  # (S, S), inf depth -> 0
    edge = np.zeros(d.shape, dtype=bool)
    for qq, ok, out in ((q, valid, edge), (q.T, valid.T, edge.T)):  # rows, then columns
        lap = qq[:, :-2] - 2.0 * qq[:, 1:-1] + qq[:, 2:]  # (S, S-2) second difference
        usable = ok[:, :-2] & ok[:, 1:-1] & ok[:, 2:]
        out[:, 1:-1] |= usable & (np.abs(lap) > threshold * qq[:, 1:-1])
    return float(edge.mean())


def original_size(meta: dict | None) -> dict[str, int | None]:
    size = (meta or {}).get("original_size")
    if isinstance(size, dict):
        size = (size.get("width"), size.get("height"))
    if not isinstance(size, (list, tuple)) or len(size) != 2 or None in size:
        return {"original_width": None, "original_height": None}
    return {"original_width": int(size[0]), "original_height": int(size[1])}


def _count(items: list | None) -> int | None:
    return None if items is None else len(items)


# ------------------------------------------------------------------------ specialist
class Metadata(Specialist):
    name: ClassVar[str] = "metadata"
    requires: ClassVar[tuple[str, ...]] = (
        "caption", "det", "semseg", "instance", "normal", "depth", "human_poses", "sam_instances",
    )
    Options: ClassVar[type[BaseModel]] = MetadataOptions

    def columns(self) -> list[pa.Field]:
        return [self.field("metadata", METADATA_STRUCT)]

    def _input(self, batch: dict[str, Any], name: str, index: int) -> Any:
        """An earlier specialist's value for one sample; None if the run lacks it."""
        column = batch.get(name)
        return None if column is None else column[index]

    def _sample(self, batch: dict[str, Any], i: int) -> dict[str, Any]:
        s, opts = self.image_size, self.options
        meta = batch["meta"][i]
        semseg = sample_map(self._input(batch, "semseg", i), (s, s), "int32")
        instance = sample_map(self._input(batch, "instance", i), (s, s), "int32")
        normal = sample_map(self._input(batch, "normal", i), (s, s, 3), "float32")
        depth = sample_map(self._input(batch, "depth", i), (s, s), "float32")
        values: dict[str, Any] = {
            **original_size(meta),
            **caption_counts(self._input(batch, "caption", i)),
            "n_humans": _count(self._input(batch, "human_poses", i)),
            **instance_statistics(instance),
            **({} if (sam := self._input(batch, "sam_instances", i)) is None else {"n_sam_instances": len(sam)}),
            **detection_counts(self._input(batch, "det", i), min_score=opts.det_min_score),
            **image_statistics(sample_image(batch, i, s)),
            **semantic_statistics(semseg, class_names(meta)),
            "geometric_complexity": geometric_complexity(normal),
            "occlusion_score": occlusion_score(depth, threshold=opts.occlusion_threshold),
            "watermark_score": None,  # needs a watermark classifier
            "aesthetic_score": None,  # needs an aesthetic predictor
        }
        return {name: values[name] for name, _ in METADATA_FIELDS}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": [self._sample(batch, i) for i in range(num_samples(batch))]}
