"""Bytes per sample per column of labels.lance and tokens.lance, vs the raw arrays.

Builds ingest -> pseudolabel -> tokenizers -> tokens on synthetic scenes (tiny recipe,
quick tokenizers) at each resolution, then reads Lance's per-field statistics
(``fm21.store.stats.label_store_stats``: bytes on disk, no data read). "raw" is the
in-memory size of one decoded array (shape x dtype) for dense maps and token grids; rows
of tokens.lance are (sample, crop) pairs, so its figures are per row.

    .venv/bin/python benchmarks/bench_store_bytes.py --sizes 64 224 --num 128
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "pseudolabel", "tokenizers", "tokens")


def build(work: Path, size: int, num: int) -> dict:
    from fm21.config import load_config
    from fm21.stages import run_stage
    from fm21.store.layout import Workdir
    from fm21.store.stats import label_store_stats

    patch = 8 if size <= 64 else 16  # 64 or 196 tokens per image modality
    overrides = [f"workdir={work}", f"ingest.image_size={size}", f"modalities.resolution={size}",
                 f"modalities.patch_size={patch}", f"ingest.synthetic.num_samples={num}",
                 "ingest.samples_per_shard=64", "tokenizers.train_samples=32", "threads=1"]
    overrides += [f"tokenizers.image.{m}.steps=2" for m in
                  ("tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge", "tok_sam_edge")]
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=overrides)
    seconds = {}
    for stage in STAGES:
        start = time.perf_counter()
        run_stage(cfg, stage)
        seconds[stage] = round(time.perf_counter() - start, 1)
    wd = Workdir(work)
    return {"seconds": seconds, "labels": label_store_stats(wd.labels_uri),
            "tokens": label_store_stats(wd.tokens_uri)}


def table(name: str, results: dict[int, dict]) -> list[str]:
    sizes = list(results)
    columns = list(results[sizes[0]][name]["columns"])
    head = f"| column | encoding | " + " | ".join(f"{s} px: bytes / raw (ratio)" for s in sizes) + " |"
    lines = [f"{name} (per {'sample' if name == 'labels' else 'row = sample x crop'})", "", head,
             "|---|---|" + "---|" * len(sizes)]
    for col in columns:
        cells = []
        for s in sizes:
            c = results[s][name]["columns"][col]
            raw = c["raw_bytes_per_sample"]
            cells.append(f"{c['bytes_per_sample']:,.0f} / {raw:,} ({c['bytes_per_sample'] / raw:.1%})" if raw
                         else f"{c['bytes_per_sample']:,.0f} / -")
        enc = results[sizes[0]][name]["columns"][col].get("encoding") or "-"
        lines.append(f"| {col} | {enc} | " + " | ".join(cells) + " |")
    totals = [f"{results[s][name]['bytes_per_sample']:,.0f}" for s in sizes]
    lines.append("| **total** | | " + " | ".join(totals) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--num", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: print only)")
    args = parser.parse_args()
    results: dict[int, dict] = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results[size] = build(Path(tmp) / "work", size, args.num)
    for name in ("labels", "tokens"):
        print("\n".join(table(name, results)))
        print()
    print("stage seconds: " + "; ".join(f"{s} px {r['seconds']}" for s, r in results.items()))
    payload = {"sizes": args.sizes, "num": args.num, "results": results, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.out:
        args.out.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
