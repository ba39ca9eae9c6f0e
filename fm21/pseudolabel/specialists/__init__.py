"""Specialists by name: ``SPECIALISTS[spec.specialist](cfg, image_size=...)``.

Keys are the registry's ``specialist`` values (``fm21.modalities``). An explicit
literal: adding a specialist is one file and one line here.
"""

from __future__ import annotations

from fm21.pseudolabel.specialists.base import Specialist
from fm21.pseudolabel.specialists.canny_edge import CannyEdge
from fm21.pseudolabel.specialists.caption import CaptionSource
from fm21.pseudolabel.specialists.color_palette import ColorPalette
from fm21.pseudolabel.specialists.depth import DepthOracle
from fm21.pseudolabel.specialists.detection import DetectionOracle
from fm21.pseudolabel.specialists.image import ImageColumns
from fm21.pseudolabel.specialists.metadata import Metadata
from fm21.pseudolabel.specialists.normal import NormalOracle
from fm21.pseudolabel.specialists.sam_edge import SamEdge
from fm21.pseudolabel.specialists.semseg import SemsegOracle

SPECIALISTS: dict[str, type[Specialist]] = {
    "image": ImageColumns,
    "depth": DepthOracle,
    "normal": NormalOracle,
    "semseg": SemsegOracle,
    "detection": DetectionOracle,
    "caption": CaptionSource,
    "canny_edge": CannyEdge,
    "sam_edge": SamEdge,
    "color_palette": ColorPalette,
    "metadata": Metadata,
}

__all__ = ["SPECIALISTS", "Specialist"]
