"""Colour palettes: for k = 1..7, the k dominant RGB colours of the image by k-means.

The reference precomputes palettes for k = 1..7 with PyPalette (apple/ml-4m `fourm/data/modality_transforms.py`, ColorPaletteTransform); the
serializer later draws one k per sample. Here palette k is ``cv2.kmeans`` with k
clusters on (a fixed-seed subsample of) the pixels, its centres rounded to uint8 and
ordered by cluster size, largest first (ties: by colour). Deterministic: the pixel
subsample and OpenCV's k-means++ seeding both use ``seed``. Cost: about 10 ms per
image on one core with the defaults (1,024 pixels, 2 attempts); ``max_pixels: 4096,
attempts: 3`` moves colours by ~6/255 on average and costs ~2.5x.

An image with at most k distinct colours gets exactly those colours (by pixel count),
repeated in the same order to fill k entries: palette k always has 3k values.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.pseudolabel.specialists.base import Specialist, num_samples, sample_image

NUM_PALETTES = 7  # palettes for k = 1..7 colours (max_seq_len 23 = 1 + 3*7 + EOS)


class ColorPaletteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: int = Field(1024, ge=16)  # pixels subsampled per image for k-means
    attempts: int = Field(2, ge=1)  # k-means restarts; the most compact one wins
    max_iter: int = Field(30, ge=1)
    epsilon: float = Field(0.5, gt=0)  # stop when centres move less than this (RGB units)
    seed: int = 0


def _ordered(colors: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Colours sorted by size (desc), ties by R, G, B (asc). colors: (k, 3)."""
    order = np.lexsort((colors[:, 2], colors[:, 1], colors[:, 0], -sizes))
    return colors[order]


def palette(pixels: np.ndarray, k: int, opts: ColorPaletteOptions) -> np.ndarray:
    """(N, 3) uint8 pixels -> (k, 3) uint8 dominant colours."""
    codes = (pixels[:, 0].astype(np.uint32) << 16) | (pixels[:, 1].astype(np.uint32) << 8)
    codes |= pixels[:, 2]  # one uint32 per colour: a fast np.unique
    ucodes, counts = np.unique(codes, return_counts=True)  # (U,), (U,)
    uniq = np.stack([(ucodes >> 16) & 255, (ucodes >> 8) & 255, ucodes & 255], axis=1)
    uniq = uniq.astype(np.uint8)  # (U, 3)
    if len(uniq) <= k:
        colors = _ordered(uniq, counts)
        return colors[np.arange(k) % len(colors)]
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, opts.max_iter, opts.epsilon)
    cv2.setRNGSeed(opts.seed)  # k-means++ seeding draws from OpenCV's thread RNG
    _, labels, centers = cv2.kmeans(
        pixels.astype(np.float32), k, None, criteria, opts.attempts, cv2.KMEANS_PP_CENTERS
    )
    sizes = np.bincount(labels.reshape(-1), minlength=k)
    colors = np.clip(np.rint(centers), 0, 255).astype(np.uint8)  # (k, 3)
    return _ordered(colors, sizes)


def palettes(rgb: np.ndarray, opts: ColorPaletteOptions) -> list[np.ndarray]:
    """(S, S, 3) uint8 image -> 7 flat palettes, palette k holding 3k uint8 values."""
    pixels = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)  # (S*S, 3)
    if len(pixels) > opts.max_pixels:
        rng = np.random.default_rng(opts.seed)
        pixels = pixels[np.sort(rng.choice(len(pixels), opts.max_pixels, replace=False))]
    return [palette(pixels, k, opts).reshape(-1) for k in range(1, NUM_PALETTES + 1)]


class ColorPalette(Specialist):
    name: ClassVar[str] = "color_palette"
    Options: ClassVar[type[BaseModel]] = ColorPaletteOptions

    def columns(self) -> list[pa.Field]:
        return [self.field("color_palette", pa.list_(pa.list_(pa.uint8())))]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        s = self.image_size
        out = [
            palettes(sample_image(batch, i, s), self.options) for i in range(num_samples(batch))
        ]
        return {"color_palette": out}
