"""Pipeline efficiency: rows/s of ingest, pseudolabel and tokens as Ray unit jobs vs the
same worker functions called in one process on the same data.

    .venv/bin/python benchmarks/bench_pipeline_efficiency.py [--num 4096] [--shard 256]

Tiny recipe (32 px), synthetic scenes, ``--shard`` samples per shard (one work unit).
Both paths run one worker at a time, so the ratio measures what the job adds (actor
start-up, object transfer, unit planning, commits, the manifest's stats pass), not
parallelism: ingest tasks ask for both CPUs of the local Ray (``ingest.num_cpus=2``),
pseudolabel and tokens use one actor (``concurrency: 1``).

- pipeline: ``run_stage`` for each stage, Ray already started (its start-up is timed
  apart and not counted).
- in-process: the same functions the Ray workers run, in this process, unit after unit:
  ``write_synthetic_shard`` per shard; ``LabelWorker.label_unit`` per shard then
  ``commit_units`` per ``units_per_commit`` units; ``TokenizeActor.tokenize_unit`` per
  labels fragment then ``commit_units``. The stores equal the pipeline's (checked).

Prints a table and one JSON line.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread per process, both paths

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def config(work: Path, num: int, shard: int):
    from fm21.config import load_config

    return load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=[
        f"workdir={work}", f"ingest.synthetic.num_samples={num}", f"ingest.samples_per_shard={shard}",
        "ingest.num_cpus=2", "tokenizers.train_samples=256", "ray.num_cpus=2"])


def pipeline(cfg) -> dict[str, float]:
    from fm21.stages import run_stage

    out = {}
    for stage in ("ingest", "pseudolabel", "tokenizers", "tokens"):
        start = time.perf_counter()
        run_stage(cfg, stage)
        out[stage] = time.perf_counter() - start
    return out


def in_process(cfg, ref_work: Path) -> dict[str, float]:
    """The workers' functions in this process, on a copy of the pipeline's inputs."""
    import lance

    from fm21.ingest.units import num_synthetic_shards, write_synthetic_shard
    from fm21.pseudolabel.job import _build, labels_schema, plan_specialists
    from fm21.pseudolabel.specialists.feature import sample_fraction
    from fm21.pseudolabel.worker import LabelWorker
    from fm21.store import units as unit_store
    from fm21.store.layout import Workdir
    from fm21.store.manifest import read_manifest
    from fm21.tokenize.apply import TokenizeActor
    from fm21.store import tokens as token_store

    wd, ref = Workdir(Path(cfg.workdir)), Workdir(ref_work)
    out: dict[str, float] = {}
    # ingest: every shard rendered and written here
    shards = wd.root / "shards"
    shards.mkdir(parents=True)
    start = time.perf_counter()
    for i in range(num_synthetic_shards(cfg.ingest)):
        write_synthetic_shard(cfg.ingest.model_dump(mode="json"), seed=cfg.ingest.seed, index=i, directory=str(shards))
    out["ingest"] = time.perf_counter() - start
    paths = sorted(shards.glob("shard-*.tar"))
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in ref.shard_paths()], "ingest differs"

    # pseudolabel: one LabelWorker, shard after shard, commits as the driver makes them
    ingest = read_manifest(ref.manifest("ingest"))
    size = int(ingest["config"]["ingest"]["image_size"])
    order = plan_specialists(cfg.pseudolabel, cfg.specs())
    schema = labels_schema({n: _build(n, cfg.pseudolabel.specialists.get(n), image_size=size) for n in order},
                           ingest_fp=ingest["fingerprint"])
    labels = wd.root / "labels.lance"
    start = time.perf_counter()
    unit_store.ensure_store(labels, schema)
    cfgs = {n: (cfg.pseudolabel.specialists.get(n)).model_dump() if n in cfg.pseudolabel.specialists else {}
            for n in order}
    fm = cfg.pseudolabel.feature_maps
    worker = LabelWorker(order, cfgs, image_size=size, uri=str(labels), schema=lance.dataset(str(labels)).schema,
                         feature_fraction=sample_fraction(fm.store, fm.sample_size, int(ingest["counts"]["accepted"])))
    _commit_all([worker.label_unit({"id": p.name, "path": str(p)}) for p in paths], labels,
                cfg.pseudolabel.units_per_commit, "pseudolabel")
    out["pseudolabel"] = time.perf_counter() - start
    assert _rows(labels, ["key"]) == _rows(ref.labels_uri, ["key"]), "labels differ"

    # tokens: one TokenizeActor over the pipeline's labels and tokenizers, fragment after fragment
    tokens = wd.root / "tokens.lance"
    ref_schema = lance.dataset(str(ref.tokens_uri)).schema
    start = time.perf_counter()
    unit_store.ensure_store(tokens, ref_schema)
    actor = TokenizeActor({n: dataclasses.asdict(s) for n, s in cfg.specs().items()}, str(ref.tokenizers_dir),
                          cfg.tokens.model_dump(), ref_schema, labels_uri=str(ref.labels_uri), uri=str(tokens))
    ds = lance.dataset(str(ref.labels_uri))
    units = [{"id": f"labels-fragment-{f.fragment_id}", "fragment": f.fragment_id, "version": ds.version}
             for f in ds.get_fragments()]
    _commit_all([actor.tokenize_unit(u) for u in units], tokens, cfg.tokens.units_per_commit, "tokens")
    out["tokens"] = time.perf_counter() - start
    assert token_store.read_store_metadata(tokens)["specs"].keys() == cfg.specs().keys()
    assert _rows(tokens, ["key", "crop"]) == _rows(ref.tokens_uri, ["key", "crop"]), "tokens differ"
    return out


def _commit_all(results: list[dict], uri: Path, per_commit: int, stage: str) -> None:
    from fm21.store.units import UnitResult, commit_units

    results = [UnitResult(**r) for r in results]
    for i in range(0, len(results), per_commit):
        commit_units(uri, results[i:i + per_commit], stage=stage)


def _rows(uri: Path, by: list[str]):
    import lance

    table = lance.dataset(str(uri)).to_table()
    return table.sort_by([(c, "ascending") for c in by]).to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=4096)
    parser.add_argument("--shard", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    from fm21.ray_runtime import ensure_ray
    from fm21.stages import apply_threads

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp) / "pipe", args.num, args.shard)
        apply_threads(1)
        start = time.perf_counter()
        ensure_ray(cfg.ray)
        ray_start = time.perf_counter() - start
        piped = pipeline(cfg)
        ray.shutdown()
        local = in_process(config(Path(tmp) / "local", args.num, args.shard), Path(tmp) / "pipe")
    rows = {s: args.num for s in local}
    table = []
    print(f"{args.num} samples (tiny recipe, 32 px), {args.shard} per unit, one worker; Ray start {ray_start:.1f} s")
    print(f"{'stage':12s} {'pipeline s':>10s} {'rows/s':>8s} {'in-process s':>12s} {'rows/s':>8s} {'efficiency':>10s}")
    for stage in local:
        p, q = piped[stage], local[stage]
        table.append({"stage": stage, "pipeline_s": round(p, 2), "pipeline_rows_s": round(rows[stage] / p, 1),
                      "in_process_s": round(q, 2), "in_process_rows_s": round(rows[stage] / q, 1),
                      "efficiency": round(q / p, 3)})
        print(f"{stage:12s} {p:10.1f} {rows[stage] / p:8.1f} {q:12.1f} {rows[stage] / q:8.1f} {q / p:9.2f}x")
    result = {"num": args.num, "shard": args.shard, "ray_start_s": round(ray_start, 2), "stages": table,
              "tokenizers_s": round(piped["tokenizers"], 2), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
