"""Semantic + instance segmentation oracle from the synthetic ground truth.

Stands in for Mask2Former Swin-B (COCO panoptic, apple/ml-4m `fourm/data/modality_info.py`); the network
is ``semseg_mask2former.py`` (``weights: pretrained | path | random``). ``semseg`` holds class ids with 0 = "no class" (the reference's +1 shift is
already applied); ``instance`` holds instance ids with 0 = no instance. The class names
of the synthetic ids travel in the shard json (``meta["synthetic"]["classes"]``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import OracleSpecialist, num_samples


class SemsegOracle(OracleSpecialist):
    name: ClassVar[str] = "semseg"
    stands_in_for: ClassVar[str] = "Mask2Former Swin-B, COCO panoptic"

    def columns(self) -> list[pa.Field]:
        return [self.map_field("semseg", "uint8", kind="class_map"),
                self.map_field("instance", "uint8", kind="class_map")]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        semseg, instance = [], []
        for i in range(num_samples(batch)):
            semseg.append(self.gt_map(batch, i, "semantic").astype(np.uint8).reshape(-1))
            instance.append(self.gt_map(batch, i, "instance").astype(np.uint8).reshape(-1))
        return {"semseg": semseg, "instance": instance}
