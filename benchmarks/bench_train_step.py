"""One 4M training step (forward + backward + clip + AdamW) at the demo configuration.

    python benchmarks/bench_train_step.py [--steps 10] [--batch-size 24] [--threads 1,2]

The model, optimizer, masking and collation are the training stage's own (``FourM``,
``build_optimizer``, ``fm21.train.loop._masking``, ``collate_mod_dicts``) on random
samples in the data contract, at ``load_config()``'s modalities and ``train`` slice.
Each thread count runs in its own subprocess with ``OMP_NUM_THREADS`` (and
``torch.set_num_threads``) set before torch loads: on a small shared machine two torch
threads can be far slower than one, and this shows the figure either way.

Prints a table (parameters, masking+collate ms/batch, step ms median/min/max, tokens/s,
estimated GFLOP/s, per thread count, and the step-time ratio to the first thread count),
then one JSON line with the same figures. GFLOP/s is an ESTIMATE: 6 x batch x (encoder
params x input tokens + decoder params x target tokens) / step time; the encoder only sees
the inputs and the decoder only the targets, so 6 x trunk params x all tokens would count
double. Embeddings, logits, attention scores and the optimizer are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

DEFAULT_THREADS = "1,2"


# ------------------------------------------------------------------ worker (one thread count)
def make_batches(cfg: Any, specs: dict, *, num_batches: int, batch_size: int) -> tuple[list[dict], float]:
    """``num_batches`` collated mod_dicts, and the masking+collate ms per batch."""
    import numpy as np

    from fm21.tokenize.text import NUM_SPECIAL_TOKENS
    from fm21.train.loop import _masking
    from fm21.train.samples import random_sample
    from fm21.train.masking import collate_mod_dicts

    rng = np.random.default_rng(0)
    masking = _masking(cfg.train, specs, cfg.seed)
    samples = [[random_sample(specs, rng, first_text_id=NUM_SPECIAL_TOKENS, num_metadata_chunks=18) for _ in range(batch_size)]
               for _ in range(num_batches)]
    start = time.perf_counter()
    batches = [collate_mod_dicts([masking(s, rng) for s in chunk]) for chunk in samples]
    ms_per_batch = 1000.0 * (time.perf_counter() - start) / num_batches
    return batches, ms_per_batch


def train_step(model: Any, opt: Any, mod_dict: dict, grad_clip: float) -> float:
    """The loop's step, top to bottom: forward, loss, backward, clip, step."""
    import torch

    loss, _ = model(mod_dict)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(loss)


def time_steps(model: Any, opt: Any, batches: list[dict], *, warmup: int, grad_clip: float,
               max_seconds: float) -> list[float]:
    """Seconds of each timed step after ``warmup`` untimed ones; stops early (keeping at
    least two timed steps) once ``max_seconds`` of stepping have passed."""
    budget_start = time.perf_counter()
    times: list[float] = []
    for i, mod_dict in enumerate(batches):
        start = time.perf_counter()
        train_step(model, opt, mod_dict, grad_clip)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if len(times) >= 2 and time.perf_counter() - budget_start > max_seconds:
            break
    return times


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one thread count in this process (torch imported after OMP_NUM_THREADS)."""
    import torch

    from fm21.config import load_config
    from fm21.train.loop import build_optimizer
    from fm21.train.model import FourM

    torch.set_num_threads(args.worker_threads)
    cfg = load_config()
    specs, tcfg = cfg.specs(), cfg.train
    torch.manual_seed(cfg.seed)
    model = FourM(specs, tcfg.model, num_input_tokens=tcfg.num_input_tokens,
                  num_target_tokens=tcfg.num_target_tokens)
    model.train()
    opt = build_optimizer(model, tcfg)
    batches, collate_ms = make_batches(cfg, specs, num_batches=args.warmup + args.steps,
                                       batch_size=args.batch_size)
    times = time_steps(model, opt, batches, warmup=args.warmup, grad_clip=tcfg.grad_clip,
                       max_seconds=args.max_seconds)
    return summarise(model, times, threads=args.worker_threads, batch_size=args.batch_size,
                     num_input=tcfg.num_input_tokens, num_target=tcfg.num_target_tokens,
                     collate_ms=collate_ms)


def summarise(model: Any, times: list[float], *, threads: int, batch_size: int,
              num_input: int, num_target: int, collate_ms: float) -> dict[str, Any]:
    import torch

    median = statistics.median(times)
    tokens = batch_size * (num_input + num_target)
    trunk = model.num_parameters(trunk_only=True)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    flops = 6.0 * batch_size * (encoder * num_input + decoder * num_target)
    return {
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "params": model.num_parameters(),
        "trunk_params": trunk,
        "batch_size": batch_size,
        "tokens_per_step": tokens,
        "collate_ms_per_batch": round(collate_ms, 2),
        "timed_steps": len(times),
        "step_ms_median": round(1000.0 * median, 2),
        "step_ms_min": round(1000.0 * min(times), 2),
        "step_ms_max": round(1000.0 * max(times), 2),
        "tokens_per_s": round(tokens / median, 1),
        "gflops_per_step_est": round(flops / 1e9, 3),
        "gflops_per_s_est": round(flops / median / 1e9, 3),
    }


# ------------------------------------------------------------------ driver
def run_threads(threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run the worker in a fresh interpreter with every thread pool pinned to ``threads``."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--worker-threads", str(threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--max-seconds", str(args.max_seconds)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker with {threads} thread(s) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict[str, Any]]) -> None:
    first = rows[0]
    print(f"params {first['params']:,} (trunk {first['trunk_params']:,}); batch {first['batch_size']}, "
          f"{first['tokens_per_step']} tokens/step (inputs + targets)")
    print(f"{'threads':>7} {'collate ms':>10} {'steps':>5} {'step ms med':>11} {'min':>9} {'max':>9} "
          f"{'tokens/s':>9} {'GFLOP/s est':>11} {'x slower':>8}")
    for r in rows:
        print(f"{r['threads']:>7} {r['collate_ms_per_batch']:>10.1f} {r['timed_steps']:>5} "
              f"{r['step_ms_median']:>11.1f} {r['step_ms_min']:>9.1f} {r['step_ms_max']:>9.1f} "
              f"{r['tokens_per_s']:>9.0f} {r['gflops_per_s_est']:>11.3f} {r['slowdown_vs_first']:>8.2f}")
    print(f"GFLOP/s est (an estimate) = 6 x batch x (encoder params x input tokens + decoder params x "
          f"target tokens) / median step = {first['gflops_per_step_est']:.2f} GFLOP / median step")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per thread count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the demo's train.batch_size")
    parser.add_argument("--threads", default=DEFAULT_THREADS, help="comma-separated thread counts")
    parser.add_argument("--max-seconds", type=float, default=40.0,
                        help="stop timing a thread count after this long (at least 2 timed steps)")
    parser.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.batch_size is None:
        from fm21.config import load_config

        args.batch_size = load_config().train.batch_size
    if args.worker_threads is not None:
        print(json.dumps(run_worker(args)))
        return
    rows = [run_threads(int(t), args) for t in args.threads.split(",")]
    for r in rows:
        r["slowdown_vs_first"] = round(r["step_ms_median"] / rows[0]["step_ms_median"], 2)
    print_table(rows)
    print(json.dumps({"runs": rows, "gflops_is_estimate": True}))


if __name__ == "__main__":
    main()
