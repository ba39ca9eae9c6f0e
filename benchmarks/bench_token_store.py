"""tokens.lance: bytes per row on disk vs the same tokens as raw numpy arrays, and the
read throughput of the train loader's column projection.

Bytes: Lance's per-field statistics (bytes on disk, ``fm21.store.stats``) per modality
column, beside the raw size of the same values as numpy arrays: int16 token grids
(N x 2 bytes), int32 sequences (values x 4 bytes, no offsets), uint8 pixels (R x R x 3).
Rows of tokens.lance are (sample, crop) pairs; the figures are per row.

Throughput: one split read fragment by fragment with the loader's column projection
(``fragment.to_table(columns=["key", "crop", *modalities], filter="split = ...")``; the
``LanceTokenDataset`` reads ``key``/``crop`` first and then ``take``s one crop per key), timed
at three depths: Arrow tables only; + ``table_rows`` (row dicts); + ``row_to_sample``
(the per-sample arrays masking receives). Masking and collation are not included.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_token_store.py --workdir work/demo [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ITEMSIZE = {"pixels": 1, "image_tokens": 2, "feature_tokens": 2, "global_tokens": 2, "sequence": 4, "embedding": 4}


def store_bytes(uri: Path) -> dict:
    """Per modality: bytes on disk and raw numpy bytes, per row; and the totals."""
    from fm21.store.stats import stored_spec, token_store_stats
    from fm21.store.tokens import read_store_metadata

    stats = token_store_stats(uri)
    specs = {n: stored_spec(d) for n, d in read_store_metadata(uri)["specs"].items()}
    rows = stats["rows"]
    out = {}
    for name, e in stats["modalities"].items():
        spec = specs[name]
        if spec.kind == "pixels":  # one R x R x 3 uint8 image per present row
            raw = round(e["coverage"] * rows) * spec.resolution ** 2 * 3
        elif spec.kind == "embedding":  # frozen float16 vectors (T5), stored as they are
            raw = e["bytes"]
        else:
            raw = e.get("tokens", 0) * ITEMSIZE[spec.kind]
        out[name] = {"kind": spec.kind, "lance": e["bytes"] / rows, "raw": raw / rows}
    total_lance = sum(m["lance"] for m in out.values())
    total_raw = sum(m["raw"] for m in out.values())
    tokens_only = [m for m in out.values() if m["kind"] not in ("pixels", "embedding")]  # ids only
    return {"rows": rows, "samples": stats["samples"], "bytes_source": stats["bytes_source"],
            "store_bytes_per_row": stats["bytes"] / rows, "modalities": out,
            "total": {"lance": total_lance, "raw": total_raw},
            "tokens_only": {"lance": sum(m["lance"] for m in tokens_only), "raw": sum(m["raw"] for m in tokens_only)}}


def read_throughput(uri: Path, split: str, repeats: int) -> dict:
    """Samples (rows) per second of the loader's projection, best of ``repeats`` passes."""
    import lance

    from fm21.store.stats import stored_spec
    from fm21.store.tokens import read_store_metadata
    from fm21.train.loader import row_to_sample, table_rows

    specs = {n: stored_spec(d) for n, d in read_store_metadata(uri)["specs"].items()}
    columns = ["key", "crop", *specs]
    best = {"arrow": float("inf"), "rows": float("inf"), "samples": float("inf")}
    count = 0
    for _ in range(repeats):
        frags = list(lance.dataset(str(uri)).get_fragments())
        times = {"arrow": 0.0, "rows": 0.0, "samples": 0.0}
        count = 0
        for frag in frags:
            t0 = time.perf_counter()
            table = frag.to_table(columns=columns, filter=f"split = '{split}'")
            t1 = time.perf_counter()
            rows = list(table_rows(table))
            t2 = time.perf_counter()
            for row in rows:
                row_to_sample(row, specs)
            t3 = time.perf_counter()
            times["arrow"] += t1 - t0
            times["rows"] += t2 - t0
            times["samples"] += t3 - t0
            count += table.num_rows
        best = {k: min(best[k], times[k]) for k in best}
    return {"split": split, "rows": count, "seconds": best,
            "samples_per_s": {k: count / v if v else None for k, v in best.items()}}


def format_report(uri: Path, sizes: dict, speed: dict) -> str:
    lines = [f"tokens.lance {uri}: {sizes['rows']} rows ({sizes['samples']} samples); bytes per row; "
             f"lance = {sizes['bytes_source']}", "",
             "| modality | kind | lance bytes/row | raw numpy bytes/row | lance / raw |", "|---|---|---:|---:|---:|"]

    def row(name: str, kind: str, m: dict) -> str:
        ratio = f"{m['lance'] / m['raw']:.1%}" if m["raw"] else "-"
        return f"| {name} | {kind} | {m['lance']:,.1f} | {m['raw']:,.1f} | {ratio} |"

    lines += [row(n, m["kind"], m) for n, m in sizes["modalities"].items()]
    lines += [row("**tokens only**", "", sizes["tokens_only"]), row("**total (columns)**", "", sizes["total"]),
              f"| store on disk (all files) | | {sizes['store_bytes_per_row']:,.1f} | | |", ""]
    sps = speed["samples_per_s"]
    lines.append(f"read split {speed['split']!r} ({speed['rows']} rows) with the loader's projection: "
                 f"{sps['arrow']:,.0f} samples/s to Arrow, {sps['rows']:,.0f} to row dicts, "
                 f"{sps['samples']:,.0f} to per-sample arrays (best of repeats, one process)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("work/demo"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: print only)")
    args = parser.parse_args()
    from fm21.store.layout import Workdir

    uri = Workdir(args.workdir).tokens_uri
    sizes = store_bytes(uri)
    speed = read_throughput(uri, args.split, args.repeats)
    print(format_report(uri, sizes, speed))
    payload = {"uri": str(uri), "bytes": sizes, "read": speed, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.out:
        args.out.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
