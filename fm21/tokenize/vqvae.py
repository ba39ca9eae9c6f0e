"""VQ-VAE image tokenizer: trunk encoder -> tanh post-MLP -> 1x1 proj -> lucid VQ -> decoder.

The reference uses ViT-B encoder/decoder (apple/ml-4m `fourm/vq/`, `cfgs/default/tokenization/`); fm21's default trunk is a small
conv net, the CPU-friendly choice for the tiny recipe. Trunks sit behind ``TRUNKS``:
``conv`` (below) and ``vit`` (``fm21.tokenize.vit``, the reference's ViT, chosen with the
recipe option ``trunk: vit``). The ViT encoder ends in the reference's tanh post-MLP, so
with it the latent head is the reference's plain 1x1 ``quant_proj`` (``latent_head``).

Conv trunk: ``S = log2(patch_size)`` stride-2 levels (a 2x2 patchify stem, then 4x4
stride-2 convs). Widths double toward the token grid and reach ``hidden_dim`` there
(``hidden_dim / 2**(S-l)`` at level ``l``, at least 16), so most compute sits at the
coarse levels; every level but the finest has ``num_layers`` residual blocks. The
decoder mirrors it with stride-2 transposed convs and ends in a per-pixel linear head.

The module is the ``vqvae`` tokenizer family (``fm21.tokenize.families``): ``FAMILY``,
``Config``, ``build``, ``train`` and ``save_recon_png`` at the bottom.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fm21.config import VQTokenizerConfig
from fm21.modalities import ModalitySpec
from fm21.tokenize.families import family_options
from fm21.tokenize.image_tokenizer import ImageTokenizer, TokenizerConfig
from fm21.tokenize.quantizer import LucidQuantizer
from fm21.tokenize.vit import ViTDecoder, ViTEncoder


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def level_widths(hidden_dim: int, num_stages: int) -> list[int]:
    """Channel width at each downsampling level 1..S (index 0 = level 1, finest)."""
    return [max(hidden_dim >> (num_stages - level), 16) for level in range(1, num_stages + 1)]


def _num_stages(patch_size: int) -> int:
    """Stride-2 levels; 0 for patch_size 1 (a feature map: one token per input vector)."""
    stages = int(math.log2(patch_size))
    if 2**stages != patch_size or stages < 0:
        raise ValueError(f"conv trunk needs a power-of-two patch_size, got {patch_size}")
    return stages


def _num_blocks(level_index: int, num_levels: int, num_layers: int) -> int:
    """Residual blocks at a level: none at the finest (R/2) level when there are coarser
    ones. On CPU it would cost about as much as all coarser levels together."""
    return 0 if (level_index == 0 and num_levels > 1) else num_layers


class ConvEncoder(nn.Module):
    """``(B, C_in, R, R)`` -> ``(B, hidden_dim, R/P, R/P)``."""

    def __init__(self, in_channels: int, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = level_widths(cfg.hidden_dim, _num_stages(cfg.patch_size))
        if not widths:  # patch_size 1: a 1x1 stem, then residual blocks at the grid
            self.net = nn.Sequential(nn.Conv2d(in_channels, cfg.hidden_dim, 1),
                                     *(ResBlock(cfg.hidden_dim) for _ in range(cfg.num_layers)))
            return
        # 2x2 patchify stem: a quarter of the cost of a 4x4 stride-2 conv at full resolution
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 2, stride=2)]
        for i, w in enumerate(widths):
            layers += [ResBlock(w) for _ in range(_num_blocks(i, len(widths), cfg.num_layers))]
            if i + 1 < len(widths):  # halve the resolution, widen toward the grid
                layers += [_norm(w), nn.SiLU(), nn.Conv2d(w, widths[i + 1], 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """``(B, hidden_dim, R/P, R/P)`` -> ``(B, C_out, R, R)``."""

    def __init__(self, out_channels: int, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = level_widths(cfg.hidden_dim, _num_stages(cfg.patch_size)) or [cfg.hidden_dim]
        layers: list[nn.Module] = []
        if cfg.patch_size == 1:  # mirrors the encoder: residual blocks at the grid, no upsampling
            layers += [ResBlock(cfg.hidden_dim) for _ in range(cfg.num_layers)]
        for i in reversed(range(len(widths)) if cfg.patch_size > 1 else ()):  # coarse to fine
            w = widths[i]
            layers += [ResBlock(w) for _ in range(_num_blocks(i, len(widths), cfg.num_layers))]
            nxt = widths[i - 1] if i > 0 else w
            layers += [_norm(w), nn.SiLU(), nn.ConvTranspose2d(w, nxt, 4, stride=2, padding=1)]
        layers += [_norm(widths[0]), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        # Per-pixel linear head applied channels-last: with 134 semseg logits at full
        # resolution, NCHW logits would cost a layout copy in every softmax.
        self.head = nn.Linear(widths[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.net(x).permute(0, 2, 3, 1)  # (B, R, R, W)
        return self.head(feat).permute(0, 3, 1, 2)  # (B, C_out, R, R), NHWC in memory


# trunk name -> (encoder builder(in_channels, cfg), decoder builder(out_channels, cfg))
TRUNKS: dict[str, tuple[Callable[[int, TokenizerConfig], nn.Module], ...]] = {
    "conv": (ConvEncoder, ConvDecoder),
    "vit": (ViTEncoder, ViTDecoder),
}


class PostMLP(nn.Module):
    """Residual tanh MLP before the quantizer (ViT-VQGAN style, as the reference)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.fc1 = nn.Conv2d(channels, 4 * channels, 1)
        self.fc2 = nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.tanh(self.fc1(self.norm(x))))


def latent_head(cfg: TokenizerConfig) -> tuple[nn.Module, nn.Module]:
    """(post-MLP, projection to ``latent_dim``) between the encoder and the quantizer.

    conv trunk: the residual tanh ``PostMLP`` and GroupNorm-SiLU-1x1 conv. vit trunk: the
    ViT encoder already ends in the tanh post-MLP, and the projection is the reference's
    plain 1x1 ``quant_proj`` (apple/ml-4m `fourm/vq/vqvae.py`), so released weights map.
    """
    if cfg.trunk not in TRUNKS:
        raise ValueError(f"{cfg.modality}: unknown trunk {cfg.trunk!r}; have {', '.join(TRUNKS)}")
    if cfg.trunk == "vit":
        return nn.Identity(), nn.Conv2d(cfg.hidden_dim, cfg.latent_dim, 1)
    return PostMLP(cfg.hidden_dim), nn.Sequential(
        _norm(cfg.hidden_dim), nn.SiLU(), nn.Conv2d(cfg.hidden_dim, cfg.latent_dim, 1))


class VQVAE(ImageTokenizer):
    family = "vqvae"  # FAMILY, below

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__(config)
        cfg = config
        categorical = self.preprocessor.categorical
        channels = self.preprocessor.channels or cfg.num_channels  # 0: as many as the spec says
        in_ch = cfg.class_embed_dim if categorical else channels
        out_ch = cfg.num_channels if categorical else channels
        # semseg: a learned class embedding replaces one-hot input (apple/ml-4m `fourm/data/modality_info.py`)
        self.class_embed = nn.Embedding(cfg.num_channels, in_ch) if categorical else None
        if cfg.trunk not in TRUNKS:
            raise ValueError(f"{cfg.modality}: unknown trunk {cfg.trunk!r}; have {', '.join(TRUNKS)}")
        make_encoder, make_decoder = TRUNKS[cfg.trunk]
        self.encoder = make_encoder(in_ch, cfg)  # built in this order: seeded inits stay as they were
        self.post_mlp, self.to_latent = latent_head(cfg)
        self.quantizer = LucidQuantizer(
            cfg.latent_dim, cfg.vocab_size, ema_decay=cfg.ema_decay,
            commitment_weight=cfg.commitment_weight, dead_code_coef=cfg.dead_code_coef,
        )
        self.from_latent = nn.Conv2d(cfg.latent_dim, cfg.hidden_dim, 1)
        self.decoder = make_decoder(out_ch, cfg)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.class_embed is None:
            return x
        return self.class_embed(x).permute(0, 3, 1, 2)  # (B, R, R) -> (B, E, R, R)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space input -> pre-quantization latents ``(B, latent_dim, h, w)``."""
        return self.to_latent(self.post_mlp(self.encoder(self._embed(x))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (reconstruction in model space, ids (B, h, w), commitment loss)."""
        q, ids, commit = self.quantizer(self.latents(x))
        return self.decoder(self.from_latent(q)), ids, commit

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.latents(x))[1]  # (B, h, w)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(self.quantizer.lookup(ids)))


# ------------------------------------------------------------------ family contract
# (fm21.tokenize.families): what the tokenizers stage and the checkpoint loader call.
FAMILY = "vqvae"
Config = TokenizerConfig  # frozen; from_spec(spec, options) / to_dict() / from_dict(d)


def build(config: TokenizerConfig) -> VQVAE:
    """A randomly initialised VQ-VAE (conv or ViT trunk) of ``config`` (the checkpoint loader then loads
    the weights)."""
    if config.family != FAMILY:
        raise ValueError(f"{config.modality}: config of family {config.family!r} given to {FAMILY!r}")
    return VQVAE(config)


def train(spec: ModalitySpec, options: dict[str, Any], train_labels: np.ndarray, val_labels: np.ndarray, *,
          seed: int) -> tuple[VQVAE, dict[str, Any]]:
    """Train ``spec``'s tokenizer on label maps; metrics (codebook, recon loss, the label
    kind's own) on ``val_labels``. ``options``: the recipe entry (VQTokenizerConfig keys)."""
    from fm21.tokenize.train_vq import train_vq_tokenizer  # train_vq imports this module

    return train_vq_tokenizer(spec, VQTokenizerConfig.model_validate(family_options(options)),
                              train_labels, val_labels, seed=seed)


def save_recon_png(tokenizer: ImageTokenizer, val_labels: np.ndarray, path) -> None:
    """Originals (top row) over their reconstructions (bottom row), coloured by label kind."""
    from fm21.tokenize.train_vq import save_recon_grid

    save_recon_grid(tokenizer, val_labels, path)


def build_tokenizer(config: TokenizerConfig) -> ImageTokenizer:
    """Any family's tokenizer from its config, through the family table."""
    from fm21.tokenize.families import family_module

    return family_module(config.family).build(config)
