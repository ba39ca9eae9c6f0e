"""Generation speed of the sampler (``fm21.evaluate.sampler.generate``) on a random-init FourM.

    python benchmarks/bench_generation.py [--device cpu|cuda] [--dim 128] [--depth 3]
        [--tokens 256] [--batch-size 1] [--threads 1] [--repeats 2]
    python benchmarks/bench_generation.py --batching [--batches 1,4,16] [--dim 64] [--depth 1]
        [--tokens 32] [--threads 1] [--repeats 2] [--device cpu|cuda] [--clock wall|cpu]

Measures, on one model (``--depth`` encoder and decoder layers, weights ``random``):

- autoregressive decoding of a sequence target of ``--tokens`` generated ids (its
  ``max_seq_len`` is ``--tokens + 1``: the EOS counts; ``use_eos=False``, so every run decodes
  exactly that many), tokens/s with and without the K/V cache, and their ratio (the
  cache's goal: >= 5x at 256 tokens);
- MaskGIT and ROAR (8 steps) and raster autoregression of a 196-token grid target, samples/s.

``--batching``: ``fm21 generate``'s batch modes (:func:`fm21.generate.driver.generate_tokens`:
rgb -> tok_depth by MaskGIT in 8 steps -> caption, chained) on N samples for each N of
``--batches``, samples/s when the N samples go through the sampler as one batch vs one
sample per call (what ``fm21 generate`` did before ``--batch-size``). The random model's
end tokens are masked off the caption logits so every sample decodes its full
``--tokens`` ids (a random model otherwise ends most captions at once); the token
decoding to files is not timed (it is per sample either way).

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
    # at most max_seq_len - 1 ids are generated: the EOS is the last of the max_seq_len tokens
    specs["caption"] = dataclasses.replace(specs["caption"], max_seq_len=args.tokens + 1)
    heads = max(1, args.dim // 64)
    cfg = ModelConfig(dim=args.dim, encoder_depth=args.depth, decoder_depth=args.depth, num_heads=heads)
    torch.manual_seed(0)
    # the uncached path decodes every slot in one pass: the target budget must hold them all
    model = FourM(specs, cfg, num_input_tokens=256, num_target_tokens=args.tokens + 2)
    model = model.to(args.device).eval()
    rgb = torch.randn(args.batch_size, 3, 224, 224, device=args.device)
    cond = init_full_input({"rgb": {"tensor": rgb}}, "rgb", specs)
    return model, specs, cond


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter  # set by --clock


def best_seconds(fn: Callable[[], Any], repeats: int, device: str) -> float:
    """Best of ``repeats`` timed runs after a warm-up. ``--clock cpu`` counts this process's
    CPU seconds (all threads), steadier than wall time on a machine shared with other jobs."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = _clock()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(_clock() - t)
    return min(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, specs, cond = build(args)
    B = args.batch_size
    seq = init_empty_target(dict(cond), "caption", specs)
    grid = init_empty_target(dict(cond), "tok_depth", specs)
    decoded = args.tokens

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
        "weights": "random", "device": args.device, "threads": args.threads, "clock": args.clock, "dim": args.dim,
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


def run_batching(args: argparse.Namespace) -> dict[str, Any]:
    """``fm21 generate``-style samples/s, batched vs one sample per sampler call."""
    from fm21.generate.driver import Settings, generate_tokens
    from fm21.generate.inputs import Condition
    from fm21.train.masking import NUM_SENTINELS, SENTINEL_BASE, EOS_ID

    torch.set_num_threads(args.threads)
    args.batch_size = 1
    model, specs, _ = build(args)
    head = model.decoder_embeddings["caption"]
    no_end = torch.zeros(specs["caption"].vocab_size, device=args.device)
    no_end[[EOS_ID, *range(SENTINEL_BASE, SENTINEL_BASE + NUM_SENTINELS)]] = -1e4
    original = head.logits
    head.logits = lambda y: original(y) + no_end  # every caption runs to its cap (see the docstring)
    settings = Settings(scheme="maskgit", num_steps=8, temperature=0.0)
    targets = ["tok_depth", "caption"]
    g = torch.Generator().manual_seed(0)
    samples = [[Condition("rgb", torch.randn(1, 3, 224, 224, generator=g).to(args.device), source="random")]
               for _ in range(max(args.batches))]
    rows = []
    for n in args.batches:
        batch = samples[:n]

        def batched() -> None:
            md = generate_tokens(model, batch, targets, settings)
            assert ((~md["caption"]["input_mask"]).sum(dim=1) == args.tokens + 1).all()

        def singles() -> None:
            for conds in batch:
                generate_tokens(model, [conds], targets, settings)

        # interleaved, so that both modes see the same load on a shared machine
        t_batched, t_single = float("inf"), float("inf")
        for _ in range(args.repeats):
            t_batched = min(t_batched, best_seconds(batched, 1, args.device))
            t_single = min(t_single, best_seconds(singles, 1, args.device))
        rows.append({"samples": n, "batched_samples_per_s": n / t_batched,
                     "one_per_call_samples_per_s": n / t_single, "speedup": t_single / t_batched})
    return {
        "bench": "generate_batching", "weights": "random", "device": args.device, "threads": args.threads,
        "clock": args.clock,
        "dim": args.dim, "depth": f"{args.depth}+{args.depth}", "params": model.num_parameters(),
        "targets": targets, "grid_tokens": specs["tok_depth"].num_tokens, "grid_steps": settings.num_steps,
        "caption_ids": args.tokens, "rows": rows,
    }


def print_batching_table(r: dict[str, Any]) -> None:
    print(f"fm21 generate batching: FourM dim {r['dim']}, {r['depth']} layers, {r['params']:,} params "
          f"({r['weights']} init), {r['device']}, {r['threads']} thread(s), {r['clock']} clock; rgb -> tok_depth "
          f"({r['grid_tokens']} tokens, {r['grid_steps']} steps) -> caption ({r['caption_ids']} ids), greedy")
    print(f"{'samples':>8} {'batched samples/s':>18} {'one per call samples/s':>23} {'speed-up':>9}")
    for row in r["rows"]:
        print(f"{row['samples']:>8} {row['batched_samples_per_s']:>18.2f} "
              f"{row['one_per_call_samples_per_s']:>23.2f} {row['speedup']:>8.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=3, help="encoder and decoder layers each")
    p.add_argument("--tokens", type=int, default=256, help="ids the sequence target generates")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batching", action="store_true",
                   help="fm21 generate's batch modes: batched vs one sample per sampler call")
    p.add_argument("--batches", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4, 16],
                   help="sample counts for --batching (comma-separated)")
    p.add_argument("--clock", choices=list(CLOCK), default="wall",
                   help="wall seconds, or this process's CPU seconds (steadier on a shared CPU; not for cuda)")
    args = p.parse_args()
    global _clock
    _clock = CLOCK[args.clock]
    if args.batching:
        r = run_batching(args)
        print_batching_table(r)
    else:
        r = run(args)
        print_table(r)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
