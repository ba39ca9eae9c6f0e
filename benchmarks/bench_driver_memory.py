"""Driver peak RSS of the unit-based stages at two dataset sizes (tiny recipe, synthetic).

Each stage runs in its own process (``python -c``) so its peak RSS (``ru_maxrss``) is the
driver's alone: Ray workers are separate processes and not counted. The data plane's claim
is that the driver holds only unit metadata, so the larger run's peak should stay within
~1.2x of the smaller one's.

    .venv/bin/python benchmarks/bench_driver_memory.py --sizes 2000 16000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "pseudolabel", "tokenizers", "tokens")
MEASURED = ("ingest", "pseudolabel", "tokens")

RUN_STAGE = """
import json, resource, sys, time
from fm21.config import load_config
from fm21.stages import run_stage
cfg = load_config({flows!r}, recipe={recipe!r}, overrides={overrides!r})
start = time.perf_counter()
counts = run_stage(cfg, {stage!r})["counts"]
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": counts.get("samples") or counts.get("accepted")}}))
"""


def run_stage(work: Path, stage: str, num: int, extra: list[str]) -> dict:
    overrides = [f"workdir={work}", f"ingest.synthetic.num_samples={num}", "ingest.samples_per_shard=256",
                 "tokenizers.train_samples=64", *extra]
    code = RUN_STAGE.format(flows=str(ROOT / "flows.yaml"), recipe=str(ROOT / "configs" / "tiny.yaml"),
                            overrides=overrides, stage=stage)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 16000])
    parser.add_argument("--set", action="append", default=[], help="extra dotted overrides")
    args = parser.parse_args()
    results: dict[int, dict[str, dict]] = {}
    for num in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results[num] = {s: run_stage(Path(tmp) / "work", s, num, args.set) for s in STAGES}
    small, large = args.sizes
    print(f"{'stage':12s} {'samples':>8s} {'seconds':>8s} {'rows/s':>8s} {'driver peak RSS MB':>19s}")
    for num in args.sizes:
        for stage in MEASURED:
            r = results[num][stage]
            print(f"{stage:12s} {num:8d} {r['seconds']:8.1f} {num / r['seconds']:8.1f} {r['peak_rss_mb']:19.0f}")
    ratios = {s: results[large][s]["peak_rss_mb"] / results[small][s]["peak_rss_mb"] for s in MEASURED}
    print("peak RSS ratio large/small: " + ", ".join(f"{s} {r:.2f}x" for s, r in ratios.items()))
    print(json.dumps({"sizes": args.sizes, "results": results, "rss_ratio": ratios,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")}))


if __name__ == "__main__":
    main()
