"""Surface-normal oracle: camera-frame unit normals from the synthetic ground truth.

Stands in for Omnidata DPT-B-Hybrid v2 normals (apple/ml-4m `fourm/data/modality_info.py`); the network
is ``normal_dpt.py`` (``weights: pretrained | path | random``). Float16 components in [-1, 1], flattened from (S, S, 3) (label kind
``unit_vector``: stored as 8 bits per component, error at most 1/254 per component,
``fm21.store.encodings``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import OracleSpecialist, num_samples


class NormalOracle(OracleSpecialist):
    name: ClassVar[str] = "normal"
    stands_in_for: ClassVar[str] = "Omnidata DPT-B-Hybrid v2 surface normals"

    def columns(self) -> list[pa.Field]:
        return [self.map_field("normal", "float16", kind="unit_vector", channels=3)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        normal = [
            self.gt_map(batch, i, "normal", channels=3).astype(np.float16).reshape(-1)
            for i in range(num_samples(batch))  # (S, S, 3) -> (S*S*3,)
        ]
        return {"normal": normal}
