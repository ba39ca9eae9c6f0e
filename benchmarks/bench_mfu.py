"""Training throughput and model FLOP utilisation per trunk size, with and without torch.compile.

    python benchmarks/bench_mfu.py                                  # CPU: demo and tiny trunks
    python benchmarks/bench_mfu.py --device cuda --sizes base --batch-size 64 --tokens 256

Each row is one (size, compile) pair: a FourM over the demo's modalities (flows.yaml:
``modalities``, masked by its ``train`` mixture) with the trunk of ``size`` (``demo`` =
flows.yaml's own ``train.model``, else a preset of ``fm21.config.MODEL_SIZES``), stepped by
the training loop's step (forward, backward, clip, AdamW from ``build_optimizer``) on
random samples in the data contract. Compile is ``fm21.train.parallelize.apply_compile``
(per block); its first steps (compilation) are untimed and reported as ``compile s``.

Peak: the best of several large fp32 matmuls (2 n^3 FLOP each) timed in the same process
with the same threads, so MFU compares the step with what this machine's matmul reaches
now (a shared machine's load moves both). Achieved FLOP/s counts the matmuls of the
step, forward + backward = 3 x forward, from the slots the trunk really processes (after
the valid-first truncation): encoder and decoder linear layers, attention scores and
values, the context projection and the output heads on the target slots. Embedding
lookups, norms, softmax and the optimizer are not counted (MFU convention).

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def matmul_peak(device: str, n: int, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n @ n x n matmul on ``device``."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):  # the first is a warm-up
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_flops(model: Any, batch: dict) -> float:
    """Matmul FLOPs of one training step (forward + backward) on ``batch``."""
    import torch

    with torch.no_grad():
        ignore = torch.cat([d["input_mask"] for n, d in batch.items() if n in model.encoder_embeddings], dim=1)
        K = min(model.config.num_input_tokens, int((~ignore).sum(1).max()))  # encoder slots
        slots = model.decoder_slots(batch)
    B, M = slots.ignore.shape  # decoder slots
    D = model.config.dim
    enc_lin = sum(p.numel() for p in model.encoder[0].parameters() if p.ndim == 2)
    dec = model.decoder[0]
    kv = dec.cross_attn.kv.weight.numel()  # applied to the K context slots
    dec_lin = sum(p.numel() for p in dec.parameters() if p.ndim == 2) - kv
    enc = model.config.encoder_depth * (2 * B * K * enc_lin + 4 * B * K * K * D)
    dec_fwd = model.config.decoder_depth * (2 * B * (M * dec_lin + K * kv) + 4 * B * (M * M + M * K) * D)
    context = 2 * B * K * D * D
    heads = sum(2 * D * model.specs[n].vocab_size * int((slots.mod_index == i).sum())  # target slots x vocab
                for i, n in enumerate(slots.names))
    return 3.0 * (enc + dec_fwd + context + heads)


def train_step(model: Any, opt: Any, batch: dict, device: str) -> None:
    import torch

    loss, _ = model(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    _sync(device)


def model_config(size: str, demo: Any) -> Any:
    from fm21.config import ModelConfig

    return demo if size == "demo" else ModelConfig(size=size)


def run_one(size: str, compiled: bool, args: argparse.Namespace, batches: list[dict], cfg: Any) -> dict[str, Any]:
    import torch

    from fm21.train.loop import build_optimizer
    from fm21.train.model import FourM
    from fm21.train.parallelize import apply_compile

    torch.manual_seed(0)
    model = FourM(cfg.specs(), model_config(size, cfg.train.model), num_input_tokens=args.tokens,
                  num_target_tokens=args.tokens).to(args.device)
    model.train()
    if compiled:
        apply_compile(model)
    opt = build_optimizer(model, cfg.train)
    start = time.perf_counter()
    for batch in batches[: args.warmup]:
        train_step(model, opt, batch, args.device)
    warmup_s = time.perf_counter() - start
    times, flops = [], []
    budget = time.perf_counter()
    for batch in batches[args.warmup:]:
        start = time.perf_counter()
        train_step(model, opt, batch, args.device)
        times.append(time.perf_counter() - start)
        flops.append(step_flops(model, batch))
        if len(times) >= 2 and time.perf_counter() - budget > args.max_seconds:
            break
    median = statistics.median(times)
    achieved = statistics.median(f / t for f, t in zip(flops, times)) / 1e9
    return {
        "size": size, "compile": compiled, "dim": model.config.dim,
        "layers": f"{model.config.encoder_depth}+{model.config.decoder_depth}",
        "trunk_params": model.num_parameters(trunk_only=True), "params": model.num_parameters(),
        "batch_size": args.batch_size, "tokens_per_step": args.batch_size * 2 * args.tokens,
        "warmup_s": round(warmup_s, 2), "timed_steps": len(times), "step_ms_median": round(1000 * median, 1),
        "tokens_per_s": round(args.batch_size * 2 * args.tokens / median, 1),
        "gflop_per_step": round(statistics.median(flops) / 1e9, 3), "gflops_per_s": round(achieved, 2),
    }


def make_batches(cfg: Any, *, num: int, batch_size: int, tokens: int, device: str) -> list[dict]:
    import numpy as np

    from fm21.tokenize.text import NUM_SPECIAL_TOKENS
    from fm21.train.masking import UnifiedMasking, collate_mod_dicts
    from fm21.train.samples import random_sample

    specs = cfg.specs()
    masking = UnifiedMasking(specs, num_input_tokens=tokens, num_target_tokens=tokens,
                             mixture=list(cfg.train.mixture), seed=0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(num):
        samples = [masking(random_sample(specs, rng, first_text_id=NUM_SPECIAL_TOKENS, num_metadata_chunks=18), rng)
                   for _ in range(batch_size)]
        out.append({m: {k: v.to(device) for k, v in d.items()} for m, d in collate_mod_dicts(samples).items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,tiny", help="demo (flows.yaml's trunk) and/or MODEL_SIZES presets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", default="off,on", help="off, on, or off,on")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=None, help="input = target tokens; default: the demo's")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (fewer if --max-seconds runs out)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--matmul-n", type=int, default=None, help="peak matmul side (default 2048 CPU, 8192 GPU)")
    args = parser.parse_args()

    import torch

    from fm21.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config()
    args.tokens = args.tokens or cfg.train.num_input_tokens
    n = args.matmul_n or (8192 if args.device.startswith("cuda") else 2048)
    batches = make_batches(cfg, num=args.warmup + args.steps, batch_size=args.batch_size, tokens=args.tokens,
                           device=args.device)
    peak_before = matmul_peak(args.device, n)
    rows = [run_one(size, mode == "on", args, batches, cfg)
            for size in args.sizes.split(",") for mode in args.compile.split(",")]
    peak = max(peak_before, matmul_peak(args.device, n))
    for r in rows:
        r["mfu"] = round(r["gflops_per_s"] / peak, 4)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, fp32 matmul peak {peak:.1f} GFLOP/s "
          f"(n={n}, best of before/after); batch {args.batch_size}, {args.tokens}+{args.tokens} tokens/sample")
    print(f"{'size':>6} {'compile':>7} {'dim':>5} {'layers':>6} {'trunk':>9} {'warmup s':>8} {'step ms':>9} "
          f"{'tokens/s':>9} {'GFLOP/step':>10} {'GFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        print(f"{r['size']:>6} {str(r['compile']):>7} {r['dim']:>5} {r['layers']:>6} {r['trunk_params'] / 1e6:>8.2f}M "
              f"{r['warmup_s']:>8.1f} {r['step_ms_median']:>9.1f} {r['tokens_per_s']:>9.0f} "
              f"{r['gflop_per_step']:>10.2f} "
              f"{r['gflops_per_s']:>8.2f} {100 * r['mfu']:>5.1f}%")
    print(json.dumps({"device": args.device, "torch_threads": torch.get_num_threads(), "matmul_n": n,
                      "peak_gflops": round(peak, 2), "runs": rows}))


if __name__ == "__main__":
    main()
