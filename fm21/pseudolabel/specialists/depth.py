"""Depth oracle: metric depth from the synthetic scene's ground truth.

Stands in for Omnidata DPT-B-Hybrid v2 (apple/ml-4m `fourm/data/modality_info.py`); the network is
``depth_dpt.py`` (``weights: pretrained | path | random``). Metric depth in metres as float16 (label kind ``depth``: stored losslessly as a
16-bit PNG of the float16 bit patterns, ``fm21.store.encodings``); the tokenizer applies
the robust per-image standardisation, not this specialist.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import OracleSpecialist, num_samples


class DepthOracle(OracleSpecialist):
    name: ClassVar[str] = "depth"
    stands_in_for: ClassVar[str] = "Omnidata DPT-B-Hybrid v2 depth"

    def columns(self) -> list[pa.Field]:
        return [self.map_field("depth", "float16", kind="depth")]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        depth = [
            self.gt_map(batch, i, "depth").astype(np.float16).reshape(-1)  # (S*S,)
            for i in range(num_samples(batch))
        ]
        return {"depth": depth}
