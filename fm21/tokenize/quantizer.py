"""The "lucid" vector quantizer of the 4M tokenizers (apple/ml-4m `fourm/vq/`, `cfgs/default/tokenization/`).

- Cosine codes: inputs and codes are l2-normalised; the nearest code maximises the dot
  product.
- The codebook is a buffer updated by EMA (decay ``ema_decay``) toward the mean of the
  normalised inputs assigned to each code, then re-normalised (the codes stay on the
  unit sphere, so the STE output has the same scale as the normalised input).
- Commitment loss ``commitment_weight * mse(z, sg(q))`` on the normalised latents;
  straight-through estimator for the gradient.
- Dead-code restarts (``batch_random``): after each training step, codes whose EMA
  usage is below ``(batch * tokens_per_image / codebook_size) / dead_code_coef`` are
  replaced by random normalised encoder outputs of the current batch. ``cluster_size``
  starts at zero, so the first steps seed the codebook from data (as the reference).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LucidQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        ema_decay: float = 0.99,
        commitment_weight: float = 1.0,
        dead_code_coef: float = 32.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.ema_decay = ema_decay
        self.commitment_weight = commitment_weight
        self.dead_code_coef = dead_code_coef
        codebook = F.normalize(torch.randn(codebook_size, dim), dim=-1)  # (K, D) unit rows
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # EMA usage counts

    def dead_code_threshold(self, num_vectors: int) -> float:
        """EMA usage below this marks a code dead; ``num_vectors`` = batch * tokens."""
        if self.dead_code_coef <= 0:
            return 0.0
        return (num_vectors / self.codebook_size) / self.dead_code_coef

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, h, w)`` -> unit code vectors ``(B, D, h, w)``."""
        return F.embedding(ids, self.codebook).permute(0, 3, 1, 2)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Normalised ``(M, D)`` -> code ids ``(M,)`` by cosine similarity."""
        return (flat @ self.codebook.t()).argmax(dim=-1)  # (M, K) similarities

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z`` (B, D, h, w) -> (quantized (B, D, h, w), ids (B, h, w), commitment loss)."""
        b, d, h, w = z.shape
        z = F.normalize(z, dim=1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (M, D), M = B*h*w
        ids = self.nearest(flat.detach())
        q = self.codebook[ids]  # (M, D)
        if self.training:
            self._ema_update(flat.detach(), ids)
            self._restart_dead_codes(flat.detach())
        loss = self.commitment_weight * F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()  # straight-through: gradient flows to the encoder
        q = q.reshape(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        return q, ids.reshape(b, h, w), loss

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        onehot = F.one_hot(ids, self.codebook_size).type(flat.dtype)  # (M, K)
        bins = onehot.sum(0)  # (K,)
        self.cluster_size.mul_(self.ema_decay).add_(bins, alpha=1 - self.ema_decay)
        used = bins > 0
        means = (onehot.t() @ flat) / bins.clamp(min=1).unsqueeze(1)  # (K, D)
        target = torch.where(used[:, None], F.normalize(means, dim=-1), self.codebook)
        updated = self.codebook * self.ema_decay + target * (1 - self.ema_decay)
        self.codebook.copy_(F.normalize(updated, dim=-1))

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold(flat.shape[0])
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        if flat.shape[0] >= num_dead:
            pick = torch.randperm(flat.shape[0], device=flat.device)[:num_dead]
        else:
            pick = torch.randint(0, flat.shape[0], (num_dead,), device=flat.device)
        self.codebook[dead] = flat[pick]


def codebook_stats(ids: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Usage fraction and perplexity (exp of the code-distribution entropy) of ``ids``."""
    counts = np.bincount(np.asarray(ids).ravel().astype(np.int64), minlength=codebook_size)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    return {
        "codebook_usage": float((counts > 0).mean()),
        "perplexity": float(math.exp(-(nz * np.log(nz)).sum())),
    }
