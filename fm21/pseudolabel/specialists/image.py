"""The image itself as a label column: ``rgb`` (S, S, 3) uint8.

Not a model: it copies the normalised ingest image into labels.lance so that the
tokenizers and the token store read every modality, RGB included, from one store,
keyed and aligned the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import Specialist


class ImageColumns(Specialist):
    name: ClassVar[str] = "image"

    def columns(self) -> list[pa.Field]:
        return [self.map_field("rgb", "uint8", kind="image", channels=3)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rgb = np.asarray(batch["rgb"], dtype=np.uint8)  # (B, S, S, 3)
        return {"rgb": list(rgb.reshape(len(rgb), -1))}
