"""ViT encoder/decoder trunk of the VQ-VAE and DiVAE families (``trunk: vit``).

The reference tokenizers (apple/ml-4m `fourm/vq/models/vit_models.py`, `ViTEncoder` and
`ViTDecoder`; ViT-B = width 768, 12 blocks, 12 heads) are plain pre-norm transformers over
the token grid:

- encoder ``(B, C, R, R) -> (B, D, g, g)``: a patchify conv (kernel = stride = ``patch_size``;
  a 1x1 conv for feature maps, the reference's ``patch_proj=False``) -> + fixed 2D sin-cos
  position embedding -> ``num_layers`` blocks -> the residual tanh post-MLP of ViT-VQGAN
  (``x + fc2(tanh(fc1(LayerNorm(x))))``, the reference's ``post_mlp=True``);
- decoder ``(B, D, g, g) -> (B, C_out, R, R)``: + position embedding -> blocks -> the same
  residual tanh MLP -> a per-token linear to ``C_out * P * P`` values, unpatchified.

Module and parameter names are the reference's (``proj``, ``pos_emb``, ``blocks.<i>.norm1``,
``.attn.qkv``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.fc2``, ``norm_mlp``,
``post_mlp.fc1/fc2``, ``out_proj``), so a released checkpoint's ``encoder.*``/``decoder.*``
keys map one to one (``fm21.tokenize.import_released``).

``pos_emb`` is a buffer (the reference keeps it as a frozen parameter) of ``pos_grid`` cells
per side (0: the config's token grid). When the grid differs (a tokenizer trained at 448 px
read at 224 px) it is resized bicubically, as the reference does.

Config fields read: ``hidden_dim`` (D), ``num_layers``, ``num_heads`` (0: D / 64, at least
1), ``patch_size``, ``grid_size``, ``pos_grid``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MLP_RATIO = 4  # every reference ViT preset
LN_EPS = 1e-6  # the reference's norm_layer: LayerNorm(eps=1e-6)


def num_heads_of(cfg) -> int:
    """Attention heads of a config: ``num_heads``, or one per 64 channels (ViT-B: 12)."""
    heads = int(getattr(cfg, "num_heads", 0) or max(1, cfg.hidden_dim // 64))
    if cfg.hidden_dim % heads or cfg.hidden_dim % 4:
        raise ValueError(f"vit trunk: hidden_dim {cfg.hidden_dim} must split into {heads} heads and be a "
                         f"multiple of 4 (2D sin-cos position embedding)")
    return heads


def sincos_pos_emb(side: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding ``(1, dim, side, side)`` (MoCo v3): a quarter of
    the channels each for sin/cos of the column and of the row index."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (D/4,)
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float32),
                                torch.arange(side, dtype=torch.float32), indexing="ij")
    col_angles = cols.reshape(-1, 1) * omega  # (g*g, D/4)
    row_angles = rows.reshape(-1, 1) * omega
    emb = torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)
    return emb.t().reshape(1, dim, side, side)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (bias, as ViT-B)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # (B, N, 3, H, d/H) -> three (B, H, N, d/H): the reference's channel order of qkv
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d/H)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, MLP_RATIO * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ViTTrunk(nn.Module):
    """What the encoder and the decoder share: position embedding, blocks, tanh post-MLP."""

    def __init__(self, cfg) -> None:
        super().__init__()
        dim = cfg.hidden_dim
        pos_grid = int(getattr(cfg, "pos_grid", 0) or cfg.grid_size)
        self.register_buffer("pos_emb", sincos_pos_emb(pos_grid, dim))  # (1, D, pg, pg), not trained
        heads = num_heads_of(cfg)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(cfg.num_layers)))
        self.norm_mlp = nn.LayerNorm(dim, eps=LN_EPS)
        self.post_mlp = Mlp(dim, MLP_RATIO * dim, act=nn.Tanh)

    def _init_weights(self) -> None:
        for m in self.modules():  # ViT/MAE-style: xavier linears and patch projection, zero biases
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_emb
        if pos.shape[-2:] != (h, w):  # another resolution than trained: resize like the reference
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)  # (1, h*w, D)

    def _transform(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``(B, h*w, D)`` -> blocks and post-MLP -> ``(B, h*w, D)``."""
        x = self.blocks(tokens + self._positions(h, w))
        return x + self.post_mlp(self.norm_mlp(x))


class ViTEncoder(_ViTTrunk):
    """``(B, C_in, R, R)`` -> ``(B, hidden_dim, R/P, R/P)``."""

    def __init__(self, in_channels: int, cfg) -> None:
        super().__init__(cfg)
        p = cfg.patch_size
        self.proj = nn.Conv2d(in_channels, cfg.hidden_dim, kernel_size=p, stride=p)  # patchify (1x1 for features)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, h, w)
        b, d, h, w = x.shape
        x = self._transform(x.flatten(2).transpose(1, 2), h, w)  # (B, h*w, D)
        return x.transpose(1, 2).reshape(b, d, h, w)


class ViTDecoder(_ViTTrunk):
    """``(B, hidden_dim, h, w)`` -> ``(B, C_out, h*P, w*P)``."""

    def __init__(self, out_channels: int, cfg) -> None:
        super().__init__(cfg)
        self.out_channels, self.patch = out_channels, cfg.patch_size
        self.out_proj = nn.Linear(cfg.hidden_dim, out_channels * self.patch**2)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = self.out_proj(self._transform(x.flatten(2).transpose(1, 2), h, w))  # (B, h*w, C*P*P)
        c, p = self.out_channels, self.patch
        # 'b (h w) (c ph pw) -> b c (h ph) (w pw)', the reference's unpatchify order
        x = x.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h * p, w * p)
