"""ImageBind image features: the frozen OpenCLIP ViT-H/14 (laion2b_s32b_b79k) image encoder.

ImageBind initialises its image encoder from OpenCLIP ViT-H/14 and keeps it frozen (Girdhar
et al. 2023, ImageBind: One Embedding Space To Bind Them All), so its image tokens are
OpenCLIP's, loaded here through open_clip. 4M-21 tokenizes the vision
tokens at the trunk's width, 1280 (apple/ml-4m ``run_training_vqvae.py``: ``[:, 1:]`` for
``ImageBind-H14``, ``[:, 0]`` for ``ImageBind-H14-global``):

- ``imagebind``: the patch tokens after the final LayerNorm (open_clip ``ln_post``, ImageBind's
  vision-head LayerNorm), ``(16, 16, 1280)`` float16 at 224 px;
- ``imagebind_global``: the class token after the same LayerNorm, 1280 float16 (before the
  head's 1280 -> 1024 projection into the joint embedding space).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from fm21.pseudolabel.specialists.open_clip_vit import OpenClipFeatures, OpenClipOptions


class ImageBindOptions(OpenClipOptions):
    arch: str = "ViT-H-14"
    quick_gelu: bool = False


class ImageBindFeatures(OpenClipFeatures):
    name: ClassVar[str] = "imagebind"
    default_model_id: ClassVar[str] = "laion2b_s32b_b79k"  # open_clip pretrained tag of ViT-H-14
    Options: ClassVar[type[BaseModel]] = ImageBindOptions
    feature_maps: ClassVar[tuple[str, ...]] = ("imagebind",)
    global_columns: ClassVar[tuple[str, ...]] = ("imagebind_global",)

    def channels(self, column: str) -> int:
        return self.width  # trunk width: 1280 for ViT-H/14

    def forward(self, x):
        cls, patches = self.tokens(x)  # (B, W), (B, g, g, W)
        return {"imagebind": patches, "imagebind_global": cls}
