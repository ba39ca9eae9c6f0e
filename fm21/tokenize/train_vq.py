"""Train one VQ image tokenizer on label maps; reconstruction metrics; recon PNG grid.

One readable loop: sample a batch, random hflip, forward, reconstruction + commitment
loss, backward, clip, AdamW step (betas 0.9/0.99, cosine LR after a short linear
warmup, apple/ml-4m `fourm/vq/`, `cfgs/default/tokenization/`). Deterministic for a seed on CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fm21.config import VQTokenizerConfig
from fm21.modalities import ModalitySpec
from fm21.schedules import warmup_cosine
from fm21.tokenize.grid import labels_to_rgb, save_grid
from fm21.tokenize.image_tokenizer import ImageTokenizer, TokenizerConfig
from fm21.tokenize.quantizer import codebook_stats
from fm21.tokenize.vqvae import build


def _augment(tok: ImageTokenizer, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip of half the batch (normals also flip their x sign)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    if flip.any():
        x = x.clone()
        x[flip] = tok.preprocessor.hflip(x[flip])
    return x


@torch.no_grad()
def reconstruction_loss(tok: ImageTokenizer, labels: np.ndarray, *, batch_size: int = 64) -> float:
    """Mean model-space reconstruction loss (the training loss, without commitment)."""
    was_training = tok.training
    tok.eval()
    total, count = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = tok.preprocessor.to_model(labels[start : start + batch_size])
        recon, _, _ = tok(x)
        total += float(tok.preprocessor.loss(recon, x)) * len(x)
        count += len(x)
    tok.train(was_training)
    return total / max(count, 1)


def evaluate_tokenizer(tok: ImageTokenizer, labels: np.ndarray) -> dict[str, float]:
    """Codebook usage/perplexity, reconstruction loss and the label kind's own metrics."""
    ids = tok.encode_labels(labels)  # (B, N) int16
    recon = tok.decode_labels(ids)
    return {
        "num_samples": int(len(labels)),
        "recon_loss": reconstruction_loss(tok, labels),
        **codebook_stats(ids, tok.config.vocab_size),
        **tok.preprocessor.metrics(recon, labels),
    }


def _train_loop(
    tok: ImageTokenizer, x_train: torch.Tensor, cfg: VQTokenizerConfig, *, seed: int
) -> list[float]:
    """Runs ``cfg.steps`` steps in place; returns the reconstruction loss per step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(tok.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    warmup = max(1, cfg.steps // 20)
    batch = min(cfg.batch_size, len(x_train))
    history = []
    tok.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, steps=cfg.steps, peak=cfg.lr, warmup=warmup)
        idx = torch.randperm(len(x_train), generator=gen)[:batch]
        x = _augment(tok, x_train[idx], gen)  # (b, C, R, R) float, or (b, R, R) class ids
        recon, _, commit = tok(x)
        rec = tok.preprocessor.loss(recon, x)
        loss = rec + commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        history.append(rec.item())
    tok.eval()
    return history


def train_vq_tokenizer(
    spec: ModalitySpec,
    cfg: VQTokenizerConfig,
    train: np.ndarray,
    val: np.ndarray,
    *,
    seed: int,
) -> tuple[ImageTokenizer, dict[str, Any]]:
    """Train the tokenizer of ``spec`` on label maps ``train``; metrics on ``val``."""
    torch.manual_seed(seed)  # weight init and dead-code restarts draw from the global RNG
    tok = build(TokenizerConfig.from_spec(spec, cfg))
    x_train = tok.preprocessor.to_model(train)  # normalise once, not per step
    start = time.perf_counter()
    history = _train_loop(tok, x_train, cfg, seed=seed)
    wall = time.perf_counter() - start
    tail = history[-max(1, len(history) // 10) :]
    tok.training_summary = {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": seed,
        "num_train_samples": int(len(train)),
        "wall_time_s": round(wall, 2),
        "first_recon_loss": history[0] if history else None,
        "final_recon_loss": float(np.mean(tail)) if history else None,
    }
    metrics = {**evaluate_tokenizer(tok, val), "train": dict(tok.training_summary)}
    return tok, metrics


def save_recon_grid(
    tok: ImageTokenizer, labels: np.ndarray, path: Path | str, *, num_samples: int = 8
) -> None:
    """PNG: ``num_samples`` originals (top row) over their reconstructions (bottom row)."""
    labels = labels[:num_samples]
    pre = tok.preprocessor  # its name is the label kind, which picks the colouring
    recon = tok.decode_labels(tok.encode_labels(labels))
    shown = pre.as_decoded(labels)  # on the scale decode_labels returns (standardised depth)
    save_grid([labels_to_rgb(pre.name, shown), labels_to_rgb(pre.name, recon)], path)  # a local path or a URI
