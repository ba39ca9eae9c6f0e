"""The lucid quantizer: unit-norm EMA codebook, dead-code restarts, straight-through."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fm21.tokenize.quantizer import LucidQuantizer, codebook_stats


def test_ema_codebook_stays_unit_norm_and_moves_toward_data() -> None:
    torch.manual_seed(0)
    q = LucidQuantizer(8, 16, ema_decay=0.9).train()
    before = q.codebook.clone()
    for _ in range(20):
        q(torch.randn(4, 8, 4, 4) + 2.0)  # (B, D, h, w), shifted: codes must move
    norms = q.codebook.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert not torch.allclose(q.codebook, before)
    mean_dir = F.normalize(torch.full((8,), 1.0), dim=0)
    assert (q.codebook @ mean_dir).mean() > (before @ mean_dir).mean()


def test_dead_codes_are_restarted_from_batch_latents() -> None:
    torch.manual_seed(0)
    k, d = 8, 4
    q = LucidQuantizer(d, k, ema_decay=0.99, dead_code_coef=1.0).train()
    # codes 0 and 1 live along +x, codes 2..7 point away from every input
    book = torch.zeros(k, d)
    book[0, 0] = book[1, 0] = 1.0
    book[2:, 0] = -1.0
    q.codebook.copy_(book)
    q.cluster_size.copy_(torch.tensor([100.0, 100.0] + [0.0] * (k - 2)))
    z = torch.randn(2, d, 4, 4) * 0.5
    z[:, 0] += 2.0  # every input is nearest to codes 0/1 before the restart
    q.eval()
    assert set(q(z)[1].unique().tolist()) <= {0, 1}
    q.train()
    q(z)  # threshold = (2*16/8)/1 = 4 > usage of codes 2..7 -> replaced
    flat = F.normalize(z, dim=1).permute(0, 2, 3, 1).reshape(-1, d)
    sims = q.codebook[2:] @ flat.t()  # (6, 32): each revived code is one of the latents
    assert torch.allclose(sims.max(dim=1).values, torch.ones(k - 2), atol=1e-5)
    q.eval()
    ids = q(z)[1]
    assert set(ids.unique().tolist()) & set(range(2, k))  # revived codes are now used


def test_eval_mode_leaves_codebook_alone_and_ste_passes_gradients() -> None:
    torch.manual_seed(0)
    q = LucidQuantizer(8, 16).eval()
    before = q.codebook.clone()
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out, ids, loss = q(z)
    assert torch.equal(q.codebook, before)
    assert out.shape == (2, 8, 3, 3) and ids.shape == (2, 3, 3)
    # forward value is the (unit) code vector, gradient is the identity on normalised z
    assert torch.allclose(out, q.lookup(ids), atol=1e-6)
    (out.sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_codebook_stats() -> None:
    uniform = codebook_stats(np.arange(64) % 16, 16)
    assert uniform["codebook_usage"] == 1.0
    assert abs(uniform["perplexity"] - 16.0) < 1e-6
    single = codebook_stats(np.zeros(10, np.int16), 16)
    assert single["codebook_usage"] == 1 / 16 and single["perplexity"] == 1.0
