"""Instance edges: boundaries between distinct instance ids, as 0/255 uint8 maps.

4M-21 derives ``tok_sam_edge`` from SAM instance masks (the exact recipe is not in the
reference repo, apple/ml-4m `fourm/data/modality_info.py`). Here the instances come from the ``instance`` column
(the semseg oracle on synthetic scenes); with the real SAM specialist (a later issue)
they come from SAM's masks, painted into an instance-id map, and the boundary rule
below is the same.

Rule: a pixel is an edge when a 4-neighbour has a different id (background 0 counts
as an id, so object outlines against background are edges; the image border is not).
``thickness: 2`` marks both sides of every boundary; ``thickness: 1`` (default, like
Canny's 1-px edges) marks only the pixel above / left of it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from fm21.pseudolabel.specialists.base import Specialist, num_samples, sample_map


class SamEdgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    thickness: Literal[1, 2] = 1


def instance_boundaries(instance: np.ndarray, *, thickness: int = 1) -> np.ndarray:
    """(S, S) instance ids -> (S, S) uint8 map, 255 on boundaries between ids."""
    edge = np.zeros(instance.shape, dtype=bool)
    down = instance[:-1, :] != instance[1:, :]  # (S-1, S): pixel differs from the one below
    right = instance[:, :-1] != instance[:, 1:]  # (S, S-1): differs from the one right
    edge[:-1, :] |= down
    edge[:, :-1] |= right
    if thickness == 2:
        edge[1:, :] |= down
        edge[:, 1:] |= right
    return edge.astype(np.uint8) * 255


class SamEdge(Specialist):
    name: ClassVar[str] = "sam_edge"
    requires: ClassVar[tuple[str, ...]] = ("instance",)
    Options: ClassVar[type[BaseModel]] = SamEdgeOptions

    def columns(self) -> list[pa.Field]:
        return [self.map_field("sam_edge", "uint8", kind="binary_map")]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "instance" not in batch:
            raise KeyError(
                "sam_edge needs the 'instance' column: enable the semseg specialist "
                "(or, later, sam) and run it first"
            )
        s = self.image_size
        out = []
        for i in range(num_samples(batch)):
            instance = sample_map(batch["instance"][i], (s, s), "int32")
            if instance is None:  # no instances for this sample: no label either
                out.append(None)
                continue
            edge = instance_boundaries(instance, thickness=self.options.thickness)
            out.append(edge.reshape(-1))
        return {"sam_edge": out}
