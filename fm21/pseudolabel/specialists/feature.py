"""Feature-map specialists: frozen networks whose patch features become a modality
(CLIP, DINOv2, ImageBind in 4M-21), and the rule that decides which rows store them.

A patch feature map costs about 1.2 MB per 224-px sample in fp16 for the three networks
of 4M-21 together, too much to keep for a whole web-scale dataset. So labels.lance stores
feature maps only for the rows the tokenizer trains on (``pseudolabel.feature_maps``);
the tokens job runs the specialist itself on every rgb crop of the other rows and
tokenizes the features at once, as the reference's ``save_vq_tokens.py``
(apple/ml-4m) does for its feature tokenizers.

The protocol is :class:`FeatureMapSpecialist`:

- ``feature_maps``: its output columns that are patch feature maps (``(g, g, C)`` at
  ``g = image side / patch``). Other columns it has (a global embedding) are always stored.
- :meth:`FeatureMapSpecialist.features`: pixels in, feature maps out, depending on the
  pixels only (no ground truth, no other column), so the tokens job can call it on a
  crop; feature maps are returned in their stored dtype, so tokens from stored and from
  recomputed features are the same.

The networks (``clip``, ``dinov2``, ``imagebind``) share their runner in ``feature_network.py``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import Specialist
from fm21.tokenize.crops import key_hash

SAMPLE_SALT = "feature-sample:"  # so the sample is not the validation split (same hash, unsalted)


class FeatureMapSpecialist(Specialist):
    """A specialist producing patch feature maps that the tokens job may compute on the fly."""

    feature_maps: ClassVar[tuple[str, ...]] = ()  # output columns that are patch feature maps

    def feature_map_field(self, name: str, grid: int, channels: int, dtype: str = "float16") -> pa.Field:
        """A ``(grid, grid, channels)`` feature map column. A variable-size list, not a
        fixed-size one: in Lance (pylance 4.0.2) a null fixed-size list still takes its
        width on disk, a null variable-size list takes nothing, so the rows outside the
        feature sample cost no space (docs/data-plane.md)."""
        return self.field(name, pa.list_(pa.from_numpy_dtype(np.dtype(dtype))), shape=[grid, grid, channels],
                          dtype=dtype)

    def features(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, R, R, 3)`` uint8 -> ``{column: (B, R/p, R/p, C)}`` in the stored dtype."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Default: the feature maps of the batch's images, flat per sample."""
        feats = self.features(np.asarray(batch["rgb"]))
        return {c: [m.reshape(-1) for m in feats[c]] for c in self.feature_maps}


def feature_map_columns(specialist: Specialist) -> tuple[str, ...]:
    return tuple(getattr(specialist, "feature_maps", ()))


def in_feature_sample(key: str, fraction: float) -> bool:
    """Whether sample ``key`` keeps its feature maps in labels.lance: a stable hash of the
    key, so every worker decides alone, with no global list, and reruns agree."""
    if fraction >= 1.0:
        return True
    return key_hash(SAMPLE_SALT + key) / 2**32 < fraction


def sample_fraction(store: str, sample_size: int, num_samples: int) -> float:
    """``pseudolabel.feature_maps`` as the fraction of keys that keep feature maps."""
    if store == "all":
        return 1.0
    if store == "none" or num_samples <= 0:
        return 0.0
    return min(1.0, sample_size / num_samples)


def decode_feature_maps(column: pa.ChunkedArray | pa.Array, field: pa.Field) -> list[np.ndarray | None]:
    """A feature-map column -> one ``(g, g, C)`` array per row (None where not stored)."""
    shape = json.loads(field.metadata[b"shape"])
    dtype = np.dtype(field.metadata.get(b"dtype", b"float16").decode())
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    size = int(np.prod(shape))
    if pa.types.is_fixed_size_list(column.type):  # null rows keep their slots
        values = column.values.slice(column.offset * size, len(column) * size)
        values = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        return [values[i * size:(i + 1) * size].reshape(shape) if ok else None for i, ok in enumerate(valid)]
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)  # valid rows only
    out: list[np.ndarray | None] = []
    start = 0
    for ok in valid:
        if ok:
            out.append(values[start:start + size].reshape(shape))
            start += size
        else:
            out.append(None)
    return out
