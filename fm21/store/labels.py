"""labels.lance: one row per sample key, a column per specialist output.

Helpers shared by the pseudolabel job (writer side) and the tokenizer stages (reader
side): which keys/columns are committed, and arrow columns <-> numpy maps using the
``shape``/``dtype``/``encoding`` field metadata every dense map carries. Dense maps are
stored compactly encoded (``fm21.store.encodings``); :func:`encode_column` is the one
writer of a map column and :func:`column_to_python` the one reader, so every consumer gets
``(B, *shape)`` arrays of the field's ``dtype`` whatever the encoding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fm21.store.encodings import decode_column, encode_column, field_meta

__all__ = ["column_to_python", "encode_column", "field_shape", "read_maps",
           "store_metadata"]

META_INGEST = b"fm21.ingest_fingerprint"
META_PROVENANCE = b"fm21.specialists"


def open_dataset(uri: Path):
    import lance

    return lance.dataset(str(uri))


def field_shape(field: pa.Field) -> tuple[int, ...] | None:
    meta = field.metadata or {}
    raw = meta.get(b"shape")
    return tuple(json.loads(raw)) if raw else None


def column_to_python(column: pa.ChunkedArray | pa.Array, field: pa.Field) -> Any:
    """A dense-map column -> np.ndarray (B, *shape) of the field's dtype (a list with None
    where a row is null); anything else -> list of Python values."""
    meta = field_meta(field)
    shape = meta["shape"]
    if shape is None:
        return column.to_pylist()
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if meta["encoding"] != "raw":
        return decode_column(column, field)
    if not pa.types.is_fixed_size_list(field.type):
        return column.to_pylist()
    if column.null_count:
        return [None if v is None else np.asarray(v).reshape(shape) for v in column.to_pylist()]
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape((len(column), *shape))


def read_maps(uri: Path, columns: list[str], *, keys: list[str] | None = None) -> dict[str, Any]:
    """Read label columns as numpy maps (dense) or lists (structs/strings), plus ``key``."""
    ds = open_dataset(uri)
    filt = None
    if keys is not None:
        quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
        filt = f"key IN ({quoted})"
    table = ds.to_table(columns=["key", *columns], filter=filt)
    out: dict[str, Any] = {"key": table.column("key").to_pylist()}
    for name in columns:
        out[name] = column_to_python(table.column(name), table.schema.field(name))
    return out


def store_metadata(uri: Path) -> dict[str, Any]:
    meta = open_dataset(uri).schema.metadata or {}
    out: dict[str, Any] = {}
    if META_INGEST in meta:
        out["ingest_fingerprint"] = meta[META_INGEST].decode()
    if META_PROVENANCE in meta:
        out["specialists"] = json.loads(meta[META_PROVENANCE])
    return out
