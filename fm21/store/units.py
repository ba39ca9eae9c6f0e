"""Work units written by workers, committed by the driver, recorded in the store itself.

A stage splits its input into units (an input shard, a Lance fragment). A worker processes
one unit and writes its rows as *uncommitted* Lance fragments (``write_unit``), returning
only a :class:`UnitResult`: fragment metadata JSON and counts, never sample data. The
driver (:func:`run_units`) commits the results of ``units_per_commit`` units as one Lance
``Append`` whose transaction properties name the units it commits:

- ``fm21.units``: JSON ``{unit id: [data file paths the unit wrote]}``
- ``fm21.failed``: JSON ``{unit id: {sample key: error}}`` for samples that failed
- ``fm21.resolved``: JSON ``[sample keys]`` that these (retry) units attempted again

The Lance commit is atomic, so a unit is committed exactly when a committed transaction
names it: there is no second record that a crash could leave out of step. A run killed
anywhere reads the records (:func:`read_records`), skips committed units and redoes the
rest; fragments written but never committed are orphan files no version references,
never counted (:func:`orphan_files` lists them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa

from fm21.faults import crash_point
from fm21.store import fs

log = logging.getLogger("fm21")

PROP_UNITS = "fm21.units"
PROP_FAILED = "fm21.failed"
PROP_RESOLVED = "fm21.resolved"
PROP_FAILED_COLUMNS = "fm21.failed_columns"  # on Merge: {key: error}, left null, not retried


@dataclass
class UnitResult:
    """What a worker sends back for one unit: metadata only."""

    unit: str
    fragments: list[str]  # FragmentMetadata JSON, written but not committed
    rows: int
    failed: dict[str, str] = field(default_factory=dict)
    resolved: list[str] = field(default_factory=list)
    node: str = field(default_factory=lambda: _node_id())  # the Ray node that wrote it (reported, not recorded)

    def data_files(self) -> list[str]:
        return [f["path"] for frag in self.fragments for f in json.loads(frag)["files"]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


@dataclass
class Records:
    """The committed units of a store and its outstanding failed samples."""

    units: dict[str, list[str]]  # unit id -> data files it wrote
    failed: dict[str, dict[str, str]]  # sample key -> {"unit", "error"}, not yet resolved by a retry

    def unit_of_file(self) -> dict[str, str]:
        return {path: unit for unit, paths in self.units.items() for path in paths}


def exists(uri: Path | str) -> bool:
    return fs.exists(f"{uri}/_versions")


def read_records(uri: Path | str) -> Records:
    """Replay the store's transactions in version order (metadata reads only)."""
    import lance

    if not exists(uri):
        return Records({}, {})
    ds = lance.dataset(str(uri))
    return _replay(ds, [v["version"] for v in ds.versions()])


def _replay(ds, versions: list[int]) -> Records:
    records = Records({}, {})
    for version in versions:
        tx = ds.read_transaction(version)
        if tx is None:
            continue
        kind = type(tx.operation).__name__
        if kind == "Restore":  # the store went back to an older version: so do its records
            records = _replay(ds, [v for v in versions if v <= tx.operation.version])
            continue
        if kind == "Overwrite":
            records = Records({}, {})
        props = tx.transaction_properties or {}
        for key in json.loads(props.get(PROP_RESOLVED, "[]")):
            records.failed.pop(key, None)
        for unit, errors in json.loads(props.get(PROP_FAILED, "{}")).items():
            records.failed.update({k: {"unit": unit, "error": e} for k, e in errors.items()})
        records.units.update(json.loads(props.get(PROP_UNITS, "{}")))
    return records


def drop_if_unrecorded(uri: Path | str, records: Records) -> bool:
    """A store with rows but no unit records was written before work units existed (or by
    hand): a resume cannot tell which units it holds, so it is rebuilt, never appended to."""
    import lance

    if records.units or not exists(uri) or lance.dataset(str(uri)).count_rows() == 0:
        return False
    log.warning("%s has rows but no unit records (written by an older fm21?); rebuilding it", uri)
    fs.remove_tree(uri)
    return True


def ensure_store(uri: Path | str, schema: pa.Schema) -> None:
    """An empty store with ``schema`` (version 1), so every later commit is an Append."""
    import lance

    if not exists(uri):
        lance.write_dataset(schema.empty_table(), str(uri), schema=schema)


def write_unit(table: pa.Table, uri: str, schema: pa.Schema) -> list[str]:
    """Worker side: the unit's rows as uncommitted fragments in the store's data folder.

    Columns the store has but this run does not compute (a specialist since disabled) are
    written as nulls, so the fragment always matches the store schema.
    """
    from lance.fragment import write_fragments

    if table.num_rows == 0:
        return []
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    table = pa.Table.from_arrays(columns, schema=schema)
    fragments = write_fragments(table, uri, schema=schema, max_rows_per_file=1 << 30)
    return [json.dumps(f.to_json()) for f in fragments]


def commit_units(uri: Path | str, results: list[UnitResult], *, stage: str) -> int:
    """Driver side: one Append for the batch, naming its units. Returns the new version."""
    import lance
    from lance.fragment import FragmentMetadata

    ds = lance.dataset(str(uri))
    fragments = [FragmentMetadata.from_json(f) for r in results for f in r.fragments]
    props = {
        PROP_UNITS: json.dumps({r.unit: r.data_files() for r in results}),
        PROP_FAILED: json.dumps({r.unit: r.failed for r in results if r.failed}),
        PROP_RESOLVED: json.dumps([k for r in results for k in r.resolved]),
    }
    tx = lance.Transaction(ds.version, lance.LanceOperation.Append(fragments), transaction_properties=props)
    crash_point(f"{stage}.commit")
    version = lance.LanceDataset.commit(str(uri), tx).version
    crash_point(f"{stage}.after_commit")
    return version


def run_units(
    actors: list,
    submit: Callable[[Any, Any], Any],
    units: Iterable[Any],
    *,
    uri: Path | str,
    units_per_commit: int,
    stage: str,
) -> dict[str, int]:
    """Stream units through a pool of Ray actors; commit every ``units_per_commit`` results.

    ``ActorPool`` keeps one unit in flight per actor, so the driver holds at most the
    metadata of ``units_per_commit + len(actors)`` units, whatever the dataset size.
    Results are committed in unit order (``map``, not ``map_unordered``): the store's row
    order is then the same on one node or many and after a resume, which readers that
    sample by position (tokenizer training) rely on; a slow unit delays commits by at
    most one unit per actor.
    """
    from ray.util import ActorPool

    from fm21.progress import progress

    counts = {"units": 0, "rows": 0, "failed": 0, "commits": 0}
    nodes: set[str] = set()
    pending: list[UnitResult] = []

    def flush() -> None:
        if pending:
            version = commit_units(uri, pending, stage=stage)
            counts["commits"] += 1
            log.info("%s: committed %d units (%d rows) as version %d", stage, len(pending),
                     sum(r.rows for r in pending), version)
            pending.clear()

    units = list(units)  # unit descriptors (one per shard or fragment), not samples
    with progress(stage, total=len(units), unit="unit") as advance:
        for raw in ActorPool(actors).map(submit, units):
            result = UnitResult(**raw)
            pending.append(result)
            counts["units"] += 1
            counts["rows"] += result.rows
            counts["failed"] += len(result.failed)
            nodes.add(result.node)
            advance(1)
            if len(pending) >= units_per_commit:
                flush()
    flush()
    return {**counts, "nodes": len(nodes)}


def orphan_files(uri: Path | str) -> list[str]:
    """Data files no version references: fragments of units killed before their commit."""
    import lance

    if not exists(uri):
        return []
    # Stores here only grow (Append, Merge add files), so the latest version references
    # every committed file.
    referenced = {f.path for frag in lance.dataset(str(uri)).get_fragments() for f in frag.data_files()}
    return [n for n in fs.list_names(f"{uri}/data") if n.endswith(".lance") and n not in referenced]
