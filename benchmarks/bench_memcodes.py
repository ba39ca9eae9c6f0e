"""Memcodes tokenizers (``fm21.tokenize.memcodes``) trained at a small size on structured synthetic data.

    python benchmarks/bench_memcodes.py [--device cuda] [--num-train 1024] [--steps 600] [--threads 1]

Two uses, both through the family's own ``train`` (the stage's entry point):

- global embeddings (``tok_dinov2_global`` and ``tok_imagebind_global`` at the tiny recipe's vocabulary, 64
  codes x 16 tokens): vectors of a low-rank Gaussian mixture (8 clusters in a 16-d subspace of
  the 768 / 1280 channels, plus isotropic noise). Held-out ``cosine`` (goal >= 0.9), next to
  ``cosine_of_mean`` (what the training mean alone scores).
- body poses (``human_poses``, 1024 codes x 8 tokens, the reference's sizes): 23 joint rotations
  driven by a 6-d latent (axis-angle = latent @ fixed map, joint angles of tens of degrees),
  like real poses a low-dimensional family; uniform random rotations would carry 69 free
  angles that 8 tokens cannot hold. Held-out mean joint angle error and smooth-L1.

Prints a table (held-out metric, codebook usage, train steps/s, encode samples/s) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def lowrank_mixture(num: int, dim: int, *, seed: int, rank: int = 16, clusters: int = 8) -> np.ndarray:
    """``(num, dim)`` float16 vectors: cluster centre + spread in a random rank-``rank`` subspace + noise."""
    structure = np.random.default_rng(1234 + dim)  # the same subspace and clusters for train and val
    basis = structure.normal(size=(rank, dim)) / np.sqrt(rank)
    centres = structure.normal(size=(clusters, rank))
    rng = np.random.default_rng(seed)
    z = centres[rng.integers(0, clusters, num)] + 0.5 * rng.normal(size=(num, rank))
    return (z @ basis + 0.05 * rng.normal(size=(num, dim))).astype(np.float16)


def axis_angle_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues: ``(..., 3)`` axis-angle -> ``(..., 3, 3)`` rotation matrices."""
    theta = np.linalg.norm(v, axis=-1, keepdims=True)[..., None]  # (..., 1, 1)
    k = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    kx = np.zeros((*v.shape[:-1], 3, 3))
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    kx = kx - np.swapaxes(kx, -1, -2)
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def structured_poses(num: int, *, seed: int, latent: int = 6) -> np.ndarray:
    """``(num, 207)`` float32 body poses: 23 rotations from a ``latent``-d code (plus a little noise)."""
    mix = np.random.default_rng(4321).normal(size=(latent, 23 * 3)) * 0.25  # fixed across splits
    rng = np.random.default_rng(seed)
    aa = rng.normal(size=(num, latent)) @ mix + 0.02 * rng.normal(size=(num, 23 * 3))  # radians
    return axis_angle_to_matrix(aa.reshape(num, 23, 3)).reshape(num, 207).astype(np.float32)


def run_case(name: str, spec, options: dict, data, *, num_train: int, device: str) -> dict:
    import torch

    from fm21.tokenize import memcodes

    train, val = data(num_train, seed=0), data(512, seed=1)
    tok, metrics = memcodes.train(spec, options, train, val, seed=0, device=device)
    encode_set = data(4096, seed=2)
    tok.encode_labels(encode_set[:64])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    tok.encode_labels(encode_set, batch_size=512)
    if device == "cuda":
        torch.cuda.synchronize()
    enc = len(encode_set) / (time.perf_counter() - start)
    s = metrics["train"]
    return {"case": name, "num_tokens": tok.config.num_tokens, "vocab_size": tok.config.vocab_size,
            "parameters": sum(p.numel() for p in tok.parameters()), "num_train": num_train,
            **{k: v for k, v in metrics.items() if k != "train"},
            "final_train_loss": s["final_loss"], "train_steps_per_s": s["steps"] / max(s["wall_time_s"], 1e-9),
            "encode_samples_per_s": enc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--num-train", type=int, default=1024, help="training vectors per case (the tiny demo samples 64)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--hidden-dim", type=int, default=32)
    ap.add_argument("--num-blocks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from fm21.modalities import get_spec

    torch.set_num_threads(args.threads)
    options = {"hidden_dim": args.hidden_dim, "num_blocks": args.num_blocks, "steps": args.steps,
               "batch_size": 64, "lr": 3e-3}
    rows = []
    for name in ("tok_dinov2_global", "tok_imagebind_global"):
        spec = get_spec(name).at(vocab_size=64)  # the tiny recipe's image_vocab_size
        dim = int(spec.num_channels)
        rows.append(run_case(name, spec, options, lambda n, seed, d=dim: lowrank_mixture(n, d, seed=seed),
                             num_train=args.num_train, device=args.device))
    rows.append(run_case("human_poses (body_pose)", get_spec("human_poses"), options, structured_poses,
                         num_train=args.num_train, device=args.device))

    print(f"memcodes, {args.device}, hidden {args.hidden_dim}, {args.num_blocks} blocks, {args.steps} steps, "
          f"batch 64, lr 3e-3, {args.num_train} training vectors, {args.threads} thread(s)")
    head = f"{'case':26s} {'tokens':>6s} {'codes':>6s} {'params':>8s} {'held-out metric':>34s} {'usage':>6s} " \
           f"{'steps/s':>8s} {'enc/s':>9s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "cosine" in r:
            metric = f"cosine {r['cosine']:.3f} (mean alone {r['cosine_of_mean']:.3f})"
        else:
            metric = f"angle {r['angle_error_deg']:.1f} deg (mean alone {r['angle_error_of_mean_deg']:.1f})"
        print(f"{r['case']:26s} {r['num_tokens']:6d} {r['vocab_size']:6d} {r['parameters']:8d} {metric:>34s} "
              f"{r['codebook_usage']:6.3f} {r['train_steps_per_s']:8.1f} {r['encode_samples_per_s']:9.0f}")
    print(json.dumps({"device": args.device, "options": options, "num_train": args.num_train, "rows": rows}))


if __name__ == "__main__":
    main()
