"""A short VQ-VAE training run learns, reports metrics and is deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fm21.config import VQTokenizerConfig
from fm21.modalities import MODALITIES
from fm21.tokenize.checkpoint import save_tokenizer
from fm21.tokenize.image_tokenizer import TokenizerConfig
from fm21.tokenize.train_vq import reconstruction_loss, train_vq_tokenizer
from fm21.tokenize.vqvae import build_tokenizer

CFG = VQTokenizerConfig(hidden_dim=32, num_layers=1, steps=60, batch_size=16, lr=2e-3)


def _spec(name: str):
    return MODALITIES[name].at(resolution=32, patch_size=8, vocab_size=64)


@pytest.mark.parametrize(
    ("name", "metric_keys", "factor"),
    [
        ("tok_rgb", ("psnr",), 0.5),
        ("tok_semseg", ("pixel_accuracy", "miou"), 0.8),
    ],
)
def test_training_reduces_reconstruction_loss(name, metric_keys, factor, scenes32) -> None:
    spec = _spec(name)
    data = scenes32[spec.label_columns[0]]
    train, val = data[:48], data[48:]
    torch.manual_seed(0)
    untrained = build_tokenizer(TokenizerConfig.from_spec(spec, CFG))
    before = reconstruction_loss(untrained, val)
    tok, metrics = train_vq_tokenizer(spec, CFG, train, val, seed=0)
    assert metrics["recon_loss"] < factor * before
    assert metrics["train"]["final_recon_loss"] < metrics["train"]["first_recon_loss"]
    for key in ("codebook_usage", "perplexity", "recon_loss", *metric_keys):
        assert np.isfinite(metrics[key]), key
    assert metrics["codebook_usage"] > 0.1  # dead-code restarts keep the codebook in use
    assert tok.training_summary["steps"] == CFG.steps and not tok.training


def test_training_is_deterministic(tmp_path, scenes32) -> None:
    cfg = CFG.model_copy(update={"steps": 8})
    spec = _spec("tok_normal")
    data = scenes32["normal"]
    a, _ = train_vq_tokenizer(spec, cfg, data[:32], data[32:40], seed=3)
    b, _ = train_vq_tokenizer(spec, cfg, data[:32], data[32:40], seed=3)
    assert save_tokenizer(a, tmp_path / "a") == save_tokenizer(b, tmp_path / "b")


def test_lr_schedule() -> None:
    from fm21.schedules import warmup_cosine  # the tokenizers' schedule is the 4M trainer's

    lrs = [warmup_cosine(s, steps=100, peak=1.0, warmup=5) for s in range(100)]
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(0.8) and lrs[5] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(x >= y for x, y in zip(lrs[5:], lrs[6:]))  # cosine decay is monotone
