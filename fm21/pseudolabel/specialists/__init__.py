"""Specialists by name: ``specialist_class(spec.specialist, cfg.weights)(cfg, image_size=...)``.

Keys are the registry's ``specialist`` values (``fm21.modalities``). Explicit literals:
adding a specialist is one file and one line here.

- ``SPECIALISTS``: the specialist of each name that runs without weights configured
  (``weights: none``): classical algorithms, the source's own text, and the oracles that
  read a synthetic scene's ground truth; for names that exist only as networks, the network.
- ``NETWORKS``: the network standing behind a name that also has a no-weights specialist
  (depth: the oracle with ``weights: none``, the DPT network with ``weights: pretrained |
  path | random``). The weights mode picks, so a recipe swaps an oracle for its network
  by one key.
"""

from __future__ import annotations

from fm21.pseudolabel.specialists.base import Specialist
from fm21.pseudolabel.specialists.canny_edge import CannyEdge
from fm21.pseudolabel.specialists.caption import CaptionSource
from fm21.pseudolabel.specialists.caption_model import CaptionModel
from fm21.pseudolabel.specialists.clip import ClipFeatures
from fm21.pseudolabel.specialists.color_palette import ColorPalette
from fm21.pseudolabel.specialists.depth import DepthOracle
from fm21.pseudolabel.specialists.depth_dpt import DepthDPT
from fm21.pseudolabel.specialists.detection import DetectionOracle
from fm21.pseudolabel.specialists.detection_net import DetectionNet
from fm21.pseudolabel.specialists.dinov2 import Dinov2Features
from fm21.pseudolabel.specialists.human_pose import HumanPose
from fm21.pseudolabel.specialists.image import ImageColumns
from fm21.pseudolabel.specialists.imagebind import ImageBindFeatures
from fm21.pseudolabel.specialists.metadata import Metadata
from fm21.pseudolabel.specialists.normal import NormalOracle
from fm21.pseudolabel.specialists.normal_dpt import NormalDPT
from fm21.pseudolabel.specialists.sam import SamInstances
from fm21.pseudolabel.specialists.sam_edge import SamEdge
from fm21.pseudolabel.specialists.sam_oracle import SamOracle
from fm21.pseudolabel.specialists.semseg import SemsegOracle
from fm21.pseudolabel.specialists.semseg_mask2former import SemsegMask2Former
from fm21.pseudolabel.specialists.t5 import T5CaptionEmbedding

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
    "human_pose": HumanPose,
    "clip": ClipFeatures,
    "dinov2": Dinov2Features,
    "imagebind": ImageBindFeatures,
    "t5": T5CaptionEmbedding,
    "sam": SamOracle,
}

NETWORKS: dict[str, type[Specialist]] = {
    "caption": CaptionModel,
    "depth": DepthDPT,
    "normal": NormalDPT,
    "semseg": SemsegMask2Former,
    "detection": DetectionNet,
    "sam": SamInstances,
}


def specialist_class(name: str, weights: str = "none") -> type[Specialist]:
    """The class that runs specialist ``name`` with weights mode ``weights``."""
    if name not in SPECIALISTS:
        raise KeyError(f"unknown specialist {name!r}; known: {sorted(SPECIALISTS)}")
    network = NETWORKS.get(name)
    if network is not None and weights in network.supported_weights:
        return network
    return SPECIALISTS[name]


__all__ = ["NETWORKS", "SPECIALISTS", "Specialist", "specialist_class"]
