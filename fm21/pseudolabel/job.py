"""The pseudolabel stage: a Ray Data job mapping each enabled specialist over the shards
as its own actor pool, into labels.lance (one row per sample key).

Resume and idempotence: keys already committed are filtered out before any specialist
runs, and the driver commits every ``rows_per_commit`` rows of the one streaming
execution as a Lance transaction, so a re-run adds nothing and a killed run resumes
where it stopped, without duplicates.
A specialist enabled later adds its columns to the committed rows (Lance merge) without
rewriting the others. A store built from other shards (ingest fingerprint changed) is
rebuilt from scratch.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fm21.config import PseudolabelConfig, SpecialistConfig
from fm21.pseudolabel.specialists import SPECIALISTS
from fm21.pseudolabel.specialists.base import Specialist
from fm21.store import labels as store
from fm21.store.manifest import read_manifest

log = logging.getLogger("fm21")

RAW_COLUMNS = ("key", "png", "json", "gt.npz")


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
    produced = {c: n for n in enabled for c in _column_names(n)}
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"specialists require each other in a cycle: {' -> '.join(path + (name,))}")
        for column in SPECIALISTS[name].requires:
            if column in produced:
                visit(produced[column], path + (name,))
        order.append(name)

    # The image column goes first: later specialists read its pixels instead of
    # decoding the PNG again.
    for name in ["image", *sorted(enabled - {"image"})]:
        visit(name, ())
    return order


def _column_names(name: str) -> list[str]:
    return [f.name for f in _build(name, SpecialistConfig(), image_size=8).columns()]


def _build(name: str, cfg: SpecialistConfig | None, *, image_size: int) -> Specialist:
    return SPECIALISTS[name](cfg or SpecialistConfig(), image_size=image_size)


def labels_schema(specialists: dict[str, Specialist], *, ingest_fp: str) -> pa.Schema:
    fields = [pa.field("key", pa.string(), nullable=False)]
    for spec in specialists.values():
        fields.extend(spec.columns())
    provenance = {n: s.provenance() for n, s in specialists.items()}
    return pa.schema(fields, metadata={
        store.META_INGEST: ingest_fp.encode(),
        store.META_PROVENANCE: json.dumps(provenance).encode(),
    })


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a shard from member names only (no decoding)."""
    keys: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar.getnames():
            base = Path(member).name.split(".", 1)[0]
            if member.endswith(".png") and base not in keys:
                keys.append(base)
    return keys


# ------------------------------------------------------------------ worker side
def decode_batch(table: pa.Table, requires: tuple[str, ...], *, needs_gt: bool = True) -> dict[str, Any]:
    """Raw shard columns (+ earlier specialists' columns) -> the specialist batch contract.

    Pixels come from the ``rgb`` column once the image specialist has run (decoding the
    PNG only for the first one); ground truth is decoded only for those that read it.
    """
    from PIL import Image

    batch: dict[str, Any] = {"key": table.column("key").to_pylist()}
    if "rgb" in table.column_names:
        batch["rgb"] = store.column_to_python(table.column("rgb"), table.schema.field("rgb"))  # (B, S, S, 3)
    else:
        batch["rgb"] = np.stack([
            np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table.column("png").to_pylist()
        ])  # (B, S, S, 3)
    batch["meta"] = [json.loads(b) for b in table.column("json").to_pylist()]
    gts = table.column("gt.npz").to_pylist() if needs_gt and "gt.npz" in table.column_names else [None] * len(table)
    batch["gt"] = [None if b is None else dict(np.load(io.BytesIO(b))) for b in gts]
    for name in requires:
        if name in table.column_names:
            batch[name] = store.column_to_python(table.column(name), table.schema.field(name))
    return batch


class SpecialistActor:
    """Ray Data callable class: one specialist per actor, loaded once."""

    def __init__(self, name: str, cfg: dict, image_size: int) -> None:
        self.specialist = _build(name, SpecialistConfig.model_validate(cfg), image_size=image_size)
        self.specialist.load()
        self.fields = self.specialist.columns()

    def __call__(self, table: pa.Table) -> pa.Table:
        batch = decode_batch(table, self.specialist.requires, needs_gt=self.specialist.oracle)
        out = self.specialist(batch)
        for field in self.fields:
            table = table.append_column(field, pa.array(out[field.name], type=field.type))
        return table


def _normalise_raw(table: pa.Table) -> pa.Table:
    """webdataset's ``__key__`` -> ``key``; only the raw columns travel on."""
    table = table.rename_columns(["key" if c == "__key__" else c for c in table.column_names])
    return table.select([c for c in RAW_COLUMNS if c in table.column_names])


# ------------------------------------------------------------------ the job
def _labelled(shards: list[Path], todo: set[str], specialists: dict[str, Specialist], cfg: PseudolabelConfig, image_size: int):
    import ray

    ds = ray.data.read_webdataset([str(p) for p in shards], decoder=None, include_paths=False)
    ds = ds.map_batches(_normalise_raw, batch_format="pyarrow", zero_copy_batch=True)
    ds = ds.filter(lambda row: row["key"] in todo)
    for name in specialists:
        scfg = cfg.specialists.get(name) or SpecialistConfig()
        ds = ds.map_batches(
            SpecialistActor,
            fn_constructor_kwargs={"name": name, "cfg": scfg.model_dump(), "image_size": image_size},
            batch_size=scfg.batch_size,
            batch_format="pyarrow",
            num_cpus=scfg.num_cpus,
            num_gpus=scfg.num_gpus or None,
            compute=ray.data.ActorPoolStrategy(size=scfg.concurrency),
        )
    return ds


def run_pseudolabel(cfg: PseudolabelConfig, ctx) -> dict:
    from fm21.ray_runtime import ensure_ray

    ingest = read_manifest(ctx.workdir.manifest("ingest"))
    image_size = int(ingest["config"]["ingest"]["image_size"])
    order = plan_specialists(cfg, ctx.specs)
    specialists = {n: _build(n, cfg.specialists.get(n), image_size=image_size) for n in order}
    schema = labels_schema(specialists, ingest_fp=ingest["fingerprint"])
    uri = ctx.workdir.labels_uri
    _drop_if_stale(uri, ingest["fingerprint"])
    added_columns = _add_missing_columns(uri, schema, specialists, cfg, ctx, image_size)
    done = store.committed_keys(uri)
    shards = [p for p in ctx.workdir.shard_paths() if set(shard_keys(p)) - done]
    todo = {k for p in shards for k in shard_keys(p)} - done
    if todo:
        ensure_ray(ctx.ray)
        ds = _labelled(shards, todo, specialists, cfg, image_size).select_columns(schema.names)
        _commit_stream(ds, uri, schema, rows_per_commit=cfg.rows_per_commit)
    return _summary(uri, specialists, num_new=len(todo), added_columns=added_columns)


def _commit_stream(ds, uri: Path, schema: pa.Schema, *, rows_per_commit: int) -> None:
    """One streaming Ray execution; the driver commits every ``rows_per_commit`` rows.

    Each commit is one Lance transaction, so a killed run keeps what it committed and
    the next run's key filter skips exactly those rows: no duplicates, little rework.
    """
    import lance

    for table in ds.iter_batches(batch_size=rows_per_commit, batch_format="pyarrow"):
        table = table.select(schema.names).cast(schema)
        mode = "append" if uri.exists() else "create"
        lance.write_dataset(table, str(uri), schema=schema, mode=mode)
        log.info("pseudolabel: committed %d samples to %s", table.num_rows, uri.name)


def _drop_if_stale(uri: Path, ingest_fp: str) -> None:
    if uri.exists() and store.store_metadata(uri).get("ingest_fingerprint") != ingest_fp:
        log.info("pseudolabel: %s was built from other shards; rebuilding", uri)
        shutil.rmtree(uri)


def _add_missing_columns(uri: Path, schema: pa.Schema, specialists, cfg, ctx, image_size: int) -> list[str]:
    """Columns of newly enabled specialists, computed for committed rows and merged in."""
    if not uri.exists():
        return []
    ds = store.open_dataset(uri)
    have = set(ds.schema.names)
    new = {n: s for n, s in specialists.items() if any(f.name not in have for f in s.columns())}
    if not new:
        return []
    from fm21.ray_runtime import ensure_ray

    ensure_ray(ctx.ray)
    keys = set(ds.to_table(columns=["key"]).column("key").to_pylist())
    # Earlier columns they require are recomputed alongside (cheap for the skeleton's specialists).
    needed = {n: specialists[n] for n in specialists if n in new or _required_by(n, new, specialists)}
    labelled = _labelled(ctx.workdir.shard_paths(), keys, needed, cfg, image_size)
    columns = ["key"] + [f.name for s in new.values() for f in s.columns()]
    table = _collect(labelled.select_columns(columns))
    ds.merge(table, left_on="key")
    ds = store.open_dataset(uri)
    ds.update_schema_metadata({k.decode(): v.decode() for k, v in schema.metadata.items()}, replace=True)
    return [c for c in columns if c != "key"]


def _collect(ds) -> pa.Table:
    return pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))


def _required_by(name: str, new: dict, specialists: dict) -> bool:
    produced = {f.name for f in specialists[name].columns()}
    return any(produced & set(s.requires) for s in new.values())


def _summary(uri: Path, specialists: dict, *, num_new: int, added_columns: list[str]) -> dict:
    ds = store.open_dataset(uri)
    keys = ds.to_table(columns=["key"]).column("key").to_pylist()
    if len(keys) != len(set(keys)):
        raise RuntimeError(f"{uri} holds duplicate sample keys ({len(keys) - len(set(keys))}); the store is corrupt")
    return {
        "samples": len(keys),
        "new_samples": num_new,
        "added_columns": added_columns,
        "specialists": list(specialists),
        "random_specialists": [n for n, s in specialists.items() if s.is_random],
        "oracle_specialists": [n for n, s in specialists.items() if s.oracle],
        "bytes": sum(f.stat().st_size for f in uri.rglob("*") if f.is_file()),
    }
