"""Instance edges: boundaries between distinct instance ids, as 0/255 uint8 maps.

4M-21 derives ``tok_sam_edge`` from SAM instance masks (the exact recipe is not in the
reference repo, apple/ml-4m `fourm/data/modality_info.py`). The instances come from:

- ``sam_instances`` (the ``sam`` specialist, real images): the masks are painted into an
  instance-id map, largest area first, so a smaller mask lying on a larger one (a part
  on its object, an object on the background region) stays visible on top; pixels no
  mask covers keep id 0;
- otherwise the ``instance`` column (the semseg oracle's synthetic ground truth).

``source`` picks: ``auto`` (the default: SAM's instances when the sample has them), ``sam``
or ``instance`` (the demo: edges of the synthetic truth, not of its random-init SAM).

Rule: a pixel is an edge when a 4-neighbour has a different id (background 0 counts
as an id, so object outlines against background are edges; the image border is not).
``thickness: 2`` marks both sides of every boundary; ``thickness: 1`` (default, like
Canny's 1-px edges) marks only the pixel above / left of it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from fm21.pseudolabel.specialists.base import Specialist, num_samples, sample_map


class SamEdgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    thickness: Literal[1, 2] = 1
    source: Literal["auto", "sam", "instance"] = "auto"  # where the instance ids come from


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


def paint_instances(instances: Sequence[dict[str, Any]], size: int) -> np.ndarray:
    """``sam_instances`` records of one sample -> (S, S) int32 instance ids (0: no mask).

    Masks are painted largest first, so smaller masks overwrite the larger ones they lie on;
    ids follow that order (1 = largest)."""
    from fm21.pseudolabel.specialists.sam import decode_rle

    ids = np.zeros((size, size), dtype=np.int32)
    ordered = sorted(instances, key=lambda r: -int(r["area"]))  # stable: equal areas keep their order
    for k, inst in enumerate(ordered, start=1):
        mask = decode_rle(inst["rle"])  # (S, S) bool
        if mask.shape != ids.shape:
            raise ValueError(f"sam_edge: an instance mask has shape {mask.shape}, expected {ids.shape}")
        ids[mask] = k
    return ids


class SamEdge(Specialist):
    name: ClassVar[str] = "sam_edge"
    requires: ClassVar[tuple[str, ...]] = ("instance", "sam_instances")
    Options: ClassVar[type[BaseModel]] = SamEdgeOptions

    def columns(self) -> list[pa.Field]:
        return [self.map_field("sam_edge", "uint8", kind="binary_map")]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "instance" not in batch and "sam_instances" not in batch:
            raise KeyError(
                "sam_edge needs the 'sam_instances' column (enable the sam specialist) or, on "
                "synthetic scenes, the 'instance' column (the semseg specialist), run first"
            )
        out = []
        for i in range(num_samples(batch)):
            instance = self._instance_ids(batch, i)
            if instance is None:  # no instances for this sample: no label either
                out.append(None)
                continue
            edge = instance_boundaries(instance, thickness=self.options.thickness)
            out.append(edge.reshape(-1))
        return {"sam_edge": out}

    def _instance_ids(self, batch: dict[str, Any], index: int) -> np.ndarray | None:
        """(S, S) instance ids of one sample: SAM's masks when present, else the ``instance`` map."""
        s = self.image_size
        source = self.options.source
        sam = batch.get("sam_instances") if source != "instance" else None
        if source == "sam" and sam is None:
            raise KeyError("sam_edge (source: sam) needs the 'sam_instances' column: enable the sam specialist")
        if sam is not None and sam[index] is not None:
            try:
                return paint_instances(sam[index], s)
            except ValueError as err:
                raise ValueError(f"sample {batch['key'][index]!r}: {err}") from None
        if "instance" in batch and source != "sam":
            return sample_map(batch["instance"][index], (s, s), "int32")
        return None
