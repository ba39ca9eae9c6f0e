"""Transformer blocks of the 4M trunk, pre-LN (apple/ml-4m `fourm/models/fm_utils.py`: Block,
DecoderBlock, Mlp, GatedMlp). 4M-21 uses SwiGLU without biases (``*_swiglu_nobias``); the
GELU MLP with biases is the reference's other family (``*_gelu``).

Masks follow the mod_dict convention: a boolean tensor where **True means ignored**.
They are inverted once, right before ``scaled_dot_product_attention`` (where True
means "may attend").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def layer_norm(dim: int, bias: bool = False) -> nn.LayerNorm:
    """LayerNorm, eps 1e-6; without bias in every 4M ``*_swiglu_nobias`` model."""
    return nn.LayerNorm(dim, eps=1e-6, bias=bias)


def attention_allowed(ignore: torch.Tensor) -> torch.Tensor:
    """(B, Nq, Nk) "ignore" mask -> (B, 1, Nq, Nk) "may attend" mask for SDPA.

    A query row that may attend to nothing (a sample with no encoder input, e.g. the
    unconditional pass of classifier-free guidance, or a padded decoder query) attends
    to key 0 alone. This keeps every SDPA backend NaN-free, and unlike the reference's
    uniform attention over padding it does not depend on how many padding slots the
    batch happens to carry.
    """
    allowed = ~ignore
    empty_row = ~allowed.any(dim=-1, keepdim=True)  # (B, Nq, 1)
    first_key = torch.zeros_like(allowed)
    first_key[..., 0] = True
    return (allowed | (empty_row & first_key)).unsqueeze(1)


class SwiGLU(nn.Module):
    """Gated MLP: ``fc2(silu(fc1 x) * gate x)``. The hidden width is the reference's
    ``int(2 * int(mlp_ratio * dim) / 3)`` (GatedMlp: 2/3 of the plain MLP's, so the three
    matrices cost what the plain MLP's two do): 2048 at dim 768."""

    def __init__(self, dim: int, mlp_ratio: float, bias: bool = False) -> None:
        super().__init__()
        hidden = int(2 * int(mlp_ratio * dim) / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.gate(x))


class GeluMLP(nn.Module):
    """Plain MLP: ``fc2(gelu(fc1 x))``, hidden ``int(mlp_ratio * dim)`` (the reference's Mlp)."""

    def __init__(self, dim: int, mlp_ratio: float, bias: bool = True) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


MLPS: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, "gelu": GeluMLP}


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, D/H)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, N, D/H)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Causal step: ``x`` (B, T, D) are the next T positions; they attend to every cached
        position and causally among themselves. Their K/V are appended to ``cache``."""
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D/H)
        if cache.self_k is not None:
            k = torch.cat([cache.self_k, k], dim=2)
            v = torch.cat([cache.self_v, v], dim=2)
        cache.self_k, cache.self_v = k, v
        past = k.shape[2] - T
        # query t (absolute position past + t) may attend keys 0..past + t
        allowed = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


@dataclass
class LayerCache:
    """Key/value cache of one decoder layer for incremental (autoregressive) decoding.

    ``self_k``/``self_v`` (B, H, T, D/H) grow by the decoded positions; ``cross_k``/
    ``cross_v`` (B, H, N, D/H) are the projected encoder context, computed on the first step.
    """

    self_k: torch.Tensor | None = None
    self_v: torch.Tensor | None = None
    cross_k: torch.Tensor | None = None
    cross_v: torch.Tensor | None = None


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        B, M, D = x.shape
        N = context.shape[1]
        h = self.num_heads
        q = self.q(x).view(B, M, h, D // h).transpose(1, 2)  # (B, H, M, D/H)
        k, v = self.kv(context).view(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)  # (B, H, N, D/H)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, M, D/H)
        return self.proj(out.transpose(1, 2).reshape(B, M, D))

    def forward_cached(
        self, x: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor, cache: LayerCache
    ) -> torch.Tensor:
        """As :meth:`forward`, but the context's K/V are projected once and kept in ``cache``
        (``context`` is only read on the first call)."""
        B, M, D = x.shape
        h = self.num_heads
        if cache.cross_k is None:
            N = context.shape[1]
            kv = self.kv(context).view(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)
            cache.cross_k, cache.cross_v = kv[0], kv[1]
        q = self.q(x).view(B, M, h, D // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, cache.cross_k, cache.cross_v, attn_mask=allowed)
        return self.proj(out.transpose(1, 2).reshape(B, M, D))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, mlp: str = "swiglu",
                 bias: bool = False) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim, bias)
        self.attn = SelfAttention(dim, num_heads, bias)
        self.norm2 = layer_norm(dim, bias)
        self.mlp = MLPS[mlp](dim, mlp_ratio, bias)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), allowed)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention (own query and context norms), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, mlp: str = "swiglu",
                 bias: bool = False) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim, bias)
        self.self_attn = SelfAttention(dim, num_heads, bias)
        self.query_norm = layer_norm(dim, bias)
        self.context_norm = layer_norm(dim, bias)
        self.cross_attn = CrossAttention(dim, num_heads, bias)
        self.norm2 = layer_norm(dim, bias)
        self.mlp = MLPS[mlp](dim, mlp_ratio, bias)

    def forward(
        self,
        y: torch.Tensor,
        context: torch.Tensor,
        *,
        self_allowed: torch.Tensor,
        cross_allowed: torch.Tensor,
    ) -> torch.Tensor:
        y = y + self.self_attn(self.norm1(y), self_allowed)
        y = y + self.cross_attn(self.query_norm(y), self.context_norm(context), cross_allowed)
        return y + self.mlp(self.norm2(y))

    def forward_cached(
        self,
        y: torch.Tensor,
        context: torch.Tensor | None,
        *,
        cross_allowed: torch.Tensor,
        cache: LayerCache,
    ) -> torch.Tensor:
        """Incremental decoding of the next positions ``y`` (B, T, D) of one causal target:
        the same computation as :meth:`forward` with a causal self-attention mask, reusing
        the K/V of earlier positions and of the context from ``cache``. ``context`` (the
        un-normalized encoder output) is only needed on the first step."""
        y = y + self.self_attn.forward_cached(self.norm1(y), cache)
        ctx = self.context_norm(context) if cache.cross_k is None else None
        y = y + self.cross_attn.forward_cached(self.query_norm(y), ctx, cross_allowed, cache)
        return y + self.mlp(self.norm2(y))
