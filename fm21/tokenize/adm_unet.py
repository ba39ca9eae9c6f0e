"""The released DiVAE decoders' UNet in diffusers form: the layout, the build, the key map.

The released DiVAEs (``EPFL-VILAB/4M_tokenizers_{rgb,depth,normal,edge}_*``) decode with
apple/ml-4m `fourm/vq/models/unet/unet.py` ``unet_patched``: a ``PatchedUNetCondCat`` (the
noisy image pixel-unshuffled by 4, the quantised codes nearest-upsampled to that grid and
concatenated as extra channels; fm21's ``DiVAE.denoise`` does the same) around an ADM /
guided-diffusion ``UNetModel`` (256 channels, mult (1, 2, 2, 2), 3 res-blocks per level,
self-attention at down-rates 4 and 8 and in the middle, one head, the legacy qkv order, no
scale-shift norm, conv resampling, GroupNorm(32)).

diffusers' ``UNet2DModel`` expresses every part of it (its own
`scripts/convert_consistency_to_diffusers.py` converts ADM UNets), so fm21 keeps one decoder
class and builds it "ADM-shaped" (``DiVAEConfig.unet_layout = "adm"``):

====================================  =============================================
ADM (``UNetModel``)                   ``UNet2DModel``
====================================  =============================================
``timestep_embedding``: [cos, sin],   ``time_embedding_type="positional"``,
frequencies ``exp(-ln(1e4) i / half)`` ``flip_sin_to_cos=True``, ``freq_shift=0``
``time_embed.0/2``                    ``time_embedding.linear_1/2``
``input_blocks.0.0``                  ``conv_in``
ResBlock ``in_layers.0/2``,           ResnetBlock2D ``norm1``/``conv1``,
``emb_layers.1``, ``out_layers.0/3``, ``time_emb_proj``, ``norm2``/``conv2``,
``skip_connection`` (1x1)             ``conv_shortcut`` (1x1)
``use_scale_shift_norm``              ``resnet_time_scale_shift="scale_shift"``
AttentionBlock ``norm``, ``qkv``      Attention ``group_norm``, ``to_q/to_k/to_v``
(1x1 conv1d), ``proj_out``            (linears), ``to_out.0``
attention at down-rate ``2**level``   ``AttnDownBlock2D``/``AttnUpBlock2D`` at level
Downsample ``op`` / Upsample ``conv`` ``downsamplers.0.conv`` / ``upsamplers.0.conv``
``middle_block.0/1/2``                ``mid_block.resnets.0``/``attentions.0``/``resnets.1``
``output_blocks`` (res+1 per level)   ``up_blocks`` (``layers_per_block + 1`` resnets)
``out.0`` / ``out.2``                 ``conv_norm_out`` / ``conv_out``
====================================  =============================================

The skip connections pair up the same way in both (every input block's output, the first
conv's included, consumed last-in first-out), so the map is one to one apart from the
``qkv`` split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

GROUPS = 32  # `fourm/vq/models/unet/nn.py` normalization(): GroupNorm32(32, channels)

Transform = Callable[[torch.Tensor], torch.Tensor]
Mapping = dict[str, tuple[str, Transform]]  # fm21 key -> (reference key, transform)


@dataclass(frozen=True)
class AdmLayout:
    """The shape of a reference ``UNetModel``, read from its state dict."""

    channels: tuple[int, ...]  # width per level (model_channels * channel_mult)
    num_res_blocks: int
    attention_levels: tuple[int, ...]  # levels whose res-blocks are followed by attention
    scale_shift: bool  # use_scale_shift_norm
    in_channels: int  # of the first conv: image channels * patch**2 + condition channels
    out_channels: int  # of the last conv: image channels * patch**2


def build_unet(*, sample_size: int, in_channels: int, out_channels: int, channels: tuple[int, ...],
               layers_per_block: int, attention_levels: tuple[int, ...], num_heads: int, scale_shift: bool) -> Any:
    """A ``diffusers.UNet2DModel`` with the block layout of an ADM ``UNetModel``."""
    from diffusers import UNet2DModel

    attn_widths = {channels[i] for i in attention_levels} | {channels[-1]}  # the mid block always attends
    if num_heads > 1 and len(attn_widths) > 1:
        # UNet2DModel takes one head width for all blocks; ADM's fixed head *count* then
        # needs one attention width (true of unet_patched: 512 at both levels and the middle)
        raise ValueError(f"{num_heads} heads over attention widths {sorted(attn_widths)}: not expressible")
    levels = range(len(channels))
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(levels)),
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        norm_num_groups=GROUPS, attn_norm_num_groups=GROUPS, norm_eps=1e-5,
        attention_head_dim=None if num_heads == 1 else max(attn_widths) // num_heads,  # None: one head
        resnet_time_scale_shift="scale_shift" if scale_shift else "default",
        downsample_type="conv", upsample_type="conv", add_attention=True,
    )


# ---------------------------------------------------------------------- reading a reference UNet
def read_layout(state: dict[str, torch.Tensor], prefix: str = "decoder.") -> AdmLayout:
    """The ``AdmLayout`` of the reference ``UNetModel`` whose keys start with ``prefix``."""
    blocks: dict[int, set[str]] = {}
    for key in state:
        if m := re.match(rf"{re.escape(prefix)}input_blocks\.(\d+)\.(.*)$", key):
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    if 0 not in blocks:
        raise ValueError(f"no {prefix}input_blocks.0: not an ADM UNet decoder")
    levels: list[list[bool]] = [[]]  # per level: has-attention of each res-block
    widths: list[int] = []
    for i in range(1, max(blocks) + 1):
        names = blocks.get(i, set())
        if "0.op.weight" in names:  # Downsample: the next level starts
            levels.append([])
        elif "0.in_layers.2.weight" in names:
            if len(levels[-1]) == 0:
                widths.append(state[f"{prefix}input_blocks.{i}.0.in_layers.2.weight"].shape[0])
            levels[-1].append("1.qkv.weight" in names)
        else:
            raise ValueError(f"{prefix}input_blocks.{i}: neither a ResBlock nor a conv Downsample ({sorted(names)})")
    counts = {len(level) for level in levels}
    # (a resblock_updown UNet, whose down-samplers are ResBlocks, lands here too: uneven counts)
    if len(counts) != 1 or any(len(set(level)) != 1 for level in levels):
        raise ValueError(f"uneven ADM levels {levels}: fm21 builds the same block count and attention per level")
    emb = state[f"{prefix}input_blocks.1.0.emb_layers.1.weight"].shape[0]
    first = state[f"{prefix}input_blocks.0.0.weight"]  # (C0, in, 3, 3)
    if first.shape[0] != widths[0]:
        raise ValueError(f"channel_mult[0] != 1 (first conv {first.shape[0]}, level 0 {widths[0]})")
    return AdmLayout(
        channels=tuple(int(w) for w in widths), num_res_blocks=counts.pop(),
        attention_levels=tuple(i for i, level in enumerate(levels) if level[0]),
        scale_shift=emb == 2 * widths[0], in_channels=int(first.shape[1]),
        out_channels=int(state[f"{prefix}out.2.weight"].shape[0]),
    )


# ---------------------------------------------------------------------- the key map
def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _conv1d_to_linear(t: torch.Tensor) -> torch.Tensor:
    return t[..., 0] if t.ndim == 3 else t  # (C_out, C_in, 1) -> (C_out, C_in)


def qkv_part(part: int, num_heads: int) -> Transform:
    """The q (0), k (1) or v (2) rows of an ADM ``qkv`` 1x1 conv under ``QKVAttentionLegacy``:
    its output channels are ``(heads, 3, head_dim)`` (heads split before q/k/v); diffusers'
    ``to_q`` rows are ``(heads, head_dim)``."""
    def take(t: torch.Tensor) -> torch.Tensor:
        t = _conv1d_to_linear(t)  # (3C, C) or (3C,)
        rest = t.shape[1:]
        per_head = t.reshape(num_heads, 3, t.shape[0] // (3 * num_heads), *rest)  # (H, 3, ch, ...)
        return per_head[:, part].reshape(-1, *rest)  # (C, ...)
    return take


def _resnet(out: Mapping, fm21: str, ref: str, has_skip: bool) -> None:
    pairs = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3"}
    if has_skip:
        pairs["conv_shortcut"] = "skip_connection"
    for f, r in pairs.items():
        for p in ("weight", "bias"):
            out[f"{fm21}.{f}.{p}"] = (f"{ref}.{r}.{p}", _same)


def _attention(out: Mapping, fm21: str, ref: str, num_heads: int) -> None:
    for p in ("weight", "bias"):
        out[f"{fm21}.group_norm.{p}"] = (f"{ref}.norm.{p}", _same)
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            out[f"{fm21}.{name}.{p}"] = (f"{ref}.qkv.{p}", qkv_part(i, num_heads))
        out[f"{fm21}.to_out.0.{p}"] = (f"{ref}.proj_out.{p}", _conv1d_to_linear)


def _pair(out: Mapping, fm21: str, ref: str) -> None:
    for p in ("weight", "bias"):
        out[f"{fm21}.{p}"] = (f"{ref}.{p}", _same)


def adm_mapping(layout: AdmLayout, num_heads: int, *, fm21_prefix: str = "decoder.",
                ref_prefix: str = "decoder.") -> Mapping:
    """fm21 ``UNet2DModel`` key -> reference ``UNetModel`` key (and transform), every tensor."""
    out: Mapping = {}
    f, r = fm21_prefix, ref_prefix
    ch, nrb, attn = layout.channels, layout.num_res_blocks, set(layout.attention_levels)
    _pair(out, f"{f}time_embedding.linear_1", f"{r}time_embed.0")
    _pair(out, f"{f}time_embedding.linear_2", f"{r}time_embed.2")
    _pair(out, f"{f}conv_in", f"{r}input_blocks.0.0")
    i, width = 1, ch[0]
    for level, c in enumerate(ch):
        for j in range(nrb):
            _resnet(out, f"{f}down_blocks.{level}.resnets.{j}", f"{r}input_blocks.{i}.0", width != c)
            if level in attn:
                _attention(out, f"{f}down_blocks.{level}.attentions.{j}", f"{r}input_blocks.{i}.1", num_heads)
            i, width = i + 1, c
        if level < len(ch) - 1:
            _pair(out, f"{f}down_blocks.{level}.downsamplers.0.conv", f"{r}input_blocks.{i}.0.op")
            i += 1
    _resnet(out, f"{f}mid_block.resnets.0", f"{r}middle_block.0", False)
    _attention(out, f"{f}mid_block.attentions.0", f"{r}middle_block.1", num_heads)
    _resnet(out, f"{f}mid_block.resnets.1", f"{r}middle_block.2", False)
    i = 0
    for up, level in enumerate(reversed(range(len(ch)))):
        for j in range(nrb + 1):
            _resnet(out, f"{f}up_blocks.{up}.resnets.{j}", f"{r}output_blocks.{i}.0", True)  # input: h ++ skip
            k = 1
            if level in attn:
                _attention(out, f"{f}up_blocks.{up}.attentions.{j}", f"{r}output_blocks.{i}.1", num_heads)
                k = 2
            if level > 0 and j == nrb:
                _pair(out, f"{f}up_blocks.{up}.upsamplers.0.conv", f"{r}output_blocks.{i}.{k}.conv")
            i += 1
    _pair(out, f"{f}conv_norm_out", f"{r}out.0")
    _pair(out, f"{f}conv_out", f"{r}out.2")
    return out
