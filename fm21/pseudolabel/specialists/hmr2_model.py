"""HMR2.0: a ViT-H/16 backbone and a one-query transformer-decoder SMPL head.

fm21's own implementation of the network of "Humans in 4D: Reconstructing and Tracking
Humans with Transformers" (Goel et al., ICCV 2023; github shubham-goel/4D-Humans), the
human-pose pseudo-labeler of 4M-21 (arXiv 2406.09406, Sec. 3 and App.):

- backbone (4D-Humans ``hmr2/models/backbones/vit.py``, ViTPose's ``ViT``): a 256x192 person
  crop, 16-px patches through a conv with padding 2 (a 16x12 grid), a learned position
  embedding with one unused class slot, 32 pre-norm blocks of width 1280 (16 heads, MLP 4x,
  LayerNorm eps 1e-6), a final LayerNorm -> ``(N, 192, 1280)`` tokens;
- SMPL head (``hmr2/models/heads/smpl_head.py`` + ``components/pose_transformer.py``): one
  query token (a zero scalar embedded to width 1024 plus a learned position) through 6
  decoder layers (self-attention, cross-attention to the backbone tokens, MLP; 8 heads of 64,
  MLP 1024, pre-LayerNorm), then linear read-outs added to the SMPL mean parameters
  (24 joints x 6D rotation, 10 betas, 3 weak-perspective camera values). One pass, no
  iterative error feedback (IEF_ITERS 1). 6D -> rotation matrix by Gram-Schmidt (Zhou et
  al., CVPR 2019), so every output rotation is orthonormal with determinant +1.

Released weights: ``epoch=35-step=1000000.ckpt`` inside 4D-Humans' ``hmr2_data.tar.gz``, a
PyTorch-Lightning checkpoint whose ``state_dict`` names this network ``backbone.*`` and
``smpl_head.*``. :data:`KEY_MAP` maps them to fm21's names explicitly; the training-only
parts of the checkpoint (the pose discriminator, the SMPL body model's buffers) are
skipped by name, and any other key is an error.
"""

from __future__ import annotations

import pickle
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NUM_BODY_JOINTS = 23  # SMPL joints besides the root (global orientation)
NUM_BETAS = 10
CHECKPOINT_MEMBER = "logs/train/multiruns/hmr2/0/checkpoints/epoch=35-step=1000000.ckpt"


@dataclass(frozen=True)
class HMR2Config:
    embed_dim: int = 1280  # ViT-H
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: tuple[int, int] = (256, 192)  # (H, W) of the crop the position embedding was trained at
    head_dim: int = 1024  # the decoder's width
    head_depth: int = 6
    head_heads: int = 8
    head_dim_head: int = 64
    head_mlp_dim: int = 1024

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid of ``image_size`` (padding 2 as in 4D-Humans' PatchEmbed)."""
        return tuple((s + 4 - self.patch_size) // self.patch_size + 1 for s in self.image_size)


ARCHS: dict[str, HMR2Config] = {
    "vit_h": HMR2Config(),
    # tests and plumbing: same structure, a few thousand parameters
    "tiny": HMR2Config(embed_dim=32, depth=2, num_heads=2, patch_size=8, image_size=(32, 24), head_dim=32,
                       head_depth=2, head_heads=2, head_dim_head=16, head_mlp_dim=64),
}


# ---------------------------------------------------------------------------- backbone
class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, dim_head: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = (dim_head or dim // num_heads) * num_heads
        self.qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, num_heads: int, dim_head: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = num_heads * dim_head
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        m = context.shape[1]
        q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)  # (B, h, n, d)
        k, v = self.kv(context).view(b, m, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # 2 x (B, h, M, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViTPose-style plain ViT: ``(N, 3, H, W)`` -> ``(N, Hp*Wp, D)`` tokens."""

    def __init__(self, cfg: HMR2Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, padding=2)
        gh, gw = cfg.grid
        self.pos_embed = nn.Parameter(torch.randn(1, gh * gw + 1, d) * 0.02)  # slot 0: ViTPose's class token
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def position(self, hp: int, wp: int) -> torch.Tensor:
        """``(1, hp*wp, D)``: the patch positions plus the class slot (4D-Humans adds both);
        bicubic-resized when the crop's grid differs from the trained one (ViTPose's get_abs_pos)."""
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        gh, gw = self.cfg.grid
        if (hp, wp) != (gh, gw):
            grid = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, D, gh, gw)
            grid = F.interpolate(grid, size=(hp, wp), mode="bicubic", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, hp * wp, -1)
        return grid + cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (N, D, Hp, Wp)
        hp, wp = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.position(hp, wp)  # (N, Hp*Wp, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ---------------------------------------------------------------------------- SMPL head
class DecoderLayer(nn.Module):
    def __init__(self, cfg: HMR2Config) -> None:
        super().__init__()
        d = cfg.head_dim
        self.self_norm = nn.LayerNorm(d)
        self.self_attn = SelfAttention(d, cfg.head_heads, dim_head=cfg.head_dim_head, bias=False)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attn = CrossAttention(d, cfg.embed_dim, cfg.head_heads, cfg.head_dim_head)
        self.mlp_norm = nn.LayerNorm(d)
        self.mlp = Mlp(d, cfg.head_mlp_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_norm(x))
        x = x + self.cross_attn(self.cross_norm(x), context)
        return x + self.mlp(self.mlp_norm(x))


def identity_6d(num: int) -> torch.Tensor:
    """``(num * 6,)``: the identity rotation in the 6D layout of :func:`rot6d_to_rotmat`."""
    return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).repeat(num)


class SMPLHead(nn.Module):
    """Backbone tokens ``(N, M, C)`` -> SMPL rotations, betas and weak-perspective camera."""

    def __init__(self, cfg: HMR2Config) -> None:
        super().__init__()
        d, num_pose = cfg.head_dim, 6 * (NUM_BODY_JOINTS + 1)
        self.token_embed = nn.Linear(1, d)  # the query is a zero scalar (TRANSFORMER_INPUT 'zero')
        self.query_pos = nn.Parameter(torch.randn(1, 1, d))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.head_depth))
        self.pose_out = nn.Linear(d, num_pose)
        self.betas_out = nn.Linear(d, NUM_BETAS)
        self.cam_out = nn.Linear(d, 3)
        # SMPL mean parameters (4D-Humans' smpl_mean_params.npz, stored in the checkpoint as
        # buffers); at random init: identity rotations, mean shape, HMR's mean camera scale 0.9
        self.register_buffer("init_pose", identity_6d(NUM_BODY_JOINTS + 1)[None])  # (1, 144)
        self.register_buffer("init_betas", torch.zeros(1, NUM_BETAS))
        self.register_buffer("init_cam", torch.tensor([[0.9, 0.0, 0.0]]))

    def forward(self, context: torch.Tensor) -> dict[str, torch.Tensor]:
        n = context.shape[0]
        x = self.token_embed(context.new_zeros(n, 1, 1)) + self.query_pos  # (N, 1, d)
        for layer in self.layers:
            x = layer(x, context)
        x = x[:, 0]  # (N, d)
        pose = self.pose_out(x) + self.init_pose  # (N, 144)
        rotmats = rot6d_to_rotmat(pose).view(n, NUM_BODY_JOINTS + 1, 3, 3)
        return {
            "global_orient": rotmats[:, 0],  # (N, 3, 3)
            "body_pose": rotmats[:, 1:],  # (N, 23, 3, 3)
            "betas": self.betas_out(x) + self.init_betas,  # (N, 10)
            "cam": self.cam_out(x) + self.init_cam,  # (N, 3): s, tx, ty of the crop
        }


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """``(..., 6k)`` -> ``(-1, 3, 3)``: each 6-vector holds two columns a1, a2 (4D-Humans'
    layout), orthonormalised by Gram-Schmidt; the third column is their cross product."""
    x = x.reshape(-1, 2, 3).transpose(1, 2)  # (R, 3, 2)
    b1 = F.normalize(x[:, :, 0], dim=-1)
    a2 = x[:, :, 1]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


class HMR2(nn.Module):
    """Person crops ``(N, 3, H, W)`` normalised by ImageNet mean/std -> SMPL parameters."""

    def __init__(self, cfg: HMR2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.vit = ViT(cfg)
        self.head = SMPLHead(cfg)

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.vit(crops))


# ---------------------------------------------------------------------------- released weights
# (released name, fm21 name); {i} is a block / decoder-layer index. Every released
# ``backbone.*`` / ``smpl_head.*`` tensor matches exactly one row.
_HEAD_LAYER = "smpl_head.transformer.transformer.layers.{i}"
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("backbone.patch_embed.proj.{p}", "vit.patch_embed.{p}"),
    ("backbone.pos_embed", "vit.pos_embed"),
    ("backbone.blocks.{i}.norm1.{p}", "vit.blocks.{i}.norm1.{p}"),
    ("backbone.blocks.{i}.attn.qkv.{p}", "vit.blocks.{i}.attn.qkv.{p}"),
    ("backbone.blocks.{i}.attn.proj.{p}", "vit.blocks.{i}.attn.proj.{p}"),
    ("backbone.blocks.{i}.norm2.{p}", "vit.blocks.{i}.norm2.{p}"),
    ("backbone.blocks.{i}.mlp.fc1.{p}", "vit.blocks.{i}.mlp.fc1.{p}"),
    ("backbone.blocks.{i}.mlp.fc2.{p}", "vit.blocks.{i}.mlp.fc2.{p}"),
    ("backbone.last_norm.{p}", "vit.norm.{p}"),
    ("smpl_head.transformer.to_token_embedding.{p}", "head.token_embed.{p}"),
    ("smpl_head.transformer.pos_embedding", "head.query_pos"),
    (_HEAD_LAYER + ".0.norm.{p}", "head.layers.{i}.self_norm.{p}"),
    (_HEAD_LAYER + ".0.fn.to_qkv.weight", "head.layers.{i}.self_attn.qkv.weight"),
    (_HEAD_LAYER + ".0.fn.to_out.0.{p}", "head.layers.{i}.self_attn.proj.{p}"),
    (_HEAD_LAYER + ".1.norm.{p}", "head.layers.{i}.cross_norm.{p}"),
    (_HEAD_LAYER + ".1.fn.to_q.weight", "head.layers.{i}.cross_attn.q.weight"),
    (_HEAD_LAYER + ".1.fn.to_kv.weight", "head.layers.{i}.cross_attn.kv.weight"),
    (_HEAD_LAYER + ".1.fn.to_out.0.{p}", "head.layers.{i}.cross_attn.proj.{p}"),
    (_HEAD_LAYER + ".2.norm.{p}", "head.layers.{i}.mlp_norm.{p}"),
    (_HEAD_LAYER + ".2.fn.net.0.{p}", "head.layers.{i}.mlp.fc1.{p}"),
    (_HEAD_LAYER + ".2.fn.net.3.{p}", "head.layers.{i}.mlp.fc2.{p}"),
    ("smpl_head.decpose.{p}", "head.pose_out.{p}"),
    ("smpl_head.decshape.{p}", "head.betas_out.{p}"),
    ("smpl_head.deccam.{p}", "head.cam_out.{p}"),
    ("smpl_head.init_body_pose", "head.init_pose"),
    ("smpl_head.init_betas", "head.init_betas"),
    ("smpl_head.init_cam", "head.init_cam"),
)
# training-only parts of the Lightning module: the adversarial pose discriminator, the SMPL
# body model (its mesh buffers), the ActNorm flag
SKIPPED_PREFIXES = ("discriminator.", "smpl.", "initialized")


def _pattern(template: str) -> re.Pattern:
    out = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(out + "$")


_FORWARD = [(_pattern(src), dst) for src, dst in KEY_MAP]
_INVERSE = [(_pattern(dst), src) for src, dst in KEY_MAP]


def _translate(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def released_to_fm21(key: str) -> str | None:
    """The fm21 name of a released checkpoint key (None: not in the map)."""
    return _translate(key, _FORWARD)


def fm21_to_released(key: str) -> str | None:
    """The released checkpoint's name of an fm21 key (the inverse of :func:`released_to_fm21`)."""
    return _translate(key, _INVERSE)


def load_released_state_dict(model: HMR2, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a released ``state_dict`` into ``model`` through :data:`KEY_MAP`: a shape check on
    every copy, every fm21 tensor assigned exactly once, unknown keys are errors."""
    own = model.state_dict()
    assigned: set[str] = set()
    with torch.no_grad():
        for key, value in state_dict.items():
            if key.startswith(SKIPPED_PREFIXES):
                continue
            target = released_to_fm21(key)
            if target is None or target not in own:
                raise KeyError(f"HMR2 checkpoint: unexpected key {key!r}"
                               + ("" if target is None else f" (maps to {target!r}, not in this architecture)"))
            if target in assigned:
                raise KeyError(f"HMR2 checkpoint: {target!r} assigned twice (last from {key!r})")
            if tuple(value.shape) != tuple(own[target].shape):
                raise ValueError(f"HMR2 checkpoint: {key!r} has shape {tuple(value.shape)}, {target!r} "
                                 f"needs {tuple(own[target].shape)} (wrong size option?)")
            own[target].copy_(value)
            assigned.add(target)
    missing = sorted(set(own) - assigned)
    if missing:
        raise KeyError(f"HMR2 checkpoint: no tensor for {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                       f"({len(missing)} missing)")


# ---------------------------------------------------------------------------- checkpoint files
class _Opaque(dict):
    """Stands in for a class the checkpoint's pickle names but this environment lacks
    (yacs' CfgNode of the Lightning hyper-parameters): only ``state_dict`` is read."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Opaque,), {"__module__": module})


class lenient_pickle:  # noqa: N801 - a pickle *module* for torch.load
    Unpickler = _LenientUnpickler
    load = staticmethod(pickle.load)


def checkpoint_file(location: str | Path) -> Path:
    """The ``.ckpt`` of ``location``: the file itself, a folder holding the released layout,
    or ``hmr2_data.tar.gz`` (its checkpoint is extracted beside it once)."""
    path = Path(location)
    if path.is_dir():
        found = path / CHECKPOINT_MEMBER
        if not found.exists():
            candidates = sorted(path.rglob("*.ckpt"))
            if len(candidates) != 1:
                raise FileNotFoundError(f"no unique .ckpt under {path} (expected {CHECKPOINT_MEMBER})")
            found = candidates[0]
        return found
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        out = path.parent / path.name.split(".tar")[0].removesuffix(".tgz")
        target = out / CHECKPOINT_MEMBER
        if not target.exists():
            with tarfile.open(path) as tar:
                tar.extract(CHECKPOINT_MEMBER, out, filter="data")
        return target
    return path


def read_state_dict(location: str | Path) -> dict[str, torch.Tensor]:
    """The network tensors of a released checkpoint (Lightning: under ``state_dict``).
    The pickle is unpickled in full (its hyper-parameters are yacs objects, which
    ``weights_only`` refuses): load checkpoints from a source you trust."""
    ckpt = torch.load(checkpoint_file(location), map_location="cpu", pickle_module=lenient_pickle,
                      weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def build_hmr2(size: str, location: str | Path | None) -> HMR2:
    """HMR2 of architecture ``size``; weights from a released checkpoint, or random init."""
    model = HMR2(ARCHS[size])
    if location is not None:
        load_released_state_dict(model, read_state_dict(location))
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "HMR2", "HMR2Config", "KEY_MAP", "build_hmr2", "fm21_to_released", "load_released_state_dict",
           "num_parameters", "read_state_dict", "released_to_fm21", "rot6d_to_rotmat"]
