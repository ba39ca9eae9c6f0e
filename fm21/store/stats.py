"""`fm21 stats`: what is in a token store, per modality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fm21.store.tokens import read_store_metadata


def _token_stats(column: pa.ChunkedArray, vocab: int | None) -> dict[str, Any]:
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    if values.size == 0:
        return {"tokens": 0}
    counts = np.bincount(values, minlength=vocab or 0)
    p = counts[counts > 0] / values.size
    out = {
        "tokens": int(values.size),
        "unique": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }
    if vocab:
        out["usage"] = out["unique"] / vocab
    return out


def token_store_stats(uri: Path) -> dict[str, Any]:
    import lance

    ds = lance.dataset(str(uri))
    meta = read_store_metadata(uri)
    table = ds.to_table()
    rows = table.num_rows
    out: dict[str, Any] = {
        "uri": str(uri),
        "rows": rows,
        "samples": len(set(table.column("key").to_pylist())),
        "splits": {s: int(n) for s, n in zip(*np.unique(table.column("split").to_numpy(zero_copy_only=False), return_counts=True))},
        "bytes": sum(f.stat().st_size for f in Path(uri).rglob("*") if f.is_file()),
        "version": ds.version,
        "tokenizers": meta["tokenizers"],
        "modalities": {},
    }
    for name, spec in meta["specs"].items():
        column = table.column(name)
        entry = {"kind": spec["kind"], "coverage": (rows - column.null_count) / rows if rows else 0.0}
        if spec["kind"] != "pixels":
            entry.update(_token_stats(column.drop_null(), spec.get("vocab_size")))
        if spec["kind"] in ("sequence",) and rows:
            lengths = pc.list_value_length(column.drop_null()).to_numpy(zero_copy_only=False)
            entry["mean_len"] = float(lengths.mean()) if lengths.size else 0.0
            entry["max_len"] = int(lengths.max()) if lengths.size else 0
        entry["random_tokenizer"] = bool(meta["tokenizers"].get(name, "").startswith("random"))
        out["modalities"][name] = entry
    return out


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"token store {stats['uri']} (version {stats['version']})",
        f"rows {stats['rows']}  samples {stats['samples']}  splits {stats['splits']}  bytes {stats['bytes']:,}",
        "",
        f"{'modality':16s} {'kind':14s} {'coverage':>8s} {'tokens':>9s} {'usage':>7s} {'perplexity':>10s} {'len':>9s}",
    ]
    for name, e in stats["modalities"].items():
        usage = f"{e['usage']:.1%}" if "usage" in e else "-"
        ppl = f"{e['perplexity']:.1f}" if "perplexity" in e else "-"
        length = f"{e['mean_len']:.1f}/{e['max_len']}" if "mean_len" in e else "-"
        lines.append(
            f"{name:16s} {e['kind']:14s} {e['coverage']:8.1%} {e.get('tokens', '-'):>9} {usage:>7s} {ppl:>10s} {length:>9s}"
        )
    return "\n".join(lines)
