"""DINOv2 ViT-B/14 features through transformers: the 4M-21 ``tok_dinov2`` and
``tok_dinov2_global`` labels.

"Normalised" means what DINOv2 calls it (facebookresearch/dinov2 ``vision_transformer.py``,
``forward_features``: ``x_norm_clstoken``, ``x_norm_patchtokens``): the tokens after the
backbone's final LayerNorm, which transformers' ``Dinov2Model`` returns as
``last_hidden_state``. Not L2-normalised to unit length. 4M-21 tokenizes exactly these
(apple/ml-4m ``run_training_vqvae.py``: ``x_norm_patchtokens`` for ``DINOv2-B14``,
``x_norm_clstoken`` for ``DINOv2-B14-global``):

- ``dinov2``: ``last_hidden_state[:, 1:]`` as a ``(16, 16, 768)`` float16 map at 224 px;
- ``dinov2_global``: ``last_hidden_state[:, 0]``, 768 float16, always stored.

``Dinov2Model`` interpolates its positional embedding (trained at 518 px) to any input grid.
Weights: ``pretrained`` = ``Dinov2Model.from_pretrained("facebook/dinov2-base")``; ``path`` = a
folder saved by ``save_pretrained`` (same call); ``random`` = a ``Dinov2Config`` built from
the options (defaults: ViT-B/14), never downloaded. The options' ``hidden_size`` and
``patch_size`` declare the columns, so a loaded checkpoint must agree with them.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fm21.config import ConfigError
from fm21.pseudolabel.specialists.feature_network import FeatureNetwork
from fm21.pseudolabel.specialists.weights import Preprocess, cache_dir


class Dinov2Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocess: Preprocess = Preprocess()  # ImageNet mean/std, bicubic, 224 px
    hidden_size: int = Field(768, ge=1)  # ViT-B
    patch_size: int = Field(14, ge=1)
    # random init only (a checkpoint brings its own):
    num_layers: int = Field(12, ge=1)
    num_heads: int = Field(12, ge=1)
    mlp_ratio: int = Field(4, ge=1)


class Dinov2Features(FeatureNetwork):
    name: ClassVar[str] = "dinov2"
    default_model_id: ClassVar[str] = "facebook/dinov2-base"
    Options: ClassVar[type[BaseModel]] = Dinov2Options
    feature_maps: ClassVar[tuple[str, ...]] = ("dinov2",)
    global_columns: ClassVar[tuple[str, ...]] = ("dinov2_global",)

    @property
    def patch_size(self) -> int:
        return self.options.patch_size

    def channels(self, column: str) -> int:
        return self.options.hidden_size

    def build(self, location: str | None):
        from transformers import Dinov2Config, Dinov2Model

        o = self.options
        if location is None:
            config = Dinov2Config(hidden_size=o.hidden_size, num_hidden_layers=o.num_layers,
                                  num_attention_heads=o.num_heads, mlp_ratio=o.mlp_ratio, patch_size=o.patch_size,
                                  image_size=o.preprocess.input_size)
            return Dinov2Model(config)
        model = Dinov2Model.from_pretrained(location, cache_dir=str(cache_dir() / "hf"))
        for key in ("hidden_size", "patch_size"):
            if getattr(model.config, key) != getattr(o, key):
                raise ConfigError(f"'pseudolabel.specialists.{self.name}.options.{key}': {getattr(o, key)}, but the "
                                  f"checkpoint {location} has {key} {getattr(model.config, key)}")
        return model

    def forward(self, x):
        tokens = self.model(pixel_values=x).last_hidden_state  # (B, 1 + g², D), after the final LayerNorm
        b, _, d = tokens.shape
        g = x.shape[-1] // self.patch_size
        return {"dinov2": tokens[:, 1:].reshape(b, g, g, d), "dinov2_global": tokens[:, 0]}
