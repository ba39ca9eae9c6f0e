"""The pseudolabel stage: a Ray job over work units (one input shard each) into
labels.lance (one row per sample key).

The driver plans: which units are not committed yet (``fm21.store.units`` records them
in the store's own transactions), and which specialists run. Ray actors
(``fm21.pseudolabel.worker.LabelWorker``) label a whole unit and write its fragment; the
driver commits ``units_per_commit`` units per Lance Append. It never sees sample data,
so its memory does not grow with the dataset; a run killed anywhere resumes at the
first uncommitted unit. ``retry_failed`` re-runs only the samples recorded as failed.
A specialist enabled later adds its columns fragment by fragment on workers, committed
as one Merge: the other columns' data files are not rewritten. A store built from other
shards (ingest fingerprint changed) is rebuilt from scratch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa

from fm21.config import PseudolabelConfig, SpecialistConfig
from fm21.progress import tracked
from fm21.pseudolabel.specialists import SPECIALISTS, specialist_class
from fm21.pseudolabel.specialists.base import Specialist
from fm21.pseudolabel.specialists.feature import sample_fraction
from fm21.pseudolabel.specialists.weights import NetworkSpecialist
from fm21.pseudolabel.worker import RAW_COLUMNS, LabelWorker, SpecialistActor, build_specialist, decode_batch
from fm21.store import fs
from fm21.store import labels as store
from fm21.store import units as unit_store
from fm21.store.manifest import fingerprint_of, read_manifest
from fm21.store.stats import label_store_stats

log = logging.getLogger("fm21")

__all__ = ["RAW_COLUMNS", "decode_batch", "labels_schema", "plan_specialists", "run_pseudolabel"]


# ------------------------------------------------------------------ planning (driver side)
def plan_specialists(cfg: PseudolabelConfig, specs: dict) -> list[str]:
    """Enabled specialists the run needs, ordered so every ``requires`` comes first."""
    needed = {spec.specialist for spec in specs.values()}
    enabled = {n for n, c in cfg.specialists.items() if c.enabled} | {"image"}
    unknown = [n for n in cfg.specialists if n not in SPECIALISTS]
    if unknown:
        raise ValueError(f"pseudolabel.specialists: unknown specialists {unknown}; known: {sorted(SPECIALISTS)}")
    missing = sorted(needed - enabled)
    if missing:
        raise ValueError(f"enabled modalities need specialists {missing}: enable them under pseudolabel.specialists")
    weights = {n: c.weights for n, c in cfg.specialists.items()}
    produced = {c: n for n in enabled for c in _column_names(n, weights.get(n, "none"))}
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"specialists require each other in a cycle: {' -> '.join(path + (name,))}")
        for column in specialist_class(name, weights.get(name, "none")).requires:
            if column in produced:
                visit(produced[column], path + (name,))
        order.append(name)

    # The image column goes first: later specialists read its pixels instead of
    # decoding the PNG again.
    for name in ["image", *sorted(enabled - {"image"})]:
        visit(name, ())
    return order


def _column_names(name: str, weights: str) -> list[str]:
    cls = specialist_class(name, weights)
    if weights not in cls.supported_weights:  # the specialist's constructor names the error later
        weights = cls.supported_weights[0]
    cfg = SpecialistConfig(weights=weights)  # columns only: nothing is loaded
    return [f.name for f in _build(name, cfg, image_size=8).columns()]


def _build(name: str, cfg: SpecialistConfig | None, *, image_size: int) -> Specialist:
    return build_specialist(name, cfg, image_size=image_size)


LABELS_FP = b"labels_fingerprint"


def labels_fingerprints(specialists: dict[str, Specialist]) -> dict[str, str]:
    """Per specialist (plan order), what its columns depend on: its own weights fingerprint
    and, through ``requires``, those of the specialists whose columns it reads, or their
    absence (SAM edges change when SAM is enabled; metadata when the depth network does)."""
    produced = {f.name: n for n, s in specialists.items() for f in s.columns()}
    out: dict[str, str] = {}
    for name, spec in specialists.items():
        inputs = {c: out.get(produced.get(c, ""), "absent") for c in spec.requires if produced.get(c) != name}
        out[name] = fingerprint_of({"own": spec.weights_fingerprint(), "inputs": inputs})[:16]
    return out


def labels_schema(specialists: dict[str, Specialist], *, ingest_fp: str) -> pa.Schema:
    fields = [pa.field("key", pa.string(), nullable=False)]
    fps = labels_fingerprints(specialists)
    for name, spec in specialists.items():
        fields.extend(f.with_metadata({**f.metadata, LABELS_FP: fps[name].encode()}) for f in spec.columns())
    provenance = {n: s.provenance() for n, s in specialists.items()}
    return pa.schema(fields, metadata={
        store.META_INGEST: ingest_fp.encode(),
        store.META_PROVENANCE: json.dumps(provenance).encode(),
    })


# ------------------------------------------------------------------ the job (driver side)
def run_pseudolabel(cfg: PseudolabelConfig, ctx) -> dict:
    ingest = read_manifest(ctx.workdir.manifest("ingest"))
    image_size = int(ingest["config"]["ingest"]["image_size"])
    order = plan_specialists(cfg, ctx.specs)
    specialists = {n: _build(n, cfg.specialists.get(n), image_size=image_size) for n in order}
    schema = labels_schema(specialists, ingest_fp=ingest["fingerprint"])
    uri = ctx.workdir.labels_uri
    _drop_if_stale(uri, ingest["fingerprint"], schema)
    records = unit_store.read_records(uri)
    if unit_store.drop_if_unrecorded(uri, records):
        records = unit_store.Records({}, {})
    unit_store.ensure_store(uri, schema)
    recomputed = _drop_stale_columns(uri, schema)
    added = _add_missing_columns(uri, schema, specialists, cfg, ctx, image_size=image_size, records=records)
    units = _plan_units(ctx.workdir.shard_paths(), records, retry_failed=cfg.retry_failed, uri=uri)
    counts = {"units": 0, "rows": 0, "failed": 0, "commits": 0, "nodes": 0}
    if units:
        store_schema = store.open_dataset(uri).schema
        workers, actors = _actors(order, cfg, ctx, image_size=image_size, uri=uri, schema=store_schema)
        try:
            counts = unit_store.run_units(workers, lambda a, u: a.label_unit.remote(u), units, uri=uri,
                                          units_per_commit=cfg.units_per_commit, stage="pseudolabel")
        finally:
            _release(actors)
    _sync_metadata(uri, schema)
    indices = _vector_indices(uri) if cfg.vector_index else {}
    return {**_summary(uri, specialists, counts=counts, added_columns=added, recomputed_columns=recomputed),
            "vector_indices": indices}


def _vector_indices(uri) -> dict[str, dict]:
    """Lance vector indices over the global embeddings (DINOv2, ImageBind), for retrieval:
    each built by a Ray task that streams the column (``fm21.store.vector_index``)."""
    import ray

    from fm21.store.vector_index import index_global_columns

    @ray.remote(num_cpus=1)
    def build(fn, *args):
        return fn(*args)

    return index_global_columns(uri, run=lambda fn, *args: ray.get(build.remote(fn, *args)))


def _plan_units(shards: list[Path], records: unit_store.Records, *, retry_failed: bool, uri: Path) -> list[dict]:
    """Uncommitted shards, then (with ``retry_failed``) one retry unit per shard with failures."""
    units = [{"id": p.name, "path": str(p)} for p in shards if p.name not in records.units]
    if retry_failed and records.failed:
        by_unit: dict[str, list[str]] = {}
        for key, entry in records.failed.items():
            by_unit.setdefault(entry["unit"].split("#")[0], []).append(key)
        version = store.open_dataset(uri).version  # makes each retry's unit id unique
        folder = shards[0].parent if shards else Path(".")
        units += [{"id": f"{shard}#retry-v{version}", "path": str(folder / shard), "keys": sorted(keys)}
                  for shard, keys in sorted(by_unit.items())]
    return units


def _actors(names: list[str], cfg: PseudolabelConfig, ctx, *, image_size: int, uri: Path,
            schema: pa.Schema) -> tuple[list, list]:
    """(unit workers, every actor to release). Specialists that get their own pool
    (``pooled``) run there, each actor with the specialist's CPUs/GPUs from flows.yaml."""
    import ray

    from fm21.faults import arm, worker_env
    from fm21.ray_runtime import ensure_ray

    arm()
    ensure_ray(ctx.ray)
    env = worker_env()
    runtime = {"runtime_env": {"env_vars": env}} if env else {}
    cfgs = {n: (cfg.specialists.get(n) or SpecialistConfig()).model_dump() for n in names}
    pools: dict[str, list] = {}
    for name in pooled(names, cfg, image_size=image_size):
        scfg = cfg.specialists[name]
        remote = ray.remote(SpecialistActor).options(num_cpus=scfg.num_cpus, num_gpus=scfg.num_gpus, **runtime)
        pools[name] = [remote.remote(name, cfgs[name], image_size=image_size) for _ in range(scfg.concurrency)]
    remote = ray.remote(LabelWorker).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, **runtime)
    ingest = read_manifest(ctx.workdir.manifest("ingest"))
    fraction = sample_fraction(cfg.feature_maps.store, cfg.feature_maps.sample_size, int(ingest["counts"]["accepted"]))
    workers = [remote.remote(names, cfgs, image_size=image_size, uri=str(uri), schema=schema,
                             feature_fraction=fraction, pools=pools)
               for _ in range(cfg.concurrency)]
    return workers, [*workers, *(a for pool in pools.values() for a in pool)]


def pooled(names: list[str], cfg: PseudolabelConfig, *, image_size: int) -> list[str]:
    """The specialists that run in an actor pool of their own: ``own_pool`` from flows.yaml,
    by default every network (weights to load, maybe a GPU); light algorithms run inside
    the unit workers, where a process of their own would cost more than they do."""
    out = []
    for name in names:
        scfg = cfg.specialists.get(name)
        if scfg is None:
            continue
        own = scfg.own_pool
        if own is None:
            own = isinstance(_build(name, scfg, image_size=image_size), NetworkSpecialist)
        if own:
            out.append(name)
    return out


def _release(actors: list) -> None:
    """Free the actors' CPUs/GPUs for the next stage in this process."""
    import ray

    for actor in actors:
        ray.kill(actor)


def _drop_if_stale(uri: Path, ingest_fp: str, schema: pa.Schema) -> None:
    if not unit_store.exists(uri):
        return
    if store.store_metadata(uri).get("ingest_fingerprint") != ingest_fp:
        log.info("pseudolabel: %s was built from other shards; rebuilding", uri)
        fs.remove_tree(uri)
        return
    have = store.open_dataset(uri).schema
    changed = [f.name for f in schema if f.name in have.names and not _same_storage(have.field(f.name), f)]
    if changed:  # e.g. a store written before the compact encodings: its fragments can't be appended to
        log.info("pseudolabel: %s stores %s in another type or encoding; rebuilding", uri, ", ".join(changed))
        fs.remove_tree(uri)


def _same_storage(have: pa.Field, want: pa.Field) -> bool:
    meta = (have.metadata or {}), (want.metadata or {})
    same_meta = all(meta[0].get(k) == meta[1].get(k) for k in (b"shape", b"dtype", b"encoding"))
    return have.type == want.type and same_meta


def _drop_stale_columns(uri: Path, schema: pa.Schema) -> list[str]:
    """Drop the columns whose labels fingerprint changed (the specialist's weights or
    options, or what it reads); ``_add_missing_columns`` then recomputes them fragment by
    fragment. Dropping is a metadata change: no data file is rewritten."""
    ds = store.open_dataset(uri)
    have = ds.schema
    stale = [f.name for f in schema if f.name != "key" and f.name in have.names
             and (have.field(f.name).metadata or {}).get(LABELS_FP) != (f.metadata or {}).get(LABELS_FP)]
    if stale and ds.count_rows() > 0:
        log.info("pseudolabel: %s changed (specialist or its inputs); recomputing", ", ".join(stale))
        ds.drop_columns(stale)
    return stale if ds.count_rows() > 0 else []


def _sync_metadata(uri: Path, schema: pa.Schema) -> None:
    """Provenance of the run's specialists into the store's schema metadata, and each
    column's field metadata (labels fingerprint) as wanted (idempotent). Columns added by a
    Merge carry their specialist's fields as the workers wrote them; a kill before this
    leaves them without a labels fingerprint, so the next run recomputes them (never the
    reverse: a fingerprint is written only after its data is committed)."""
    ds = store.open_dataset(uri)
    wanted = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    have = {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}
    if have != wanted:
        ds.update_schema_metadata(wanted, replace=True)
    updates = {f.name: {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
               for f in schema if f.name in ds.schema.names and f.metadata
               and (ds.schema.field(f.name).metadata or {}) != f.metadata}
    if updates:
        ds.update_field_metadata(updates, replace=True)


def _add_missing_columns(uri: Path, schema: pa.Schema, specialists: dict[str, Specialist], cfg: PseudolabelConfig,
                         ctx, *, image_size: int, records: unit_store.Records) -> list[str]:
    """Columns of newly enabled specialists for every committed fragment, as one Merge.

    Each worker merges its fragment's new columns into a new data file; the driver commits
    the fragments' metadata against the version they read, so no other data file changes.
    """
    import lance
    from lance.fragment import FragmentMetadata
    from ray.util import ActorPool

    ds = store.open_dataset(uri)
    have = set(ds.schema.names)
    new = [n for n, s in specialists.items() if any(f.name not in have for f in s.columns())]
    if not new:
        return []
    fragments = ds.get_fragments()
    if not fragments:  # nothing labelled yet: start the store over with the full schema
        lance.write_dataset(schema.empty_table(), str(uri), schema=schema, mode="overwrite")
        return []
    unit_of = records.unit_of_file()
    shards = ctx.workdir.shards_dir
    tasks = [{"fragment": f.fragment_id, "version": ds.version,
              "path": str(shards / unit_of[f.data_files()[0].path].split("#")[0])} for f in fragments]
    workers, actors = _actors(new, cfg, ctx, image_size=image_size, uri=uri, schema=ds.schema)
    try:
        results = list(tracked(ActorPool(workers).map_unordered(lambda a, t: a.add_columns.remote(t), tasks),
                               "pseudolabel-columns", unit="fragment", total=len(tasks)))
    finally:
        _release(actors)
    merged = [FragmentMetadata.from_json(r["fragment"]) for r in results]
    failed = {k: v for r in results for k, v in r["failed"].items()}
    props = {unit_store.PROP_FAILED_COLUMNS: json.dumps(failed)}
    op = lance.LanceOperation.Merge(sorted(merged, key=lambda f: f.id), results[0]["schema"])
    lance.LanceDataset.commit(str(uri), lance.Transaction(ds.version, op, transaction_properties=props))
    added = [f.name for n in new for f in specialists[n].columns()]
    log.info("pseudolabel: added columns %s to %d fragments (%d samples failed)", added, len(merged), len(failed))
    return added


def _summary(uri: Path, specialists: dict, *, counts: dict[str, int], added_columns: list[str],
             recomputed_columns: list[str]) -> dict:
    ds = store.open_dataset(uri)
    records = unit_store.read_records(uri)
    return {
        "samples": ds.count_rows(),  # from fragment metadata: the driver reads no keys
        "new_samples": counts["rows"],
        "units": len(records.units),
        "new_units": counts["units"],
        "commits": counts["commits"],
        "nodes": counts["nodes"],  # Ray nodes whose workers wrote this run's units
        "failed_samples": len(records.failed),
        "orphan_files": len(unit_store.orphan_files(uri)),
        "added_columns": added_columns,
        "recomputed_columns": recomputed_columns,  # their specialist or its inputs changed
        "specialists": list(specialists),
        "random_specialists": [n for n, s in specialists.items() if s.is_random],
        "oracle_specialists": [n for n, s in specialists.items() if s.oracle],
        "bytes": fs.tree_bytes(uri),
        "bytes_per_sample": {c: round(v["bytes_per_sample"], 1) for c, v in label_store_stats(uri)["columns"].items()},
    }
