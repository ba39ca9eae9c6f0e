"""Patch tokens of an OpenCLIP vision transformer: shared by the CLIP and ImageBind specialists.

The forward follows open_clip 3.3.0's ``VisionTransformer`` (``open_clip/transformer.py``:
``_embeds``, ``transformer``, ``_pool``) step by step, but keeps every token instead of
pooling: ``conv1`` patchify, class token, positional embedding (bicubic-interpolated when
the input grid differs from the checkpoint's, as open_clip's ``resize_pos_embed``),
``ln_pre``, the transformer, ``ln_post`` on all tokens. CLIP then projects the patch tokens
with ``proj`` (4M-21's CLIP-B16 features, apple/ml-4m ``fourm/utils/clip``
``return_final_tokens_no_cls``); ImageBind keeps them at the trunk's width.

Weights (``weights``): ``pretrained`` loads ``open_clip.create_model(arch, pretrained=model_id)``
with ``model_id`` an open_clip pretrained tag (``openai``, ``laion2b_s32b_b79k``) into the
weights cache; ``path`` is a state-dict file of the same architecture (``torch.save(model.state_dict())``),
loaded by the same call with ``pretrained=<file>``; ``random`` builds the architecture.
``options.arch`` is a built-in open_clip model name, or the path of an open_clip model-config
JSON (registered under its file stem), e.g. a tiny ViT for tests and demos.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from fm21.config import ConfigError
from fm21.pseudolabel.specialists.feature_network import FeatureNetwork
from fm21.pseudolabel.specialists.weights import CLIP_MEAN, CLIP_STD, Preprocess, cache_dir

CLIP_PREPROCESS = Preprocess(input_size=224, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's hub file names


class OpenClipOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = "ViT-B-16"  # open_clip model name, fm21's (open_clip_configs/), or a model-config JSON path
    quick_gelu: bool = False  # the activation the weights were trained with (OpenAI CLIP: QuickGELU)
    preprocess: Preprocess = CLIP_PREPROCESS


BUNDLED = Path(__file__).with_name("open_clip_configs")  # fm21's own architectures (the demo's tiny ViT)


def model_config(arch: str) -> dict:
    """The open_clip model config of ``arch`` (a built-in name, one of fm21's bundled
    ``open_clip_configs/<name>.json``, or a JSON file), registering a file with open_clip."""
    import open_clip

    if not arch.endswith(".json") and (BUNDLED / f"{arch}.json").is_file():
        arch = str(BUNDLED / f"{arch}.json")
    if arch.endswith(".json"):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise ConfigError(f"open_clip model config {arch} does not exist")
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
        return json.loads(path.read_text())
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"unknown open_clip architecture {arch!r} (an open_clip model name or a model-config .json)")
    return cfg


def arch_name(arch: str) -> str:
    return Path(arch).stem if arch.endswith(".json") else arch


def positional_embedding(visual, grid: int):
    """``(1 + grid², W)`` positional embedding: the checkpoint's, or its patch part
    bicubic-resized to ``grid`` (open_clip ``pos_embed.resize_pos_embed``)."""
    import torch
    import torch.nn.functional as F

    pos = visual.positional_embedding  # (1 + G², W)
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if old == grid:
        return pos
    cls, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, W, G, G)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)  # (g², W)
    return torch.cat([cls, patches], dim=0)


def vit_tokens(visual, x):
    """``(B, 3, R, R)`` -> ``(cls (B, W), patches (B, g, g, W))``, both after ``ln_post``."""
    import torch

    x = visual.conv1(x)  # (B, W, g, g)
    b, width, grid, _ = x.shape
    x = x.reshape(b, width, grid * grid).permute(0, 2, 1)  # (B, g², W)
    cls = visual.class_embedding.to(x.dtype).expand(b, 1, width)  # (B, 1, W)
    x = torch.cat([cls, x], dim=1) + positional_embedding(visual, grid).to(x.dtype)  # (B, 1 + g², W)
    x = visual.ln_pre(visual.patch_dropout(x))  # patch dropout: identity in eval
    x = visual.ln_post(visual.transformer(x))  # (B, 1 + g², W)
    return x[:, 0], x[:, 1:].reshape(b, grid, grid, width)


class OpenClipFeatures(FeatureNetwork):
    """A feature specialist over an OpenCLIP ViT's tokens (subclasses pick the columns)."""

    source: ClassVar[str] = "open_clip"
    Options: ClassVar[type[BaseModel]] = OpenClipOptions

    @property
    def arch_config(self) -> dict:
        try:
            return model_config(self.options.arch)
        except ConfigError as err:
            raise ConfigError(f"'pseudolabel.specialists.{self.name}.options.arch': {err}") from None

    @property
    def patch_size(self) -> int:
        return int(self.arch_config["vision_cfg"]["patch_size"])

    @property
    def width(self) -> int:
        return int(self.arch_config["vision_cfg"]["width"])

    @property
    def embed_dim(self) -> int:
        return int(self.arch_config["embed_dim"])

    def _pretrained_cfg(self) -> dict:
        import open_clip

        key = f"'pseudolabel.specialists.{self.name}"
        cfg = open_clip.get_pretrained_cfg(arch_name(self.options.arch), self.model_id)
        if not cfg:
            raise ConfigError(f"{key}.model_id': {self.model_id!r} is not an open_clip pretrained tag of "
                              f"{self.options.arch!r}")
        trained = bool(cfg.get("quick_gelu", False))
        if trained != self.options.quick_gelu:
            raise ConfigError(f"{key}.options.quick_gelu': the {self.model_id!r} weights were trained with "
                              f"quick_gelu={trained}")
        return cfg

    def is_cached(self) -> bool:
        """Pretrained: the tag's file in the cache where open_clip's ``download_pretrained`` puts it
        (a hub repo's ``open_clip_model.safetensors``/``.bin``, or the URL's file name)."""
        if self.cfg.weights != "pretrained":
            return super().is_cached()
        from huggingface_hub import try_to_load_from_cache

        cfg, root = self._pretrained_cfg(), cache_dir() / "open_clip"
        if cfg.get("hf_hub"):
            repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" or "org/name/file"
            files = (filename,) if filename else WEIGHT_FILES
            return any(isinstance(try_to_load_from_cache(repo, f, cache_dir=str(root)), str) for f in files)
        return bool(cfg.get("url")) and (root / os.path.basename(cfg["url"])).is_file()

    def build(self, location: str | None):
        """The vision tower of ``open_clip.create_model(arch, pretrained=location)``."""
        import open_clip

        self.arch_config  # registers a JSON arch, names a bad one
        if location is not None and self.cfg.weights == "pretrained":
            self._pretrained_cfg()
        model = open_clip.create_model(arch_name(self.options.arch), pretrained=location,
                                       force_quick_gelu=self.options.quick_gelu,
                                       cache_dir=str(cache_dir() / "open_clip"))
        visual = model.visual
        plain = (getattr(visual, "attn_pool", None) is None and not getattr(visual, "final_ln_after_pool", False)
                 and getattr(visual, "pool_type", "tok") == "tok" and hasattr(visual, "conv1"))
        if not plain:
            raise ConfigError(f"'pseudolabel.specialists.{self.name}.options.arch': {self.options.arch!r} is not a "
                              "plain class-token ViT (conv1 / ln_post / proj)")
        return visual

    def tokens(self, x):
        return vit_tokens(self.model, x)
