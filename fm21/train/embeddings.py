"""Per-modality encoder and decoder embeddings of the 4M model (apple/ml-4m `fourm/models/fm.py`).

One class per modality *kind*, chosen by an explicit lookup on ``spec.kind``; the
trunk only sees ``(tokens, positions, masks)``. Modality embeddings (``mod_emb``)
live in the model, one per modality, so the encoder and decoder share them without
tied parameters.

Encoder embeddings return ``(x, pos)``: content ``x`` (B, N, D) and the position
embedding ``pos`` (B or 1, N, D) for every slot of the modality's tensor.
Decoder embeddings return a :class:`DecoderInputs` for every candidate decoder slot,
already shifted for teacher forcing where the kind needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fm21.modalities import ModalitySpec


# ------------------------------------------------------------------------------ sin-cos
def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(1, length, dim) fixed 1D sin-cos position embedding."""
    if dim % 2:
        raise ValueError(f"1D sin-cos needs an even dim, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    out = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]  # (L, D/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()[None]


def sincos_2d(side: int, dim: int, temperature: float = 10000.0, *, order: str = "xy") -> torch.Tensor:
    """(1, side*side, dim) fixed 2D sin-cos embedding of a row-major grid (MAE/4M).

    ``order`` "xy": channels [sin, cos](column), then [sin, cos](row) (fm21's default).
    "yx": row first, then column: the layout of apple/ml-4m `fourm/models/fm_utils.py`
    (build_2d_sincos_posemb meshes (w, h) with ``indexing='ij'``, so its first half follows
    the slow, row index of a row-major token grid); the released 4M models need it."""
    if dim % 4:
        raise ValueError(f"2D sin-cos needs dim divisible by 4, got {dim}")
    if order not in ("xy", "yx"):
        raise ValueError(f"2D sin-cos order must be 'xy' or 'yx', got {order!r}")
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    first, second = (cols, rows) if order == "xy" else (rows, cols)
    out_w = first.flatten().double()[:, None] * omega[None]  # (N, D/4)
    out_h = second.flatten().double()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1).float()[None]


@torch.no_grad()
def set_sincos_2d_order(module: nn.Module, order: str) -> None:
    """Rebuild every fixed 2D grid table (:class:`GridPositions` sin-cos buffers) in ``order``
    (see :func:`sincos_2d`); "xy" is how they are built, so it changes nothing."""
    if order == "xy":
        return
    for m in module.modules():
        if isinstance(m, GridPositions) and not m.learned:
            n, dim = m.pos_emb.shape[1:]
            side = int(round(n**0.5))
            m.pos_emb.copy_(sincos_2d(side, dim, order=order))


class GridPositions(nn.Module):
    """Position embedding of a fixed token grid: sin-cos for spatial grids, learned for
    global tokens (which have no spatial layout, apple/ml-4m `fourm/data/modality_info.py`)."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__()
        self.learned = spec.kind == "global_tokens"
        if self.learned:
            self.pos_emb = nn.Parameter(torch.zeros(1, spec.num_tokens, dim))
        else:
            self.register_buffer("pos_emb", sincos_2d(spec.grid_size, dim), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.pos_emb  # (1, N, D)


def sequence_positions(pos_table: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """Positions counted over the *valid* slots only (cumsum), zero on ignored slots.

    pos_table (1, L, D), ignore (B, L) -> (B, L, D).
    """
    pos_id = (~ignore).long().cumsum(dim=1) - 1  # (B, L)
    pos_id = pos_id.clamp(min=0)
    pos = pos_table[0][pos_id]  # (B, L, D)
    return pos.masked_fill(ignore.unsqueeze(-1), 0.0)


# ------------------------------------------------------------------------------ encoder
class PixelEncoderEmbedding(nn.Module):
    """RGB pixels -> linear patch projection ``Linear(P*P*3, D, bias=False)``."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__()
        self.patch_size = spec.patch_size
        self.proj = nn.Linear(spec.patch_size**2 * 3, dim, bias=False)
        self.positions = GridPositions(spec, dim)

    def forward(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        img = d["tensor"]  # (B, 3, R, R)
        B, C, R, _ = img.shape
        P, g = self.patch_size, R // self.patch_size
        patches = img.reshape(B, C, g, P, g, P).permute(0, 2, 4, 3, 5, 1)  # (B, g, g, P, P, C)
        return self.proj(patches.reshape(B, g * g, P * P * C)), self.positions()  # (B, N, D)


class TokenEncoderEmbedding(nn.Module):
    """VQ token ids on a grid (image, feature map or global) -> ``Embedding(vocab, D)``."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__()
        self.token_emb = nn.Embedding(spec.vocab_size, dim)
        self.positions = GridPositions(spec, dim)

    def forward(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = d["tensor"].reshape(d["tensor"].shape[0], -1)  # (B, N)
        return self.token_emb(ids), self.positions()


class SequenceEncoderEmbedding(nn.Module):
    """Span-masked WordPiece ids -> ``Embedding(vocab, D, padding_idx=0)`` + 1D sin-cos
    positions counted over the input tokens."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__()
        self.token_emb = nn.Embedding(spec.vocab_size, dim, padding_idx=0)
        self.register_buffer("pos_table", sincos_1d(spec.seq_tensor_len, dim), persistent=False)

    def forward(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.token_emb(d["tensor"]), sequence_positions(self.pos_table, d["input_mask"])


class VectorSequenceEncoderEmbedding(nn.Module):
    """Frozen text-encoder vectors (T5) -> ``Linear(E, D)``; input only."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(spec.embedding_dim, dim)
        self.register_buffer("pos_table", sincos_1d(spec.max_seq_len, dim), persistent=False)

    def forward(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(d["tensor"])  # (B, L, D)
        return x, sequence_positions(self.pos_table, d["input_mask"])


ENCODER_EMBEDDINGS: dict[str, type[nn.Module]] = {
    "pixels": PixelEncoderEmbedding,
    "image_tokens": TokenEncoderEmbedding,
    "feature_tokens": TokenEncoderEmbedding,
    "global_tokens": TokenEncoderEmbedding,
    "sequence": SequenceEncoderEmbedding,
    "embedding": VectorSequenceEncoderEmbedding,
}


# ------------------------------------------------------------------------------ decoder
@dataclass
class DecoderInputs:
    """Every candidate decoder slot of one modality, before the valid-first sort.

    ``queries`` is None where the model should use its learned mask token.
    """

    queries: torch.Tensor | None  # (B, L, D)
    pos: torch.Tensor  # (B or 1, L, D)
    target_ids: torch.Tensor  # (B, L) ids the slot predicts
    ignore: torch.Tensor  # (B, L) True = not a decoder slot
    attention: torch.Tensor  # (B, L) compressed self-attention mask (cumsum form, §5.2)
    slot_index: torch.Tensor  # (L,) index into the modality's tensor whose id the slot predicts


class TokenDecoderEmbedding(nn.Module):
    """Grid targets: queries are the mask token + position; logits ``Linear(D, vocab)``."""

    def __init__(self, spec: ModalitySpec, dim: int, *, tie_logits: bool = False) -> None:
        super().__init__()
        del tie_logits  # grid queries are mask tokens: there is no input table to tie to
        self.positions = GridPositions(spec, dim)
        self.to_logits = nn.Linear(dim, spec.vocab_size, bias=False)

    def forward(self, d: dict[str, torch.Tensor]) -> DecoderInputs:
        ids = d["tensor"].reshape(d["tensor"].shape[0], -1)  # (B, N)
        return DecoderInputs(
            queries=None, pos=self.positions(), target_ids=ids, ignore=d["target_mask"],
            attention=d["decoder_attention_mask"],
            slot_index=torch.arange(ids.shape[1], device=ids.device),
        )

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        return self.to_logits(y)


class SequenceDecoderEmbedding(nn.Module):
    """Sequence targets, teacher forced: slot i embeds t_i and predicts t_{i+1}."""

    def __init__(self, spec: ModalitySpec, dim: int, *, tie_logits: bool = True) -> None:
        super().__init__()
        self.token_emb = nn.Embedding(spec.vocab_size, dim, padding_idx=0)
        self.register_buffer("pos_table", sincos_1d(spec.seq_tensor_len, dim), persistent=False)
        self.to_logits = None if tie_logits else nn.Linear(dim, spec.vocab_size, bias=False)

    def forward(self, d: dict[str, torch.Tensor]) -> DecoderInputs:
        ids, target_mask = d["tensor"], d["target_mask"]  # (B, L)
        x = self.token_emb(ids)  # (B, L, D)
        pos = sequence_positions(self.pos_table, target_mask)
        return DecoderInputs(
            queries=x[:, :-1], pos=pos[:, :-1], target_ids=ids[:, 1:],
            # a slot is used only if it and its successor are both target tokens, which
            # drops the last target position (it has nothing to predict)
            ignore=target_mask[:, 1:] | target_mask[:, :-1],
            attention=d["decoder_attention_mask"][:, :-1],
            slot_index=torch.arange(1, ids.shape[1], device=ids.device),
        )

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        if self.to_logits is None:
            return F.linear(y, self.token_emb.weight)  # tied to the input table
        return self.to_logits(y)


DECODER_EMBEDDINGS: dict[str, type[nn.Module]] = {
    "image_tokens": TokenDecoderEmbedding,
    "feature_tokens": TokenDecoderEmbedding,
    "global_tokens": TokenDecoderEmbedding,
    "sequence": SequenceDecoderEmbedding,
}


@torch.no_grad()
def scale_sincos_tables(module: nn.Module, scale: float) -> None:
    """Multiply every fixed sin-cos table (grid ``pos_emb`` buffers, sequence
    ``pos_table`` buffers) by ``scale``. They are non-persistent buffers rebuilt at
    construction, so the scale lives in the model config, never in the weights."""
    if scale == 1.0:
        return
    for m in module.modules():
        for name, buf in m.named_buffers(recurse=False):
            if name in ("pos_emb", "pos_table"):
                buf.mul_(scale)


def init_mae(module: nn.Module, *, std: float = 0.02) -> None:
    """MAE initialisation: xavier-uniform Linear (q/k/v and k/v scaled separately),
    N(0, std) embeddings and learned position tables, LayerNorm weight 1."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            fan_out = m.weight.shape[0]
            parts = 3 if name.endswith("qkv") else 2 if name.endswith(".kv") else 1
            bound = math.sqrt(6.0 / (fan_out // parts + m.weight.shape[1]))
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()  # PAD carries nothing
        elif isinstance(m, GridPositions) and m.learned:
            nn.init.normal_(m.pos_emb, std=std)
