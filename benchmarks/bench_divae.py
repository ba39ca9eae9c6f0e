"""DiVAE (diffusion decoder) vs the conv VQ-VAE of fm21 on tok_rgb at the demo size.

    python benchmarks/bench_divae.py [--steps 300] [--device cpu|cuda] [--threads 1] [--png DIR]

At 64 px, patch 8, 256 codes (the demo's tok_rgb), in one process:

1. speed: training steps/s (forward, loss, backward, AdamW; batch ``--batch-size``) and
   decode samples/s (ids -> model-space image; DiVAE at 1, 10 and 25 DDIM steps) of the
   VQ-VAE (``TokenizerConfig`` defaults), the DiVAE at its defaults (UNet on the
   patch-4 pixel-unshuffled image) and the DiVAE with ``decoder_patch=1`` (UNet at full
   resolution), with ratios to the VQ-VAE;
2. quality: both trained ``--steps`` steps through their own ``train`` functions on
   ``--train-samples`` synthetic scenes (``render_scene(seed, 64).rgb``), held-out PSNR
   on ``--val-samples`` other scenes (DiVAE at 1, 10 and 25 DDIM steps).

Rates on CPU are per second of the process's CPU time (one torch thread by default), so
they hold on a shared machine; with ``--device cuda`` they are per synchronised wall second.
Prints a table, then one JSON line with the same figures. With ``--device cuda`` the
timings and the DiVAE training run on the GPU; ``train_vq_tokenizer`` has no device
argument, so the VQ-VAE quality run stays on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fm21.config import VQTokenizerConfig
from fm21.ingest.synthetic import render_scene
from fm21.modalities import resolve_specs
from fm21.tokenize import divae
from fm21.tokenize.image_tokenizer import TokenizerConfig
from fm21.tokenize.preprocess import PREPROCESSORS
from fm21.tokenize.train_vq import save_recon_grid, train_vq_tokenizer
from fm21.tokenize.vqvae import build_tokenizer

DDIM_STEPS = (1, 10, 25)


def _timed(fn: Callable[[], Any], device: str, *, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones: on CPU
    the process's CPU time (with one torch thread it is the compute time, robust to other
    processes sharing the cores), on CUDA the synchronised wall time."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    times = []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = clock()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(clock() - start)
    return float(np.median(times))


def speed(tok: Any, x: torch.Tensor, device: str, *, repeats: int) -> dict[str, float]:
    """Training steps/s and decode samples/s of one tokenizer (random init) on batch ``x``."""
    tok = tok.to(device).train()
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    diffusion = isinstance(tok, divae.DiVAE)

    def step() -> None:
        if diffusion:
            noise = torch.randn(x.shape, generator=gen).to(device)
            t = torch.randint(0, tok.config.num_train_timesteps, (len(x),), generator=gen).to(device)
            pred, _, commit = tok(x, noise, t)
            loss = tok.loss_fn(pred, x) + commit
        else:
            recon, _, commit = tok(x)
            loss = tok.preprocessor.loss(recon, x) + commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()

    out = {"params": sum(p.numel() for p in tok.parameters()),
           "train_steps_per_s": 1.0 / _timed(step, device, repeats=repeats)}
    tok.eval()
    with torch.no_grad():
        ids = tok.encode(x)  # (B, g, g)
        if diffusion:
            for k in DDIM_STEPS:
                out[f"decode_samples_per_s_ddim{k}"] = len(x) / _timed(lambda: tok.decode(ids, steps=k), device,
                                                                         repeats=max(1, repeats // 2))
        else:
            out["decode_samples_per_s"] = len(x) / _timed(lambda: tok.decode(ids), device, repeats=repeats)
    tok.cpu()
    return out


def quality(spec: Any, train: np.ndarray, val: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Both families trained ``args.steps`` steps (seed 0); held-out PSNR."""
    opts = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    start = time.process_time()  # CPU seconds (see _timed)
    vq, vq_metrics = train_vq_tokenizer(spec, VQTokenizerConfig(**opts), train, val, seed=0)
    vq_s = time.process_time() - start
    start = time.process_time()
    di, di_metrics = divae.train(spec, opts, train, val, seed=0, device=args.device)
    di_s = time.process_time() - start  # includes its evaluation at decode_steps (10)
    ids = di.encode_labels(val)
    psnr = {k: di.preprocessor.metrics(di.decode_labels(ids, steps=k), val)["psnr"] for k in DDIM_STEPS}
    if args.png:
        Path(args.png).mkdir(parents=True, exist_ok=True)
        save_recon_grid(vq, val, Path(args.png) / "recon_vqvae.png")
        divae.save_recon_png(di, val, Path(args.png) / "recon_divae.png")
    return {
        "vqvae": {"psnr": vq_metrics["psnr"], "codebook_usage": vq_metrics["codebook_usage"],
                  "cpu_s": round(vq_s, 1), "final_loss": vq_metrics["train"]["final_recon_loss"]},
        "divae": {**{f"psnr_ddim{k}": v for k, v in psnr.items()}, "codebook_usage": di_metrics["codebook_usage"],
                  "cpu_s": round(di_s, 1), "final_loss": di_metrics["train"]["final_diffusion_loss"],
                  "val_diffusion_loss": di_metrics["diffusion_loss"]},
    }


def print_table(result: dict[str, Any]) -> None:
    rows, base = result["speed"], result["speed"]["vqvae"]
    clock = "wall" if result["device"] == "cuda" else "CPU-time"
    print(f"tok_rgb 64 px, patch 8, 256 codes; batch {result['batch_size']}, device {result['device']}, "
          f"threads {result['threads']}; rates per {clock} second")
    print(f"{'model':<16} {'params':>9} {'train step/s':>12} {'x VQ':>6} " +
          " ".join(f"{'dec/s ' + str(k):>10} {'x VQ':>6}" for k in DDIM_STEPS))
    for name, r in rows.items():
        cells = [f"{name:<16} {r['params']:>9,} {r['train_steps_per_s']:>12.2f} "
                 f"{r['train_steps_per_s'] / base['train_steps_per_s']:>6.3f}"]
        for k in DDIM_STEPS:
            v = r.get(f"decode_samples_per_s_ddim{k}", r.get("decode_samples_per_s"))
            cells.append(f"{v:>10.1f} {v / base['decode_samples_per_s']:>6.3f}")
        print(" ".join(cells))
    q = result["quality"]
    print(f"\nheld-out PSNR after {result['steps']} steps ({result['train_samples']} train / "
          f"{result['val_samples']} val scenes):")
    print(f"  vqvae  {q['vqvae']['psnr']:.2f} dB  (usage {q['vqvae']['codebook_usage']:.2f}, {q['vqvae']['cpu_s']} CPU s)")
    di = q["divae"]
    print("  divae  " + ", ".join(f"{di[f'psnr_ddim{k}']:.2f} dB @ {k} DDIM" for k in DDIM_STEPS)
          + f"  (usage {di['codebook_usage']:.2f}, {di['cpu_s']} CPU s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-samples", type=int, default=256)
    parser.add_argument("--val-samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4, help="timed training steps per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--png", default=None, help="folder for recon_vqvae.png / recon_divae.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = resolve_specs(["tok_rgb"], resolution=64, patch_size=8, image_vocab_size=256)["tok_rgb"]
    train = np.stack([render_scene(s, 64).rgb for s in range(args.train_samples)])
    val = np.stack([render_scene(1_000_000 + s, 64).rgb for s in range(args.val_samples)])
    x = PREPROCESSORS["rgb"].to_model(train[: args.batch_size]).to(args.device)  # (B, 3, 64, 64)
    torch.manual_seed(0)
    models = {
        "vqvae": build_tokenizer(TokenizerConfig.from_spec(spec, VQTokenizerConfig())),
        "divae": divae.build(divae.DiVAEConfig.from_spec(spec, {})),
        "divae_patch1": divae.build(divae.DiVAEConfig.from_spec(spec, {"decoder_patch": 1})),
    }
    result = {"device": args.device, "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps,
              "train_samples": args.train_samples, "val_samples": args.val_samples, "speed": {}}
    for name, model in models.items():  # progress on stderr: a starved run still shows its figures
        result["speed"][name] = speed(model, x, args.device, repeats=args.repeats)
        print(name, json.dumps(result["speed"][name]), file=sys.stderr, flush=True)
    result["quality"] = quality(spec, train, val, args)
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
