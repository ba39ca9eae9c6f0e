"""The shared runner of the frozen feature networks of 4M-21 (CLIP, DINOv2, ImageBind).

A :class:`FeatureNetwork` is a :class:`FeatureMapSpecialist` (the tokens job may call
:meth:`features` on rgb crops) and a :class:`NetworkSpecialist` (weights modes, cache,
device). A subclass implements :meth:`FeatureNetwork.forward`: normalised pixels in, every
output column out as a tensor, patch feature maps ``(B, g, g, C)`` and global vectors
``(B, C)``. This module prepares the pixels (the options' :class:`Preprocess`), runs the
network in chunks of ``batch_size`` under the specialist's precision, and returns the
columns in their stored dtype (float16), so features stored by the pseudolabel job and
features recomputed by the tokens job are the same numbers.

The feature grid is the network's own patch grid at ``preprocess.input_size``
(``g = input_size // patch``: 224 / 16 = 14 for CLIP-B/16, 224 / 14 = 16 for the /14 models),
whatever the size of the pixels handed in.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from fm21.pseudolabel.specialists.base import num_samples
from fm21.pseudolabel.specialists.feature import FeatureMapSpecialist
from fm21.pseudolabel.specialists.weights import NetworkSpecialist

STORED_DTYPE = "float16"
FP16_MAX = float(np.finfo(np.float16).max)


class FeatureNetwork(FeatureMapSpecialist, NetworkSpecialist):
    """A frozen ViT whose patch tokens (and global token) are the labels."""

    global_columns: ClassVar[tuple[str, ...]] = ()  # (B, C) vectors, always stored

    # ------------------------------------------------------------------ architecture
    @property
    def patch_size(self) -> int:
        raise NotImplementedError

    @property
    def grid(self) -> int:
        """Side of the stored feature map: the patch grid at the preprocessing input size."""
        return self.options.preprocess.input_size // self.patch_size

    def channels(self, column: str) -> int:
        raise NotImplementedError

    def forward(self, x):
        """``(B, 3, R, R)`` normalised pixels -> ``{column: (B, g, g, C) | (B, C)}`` tensors."""
        raise NotImplementedError

    # ------------------------------------------------------------------ columns
    def global_field(self, name: str) -> pa.Field:
        c = self.channels(name)
        return self.field(name, pa.list_(pa.float16(), c), shape=[c], dtype=STORED_DTYPE)

    def columns(self) -> list[pa.Field]:
        maps = [self.feature_map_field(c, self.grid, self.channels(c), STORED_DTYPE) for c in self.feature_maps]
        return maps + [self.global_field(c) for c in self.global_columns]

    # ------------------------------------------------------------------ running
    def run(self, rgb: np.ndarray, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``(B, R, R, 3)`` uint8 -> ``{column: float16 array}`` for ``columns``."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.shape[1] != rgb.shape[2]:
            raise ValueError(f"{self.name}: pixels must be (B, R, R, 3) uint8, got shape {rgb.shape}")
        self.load()
        chunks: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        step = max(1, self.cfg.batch_size)
        for start in range(0, len(rgb), step):
            x = self.options.preprocess(rgb[start:start + step], self.device)  # (b, 3, R', R')
            with self.inference():
                out = self.forward(x)
            for c in columns:
                chunks[c].append(out[c].float().clamp(-FP16_MAX, FP16_MAX).cpu().numpy().astype(STORED_DTYPE))
        empty = {c: np.empty((0, *self._shape(c)), STORED_DTYPE) for c in columns}
        return {c: np.concatenate(v) if v else empty[c] for c, v in chunks.items()}

    def _shape(self, column: str) -> tuple[int, ...]:
        c = self.channels(column)
        return (self.grid, self.grid, c) if column in self.feature_maps else (c,)

    def features(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """Pixels only -> ``{feature map column: (B, g, g, C) float16}`` (the tokens job's call)."""
        return self.run(rgb, self.feature_maps)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        s = self.image_size
        if num_samples(batch) == 0:
            return {c: [] for c in self.feature_maps + self.global_columns}
        for i in range(num_samples(batch)):
            shape = np.shape(batch["rgb"][i])
            if shape != (s, s, 3):
                raise ValueError(f"sample {batch['key'][i]!r}: rgb has shape {shape}, expected ({s}, {s}, 3) "
                                 f"(image_size {s})")
        rgb = np.asarray(batch["rgb"], dtype=np.uint8)  # (B, S, S, 3)
        out = self.run(rgb, self.feature_maps + self.global_columns)
        return {c: [m.reshape(-1) if c in self.feature_maps else m for m in v] for c, v in out.items()}
