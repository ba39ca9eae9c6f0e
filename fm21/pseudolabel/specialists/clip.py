"""CLIP patch features: OpenAI CLIP ViT-B/16 through open_clip, the 4M-21 ``tok_clip`` labels.

Column ``clip``: ``ln_post(tokens[1:]) @ proj`` (the class token dropped), one 512-d vector
per 16-px patch, a ``(14, 14, 512)`` float16 map at 224 px: the CLIP-B16 features 4M-21
tokenizes (apple/ml-4m ``fourm/utils/clip`` with ``return_final_tokens_no_cls``; paper
§3, "Feature maps"). The projection puts patch features in the joint image-text space,
where CLIP's pooled embedding lives (Radford et al. 2021, CLIP).

OpenAI's weights were trained with QuickGELU, so ``options.quick_gelu`` is true by default
(``create_model("ViT-B-16", pretrained="openai")`` alone builds GELU and only warns).
No global column: 4M-21 has no CLIP global modality.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from fm21.pseudolabel.specialists.open_clip_vit import OpenClipFeatures, OpenClipOptions


class ClipOptions(OpenClipOptions):
    arch: str = "ViT-B-16"
    quick_gelu: bool = True


class ClipFeatures(OpenClipFeatures):
    name: ClassVar[str] = "clip"
    default_model_id: ClassVar[str] = "openai"  # open_clip pretrained tag of ViT-B-16
    Options: ClassVar[type[BaseModel]] = ClipOptions
    feature_maps: ClassVar[tuple[str, ...]] = ("clip",)

    def channels(self, column: str) -> int:
        return self.embed_dim  # proj output: 512 for ViT-B/16

    def forward(self, x):
        _, patches = self.tokens(x)  # (B, g, g, W)
        return {"clip": patches @ self.model.proj}  # (B, g, g, 512)
