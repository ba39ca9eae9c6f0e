"""The SAM instance-mask tokenizer (family ``sam_mask``): one instance's binary mask, cut to
its box and resized to 64 x 64, -> 16 tokens (a 4 x 4 grid) of a 1024-code book.

The reference trains a ViT-B/16 encoder and decoder with ``out_conv``, a lucid quantizer
(1024 codes, latent 1024, cosine codes, EMA, dead-code restarts) and a binary
cross-entropy loss, one instance per sample, tiny boxes (< 0.05 % of the image) dropped
(apple/ml-4m `cfgs/default/tokenization/vqvae/sam_instance/ViTB-ViTB_1k_224_64.yaml`,
`fourm/data/modality_transforms.py` SAMInstanceTransform). fm21's CPU choice reuses the
VQ-VAE's conv trunk and ``LucidQuantizer`` at patch 16 on 64 px (latent 32 by default).

``trunk: vit`` (opt-in) is the reference's layout instead, with the reference's module
names, so the released ``EPFL-VILAB/4M_tokenizers_sam-instance_1k_64`` imports one to one
(``fm21.tokenize.import_released``): the ViT encoder and decoder of ``fm21.tokenize.vit``
(the encoder ends in the tanh post-MLP, then a plain 1x1 ``to_latent``, the reference's
``quant_proj``), and the decoder's ``out_conv`` head, two ConvNeXt blocks on the one-channel
logits (apple/ml-4m `fourm/vq/models/vit_models.py`, ``ViTDecoder(out_conv=True)``).
The conv default is unchanged: its config dump omits the new fields (``trunk``,
``num_heads``, ``pos_grid``) at their defaults, so its fingerprint is the same.

Label space: ``(B, 64, 64)`` uint8 masks, 1 (or any non-zero) = inside; ``decode_labels``
gives 0/1 (sigmoid > 0.5, as the reference's decoder). :func:`decode_masks` pastes the
decoded masks back into their boxes on the crop.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fm21.modalities import ModalitySpec
from fm21.schedules import warmup_cosine
from fm21.tokenize.crops import Crop
from fm21.tokenize.image_tokenizer import omit_default_fields
from fm21.tokenize.instances import MASK_SIZE, box_crops, crop_instances, mask_iou, paste_masks
from fm21.tokenize.quantizer import LucidQuantizer, codebook_stats
from fm21.tokenize.vit import LN_EPS, MLP_RATIO, ViTDecoder
from fm21.tokenize.vqvae import TRUNKS, ConvDecoder, latent_head

FAMILY = "sam_mask"
NUM_TOKENS = 16  # the sam_instance string writes 16 ids per instance
MAX_CODES = 1024  # ids are written v0=i (i < 512) or v1=i-512
# Fields added after checkpoints were written: left out of the dump at their default.
OPTIONAL_FIELDS = ("trunk", "num_heads", "pos_grid")


@dataclass(frozen=True)
class SamMaskConfig:
    """Architecture and training recipe; ``config.json`` of the checkpoint."""

    family: str = FAMILY
    modality: str = "sam_instance"
    mask_size: int = MASK_SIZE
    patch_size: int = 16
    vocab_size: int = 1024
    latent_dim: int = 32
    hidden_dim: int = 64
    num_layers: int = 2
    ema_decay: float = 0.99
    commitment_weight: float = 1.0
    dead_code_coef: float = 32.0
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    trunk: str = "conv"  # "conv" | "vit" (the reference's ViT with the out_conv head)
    num_heads: int = 0  # vit trunk: attention heads (0: hidden_dim / 64)
    pos_grid: int = 0  # vit trunk: side of the stored position embedding (0: grid_size)

    @property
    def grid_size(self) -> int:
        return self.mask_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        return omit_default_fields(self, OPTIONAL_FIELDS)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamMaskConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_spec(cls, spec: ModalitySpec, options: dict) -> SamMaskConfig:
        """``options``: the recipe's ``tokenizers.image.<modality>`` dict. The spec's own
        vocab is the text vocabulary, so the mask codebook size is an option."""
        allowed = {f.name for f in dataclasses.fields(cls)} - {"family", "modality"}
        for key in options:
            if key not in allowed:
                raise ValueError(f"{spec.name}: unknown sam_mask tokenizer option {key!r} (have {sorted(allowed)})")
        cfg = cls(modality=spec.name, **options)
        if cfg.num_tokens != NUM_TOKENS or cfg.mask_size % cfg.patch_size:
            raise ValueError(f"{spec.name}: mask_size/patch_size must give {NUM_TOKENS} tokens, got "
                             f"{cfg.mask_size}/{cfg.patch_size}")
        if not 1 <= cfg.vocab_size <= MAX_CODES:
            raise ValueError(f"{spec.name}: vocab_size must be 1..{MAX_CODES} (the string's id range)")
        if cfg.trunk not in TRUNKS:
            raise ValueError(f"{spec.name}: unknown trunk {cfg.trunk!r}; have {', '.join(TRUNKS)}")
        return cfg


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block on ``(B, C, H, W)``: ``x + gamma * pwconv2(GELU(pwconv1(LN(dwconv(x)))))``,
    the LayerNorm and linears channels-last (apple/ml-4m `fourm/vq/models/vit_models.py`
    ``ConvNeXtBlock``, layer scale 1e-6, no drop path).

    With one channel (the mask logits) the LayerNorm over that single channel maps every
    pixel to its bias, so the block adds a learned constant and ``dwconv`` has no effect;
    kept as the reference computes it, so released weights give the released logits."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)  # depthwise
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, MLP_RATIO * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(MLP_RATIO * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        for lin in (self.pwconv1, self.pwconv2):  # the reference decoder's xavier init of linears
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ViTMaskDecoder(ViTDecoder):
    """``fm21.tokenize.vit.ViTDecoder`` followed by the reference's ``out_conv``: two
    ConvNeXt blocks on the unpatchified output (against patch checkerboard artifacts)."""

    def __init__(self, out_channels: int, cfg: Any) -> None:
        super().__init__(out_channels, cfg)
        self.out_conv = nn.Sequential(ConvNeXtBlock(out_channels), ConvNeXtBlock(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(super().forward(x))


class SamMaskTokenizer(nn.Module):
    """Encoder -> tanh post-MLP -> 1x1 proj -> lucid VQ -> decoder -> mask logits (conv
    trunk, or the reference's ViT with its ``out_conv`` head)."""

    def __init__(self, config: SamMaskConfig) -> None:
        super().__init__()
        self.config = config
        self.fingerprint: str | None = None
        self.training_summary: dict[str, Any] | None = None  # None: random init
        cfg = config
        # built in this order (encoder, post-MLP, to_latent, quantizer, ...): seeded conv inits stay as they were
        self.encoder = TRUNKS[cfg.trunk][0](1, cfg)  # reads hidden_dim, num_layers, patch_size (vit: heads, grid)
        self.post_mlp, self.to_latent = latent_head(cfg)  # vit: Identity (the encoder ends in it), plain 1x1
        self.quantizer = LucidQuantizer(cfg.latent_dim, cfg.vocab_size, ema_decay=cfg.ema_decay,
                                        commitment_weight=cfg.commitment_weight, dead_code_coef=cfg.dead_code_coef)
        self.from_latent = nn.Conv2d(cfg.latent_dim, cfg.hidden_dim, 1)
        self.decoder = ViTMaskDecoder(1, cfg) if cfg.trunk == "vit" else ConvDecoder(1, cfg)

    @staticmethod
    def to_model(masks: np.ndarray) -> torch.Tensor:
        """``(B, M, M)`` masks -> ``(B, 1, M, M)`` float in {-1, 1}, for either trunk (the
        reference feeds {0, 1}; its import folds that into the patch projection)."""
        return torch.from_numpy(np.asarray(masks) > 0).float().unsqueeze(1) * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (logits (B, 1, M, M), ids (B, g, g), commitment loss)."""
        q, ids, commit = self.quantizer(self.to_latent(self.post_mlp(self.encoder(x))))
        return self.decoder(self.from_latent(q)), ids, commit

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.to_latent(self.post_mlp(self.encoder(x))))[1]  # (B, g, g)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(self.quantizer.lookup(ids)))  # (B, 1, M, M) logits

    @torch.no_grad()
    def encode_labels(self, labels: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Masks ``(B, M, M)`` -> ids ``(B, 16)`` int16 (row-major grid); eval mode."""
        was_training = self.training
        self.eval()  # never update the codebook while tokenizing
        out = [self.encode(self.to_model(labels[s:s + batch_size])).flatten(1).numpy()
               for s in range(0, len(labels), batch_size)]
        self.train(was_training)
        ids = np.concatenate(out) if out else np.zeros((0, self.config.num_tokens))
        return ids.astype(np.int16)

    @torch.no_grad()
    def decode_probs(self, ids: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Ids ``(B, 16)`` -> mask probabilities ``(B, M, M)`` float32."""
        g, m = self.config.grid_size, self.config.mask_size
        was_training = self.training
        self.eval()
        out = []
        for s in range(0, len(ids), batch_size):
            chunk = torch.from_numpy(np.asarray(ids[s:s + batch_size], dtype=np.int64)).reshape(-1, g, g)
            out.append(torch.sigmoid(self.decode(chunk))[:, 0].numpy())
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, m, m), np.float32)

    def decode_labels(self, ids: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Ids ``(B, 16)`` -> masks ``(B, M, M)`` uint8 0/1 (sigmoid > 0.5)."""
        return (self.decode_probs(ids, batch_size=batch_size) > 0.5).astype(np.uint8)


def build(config: SamMaskConfig) -> SamMaskTokenizer:
    return SamMaskTokenizer(config)


# ------------------------------------------------------------------ labels
def instance_masks(column_values: Sequence[Sequence[dict] | None], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``sam_instances`` values of many rows -> the tokenizer's training labels.

    Every instance of every row (None rows skipped), on the full image resized to
    ``image_size``, tiny boxes dropped, cut to its box: masks ``(N, 64, 64)`` uint8 0/1
    and boxes ``(N, 4)`` int32 (inclusive pixels at ``image_size``)."""
    masks, boxes = [], []
    for instances in column_values:
        if not instances:
            continue
        side = int(instances[0]["rle"]["size"][0])  # the stored image
        full, box = crop_instances(instances, Crop(0, 0, side, side, False), size=image_size)
        masks.append(box_crops(full, box))
        boxes.append(box)
    if not masks:
        return np.zeros((0, MASK_SIZE, MASK_SIZE), np.uint8), np.zeros((0, 4), np.int32)
    return np.concatenate(masks), np.concatenate(boxes)


def decode_masks(tok: SamMaskTokenizer, ids: np.ndarray, boxes: np.ndarray, image_size: int) -> np.ndarray:
    """Ids ``(K, 16)`` and their inclusive pixel boxes ``(K, 4)`` -> ``(K, S, S)`` bool masks."""
    return paste_masks(tok.decode_probs(ids), np.asarray(boxes), size=image_size)


# ------------------------------------------------------------------ training
@torch.no_grad()
def evaluate(tok: SamMaskTokenizer, labels: np.ndarray) -> dict[str, float]:
    """Held-out mean IoU of the sigmoid > 0.5 reconstructions, BCE and codebook usage."""
    ids = tok.encode_labels(labels)
    probs = tok.decode_probs(ids)
    target = (np.asarray(labels) > 0).astype(np.float32)
    bce = F.binary_cross_entropy(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6), torch.from_numpy(target))
    return {
        "num_samples": int(len(labels)),
        "mask_iou": float(mask_iou(probs > 0.5, target > 0).mean()) if len(labels) else float("nan"),
        "recon_loss": float(bce),
        **codebook_stats(ids, tok.config.vocab_size),
    }


def _train_loop(tok: SamMaskTokenizer, x: torch.Tensor, *, seed: int) -> list[float]:
    """``steps`` AdamW steps in place (betas 0.9/0.99, warmup + cosine, clip 1.0, hflip 0.5)."""
    cfg = tok.config
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(tok.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    warmup, batch = max(1, cfg.steps // 20), min(cfg.batch_size, len(x))
    history = []
    tok.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, steps=cfg.steps, peak=cfg.lr, warmup=warmup)
        xb = x[torch.randperm(len(x), generator=gen)[:batch]]  # (b, 1, M, M) in {-1, 1}
        flip = torch.rand(len(xb), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        logits, _, commit = tok(xb)
        rec = F.binary_cross_entropy_with_logits(logits, (xb > 0).float())
        opt.zero_grad(set_to_none=True)
        (rec + commit).backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        history.append(rec.item())
    tok.eval()
    return history


def train(spec: ModalitySpec, options: dict, train_labels: np.ndarray, val_labels: np.ndarray, *,
          seed: int) -> tuple[SamMaskTokenizer, dict[str, Any]]:
    """Train on box-cropped masks ``(N, 64, 64)`` (:func:`instance_masks`); metrics on ``val_labels``."""
    if len(train_labels) == 0:
        raise ValueError(f"{spec.name}: no instance masks to train the sam_mask tokenizer on")
    torch.manual_seed(seed)  # weight init and dead-code restarts draw from the global RNG
    tok = build(SamMaskConfig.from_spec(spec, options))
    start = time.perf_counter()
    history = _train_loop(tok, SamMaskTokenizer.to_model(train_labels), seed=seed)
    tail = history[-max(1, len(history) // 10):]
    tok.training_summary = {
        "steps": tok.config.steps, "batch_size": tok.config.batch_size, "lr": tok.config.lr, "seed": seed,
        "num_train_samples": int(len(train_labels)), "wall_time_s": round(time.perf_counter() - start, 2),
        "first_recon_loss": history[0] if history else None,
        "final_recon_loss": float(np.mean(tail)) if history else None,
    }
    return tok, {**evaluate(tok, val_labels), "train": dict(tok.training_summary)}


def save_recon_png(tok: SamMaskTokenizer, val_labels: np.ndarray, path: Any, *, num_samples: int = 8) -> None:
    """PNG: ``num_samples`` masks (top row) over their reconstructions (bottom row)."""
    from fm21.tokenize.grid import save_grid  # PIL only when a picture is asked for

    masks = (np.asarray(val_labels[:num_samples]) > 0).astype(np.uint8)
    recon = tok.decode_labels(tok.encode_labels(masks))
    colours = np.array([[40, 40, 40], [255, 200, 0]], np.uint8)  # outside dark, inside yellow (not the pad's white)
    save_grid([colours[masks], colours[recon]], path, row_labels=["mask", "recon"], scale=2)  # (b, M, M, 3) rows

