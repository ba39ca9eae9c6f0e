"""Generation speed of the sampler (``fm21.evaluate.sampler.generate``) on a random-init FourM.

    python benchmarks/bench_generation.py [--device cpu|cuda] [--dim 128] [--depth 3]
        [--tokens 256] [--batch-size 1] [--threads 1] [--repeats 2]

Measures, on one model (``--depth`` encoder and decoder layers, weights ``random``):

- autoregressive decoding of a sequence target of ``--tokens`` tokens (``use_eos=False``,
  so every run decodes exactly that many), tokens/s with and without the K/V cache, and
  their ratio (the cache's goal: >= 5x at 256 tokens);
- MaskGIT and ROAR (8 steps) and raster autoregression of a 196-token grid target, samples/s.

Greedy decoding (temperature 0); each figure is the best of ``--repeats`` timed runs after
one warm-up. Prints a table, then one JSON line with the same figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any, Callable

import torch

from fm21.config import ModelConfig
from fm21.evaluate.sampler import generate, init_empty_target, init_full_input
from fm21.modalities import resolve_specs
from fm21.train.model import FourM


def build(args: argparse.Namespace) -> tuple[FourM, dict, dict]:
    specs = resolve_specs(["rgb", "tok_depth", "caption"], resolution=224, patch_size=16,
                          image_vocab_size=1024, text_vocab_size=30000)
    # L - 2 = 2 * max_seq_len slots are decoded (apple/ml-4m `fourm/data/masking.py` layout)
    specs["caption"] = dataclasses.replace(specs["caption"], max_seq_len=args.tokens // 2)
    heads = max(1, args.dim // 64)
    cfg = ModelConfig(dim=args.dim, encoder_depth=args.depth, decoder_depth=args.depth, num_heads=heads)
    torch.manual_seed(0)
    # the uncached path decodes every slot in one pass: the target budget must hold them all
    model = FourM(specs, cfg, num_input_tokens=256, num_target_tokens=args.tokens + 2)
    model = model.to(args.device).eval()
    rgb = torch.randn(args.batch_size, 3, 224, 224, device=args.device)
    cond = init_full_input({"rgb": {"tensor": rgb}}, "rgb", specs)
    return model, specs, cond


def best_seconds(fn: Callable[[], Any], repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, specs, cond = build(args)
    B = args.batch_size
    seq = init_empty_target(dict(cond), "caption", specs)
    grid = init_empty_target(dict(cond), "tok_depth", specs)
    decoded = seq["caption"]["tensor"].shape[1] - 2

    def ar(cache: bool) -> None:
        out = generate(model, seq, target="caption", temperature=0.0, use_eos=False, kv_cache=cache)
        assert int((~out["caption"]["input_mask"]).sum()) == B * (decoded + 1)  # ids + EOS

    def grid_run(scheme: str) -> None:
        generate(model, grid, target="tok_depth", scheme=scheme, num_steps=8, temperature=0.0)

    t_cached = best_seconds(lambda: ar(True), args.repeats, args.device)
    t_plain = best_seconds(lambda: ar(False), args.repeats, args.device)
    t_grid = {s: best_seconds(lambda s=s: grid_run(s), args.repeats, args.device)
              for s in ("maskgit", "roar", "autoregressive")}
    return {
        "weights": "random", "device": args.device, "threads": args.threads, "dim": args.dim,
        "depth": f"{args.depth}+{args.depth}", "batch_size": B, "params": model.num_parameters(),
        "ar_tokens": decoded,
        "ar_tokens_per_s_cached": B * decoded / t_cached,
        "ar_tokens_per_s_uncached": B * decoded / t_plain,
        "kv_cache_speedup": t_plain / t_cached,
        "grid_tokens": specs["tok_depth"].num_tokens,
        **{f"{s}_samples_per_s": B / t for s, t in t_grid.items()},
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"FourM dim {r['dim']}, {r['depth']} layers, {r['params']:,} params ({r['weights']} init), "
          f"{r['device']}, {r['threads']} thread(s), batch {r['batch_size']}")
    print(f"{'measure':<42} {'value':>12}")
    print(f"{'AR tokens/s, K/V cache (' + str(r['ar_tokens']) + ' tokens)':<42} {r['ar_tokens_per_s_cached']:>12.1f}")
    print(f"{'AR tokens/s, no cache':<42} {r['ar_tokens_per_s_uncached']:>12.1f}")
    print(f"{'K/V cache speed-up':<42} {r['kv_cache_speedup']:>11.1f}x")
    for s in ("maskgit", "roar", "autoregressive"):
        label = f"{s} samples/s ({r['grid_tokens']} tokens" + (", 8 steps)" if s != "autoregressive" else ")")
        print(f"{label:<42} {r[s + '_samples_per_s']:>12.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=3, help="encoder and decoder layers each")
    p.add_argument("--tokens", type=int, default=256, help="autoregressive tokens (even)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    r = run(args)
    print_table(r)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
