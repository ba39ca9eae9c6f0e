"""DPT networks for the dense-regression specialists (depth, surface normals), and the port of
Omnidata's DPT checkpoints into transformers' ``DPTForDepthEstimation``.

4M-21 pseudo-labels depth and normals with Omnidata DPT-B-Hybrid v2 (apple/ml-4m
``fourm/data/modality_info.py``). Those checkpoints (``omnidata_dpt_depth_v2.ckpt``,
``omnidata_dpt_normal_v2.ckpt``, EPFL-VILAB/omnidata ``omnidata_tools/torch``) are Lightning
state dicts of the MiDaS-style ``DPTDepthModel`` (``modules/midas/dpt_depth.py``): a timm
``vit_base_resnet50_384`` under ``pretrained.model.*`` (ResNetV2 stem + stages 0-2 as the
hybrid patch embedding, 12 ViT blocks), the readout projections and reassemble convs under
``pretrained.act_postprocess{1..4}``, and the fusion decoder and head under ``scratch.*``.
:func:`omnidata_key_map` names, for every tensor of that file, the tensor of transformers'
DPT it becomes (built from the config, so it covers DPT-Hybrid and plain-ViT DPT at any size);
:func:`load_omnidata` copies with a shape assert on each tensor and fails naming every
unassigned or unused key. The names follow that source, and transformers'
``models/dpt/convert_dpt_hybrid_to_pytorch.py`` for the other side.

Where a network comes from (``weights_location``): a hub id or model folder loads through
``from_pretrained``; a ``.ckpt``/``.pth``/``.pt`` file (or an ``http(s)`` URL of one, downloaded
into the weights cache) loads through the key map into the architecture of the options;
None builds that architecture at random init.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fm21.config import ConfigError
from fm21.pseudolabel.specialists.base import num_samples, sample_image
from fm21.pseudolabel.specialists.weights import NetworkSpecialist, cache_dir

CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt")
# timm's ImageNet classifier of vit_base_resnet50_384: saved in the file, unused by DPT.
OMNIDATA_UNUSED = ("pretrained.model.head.weight", "pretrained.model.head.bias")


class DPTArchitecture(BaseModel):
    """The DPT built at random init or for a ported checkpoint (a hub id or model folder
    brings its own config). Defaults: DPT-B-Hybrid at 384 px, the architecture of Omnidata v2
    and of ``Intel/dpt-hybrid-midas``; tests shrink it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hybrid: bool = True  # ResNet-50 (BiT) stem as patch embedding, or plain ViT patches
    image_size: int = Field(384, ge=16)  # the hybrid embedding requires exactly this input
    patch_size: int = Field(16, ge=1)
    hidden_size: int = Field(768, ge=1)
    num_hidden_layers: int = Field(12, ge=1)
    num_attention_heads: int = Field(12, ge=1)
    intermediate_size: int = Field(3072, ge=1)
    layer_norm_eps: float = 1e-6  # timm's ViT LayerNorm eps
    backbone_out_indices: tuple[int, int, int, int] = (2, 5, 8, 11)  # hybrid: only the last two
    neck_hidden_sizes: tuple[int, int, int, int] = (256, 512, 768, 768)
    reassemble_factors: tuple[float, float, float, float] = (1, 1, 1, 0.5)  # plain ViT: (4, 2, 1, 0.5)
    fusion_hidden_size: int = Field(256, ge=2)
    # hybrid only: the BiT ResNet stem and three stages (ResNet-50: 3, 4, 9 bottlenecks)
    bit_depths: tuple[int, int, int] = (3, 4, 9)
    bit_hidden_sizes: tuple[int, int, int] = (256, 512, 1024)
    bit_embedding_size: int = Field(64, ge=1)
    bit_num_groups: int = Field(32, ge=1)


def dpt_config(arch: DPTArchitecture, *, num_output_channels: int = 1):
    """A transformers ``DPTConfig`` for ``arch``; ``num_output_channels`` is kept in the config
    (an extra key) so a saved n-channel DPT reloads through ``from_pretrained``."""
    from transformers import BitConfig, DPTConfig

    kw: dict[str, Any] = {}
    if arch.hybrid:
        kw["backbone_config"] = BitConfig(
            global_padding="same", layer_type="bottleneck", depths=list(arch.bit_depths),
            hidden_sizes=[*arch.bit_hidden_sizes, 2 * arch.bit_hidden_sizes[-1]],
            embedding_size=arch.bit_embedding_size, num_groups=arch.bit_num_groups,
            out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True)
        grid = arch.image_size // arch.patch_size
        kw["backbone_featmap_shape"] = [1, arch.bit_hidden_sizes[-1], grid, grid]
    return DPTConfig(
        is_hybrid=arch.hybrid, image_size=arch.image_size, patch_size=arch.patch_size,
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads, intermediate_size=arch.intermediate_size,
        layer_norm_eps=arch.layer_norm_eps, backbone_out_indices=list(arch.backbone_out_indices),
        neck_hidden_sizes=list(arch.neck_hidden_sizes),
        reassemble_factors=[int(f) if f >= 1 else f for f in arch.reassemble_factors],  # kernel sizes
        fusion_hidden_size=arch.fusion_hidden_size, readout_type="project",
        use_batch_norm_in_fusion_residual=False, num_output_channels=num_output_channels, **kw)


@cache
def dense_dpt_class():
    """``DPTForDepthEstimation`` with an n-channel head (``config.num_output_channels``).

    Omnidata's normal DPT is its depth DPT with 3 output channels (``DPTDepthModel(...,
    num_channels=3)``, head ``Conv(32 -> 3)`` then ReLU); transformers' head is fixed at 1.
    Defined lazily so importing fm21 does not import transformers."""
    import torch.nn as nn
    from transformers import DPTForDepthEstimation

    class DPTForDenseRegression(DPTForDepthEstimation):
        def __init__(self, config):
            super().__init__(config)
            channels = getattr(config, "num_output_channels", 1)
            if channels != 1:
                self.head.head[4] = nn.Conv2d(32, channels, kernel_size=1)  # (B, 32, H, W) -> (B, C, H, W)
                self.post_init()

    return DPTForDenseRegression


# ------------------------------------------------------------------------ Omnidata key map
def omnidata_key_map(config) -> dict[str, tuple[str, ...]]:
    """Omnidata/MiDaS DPT tensor name -> the transformers DPT tensor(s) it becomes. A timm
    ``attn.qkv`` tensor maps to three targets (query, key, value: equal chunks along dim 0)."""
    m: dict[str, tuple[str, ...]] = {}

    def both(src: str, dst: str, names: tuple[str, ...] = ("weight", "bias")) -> None:
        for n in names:
            m[f"{src}.{n}"] = (f"{dst}.{n}",)

    vit, emb = "pretrained.model", "dpt.embeddings"
    m[f"{vit}.cls_token"] = (f"{emb}.cls_token",)
    m[f"{vit}.pos_embed"] = (f"{emb}.position_embeddings",)
    if config.is_hybrid:  # timm resnetv2.ResNetV2 (preact=False) -> transformers BitBackbone
        src, dst = f"{vit}.patch_embed.backbone", f"{emb}.backbone.bit"
        m[f"{src}.stem.conv.weight"] = (f"{dst}.embedder.convolution.weight",)
        both(f"{src}.stem.norm", f"{dst}.embedder.norm")
        for s, depth in enumerate(config.backbone_config.depths):
            for b in range(depth):
                sb, db = f"{src}.stages.{s}.blocks.{b}", f"{dst}.encoder.stages.{s}.layers.{b}"
                if b == 0:  # the first bottleneck of a stage changes width: a projection shortcut
                    m[f"{sb}.downsample.conv.weight"] = (f"{db}.downsample.conv.weight",)
                    both(f"{sb}.downsample.norm", f"{db}.downsample.norm")
                for i in (1, 2, 3):
                    m[f"{sb}.conv{i}.weight"] = (f"{db}.conv{i}.weight",)
                    both(f"{sb}.norm{i}", f"{db}.norm{i}")
        both(f"{vit}.patch_embed.proj", f"{emb}.projection")
    else:
        both(f"{vit}.patch_embed.proj", f"{emb}.patch_embeddings.projection")
    for i in range(config.num_hidden_layers):  # timm Block -> DPTViTLayer
        sb, db = f"{vit}.blocks.{i}", f"dpt.encoder.layer.{i}"
        both(f"{sb}.norm1", f"{db}.layernorm_before")
        for n in ("weight", "bias"):
            qkv = ("query", "key", "value")
            m[f"{sb}.attn.qkv.{n}"] = tuple(f"{db}.attention.attention.{p}.{n}" for p in qkv)
        both(f"{sb}.attn.proj", f"{db}.attention.output.dense")
        both(f"{sb}.norm2", f"{db}.layernorm_after")
        both(f"{sb}.mlp.fc1", f"{db}.intermediate.dense")
        both(f"{sb}.mlp.fc2", f"{db}.output.dense")
    both(f"{vit}.norm", "dpt.layernorm")
    # reassemble: act_postprocess{k} = (readout, transpose, unflatten, 1x1 conv, resize); the
    # hybrid's first two stages are identities (the ResNet features are used as they are)
    first = 2 if config.is_hybrid else 0
    for i in range(first, 4):
        src, dst = f"pretrained.act_postprocess{i + 1}", "neck.reassemble_stage"
        both(f"{src}.0.project.0", f"{dst}.readout_projects.{i}.0")
        both(f"{src}.3", f"{dst}.layers.{i}.projection")
        if config.reassemble_factors[i] != 1:
            both(f"{src}.4", f"{dst}.layers.{i}.resize")
    for i in range(4):
        m[f"scratch.layer{i + 1}_rn.weight"] = (f"neck.convs.{i}.weight",)
        # refinenet4 fuses the deepest features first: transformers' fusion layer 0
        src, dst = f"scratch.refinenet{i + 1}", f"neck.fusion_stage.layers.{3 - i}"
        both(f"{src}.out_conv", f"{dst}.projection")
        for r in (1, 2):
            for c in (1, 2):
                both(f"{src}.resConfUnit{r}.conv{c}", f"{dst}.residual_layer{r}.convolution{c}")
    for j in (0, 2, 4):  # head: conv, upsample, conv, ReLU, conv(32 -> C), ReLU
        both(f"scratch.output_conv.{j}", f"head.head.{j}")
    return m


def omnidata_state_dict(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model tensors of an Omnidata file: a Lightning checkpoint keeps them under
    ``state_dict`` with a ``model.`` prefix (stripped as the Omnidata demo does, ``k[6:]``)."""
    if "state_dict" in checkpoint:
        return {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    return dict(checkpoint)


def load_omnidata(model, state_dict: dict[str, Any]) -> None:
    """Copy an Omnidata DPT state dict into transformers' DPT ``model`` through
    :func:`omnidata_key_map`: a shape assert on every copy; every model tensor assigned exactly
    once and every file tensor used, else a ValueError naming the keys."""
    import torch

    key_map = omnidata_key_map(model.config)
    target = model.state_dict()
    assigned: dict[str, str] = {}
    unused = sorted(k for k in state_dict if k not in key_map and k not in OMNIDATA_UNUSED)
    missing_src = sorted(k for k in key_map if k not in state_dict)
    if unused or missing_src:
        raise ValueError(f"Omnidata checkpoint does not match the DPT architecture: unused keys "
                         f"(no target) {unused}; expected keys absent from the file {missing_src}")
    with torch.no_grad():
        for src, dsts in key_map.items():
            chunks = torch.chunk(state_dict[src], len(dsts), dim=0) if len(dsts) > 1 else (state_dict[src],)
            for dst, value in zip(dsts, chunks):
                if dst not in target:
                    raise ValueError(f"key map names {dst!r} (from {src!r}), which the model does not have")
                if dst in assigned:
                    raise ValueError(f"{dst!r} assigned twice (from {assigned[dst]!r} and {src!r})")
                assert value.shape == target[dst].shape, (
                    f"{src} {tuple(value.shape)} -> {dst} {tuple(target[dst].shape)}")
                target[dst].copy_(value)
                assigned[dst] = src
    unassigned = sorted(set(target) - set(assigned))
    if unassigned:
        raise ValueError(f"DPT tensors not assigned by the Omnidata checkpoint: {unassigned}")


def read_checkpoint(location: str) -> dict[str, Any]:
    """A ``.ckpt``/``.pth`` file, local or an http(s) URL (downloaded once into the cache)."""
    import torch

    path = Path(location)
    if location.startswith(("http://", "https://")):
        path = cache_dir() / "url" / Path(location.split("?")[0]).name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(location, str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # a Lightning checkpoint may pickle its hyper-parameters as objects; the file is the
        # one the config names (a trusted source), so it is unpickled in full
        return torch.load(str(path), map_location="cpu", weights_only=False)


def is_checkpoint_file(location: str) -> bool:
    return Path(location.split("?")[0]).suffix in CHECKPOINT_SUFFIXES


# ------------------------------------------------------------------------ the specialist base
class DPTSpecialist(NetworkSpecialist):
    """Shared by the depth and normal specialists: loading (hub / folder / Omnidata file /
    random), preprocessing from options, and the forward to ``(B, C, S, S)`` float32."""

    num_output_channels: ClassVar[int] = 1

    @property
    def source(self) -> Literal["hf", "url"]:  # type: ignore[override]
        return "url" if self.model_id.startswith(("http://", "https://")) else "hf"

    def model_class(self):
        """What ``from_pretrained`` loads a hub id or folder with."""
        return dense_dpt_class()

    def build(self, location: str | None):
        arch = self.options.architecture
        if location is None or is_checkpoint_file(location):
            model = dense_dpt_class()(dpt_config(arch, num_output_channels=self.num_output_channels))
            if location is not None:
                load_omnidata(model, omnidata_state_dict(read_checkpoint(location)))
        else:
            kw = {} if self.cfg.weights == "path" else {"cache_dir": str(cache_dir() / "hf")}
            model = self.model_class().from_pretrained(location, **kw)
        config = model.config
        if getattr(config, "is_hybrid", False) and config.image_size != self.options.preprocess.input_size:
            # the hybrid embedding rejects any other input size (transformers DPTViTHybridEmbeddings)
            raise ConfigError(
                f"'pseudolabel.specialists.{self.name}.options.preprocess.input_size' is "
                f"{self.options.preprocess.input_size}, but the DPT-Hybrid network takes exactly "
                f"{config.image_size} px")
        return model

    def images(self, batch: dict[str, Any]) -> np.ndarray:
        """``(B, S, S, 3)`` uint8, each sample shape-checked (a ValueError names its key)."""
        s = self.image_size
        return np.stack([sample_image(batch, i, s) for i in range(num_samples(batch))])

    def predict(self, batch: dict[str, Any]):
        """The network's output resized to the run's image size: ``(B, C, S, S)`` float32."""
        import torch.nn.functional as F

        self.load()
        x = self.options.preprocess(self.images(batch), self.device)  # (B, 3, R, R)
        with self.inference():
            out = self.model(pixel_values=x).predicted_depth  # (B, H, W) or (B, C, H, W)
        out = out.float()
        if out.ndim == 3:
            out = out[:, None]  # (B, 1, H, W)
        s = self.image_size
        if out.shape[-2:] != (s, s):
            out = F.interpolate(out, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return out.cpu()  # (B, C, S, S)
