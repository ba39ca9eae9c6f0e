"""``TokenizerConfig`` (what ``config.json`` describes) and the ``ImageTokenizer`` base.

The conv VQ-VAE family (``fm21.tokenize.vqvae``) subclasses ``ImageTokenizer``:
torch-level ``encode``/``decode`` plus label-space ``encode_labels``/``decode_labels``
built on the preprocessor of the label kind named in its config. ``TokenizerConfig`` is
that family's config (the family contract of ``fm21.tokenize.families``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from fm21.config import VQTokenizerConfig
from fm21.modalities import ModalitySpec
from fm21.tokenize.families import family_options
from fm21.tokenize.preprocess import PREPROCESSORS, Preprocessor, preprocessor_for


class SquareTokenGrid:
    """``grid_size`` and ``num_tokens`` of a config with ``resolution`` and ``patch_size``:
    one token per patch of a square crop (the VQ-VAE and DiVAE configs share it)."""

    resolution: int
    patch_size: int

    @property
    def grid_size(self) -> int:
        return self.resolution // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


# Fields added after checkpoints were written: left out of ``to_dict`` at their default, so
# the config (and so the fingerprint, fm21.tokenize.checkpoint) of an older checkpoint is unchanged.
OPTIONAL_FIELDS = ("num_heads", "pos_grid")


def omit_default_fields(config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """``dataclasses.asdict(config)`` without the fields of ``names`` that hold their default."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return {k: v for k, v in dataclasses.asdict(config).items() if not (k in names and v == defaults[k])}


@dataclass(frozen=True)
class TokenizerConfig(SquareTokenGrid):
    """Everything needed to rebuild a tokenizer from its checkpoint folder."""

    family: str
    modality: str
    preprocess: str  # label kind, the key of PREPROCESSORS (older checkpoints: the label column)
    resolution: int
    patch_size: int
    vocab_size: int
    num_channels: int  # input channels (classes for semseg)
    latent_dim: int = 32
    hidden_dim: int = 64
    num_layers: int = 2
    trunk: str = "conv"  # "conv" | "vit" (fm21.tokenize.vqvae.TRUNKS)
    class_embed_dim: int = 32  # categorical inputs: Embedding(num_channels, class_embed_dim)
    ema_decay: float = 0.99
    commitment_weight: float = 1.0
    dead_code_coef: float = 32.0
    num_heads: int = 0  # vit trunk: attention heads (0: hidden_dim / 64)
    pos_grid: int = 0  # vit trunk: side of the stored position embedding (0: grid_size)

    @classmethod
    def from_spec(cls, spec: ModalitySpec, options: Mapping[str, Any] | VQTokenizerConfig | None = None, *,
                  family: str = "vqvae") -> TokenizerConfig:
        """The config of ``spec``'s tokenizer. ``options``: the modality's recipe entry
        (``tokenizers.image.<modality>``) as a dict (an unknown key raises ValueError
        naming it) or a ``VQTokenizerConfig``."""
        cfg = options if isinstance(options, VQTokenizerConfig) else VQTokenizerConfig.model_validate(
            family_options(options))
        if spec.label_kind not in PREPROCESSORS:
            raise ValueError(f"{spec.name}: no preprocessor for label kind {spec.label_kind!r}; "
                             f"have {', '.join(PREPROCESSORS)}")
        # A feature map is already at the token grid: the tokenizer reads it at patch 1.
        feature = spec.kind == "feature_tokens"
        return cls(
            family=family,
            modality=spec.name,
            preprocess=spec.label_kind,
            resolution=int(spec.label_size),
            patch_size=1 if feature else int(spec.patch_size),
            vocab_size=int(spec.vocab_size),
            num_channels=int(spec.num_channels),
            latent_dim=cfg.latent_dim,
            hidden_dim=cfg.hidden_dim,
            num_layers=cfg.num_layers,
            trunk=cfg.trunk,
            class_embed_dim=cfg.class_embed_dim,
            num_heads=cfg.num_heads,
            ema_decay=cfg.ema_decay,
            commitment_weight=cfg.commitment_weight,
            dead_code_coef=cfg.dead_code_coef,
        )

    def to_dict(self) -> dict[str, Any]:
        return omit_default_fields(self, OPTIONAL_FIELDS)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class ImageTokenizer(nn.Module):
    """Base of the image tokenizer families: ``encode``/``decode`` on model tensors."""

    family: str = ""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.fingerprint: str | None = None  # set by save/load (fm21.tokenize.checkpoint)
        self.training_summary: dict[str, Any] | None = None  # None: random init

    @property
    def preprocessor(self) -> Preprocessor:
        return preprocessor_for(self.config.preprocess)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space input -> token ids ``(B, h, w)`` long."""
        raise NotImplementedError

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, h, w)`` -> model-space output (class logits for semseg)."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_labels(self, labels: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Label maps ``(B, R, R[, C])`` -> ids ``(B, N)`` int16, row-major, N = grid**2."""
        was_training = self.training
        self.eval()  # never update the codebook while tokenizing
        out = []
        for start in range(0, len(labels), batch_size):
            x = self.preprocessor.to_model(labels[start : start + batch_size])
            out.append(self.encode(x).flatten(1).numpy())  # (b, h*w)
        self.train(was_training)
        ids = np.concatenate(out) if out else np.zeros((0, self.config.num_tokens))
        return ids.astype(np.int16)

    @torch.no_grad()
    def decode_labels(self, ids: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Ids ``(B, N)`` -> label maps (standardised depth; argmax classes; 0/255 edges)."""
        g = self.config.grid_size
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, len(ids), batch_size):
            chunk = torch.from_numpy(np.asarray(ids[start : start + batch_size], dtype=np.int64))
            out.append(self.preprocessor.from_model(self.decode(chunk.reshape(-1, g, g))))
        self.train(was_training)
        return np.concatenate(out)
