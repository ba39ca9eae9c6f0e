"""Detection oracle: the synthetic scene's object boxes as COCO-style detections.

Stands in for ViTDet ViT-H + Cascade Mask R-CNN (apple/ml-4m `fourm/data/modality_info.py` and `fourm/data/modality_transforms.py`, DetectionTransform); the real detector
is a later issue. Boxes are ``[xmin, ymin, xmax, ymax]`` normalised to [0, 1] of the
stored crop, as in the reference's detection JSON. All boxes are kept at full fidelity:
the ``score >= 0.6`` filter belongs to the det serializer, not to the store.

Accepted forms of ``meta["synthetic"]["boxes"]`` (one entry per object):

- a dict ``{"box": [x0, y0, x1, y1], "class_name": str, "score": float (optional)}``
  (``bbox`` is accepted for ``box``, ``class``/``name`` for ``class_name``);
- a bare ``[x0, y0, x1, y1]``, named by the same index of ``meta["synthetic"]["objects"]``
  (a class-name string or a dict with ``class_name``/``class``/``name``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import OracleInputError, OracleSpecialist, num_samples

BOX_STRUCT = pa.struct(
    [
        ("box", pa.list_(pa.float32(), 4)),
        ("class_name", pa.string()),
        ("score", pa.float32()),
    ]
)
_BOX_KEYS = ("box", "bbox")
_NAME_KEYS = ("class_name", "class", "name")


def _first(record: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in record:
            return record[k]
    return None


def box_records(synthetic: dict, *, key: str) -> list[dict[str, Any]]:
    """The det entries of one synthetic sample, validated."""
    boxes = synthetic.get("boxes") or []
    objects = synthetic.get("objects") or []
    out = []
    for j, entry in enumerate(boxes):
        if isinstance(entry, dict):
            box, name = _first(entry, _BOX_KEYS), _first(entry, _NAME_KEYS)
            score = entry.get("score", 1.0)
        else:
            obj = objects[j] if j < len(objects) else None
            box, score = entry, 1.0
            name = _first(obj, _NAME_KEYS) if isinstance(obj, dict) else obj
        coords = np.asarray(box, dtype=np.float32).reshape(-1) if box is not None else None
        if coords is None or coords.size != 4 or name is None:
            raise OracleInputError(
                f"detection: sample {key!r}: box {j} must give 4 coordinates and a class "
                f"name, got {entry!r}"
            )
        if coords.min() < -1e-3 or coords.max() > 1 + 1e-3:
            raise OracleInputError(
                f"detection: sample {key!r}: box {j} {coords.tolist()} is not normalised "
                "to [0, 1]"
            )
        out.append(
            {"box": np.clip(coords, 0.0, 1.0), "class_name": str(name), "score": float(score)}
        )
    return out


class DetectionOracle(OracleSpecialist):
    name: ClassVar[str] = "detection"
    stands_in_for: ClassVar[str] = "ViTDet ViT-H + Cascade Mask R-CNN, COCO classes"

    def columns(self) -> list[pa.Field]:
        return [self.field("det", pa.list_(BOX_STRUCT))]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        det = []
        for i in range(num_samples(batch)):
            synthetic = (batch["meta"][i] or {}).get("synthetic")
            if synthetic is None:
                raise self.missing_ground_truth(batch["key"][i])
            det.append(box_records(synthetic, key=batch["key"][i]))
        return {"det": det}
