"""The 4M encoder-decoder (apple/ml-4m `fourm/models/fm.py`): one trunk, per-modality embeddings.

Batches are mod_dicts ``{modality: {"tensor", "input_mask", "target_mask",
"decoder_attention_mask"}}`` with True = ignored. The trunk never looks at a
modality's name or kind: embeddings (``nn.ModuleDict``, built by a lookup on
``spec.kind``) turn each modality into slots, the trunk sorts valid slots first,
truncates to its token budget and runs the transformer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fm21.modalities import ModalitySpec
from fm21.train.blocks import DecoderBlock, EncoderBlock, LayerCache, attention_allowed, layer_norm
from fm21.train.embeddings import (
    DECODER_EMBEDDINGS, ENCODER_EMBEDDINGS, init_mae, scale_sincos_tables, set_sincos_2d_order,
)

ModDict = Mapping[str, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class FourMConfig:
    """Everything (besides the modality specs) needed to rebuild a :class:`FourM`."""

    dim: int
    encoder_depth: int
    decoder_depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    # defaults = the architecture before these fields existed, so older checkpoints load
    mlp: str = "swiglu"  # "swiglu" | "gelu" (fm21.train.blocks.MLPS)
    bias: bool = False
    num_input_tokens: int = 256
    num_target_tokens: int = 256
    tie_sequence_logits: bool = True  # to_logits shares the decoder token table (apple/ml-4m `fourm/models/fm.py`)
    init_std: float = 0.02
    token_emb_std: float = 0.02  # encoder token embeddings (reference: init_std)
    pos_emb_scale: float = 1.0  # fixed sin-cos tables are multiplied by this (reference: 1)
    # Opt-in layouts of the released 4M models (fm21/train/import_4m21.py); the defaults
    # keep fm21's architecture and its checkpoints unchanged.
    context_bias: bool | None = None  # bias of decoder_proj_context; None: follows ``bias`` (reference: True)
    sincos_2d_order: str = "xy"  # 2D sin-cos channel order, "xy" | "yx" (reference: "yx")
    modalities: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "modalities": list(self.modalities)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FourMConfig:
        return cls(**{**data, "modalities": tuple(data.get("modalities", ()))})


def sort_valid_first(ignore: torch.Tensor, max_slots: int) -> torch.Tensor:
    """Indices (B, K) of the valid slots first, in their original order (stable), then the
    ignored ones; K = min(max_slots, most valid slots in any sample, at least 1)."""
    order = torch.sort(ignore.to(torch.uint8), dim=1, stable=True).indices  # (B, P)
    most_valid = int((~ignore).sum(dim=1).max()) if ignore.numel() else 0
    return order[:, : max(1, min(max_slots, most_valid))]


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, P, ...) gathered along dim 1 with index (B, K) -> (B, K, ...)."""
    return t[torch.arange(t.shape[0], device=t.device)[:, None], index]


@dataclass
class DecoderSlots:
    """The decoder slots of a batch after the valid-first sort and truncation."""

    y: torch.Tensor  # (B, M, D) query + position + modality embedding
    target_ids: torch.Tensor  # (B, M)
    ignore: torch.Tensor  # (B, M) True = padding slot
    self_allowed: torch.Tensor  # (B, 1, M, M) decoder self-attention, True = may attend
    mod_index: torch.Tensor  # (B, M) index of the slot's modality in ``names``, -1 on padding
    concat_index: torch.Tensor  # (B, M) index of the slot before sorting
    names: list[str]
    offsets: dict[str, int]  # start of each modality in the pre-sort concatenation
    slot_index: dict[str, torch.Tensor]  # per modality: tensor position each slot predicts


class FourM(nn.Module):
    def __init__(
        self,
        specs: Mapping[str, ModalitySpec],
        cfg: Any,
        *,
        num_input_tokens: int = 256,
        num_target_tokens: int = 256,
        tie_sequence_logits: bool | None = None,
    ) -> None:
        """``cfg``: anything with dim, encoder_depth, decoder_depth, num_heads, mlp_ratio
        and optionally mlp, bias, tie_sequence_logits, init values (``fm21.config.ModelConfig``
        or a :class:`FourMConfig`); ``tie_sequence_logits`` given here wins over cfg's."""
        super().__init__()
        self.specs = dict(specs)
        if tie_sequence_logits is None:
            tie_sequence_logits = getattr(cfg, "tie_sequence_logits", True)
        self.config = FourMConfig(
            dim=cfg.dim, encoder_depth=cfg.encoder_depth, decoder_depth=cfg.decoder_depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, mlp=getattr(cfg, "mlp", "swiglu"),
            bias=getattr(cfg, "bias", False), num_input_tokens=num_input_tokens,
            num_target_tokens=num_target_tokens, tie_sequence_logits=tie_sequence_logits,
            init_std=getattr(cfg, "init_std", 0.02), token_emb_std=getattr(cfg, "token_emb_std", 0.02),
            pos_emb_scale=getattr(cfg, "pos_emb_scale", 1.0), context_bias=getattr(cfg, "context_bias", None),
            sincos_2d_order=getattr(cfg, "sincos_2d_order", "xy"), modalities=tuple(self.specs),
        )
        d, c = cfg.dim, self.config
        block = {"mlp": c.mlp, "bias": c.bias}
        self.encoder_embeddings = nn.ModuleDict(
            {n: ENCODER_EMBEDDINGS[s.kind](s, d) for n, s in self.specs.items()}
        )
        self.decoder_embeddings = nn.ModuleDict({
            n: DECODER_EMBEDDINGS[s.kind](s, d, tie_logits=tie_sequence_logits)
            for n, s in self.specs.items() if s.can_be_target
        })
        # one modality embedding per modality, shared by its encoder and decoder slots
        self.mod_emb = nn.ParameterDict({n: nn.Parameter(torch.zeros(1, 1, d)) for n in self.specs})
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.encoder = nn.ModuleList(
            [EncoderBlock(d, c.num_heads, c.mlp_ratio, **block) for _ in range(c.encoder_depth)]
        )
        self.encoder_norm = layer_norm(d, c.bias)
        # the reference's has a bias in every size; here it follows ``bias`` so that the
        # 4M-21 (no-bias) trunk keeps the weight layout of earlier checkpoints
        self.decoder_proj_context = nn.Linear(d, d, bias=c.bias if c.context_bias is None else c.context_bias)
        self.decoder = nn.ModuleList(
            [DecoderBlock(d, c.num_heads, c.mlp_ratio, **block) for _ in range(c.decoder_depth)]
        )
        self.decoder_norm = layer_norm(d, c.bias)
        set_sincos_2d_order(self, c.sincos_2d_order)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        init_mae(self, std=c.init_std)
        for p in [*self.mod_emb.values(), self.mask_token]:
            nn.init.normal_(p, std=c.init_std)
        for emb in self.encoder_embeddings.values():
            if isinstance(getattr(emb, "token_emb", None), nn.Embedding):
                nn.init.normal_(emb.token_emb.weight, std=c.token_emb_std)
                if emb.token_emb.padding_idx is not None:
                    with torch.no_grad():
                        emb.token_emb.weight[emb.token_emb.padding_idx].zero_()
        scale_sincos_tables(self, c.pos_emb_scale)

    # -------------------------------------------------------------------------- encoder
    def encode(self, mod_dict: ModDict) -> tuple[torch.Tensor, torch.Tensor]:
        """-> decoder memory ``context`` (B, N, D) = Linear(encoder out) + encoder embedding,
        and its ``ignore`` mask (B, N)."""
        xs, embs, ignores = [], [], []
        for name, emb_module in self.encoder_embeddings.items():
            if name not in mod_dict:
                continue
            x, pos = emb_module(mod_dict[name])  # (B, n, D), (B or 1, n, D)
            xs.append(x)
            embs.append((pos + self.mod_emb[name]).expand_as(x))
            ignores.append(mod_dict[name]["input_mask"])
        if not xs:
            raise ValueError(f"mod_dict has none of the model's modalities {list(self.specs)}")
        ignore = torch.cat(ignores, dim=1)  # (B, P)
        keep = sort_valid_first(ignore, self.config.num_input_tokens)  # (B, N)
        ignore = _gather(ignore, keep)
        pad = ignore.unsqueeze(-1)
        x = _gather(torch.cat(xs, dim=1), keep).masked_fill(pad, 0.0)  # (B, N, D)
        emb = _gather(torch.cat(embs, dim=1), keep).masked_fill(pad, 0.0)
        allowed = attention_allowed(ignore.unsqueeze(1))  # (B, 1, 1, N) key padding
        h = x + emb
        for block in self.encoder:
            h = block(h, allowed)
        context = self.decoder_proj_context(self.encoder_norm(h)) + emb  # re-add pos + mod
        return context, ignore

    # -------------------------------------------------------------------------- decoder
    def decoder_slots(
        self, mod_dict: ModDict, targets: Iterable[str] | None = None
    ) -> DecoderSlots:
        """Concatenate the decoder slots of the target modalities, sort valid-first,
        truncate to ``num_target_tokens`` and build the self-attention mask."""
        wanted = set(self.decoder_embeddings) if targets is None else set(targets)
        ys, ids, ignores, attn, mod_idx = [], [], [], [], []
        names, offsets, slot_index, offset = [], {}, {}, 0
        for name, emb_module in self.decoder_embeddings.items():
            if name not in mod_dict or name not in wanted:
                continue
            di = emb_module(mod_dict[name])
            B, L = di.target_ids.shape
            queries = self.mask_token.expand(B, L, -1) if di.queries is None else di.queries
            ys.append(queries + di.pos + self.mod_emb[name])  # (B, L, D)
            ids.append(di.target_ids)
            ignores.append(di.ignore)
            attn.append(di.attention.long())
            mod_idx.append(torch.full_like(di.target_ids, len(names)))
            offsets[name], slot_index[name] = offset, di.slot_index
            names.append(name)
            offset += L
        if not names:
            raise ValueError(f"no target modality of {sorted(wanted)} in the mod_dict")
        ignore_all = torch.cat(ignores, dim=1)  # (B, P)
        keep = sort_valid_first(ignore_all, self.config.num_target_tokens)  # (B, M)
        ignore = _gather(ignore_all, keep)
        mod_index = _gather(torch.cat(mod_idx, dim=1), keep).masked_fill(ignore, -1)
        y = _gather(torch.cat(ys, dim=1), keep).masked_fill(ignore.unsqueeze(-1), 0.0)
        return DecoderSlots(
            y=y,
            target_ids=_gather(torch.cat(ids, dim=1), keep).masked_fill(ignore, 0),
            ignore=ignore,
            self_allowed=self._self_allowed(_gather(torch.cat(attn, dim=1), keep), mod_index),
            mod_index=mod_index, concat_index=keep, names=names, offsets=offsets,
            slot_index=slot_index,
        )

    @staticmethod
    def _self_allowed(attention: torch.Tensor, mod_index: torch.Tensor) -> torch.Tensor:
        """Compressed mask (B, M) -> (B, 1, M, M) "may attend" (apple/ml-4m `fourm/models/fm.py`).

        Query n may attend keys < cumsum(attention)[n] (a grid modality's first target
        holds its target count: bidirectional; sequence targets hold 1: causal), and
        never across modalities (``decoder_sep_mask``) or to padding (mod index -1).
        """
        M = attention.shape[1]
        limit = attention.cumsum(dim=1).unsqueeze(-1)  # (B, M, 1)
        keys = torch.arange(M, device=attention.device).view(1, 1, M)
        key_mod = mod_index.unsqueeze(1)  # (B, 1, M)
        same_mod = (mod_index.unsqueeze(-1) == key_mod) & (key_mod >= 0)
        return attention_allowed(~((keys < limit) & same_mod))

    def decode(
        self, slots: DecoderSlots, context: torch.Tensor, context_ignore: torch.Tensor
    ) -> torch.Tensor:
        """Run the decoder stack on sorted slots -> (B, M, D)."""
        cross_allowed = attention_allowed(context_ignore.unsqueeze(1))  # (B, 1, 1, N)
        y = slots.y
        for block in self.decoder:
            y = block(y, context, self_allowed=slots.self_allowed, cross_allowed=cross_allowed)
        return self.decoder_norm(y)

    # -------------------------------------------------------------------------- cached decoding
    # Incremental decoding of one causal (sequence) target for autoregressive generation.
    # Additive: training and :meth:`forward_logits` never call these. Slot i of a sequence
    # target embeds the token at tensor index i and predicts index i + 1, exactly as
    # :class:`~fm21.train.embeddings.SequenceDecoderEmbedding` builds it under teacher forcing.
    def new_decode_cache(self) -> list[LayerCache]:
        """An empty K/V cache, one :class:`LayerCache` per decoder layer."""
        return [LayerCache() for _ in self.decoder]

    def sequence_queries(self, name: str, ids: torch.Tensor, first_position: int) -> torch.Tensor:
        """Decoder inputs (B, T, D) of the next T slots of sequence target ``name``: token
        ``ids`` (B, T) + the 1D position of each slot counted over the target slots
        (``first_position`` = how many target slots precede them) + the modality embedding."""
        emb = self.decoder_embeddings[name]
        T = ids.shape[1]
        pos = emb.pos_table[:, first_position:first_position + T]  # (1, T, D)
        return emb.token_emb(ids) + pos + self.mod_emb[name]

    def decode_cached(
        self,
        y: torch.Tensor,
        context: torch.Tensor,
        context_ignore: torch.Tensor,
        cache: list[LayerCache],
    ) -> torch.Tensor:
        """Run the decoder on the next causal positions ``y`` (B, T, D), attending to the
        positions already in ``cache`` (which this extends) -> normalized (B, T, D).
        ``context``/``context_ignore`` come from :meth:`encode`; their K/V are cached on the
        first call."""
        cross_allowed = attention_allowed(context_ignore.unsqueeze(1))
        for block, layer_cache in zip(self.decoder, cache):
            y = block.forward_cached(y, context, cross_allowed=cross_allowed, cache=layer_cache)
        return self.decoder_norm(y)

    # -------------------------------------------------------------------------- outputs
    def forward(self, mod_dict: ModDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (loss, per-modality loss). ``loss_type: mod``: the mean of the per-modality
        mean cross-entropies; a modality without targets in the batch adds 0 but counts."""
        context, context_ignore = self.encode(mod_dict)
        slots = self.decoder_slots(mod_dict)
        y = self.decode(slots, context, context_ignore)
        mod_loss: dict[str, torch.Tensor] = {}
        for i, name in enumerate(slots.names):
            sel = slots.mod_index == i  # (B, M)
            if not bool(sel.any()):
                mod_loss[name] = y.new_zeros(())
                continue
            logits = self.decoder_embeddings[name].logits(y[sel])  # (n, V)
            mod_loss[name] = F.cross_entropy(logits.float(), slots.target_ids[sel])
        loss = torch.stack(list(mod_loss.values())).sum() / len(mod_loss)
        return loss, mod_loss

    def forward_logits(
        self, mod_dict: ModDict, *, targets: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Logits of every decoder slot of the ``targets``, scattered back to the layout
        of each target's tensor: (B, L, vocab), row l = prediction of ``tensor[:, l]``
        (for sequences, made by the slot of l-1). Rows that were no query are zero."""
        context, context_ignore = self.encode(mod_dict)
        slots = self.decoder_slots(mod_dict, targets)
        y = self.decode(slots, context, context_ignore)
        out: dict[str, torch.Tensor] = {}
        for i, name in enumerate(slots.names):
            sel = slots.mod_index == i
            b, m = sel.nonzero(as_tuple=True)
            local = slots.concat_index[b, m] - slots.offsets[name]
            position = slots.slot_index[name][local]
            spec = self.specs[name]
            length = mod_dict[name]["tensor"].reshape(y.shape[0], -1).shape[1]
            logits = y.new_zeros(y.shape[0], length, spec.vocab_size)
            logits[b, position] = self.decoder_embeddings[name].logits(y[b, m])
            out[name] = logits
        return out

    def num_parameters(self, *, trunk_only: bool = False) -> int:
        """All parameters, or the trunk's: see :data:`TRUNK_MODULES`."""
        params = self.parameters() if not trunk_only else (
            p for n, p in self.named_parameters() if n.split(".", 1)[0] in TRUNK_MODULES
        )
        return sum(p.numel() for p in params)


# The transformer trunk: the encoder and decoder blocks, their final norms and the context
# projection between them. The published sizes (4M-B 198M, -L 705M, -XL 2.8B) are within 1 %
# of this count and of the blocks' alone (tests/train/test_sizes.py). Not the trunk: per-modality embeddings and heads, mod_emb, mask_token (they grow
# with the modality set, the trunk does not).
TRUNK_MODULES = ("encoder", "encoder_norm", "decoder_proj_context", "decoder", "decoder_norm")
