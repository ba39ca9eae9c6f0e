"""A Lance vector index over the global embeddings stored in labels.lance.

The columns are the label columns of the ``global_tokens`` modalities (``dinov2_global``,
``imagebind_global``): fixed-size float16 lists, one vector per sample. The index is
Lance's own (``LanceDataset.create_index``), written beside the data as a new version
of the store (a CreateIndex commit): no data file is rewritten and the column keeps its
float16 type.

Why IVF_PQ by default, on the float16 column as it is: Lance 4.0 trains and searches
IVF_PQ on float16 vectors, but its IVF_FLAT search panics on float16 columns (flat IVF
storage assumed float32 until lance-format/lance#6476, "support float16 and float64 in
IVF_FLAT"). So IVF_FLAT is accepted only on float32 columns, and refused on float16 with
that reason rather than by rewriting the column. Search re-ranks the PQ candidates with
exact distances (``refine_factor``), so the distances returned are the metric's own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from fm21.modalities import MODALITIES

PQ_SUBVECTOR_WIDTH = 8  # dims per PQ sub-vector: Lance's guide suggests 8 or 16 for SIMD
MIN_ROWS_8BIT_PQ = 256  # an 8-bit PQ codebook has 256 centroids: Lance needs that many rows
MIN_ROWS_4BIT_PQ = 16


def global_embedding_columns(schema: pa.Schema) -> list[str]:
    """The labels.lance columns holding one global embedding per sample: the label
    columns of every ``global_tokens`` modality present as a fixed-size float list."""
    names = []
    for spec in MODALITIES.values():
        if spec.kind != "global_tokens":
            continue
        for col in spec.label_columns:
            if col in schema.names and _is_vector(schema.field(col).type) and col not in names:
                names.append(col)
    return names


def _is_vector(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)


def index_name(column: str) -> str:
    return f"{column}_ivf"


def default_partitions(rows: int) -> int:
    """~sqrt(rows) IVF partitions (about sqrt(rows) vectors each), at most 4096."""
    return max(1, min(4096, round(math.sqrt(rows))))


def default_sub_vectors(dim: int) -> int:
    """The divisor of ``dim`` closest to dim / PQ_SUBVECTOR_WIDTH (PQ needs an exact split)."""
    target = max(1, dim // PQ_SUBVECTOR_WIDTH)
    return min((d for d in range(1, dim + 1) if dim % d == 0), key=lambda d: (abs(d - target), d))


def build_global_index(
    labels_uri: Path | str,
    column: str,
    *,
    metric: str = "cosine",
    index_type: str = "IVF_PQ",
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
    replace: bool = True,
) -> dict[str, Any]:
    """Create (or replace) the vector index of one global-embedding column.

    ``num_partitions`` defaults to ~sqrt(rows); PQ uses 8-bit codes from 256 rows up and
    4-bit codes below (tiny stores). Returns what ``describe_index`` returns.
    """
    import lance

    ds = lance.dataset(str(labels_uri))
    if column not in ds.schema.names or not _is_vector(ds.schema.field(column).type):
        raise ValueError(f"{labels_uri}: {column!r} is not a fixed-size float vector column "
                         f"(global embedding columns: {global_embedding_columns(ds.schema)})")
    vtype = ds.schema.field(column).type  # fixed_size_list<float16>[dim]
    dim, rows = vtype.list_size, ds.count_rows(filter=f"`{column}` IS NOT NULL")
    index_type = index_type.upper()
    kwargs: dict[str, Any] = {"num_partitions": min(num_partitions or default_partitions(rows), max(rows, 1))}
    if index_type == "IVF_FLAT":
        if not pa.types.is_float32(vtype.value_type):
            raise ValueError(f"{column}: IVF_FLAT needs float32 vectors in Lance {lance.__version__} (its flat IVF "
                             f"search fails on {vtype.value_type}); use IVF_PQ, which indexes the column as stored")
    elif index_type == "IVF_PQ":
        if rows < MIN_ROWS_4BIT_PQ:
            raise ValueError(f"{column}: {rows} vectors are too few to train a PQ codebook (>= {MIN_ROWS_4BIT_PQ})")
        kwargs["num_bits"] = 8 if rows >= MIN_ROWS_8BIT_PQ else 4
        kwargs["num_sub_vectors"] = num_sub_vectors or default_sub_vectors(dim)
    else:
        raise ValueError(f"index_type must be IVF_PQ or IVF_FLAT, not {index_type!r}")
    ds.create_index(column, index_type=index_type, metric=metric, name=index_name(column), replace=replace, **kwargs)
    return describe_index(labels_uri, column)


def index_global_columns(labels_uri: Path | str, *, run: Any = None) -> dict[str, dict[str, Any]]:
    """Bring the vector index of every global-embedding column of ``labels_uri`` up to date:
    build it where there is none, rebuild it where rows were added since (a column that
    was recomputed drops its index with it), keep it where it covers every row. Columns
    with too few vectors for a PQ codebook are left unindexed (search scans them exactly).

    ``run(fn, *args)`` executes a build (the pseudolabel stage passes a Ray task, so the
    vectors stream through a worker, never through the driver); None runs it here.
    Returns, per column, ``describe_index``'s figures plus ``action``
    (built / rebuilt / kept / skipped) and, when skipped, ``reason``.
    """
    import lance

    ds = lance.dataset(str(labels_uri))
    have = {d.name for d in ds.describe_indices()}
    out: dict[str, dict[str, Any]] = {}
    for column in global_embedding_columns(ds.schema):
        rows = ds.count_rows(filter=f"`{column}` IS NOT NULL")
        if rows < MIN_ROWS_4BIT_PQ:
            out[column] = {"action": "skipped", "reason": f"{rows} vectors < {MIN_ROWS_4BIT_PQ} (PQ codebook)"}
            continue
        if index_name(column) in have:
            info = describe_index(labels_uri, column)
            if info["unindexed_rows"] == 0:
                out[column] = {**info, "action": "kept"}
                continue
        action = "rebuilt" if index_name(column) in have else "built"
        out[column] = {**(run or _call)(build_global_index, str(labels_uri), column), "action": action}
    return out


def _call(fn, *args):
    return fn(*args)


def describe_index(labels_uri: Path | str, column: str) -> dict[str, Any]:
    """The index of ``column``: type, metric, partitions, rows indexed and not yet indexed."""
    import lance

    ds = lance.dataset(str(labels_uri))
    s = ds.stats.index_stats(index_name(column))
    inner = s["indices"][0] if s.get("indices") else {}
    return {"name": index_name(column), "column": column, "type": s["index_type"],
            "metric": inner.get("metric_type"), "num_partitions": inner.get("num_partitions"),
            "indexed_rows": s["num_indexed_rows"], "unindexed_rows": s["num_unindexed_rows"]}


def search(
    labels_uri: Path | str,
    column: str,
    query_vectors: np.ndarray,
    k: int = 10,
    *,
    metric: str = "cosine",
    nprobes: int = 20,
    refine_factor: int = 10,
    where: str | None = None,
) -> tuple[list[list[str]], np.ndarray]:
    """The ``k`` nearest stored samples of each query: (keys (Q lists of k), distances (Q, k)).

    ``query_vectors``: (Q, dim) or (dim,), any float dtype (sent as float32). Without an
    index Lance scans the column (exact); with one it probes ``nprobes`` partitions and
    re-ranks ``k * refine_factor`` candidates exactly. Rows added after the index was
    built are searched flat, so results cover the whole store. ``where``: a Lance filter
    applied before the search (prefilter), so the k nearest are k of the matching rows.
    """
    import lance

    ds = lance.dataset(str(labels_uri))
    queries = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))  # (Q, dim)
    keys: list[list[str]] = []
    distances = np.full((len(queries), k), np.nan, np.float32)
    for i, q in enumerate(queries):
        table = ds.to_table(columns=["key", "_distance"], filter=where, prefilter=where is not None, nearest={
            "column": column, "q": q, "k": k, "metric": metric, "nprobes": nprobes, "refine_factor": refine_factor})
        keys.append(table.column("key").to_pylist())
        found = table.column("_distance").to_numpy()
        distances[i, : len(found)] = found
    return keys, distances


def list_indices(uri: Path | str) -> list[dict[str, Any]]:
    """Every index of a Lance store: name, type, columns, rows indexed (metadata only)."""
    import lance

    ds = lance.dataset(str(uri))
    return [{"name": d.name, "type": d.index_type, "columns": list(d.field_names), "indexed_rows": d.num_rows_indexed}
            for d in ds.describe_indices()]


def stored_vectors(labels_uri: Path | str, column: str, keys: Sequence[str]) -> np.ndarray:
    """The stored vectors of ``keys`` (in that order): (len(keys), dim) float32."""
    import lance

    ds = lance.dataset(str(labels_uri))
    quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
    table = ds.to_table(columns=["key", column], filter=f"key IN ({quoted})")
    by_key = dict(zip(table.column("key").to_pylist(), range(table.num_rows)))
    col = table.column(column).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)
    return flat[[by_key[k] for k in keys]]
