"""The tiny modality set and model shared by the train and sampler tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fm21.config import MixtureComponent, ModelConfig
from fm21.modalities import ModalitySpec, resolve_specs
from fm21.train.masking import UnifiedMasking, collate_mod_dicts
from fm21.train import samples
from fm21.train.model import FourM

NAMES = ["rgb", "tok_depth", "tok_normal", "tok_dinov2_global", "caption", "color_palette", "metadata"]
TINY_MODEL = ModelConfig(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4)
NUM_INPUT, NUM_TARGET = 32, 32


def tiny_specs() -> dict[str, ModalitySpec]:
    """32 px / patch 8 grids (16 tokens), vocab 64, short sequences with a 300-id text vocab."""
    specs = resolve_specs(NAMES, resolution=32, patch_size=8, image_vocab_size=64, text_vocab_size=300)
    short = {"caption": 12, "color_palette": 7, "metadata": 10}
    return {n: dataclasses.replace(s, max_seq_len=short[n]) if n in short else s for n, s in specs.items()}


def random_sample(specs: dict[str, ModalitySpec], rng: np.random.Generator) -> dict:
    """A sample in the data contract: pixels, grid ids, id lists, metadata chunks."""
    return samples.random_sample(specs, rng, first_text_id=204)


def tiny_masking(specs, *, mixture=None, seed: int = 0) -> UnifiedMasking:
    mixture = mixture or [MixtureComponent(default_input_alpha=1.0, default_target_alpha=1.0)]
    return UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET, mixture=mixture, seed=seed)


def tiny_batch(specs, *, batch_size: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    masking = tiny_masking(specs)
    return collate_mod_dicts([masking(random_sample(specs, rng), rng) for _ in range(batch_size)])


def tiny_model(specs, *, seed: int = 0) -> FourM:
    torch.manual_seed(seed)
    return FourM(specs, TINY_MODEL, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET)
