"""Throughput of the synthetic scene renderer on ONE core.

    python benchmarks/bench_render.py [--size 64] [--num 500]

Prints a small table (size, images, seconds, images/s, ms/image, plus the process's CPU
time, which stays meaningful on a shared machine), then one JSON line with the same figures.
"""

from __future__ import annotations

import os

# pin every BLAS/OpenMP pool to one thread *before* numpy is imported: one-core figures
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from fm21.ingest.synthetic import render_scene  # noqa: E402


def bench(size: int, num: int, *, warmup: int = 5) -> dict[str, float]:
    """Render ``num`` scenes (seeds 0..num-1) after ``warmup`` untimed ones."""
    for seed in range(warmup):
        render_scene(10_000_000 + seed, size)  # fills the per-size ray cache, warms imports
    start, cpu_start = time.perf_counter(), time.process_time()
    for seed in range(num):
        render_scene(seed, size)
    seconds = time.perf_counter() - start
    # CPU time of this process: robust to other processes competing for the core
    cpu_seconds = time.process_time() - cpu_start
    return {
        "size": size,
        "images": num,
        "seconds": round(seconds, 4),
        "images_per_s": round(num / seconds, 1),
        "ms_per_image": round(1000.0 * seconds / num, 3),
        "cpu_seconds": round(cpu_seconds, 4),
        "cpu_images_per_s": round(num / cpu_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--num", type=int, default=500, help="number of scenes to render")
    args = parser.parse_args()
    r = bench(args.size, args.num)
    print(f"{'size':>6} {'images':>8} {'seconds':>9} {'images/s':>10} {'ms/image':>9} "
          f"{'cpu s':>8} {'images/cpu-s':>13}")
    print(f"{r['size']:>6} {r['images']:>8} {r['seconds']:>9.3f} {r['images_per_s']:>10.1f} "
          f"{r['ms_per_image']:>9.3f} {r['cpu_seconds']:>8.3f} {r['cpu_images_per_s']:>13.1f}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
