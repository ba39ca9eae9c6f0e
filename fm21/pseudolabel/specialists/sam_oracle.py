"""SAM oracle: instance masks from the synthetic scene's ground truth.

Stands in for SAM ViT-H's automatic mask generator (``sam.py``, ``weights: pretrained |
path | random``; 4M-21 labels ``sam_instance`` with it, apple/ml-4m
`fourm/data/modality_info.py`). Each ground-truth instance becomes one record of the
``sam_instances`` column in the network's format (COCO RLE, box in [0, 1], area), with
score and stability 1.0, largest first. The synthetic scenes' objects are what SAM would
segment, so the SAM mask tokenizer and the ``sam_instance`` sequences train on real
shapes rather than on a random network's blobs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import OracleSpecialist, num_samples
from fm21.pseudolabel.specialists.sam import INSTANCE_STRUCT, mask_instance


def instances_of(instance_ids: np.ndarray) -> list[dict[str, Any]]:
    """(S, S) instance ids (0: none) -> instance records, largest area first."""
    out = []
    for k in np.unique(instance_ids):
        if k == 0:
            continue
        record = mask_instance(instance_ids == k, score=1.0, stability_score=1.0)
        if record is not None:
            out.append(record)
    return sorted(out, key=lambda r: -r["area"])


class SamOracle(OracleSpecialist):
    name: ClassVar[str] = "sam"
    stands_in_for: ClassVar[str] = "SAM ViT-H automatic masks"

    def columns(self) -> list[pa.Field]:
        return [self.field("sam_instances", pa.list_(INSTANCE_STRUCT))]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = [instances_of(self.gt_map(batch, i, "instance").astype(np.int32))
               for i in range(num_samples(batch))]
        return {"sam_instances": out}
