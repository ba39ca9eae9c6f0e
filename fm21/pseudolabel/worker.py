"""Pseudolabel workers: a Ray actor loads the enabled specialists once, then labels whole
work units (one input shard each) and writes the unit's labels.lance fragment itself.

The driver gets back metadata only (``fm21.store.units.UnitResult``). A specialist that
raises on a batch is retried sample by sample, so one bad sample is recorded with its
error and dropped from the unit while the rest of the batch goes on.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fm21.config import SpecialistConfig
from fm21.faults import crash_point, injected_failure
from fm21.pseudolabel.specialists import specialist_class
from fm21.pseudolabel.specialists.base import OracleInputError, Specialist
from fm21.pseudolabel.specialists.feature import feature_map_columns, in_feature_sample
from fm21.store import fs
from fm21.store import labels as store
from fm21.store.units import UnitResult, write_unit

RAW_COLUMNS = ("key", "png", "json", "gt.npz")
RAW_SCHEMA = pa.schema([pa.field("key", pa.string())] + [pa.field(c, pa.binary()) for c in RAW_COLUMNS[1:]])


def build_specialist(name: str, cfg: SpecialistConfig | None, *, image_size: int) -> Specialist:
    cfg = cfg or SpecialistConfig()
    return specialist_class(name, cfg.weights)(cfg, image_size=image_size)


def read_shard(path: str, keys: Collection[str] | None = None) -> pa.Table:
    """A webdataset shard's samples (or only ``keys``) as raw columns, in shard order.

    ``path`` may be a URI: the tar is streamed front to back (no seeks), as object stores like.
    """
    samples: dict[str, dict[str, Any]] = {}
    with fs.open_input(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = Path(member.name).name.partition(".")
            if ext in RAW_COLUMNS and (keys is None or key in keys):
                samples.setdefault(key, {"key": key})[ext] = tar.extractfile(member).read()
    return pa.Table.from_pylist(list(samples.values()), schema=RAW_SCHEMA)


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


class UnitRows:
    """One unit's rows inside a worker: the stored (encoded) columns, plus each column
    decoded at most once and shared by every specialist that reads it (the pixels are
    decoded once per sample, not once per specialist). Rows dropped by a failing
    specialist leave the table and the decoded cache together."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._decoded: dict[str, Any] = {}

    def decoded(self, name: str) -> Any:
        if name not in self._decoded:
            if name == "rgb" and "rgb" not in self.table.column_names:  # before the image specialist
                from PIL import Image

                pngs = self.table.column("png").to_pylist()
                value: Any = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in pngs])
            elif name == "meta":
                value = [json.loads(b) for b in self.table.column("json").to_pylist()]
            elif name == "gt":
                gts = self.table.column("gt.npz").to_pylist() if "gt.npz" in self.table.column_names else []
                value = [None if b is None else dict(np.load(io.BytesIO(b))) for b in gts] or [None] * len(self)
            else:
                value = store.column_to_python(self.table.column(name), self.table.schema.field(name))
            self._decoded[name] = value
        return self._decoded[name]

    def __len__(self) -> int:
        return self.table.num_rows

    def batch(self, start: int, size: int, spec: Specialist) -> dict[str, Any]:
        """The specialist batch contract (``specialists.base``) for rows ``start:start+size``."""
        batch: dict[str, Any] = {"key": self.table.column("key").to_pylist()[start:start + size]}
        for name in ("rgb", "meta", *(["gt"] if spec.oracle else [])):
            batch[name] = self.decoded(name)[start:start + size]
        if not spec.oracle:
            batch["gt"] = [None] * len(batch["key"])
        for name in spec.requires:
            if name in self.table.column_names:
                batch[name] = self.decoded(name)[start:start + size]
        return batch

    def keep(self, indices: list[int]) -> None:
        if len(indices) == len(self):
            return
        self.table = self.table.take(pa.array(indices, type=pa.int64()))
        for name, value in self._decoded.items():
            self._decoded[name] = value[indices] if isinstance(value, np.ndarray) else [value[i] for i in indices]

    def append(self, field: pa.Field, column: pa.ChunkedArray) -> None:
        self.table = self.table.append_column(field, column)
        self._decoded.pop(field.name, None)


def label_batch(spec: Specialist, batch: dict[str, Any]) -> dict[str, pa.Array]:
    """One batch through one specialist, its columns encoded for storage (encodings.py)."""
    injected_failure(spec.name, batch["key"])
    out = spec(batch)
    return {f.name: store.encode_column(out[f.name], f) for f in spec.columns()}


class SpecialistActor:
    """Ray actor body of a network specialist's own pool (its batch size, CPUs, GPUs and
    pool size from flows.yaml): loads the weights once, labels the batches unit workers send."""

    def __init__(self, name: str, cfg: dict, *, image_size: int) -> None:
        import math

        import torch

        scfg = SpecialistConfig.model_validate(cfg)
        # Ray sets OMP_NUM_THREADS to int(num_cpus) (1 for a fraction): torch uses what the
        # specialist asked for, rounded up
        torch.set_num_threads(max(1, math.ceil(scfg.num_cpus)))
        self.spec = build_specialist(name, scfg, image_size=image_size)
        self.spec.load()

    def label(self, batch: dict[str, Any]) -> dict[str, pa.Array]:
        return label_batch(self.spec, batch)


def apply_specialist(spec: Specialist, rows: UnitRows, pool: list | None = None) -> dict[str, str]:
    """Add the specialist's columns to ``rows``, dropping the samples it failed on (-> errors).

    With a ``pool`` (actor handles), the unit's batches go to the specialist's own actors,
    spread round robin and in flight together; without one it runs here. A batch that
    raises is retried sample by sample, so one bad sample is recorded and the rest go on.
    """
    fields = spec.columns()
    size = spec.cfg.batch_size
    turn = itertools.count(hash(id(rows)) % max(len(pool or [1]), 1))

    def submit(start: int, count: int) -> Callable[[], dict[str, pa.Array]]:
        batch = rows.batch(start, count, spec)
        if not pool:
            return lambda: label_batch(spec, batch)
        import ray

        ref = pool[next(turn) % len(pool)].label.remote(batch)
        return lambda: ray.get(ref)

    chunks: dict[str, list[pa.Array]] = {f.name: [] for f in fields}
    keep: list[int] = []
    errors: dict[str, str] = {}
    window = 2 * len(pool) if pool else 1  # batches in flight per pooled specialist
    starts = list(range(0, len(rows), size))
    pending = [(s, submit(s, size)) for s in starts[:window]]
    for index, start in enumerate(starts):
        _, result = pending.pop(0)
        if index + window < len(starts):
            pending.append((starts[index + window], submit(starts[index + window], size)))
        try:
            outs = [(start, result())]
        except OracleInputError:
            raise  # a configuration error (oracle on real images), not a bad sample
        except Exception:  # noqa: BLE001 - isolate the failing samples, one by one
            outs = []
            for i in range(start, min(start + size, len(rows))):
                try:
                    outs.append((i, submit(i, 1)()))
                except OracleInputError:
                    raise
                except Exception as err:  # noqa: BLE001 - recorded, the unit goes on
                    err = getattr(err, "cause", None) or err  # a Ray task error: the specialist's own
                    errors[rows.table.column("key")[i].as_py()] = f"{spec.name}: {type(err).__name__}: {err}"
        for first, out in outs:
            keep.extend(range(first, first + len(out[fields[0].name])))
            for f in fields:
                chunks[f.name].append(out[f.name])
    rows.keep(keep)
    for f in fields:
        rows.append(f, pa.chunked_array(chunks[f.name], type=f.type))
    return errors


def label_table(table: pa.Table, specialists: dict[str, Specialist], *, feature_fraction: float = 1.0,
                pools: dict[str, list] | None = None) -> tuple[pa.Table, dict[str, str]]:
    """Every specialist in plan order (network ones in their ``pools``); a sample failed by
    one is dropped for the rest. Feature maps are kept only for the keys in the feature
    sample (``feature_fraction``)."""
    rows = UnitRows(table)
    failed: dict[str, str] = {}
    for name, spec in specialists.items():
        failed.update(apply_specialist(spec, rows, (pools or {}).get(name)))
        rows.table = keep_feature_sample(rows.table, feature_map_columns(spec), feature_fraction)
        crash_point("pseudolabel.in_unit")
    return rows.table, failed


def keep_feature_sample(table: pa.Table, columns: tuple[str, ...], fraction: float) -> pa.Table:
    """Null the feature-map ``columns`` of the rows outside the feature sample."""
    if not columns or fraction >= 1.0:
        return table
    import pyarrow.compute as pc

    keep = pa.array([in_feature_sample(k, fraction) for k in table.column("key").to_pylist()], type=pa.bool_())
    for name in columns:
        index = table.schema.get_field_index(name)
        column = table.column(name).combine_chunks()
        table = table.set_column(index, table.schema.field(name),
                                 pc.if_else(keep, column, pa.nulls(len(column), column.type)))
    return table


class LabelWorker:
    """Ray actor body of a unit worker: reads a unit's shard, runs the specialists in plan
    order and writes the unit's fragment; one method call per work unit. Specialists
    without a pool are loaded here once; those with one (``pools``: network specialists,
    each its own actor pool) only describe their columns here and label in their pool."""

    def __init__(self, names: list[str], cfgs: dict[str, dict], *, image_size: int, uri: str,
                 schema: pa.Schema, feature_fraction: float = 1.0, pools: dict[str, list] | None = None) -> None:
        self.specialists = {
            n: build_specialist(n, SpecialistConfig.model_validate(cfgs[n]), image_size=image_size) for n in names
        }
        self.pools = pools or {}
        for name, spec in self.specialists.items():
            if name not in self.pools:
                spec.load()
        self.uri = uri
        self.schema = schema  # the store's schema: fragments are written in it
        self.feature_fraction = feature_fraction  # keys that keep feature maps (pseudolabel.feature_maps)

    def label_unit(self, unit: dict[str, Any]) -> dict[str, Any]:
        """Label one shard (or only ``unit["keys"]``, a retry) and write its fragment."""
        keys = unit.get("keys")
        table, failed = label_table(read_shard(unit["path"], set(keys) if keys else None), self.specialists,
                                    feature_fraction=self.feature_fraction, pools=self.pools)
        fragments = write_unit(table, self.uri, self.schema)
        crash_point("pseudolabel.after_write")
        return UnitResult(unit["id"], fragments, table.num_rows, failed, list(keys or [])).to_dict()

    def add_columns(self, task: dict[str, Any]) -> dict[str, Any]:
        """New specialists' columns for one committed fragment, merged into a new data file.

        Columns the new specialists require are read from the store (not recomputed); the
        raw samples come from the fragment's own shard. Returns the fragment's metadata and
        the merged Lance schema, for the driver's one Merge commit.
        """
        import lance

        ds = lance.dataset(self.uri, version=task["version"])
        fragment = ds.get_fragment(task["fragment"])
        reads = {"rgb", *(c for s in self.specialists.values() for c in s.requires)}
        existing = fragment.to_table(columns=["key", *sorted(c for c in reads if c in ds.schema.names)])
        keys = existing.column("key").to_pylist()
        raw = read_shard(task["path"], set(keys))
        order = {k: i for i, k in enumerate(raw.column("key").to_pylist())}
        raw = raw.take(pa.array([order[k] for k in keys], type=pa.int64()))
        table = existing
        for name in RAW_COLUMNS[1:]:
            table = table.append_column(raw.schema.field(name), raw.column(name))
        table, failed = label_table(table, self.specialists, feature_fraction=self.feature_fraction,
                                    pools=self.pools)
        columns = [f.name for s in self.specialists.values() for f in s.columns()]
        metadata, schema = fragment.merge(table.select(["key", *columns]), left_on="key")
        return {"fragment": json.dumps(metadata.to_json()), "schema": schema, "failed": failed}
