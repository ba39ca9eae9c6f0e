"""Canny edges of the RGB image (OpenCV), as 0/255 uint8 maps.

The reference does not record its thresholds (apple/ml-4m `fourm/data/modality_info.py`: "[not found]"; OpenCV is
used). Defaults are 100/200 on the grayscale image after a 3x3 Gaussian blur: the
thresholds of ControlNet's Canny annotator, which keep object outlines and drop
texture on real photos and keep the silhouettes of the flat-shaded synthetic scenes.
``auto: true`` instead derives them per image from the median grey level m (the
common rule ``low = max(0, (1 - sigma) m)``, ``high = min(255, (1 + sigma) m)``), which
follows exposure but fires on noise in low-contrast images.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fm21.pseudolabel.specialists.base import Specialist, num_samples, sample_image


class CannyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    low_threshold: float = Field(100.0, ge=0)  # hysteresis thresholds on the gradient
    high_threshold: float = Field(200.0, ge=0)
    auto: bool = False  # median-based thresholds per image instead of the fixed ones
    auto_sigma: float = Field(0.33, gt=0, lt=1)
    blur_kernel: int = Field(3, ge=0)  # odd Gaussian kernel side; 0 or 1: no blur
    blur_sigma: float = Field(0.0, ge=0)  # 0: OpenCV derives it from the kernel size
    l2_gradient: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> CannyOptions:
        if self.low_threshold > self.high_threshold:
            raise ValueError("low_threshold must not exceed high_threshold")
        if self.blur_kernel > 1 and self.blur_kernel % 2 == 0:
            raise ValueError("blur_kernel must be odd")
        return self


def canny(rgb: np.ndarray, opts: CannyOptions) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (S, S) uint8 edge map with values 0/255."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    if opts.blur_kernel > 1:
        k = opts.blur_kernel
        gray = cv2.GaussianBlur(gray, (k, k), opts.blur_sigma)
    low, high = opts.low_threshold, opts.high_threshold
    if opts.auto:
        median = float(np.median(gray))
        low = max(0.0, (1.0 - opts.auto_sigma) * median)
        high = min(255.0, (1.0 + opts.auto_sigma) * median)
    return cv2.Canny(gray, low, high, L2gradient=opts.l2_gradient)


class CannyEdge(Specialist):
    name: ClassVar[str] = "canny_edge"
    Options: ClassVar[type[BaseModel]] = CannyOptions

    def columns(self) -> list[pa.Field]:
        return [self.map_field("canny_edge", "uint8", kind="binary_map")]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        s = self.image_size
        edges = [
            canny(sample_image(batch, i, s), self.options).reshape(-1)  # (S*S,)
            for i in range(num_samples(batch))
        ]
        return {"canny_edge": edges}
