"""The pseudolabel stage: the Ray Data job vs the same specialists called in-process.

    python benchmarks/bench_pseudolabel.py [--num 512] [--image-size 64] [--batch-size 64]

Builds a tiny-recipe workdir of ``--num`` synthetic scenes in a temp dir (ingest), then
(b) the raw path: read the same shards with ``tarfile`` into the job's raw columns, and
for each specialist in ``plan_specialists`` order call ``decode_batch`` + the specialist
+ the Arrow append directly, batch by batch (one process, BLAS/OpenMP pinned to one
thread), then write one Lance dataset with the job's schema; and (a) the pipeline:
``run_stage(cfg, "pseudolabel")`` (one actor pool per specialist, Lance commits), after
starting Ray with ``ensure_ray`` (timed separately, not counted in the pipeline).

Prints a summary table (seconds, samples/s, pipeline/raw throughput ratio) and a
per-specialist table of raw ms/sample (decode, call, arrow append), then one JSON line
with the same figures.
"""

from __future__ import annotations

import os

# one-thread BLAS/OpenMP before numpy loads: the raw path is a one-core figure
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pyarrow as pa  # noqa: E402

from fm21.config import FlowConfig, load_config  # noqa: E402
from fm21.pseudolabel.job import RAW_COLUMNS, _build, decode_batch, labels_schema, plan_specialists  # noqa: E402
from fm21.stages import run_stage  # noqa: E402
from fm21.store.layout import Workdir  # noqa: E402
from fm21.store.manifest import read_manifest  # noqa: E402


def build_workdir(root: Path, *, num: int, image_size: int) -> FlowConfig:
    """A tiny-recipe config over ``root`` with ``num`` ingested synthetic scenes."""
    cfg = load_config(recipe="tiny", overrides=[
        f"workdir={root}", f"ingest.synthetic.num_samples={num}",
        f"ingest.image_size={image_size}", f"modalities.resolution={image_size}",
    ])
    run_stage(cfg, "ingest")
    return cfg


# ------------------------------------------------------------------ raw path
def read_shards(paths: list[Path], *, batch_size: int) -> list[pa.Table]:
    """Shard members grouped by sample key into the job's raw columns, in batches."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        samples: dict[str, dict[str, Any]] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = Path(member.name).name.split(".", 1)
                samples.setdefault(key, {"key": key})[ext] = tar.extractfile(member).read()
        rows.extend(samples.values())
    columns = [c for c in RAW_COLUMNS if c in rows[0]]
    schema = pa.schema([pa.field(c, pa.string() if c == "key" else pa.binary()) for c in columns])
    return [pa.Table.from_pylist(rows[i:i + batch_size], schema=schema) for i in range(0, len(rows), batch_size)]


def label_batch(table: pa.Table, specialists: dict[str, Any], timings: dict[str, dict[str, float]]) -> pa.Table:
    """What the actor chain does to one batch, specialist by specialist, timed by phase."""
    for name, spec in specialists.items():
        t0 = time.perf_counter()
        batch = decode_batch(table, spec.requires)
        t1 = time.perf_counter()
        out = spec(batch)
        t2 = time.perf_counter()
        for field in spec.columns():
            table = table.append_column(field, pa.array(out[field.name], type=field.type))
        t3 = time.perf_counter()
        for phase, seconds in (("decode", t1 - t0), ("call", t2 - t1), ("append", t3 - t2)):
            timings[name][phase] += seconds
    return table


def run_raw(cfg: FlowConfig, *, batch_size: int, out_uri: Path) -> dict[str, Any]:
    """The raw path end to end: read shards, label every batch, write one Lance dataset."""
    import lance

    wd = Workdir(Path(cfg.workdir))
    ingest = read_manifest(wd.manifest("ingest"))
    image_size = int(ingest["config"]["ingest"]["image_size"])
    order = plan_specialists(cfg.pseudolabel, cfg.specs())
    specialists = {n: _build(n, cfg.pseudolabel.specialists.get(n), image_size=image_size) for n in order}
    schema = labels_schema(specialists, ingest_fp=ingest["fingerprint"])
    timings: dict[str, dict[str, float]] = defaultdict(lambda: {"decode": 0.0, "call": 0.0, "append": 0.0})
    start, cpu_start = time.perf_counter(), time.process_time()
    for spec in specialists.values():
        spec.load()
    tables = read_shards(wd.shard_paths(), batch_size=batch_size)
    read_s = time.perf_counter() - start
    labelled = [label_batch(t, specialists, timings) for t in tables]
    t_write = time.perf_counter()
    table = pa.concat_tables(labelled).select(schema.names).cast(schema)
    lance.write_dataset(table, str(out_uri), schema=schema, mode="create")
    write_s = time.perf_counter() - t_write
    return {"samples": table.num_rows, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start, "read_s": read_s, "write_s": write_s,
            "specialists": {n: dict(timings[n]) for n in order}}


# ------------------------------------------------------------------ pipeline
def run_pipeline(cfg: FlowConfig) -> dict[str, Any]:
    """Ray start-up (timed on its own), then the pseudolabel stage as `make pseudolabel` runs it."""
    from fm21.ray_runtime import ensure_ray

    start = time.perf_counter()
    ensure_ray(cfg.ray)
    ray_s = time.perf_counter() - start
    start = time.perf_counter()
    manifest = run_stage(cfg, "pseudolabel", force=True)
    seconds = time.perf_counter() - start
    return {"samples": manifest["counts"]["samples"], "seconds": seconds, "ray_start_s": ray_s}


# ------------------------------------------------------------------ report
def report(num: int, raw: dict[str, Any], pipe: dict[str, Any]) -> dict[str, Any]:
    ms = 1000.0 / raw["samples"]
    per_spec = {
        name: {f"{phase}_ms_per_sample": round(s * ms, 3) for phase, s in t.items()}
        | {"total_ms_per_sample": round(sum(t.values()) * ms, 3)}
        for name, t in raw["specialists"].items()
    }
    raw_rate, pipe_rate = raw["samples"] / raw["seconds"], pipe["samples"] / pipe["seconds"]
    return {
        "samples": num,
        "ray_start_s": round(pipe["ray_start_s"], 2),
        "pipeline_s": round(pipe["seconds"], 2),
        "pipeline_samples_per_s": round(pipe_rate, 1),
        "raw_s": round(raw["seconds"], 2),
        "raw_cpu_s": round(raw["cpu_seconds"], 2),
        "raw_samples_per_s": round(raw_rate, 1),
        "pipeline_over_raw_throughput": round(pipe_rate / raw_rate, 3),
        "raw_read_ms_per_sample": round(raw["read_s"] * ms, 3),
        "raw_write_ms_per_sample": round(raw["write_s"] * ms, 3),
        "raw_specialists": per_spec,
    }


def print_tables(r: dict[str, Any]) -> None:
    print(f"{'path':<30} {'samples':>8} {'seconds':>9} {'samples/s':>10}")
    print(f"{'ray start (ensure_ray)':<30} {'':>8} {r['ray_start_s']:>9.2f} {'':>10}")
    print(f"{'pipeline (run_stage)':<30} {r['samples']:>8} {r['pipeline_s']:>9.2f} {r['pipeline_samples_per_s']:>10.1f}")
    print(f"{'raw (in-process, 1 thread)':<30} {r['samples']:>8} {r['raw_s']:>9.2f} {r['raw_samples_per_s']:>10.1f}")
    print(f"pipeline/raw throughput: {r['pipeline_over_raw_throughput']:.3f} (raw CPU time {r['raw_cpu_s']:.2f} s)")
    print()
    print(f"{'raw ms/sample':<16} {'decode':>8} {'call':>8} {'append':>8} {'total':>8}")
    for name, t in r["raw_specialists"].items():
        print(f"{name:<16} {t['decode_ms_per_sample']:>8.3f} {t['call_ms_per_sample']:>8.3f} "
              f"{t['append_ms_per_sample']:>8.3f} {t['total_ms_per_sample']:>8.3f}")
    print(f"{'tar read':<16} {'':>8} {'':>8} {'':>8} {r['raw_read_ms_per_sample']:>8.3f}")
    print(f"{'lance write':<16} {'':>8} {'':>8} {'':>8} {r['raw_write_ms_per_sample']:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=512, help="synthetic scenes to ingest")
    parser.add_argument("--image-size", type=int, default=64, help="ingest and modality resolution")
    parser.add_argument("--batch-size", type=int, default=64, help="raw-path batch (the demo's specialists use 64)")
    args = parser.parse_args()
    logging.getLogger("fm21").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_pseudolabel-") as tmp:
        cfg = build_workdir(Path(tmp) / "work", num=args.num, image_size=args.image_size)
        raw = run_raw(cfg, batch_size=args.batch_size, out_uri=Path(tmp) / "raw.lance")
        pipe = run_pipeline(cfg)
        import ray

        ray.shutdown()
    r = report(args.num, raw, pipe)
    print_tables(r)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
