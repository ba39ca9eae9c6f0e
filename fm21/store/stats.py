"""`fm21 stats`: what is in a token store, per modality."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fm21.store.encodings import field_meta, raw_bytes
from fm21.store.fs import tree_bytes
from fm21.store.tokens import read_store_metadata


def _token_stats(counts: np.ndarray, vocab: int | None) -> dict[str, Any]:
    total = int(counts.sum())
    if total == 0:
        return {"tokens": 0}
    p = counts[counts > 0] / total
    out = {
        "tokens": total,
        "unique": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }
    if vocab:
        out["usage"] = out["unique"] / vocab
    return out


class _ModalityTally:
    """Running counts for one modality column: memory O(vocab), not O(rows)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.nulls = 0
        self.counts = np.zeros(spec.get("vocab_size") or 0, np.int64)
        self.num_lengths = self.sum_lengths = self.max_length = 0

    def add(self, column: pa.Array) -> None:
        self.nulls += column.null_count
        if self.spec["kind"] == "pixels":
            return
        column = column.drop_null()
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
        if values.size:
            counts = np.bincount(values, minlength=self.counts.size)
            counts[: self.counts.size] += self.counts
            self.counts = counts
        if self.spec["kind"] == "sequence":
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            self.num_lengths += int(lengths.size)
            self.sum_lengths += int(lengths.sum())
            self.max_length = max(self.max_length, int(lengths.max()) if lengths.size else 0)

    def entry(self, rows: int, tokenizer_fp: str) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.spec["kind"], "coverage": (rows - self.nulls) / rows if rows else 0.0}
        if self.spec["kind"] != "pixels":
            out.update(_token_stats(self.counts, self.spec.get("vocab_size")))
        if self.spec["kind"] == "sequence" and rows:
            out["mean_len"] = self.sum_lengths / self.num_lengths if self.num_lengths else 0.0
            out["max_len"] = self.max_length
        out["random_tokenizer"] = bool(tokenizer_fp.startswith("random"))
        return out


def token_store_stats(uri: Path, *, batch_size: int = 4096) -> dict[str, Any]:
    """One streaming pass over the store (the stats of a tokens run at any size).

    ``samples`` counts the rows of crop 0: every sample has exactly one.
    """
    import lance

    ds = lance.dataset(str(uri))
    meta = read_store_metadata(uri)
    tallies = {name: _ModalityTally(spec) for name, spec in meta["specs"].items()}
    rows = samples = 0
    splits: Counter[str] = Counter()
    for batch in ds.to_batches(batch_size=batch_size):
        rows += batch.num_rows
        samples += int((batch.column("crop").to_numpy(zero_copy_only=False) == 0).sum())
        splits.update(batch.column("split").to_pylist())
        for name, tally in tallies.items():
            tally.add(batch.column(name))
    return {
        "uri": str(uri),
        "rows": rows,
        "samples": samples,
        "splits": dict(sorted(splits.items())),
        "bytes": tree_bytes(uri),
        "version": ds.version,
        "tokenizers": meta["tokenizers"],
        "modalities": {n: t.entry(rows, meta["tokenizers"].get(n, "")) for n, t in tallies.items()},
    }


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


def label_store_stats(uri: Path) -> dict[str, Any]:
    """Bytes on disk per sample for each column of labels.lance (from Lance's per-field
    statistics, no data read), beside the raw in-memory size of each dense map (shape x
    dtype of the decoded array) and the map's stored encoding (``fm21.store.encodings``)."""
    import lance

    ds = lance.dataset(str(uri))
    on_disk = {f.id: f.bytes_on_disk for f in ds.stats.data_stats().fields}
    rows = ds.count_rows()

    def total(field) -> int:  # a struct or list column: its own bytes + its children's
        return on_disk.get(field.id(), 0) + sum(total(c) for c in field.children())

    columns: dict[str, dict[str, Any]] = {}
    for field in ds.lance_schema.fields():
        arrow = ds.schema.field(field.name())
        meta = field_meta(arrow)
        tags = arrow.metadata or {}
        columns[field.name()] = {"bytes_per_sample": total(field) / rows if rows else 0.0,
                                 "raw_bytes_per_sample": raw_bytes(arrow),
                                 "encoding": meta["encoding"] if meta["shape"] is not None else None,
                                 "specialist": tags.get(b"specialist", b"").decode() or None,
                                 # outputs of random-init weights are plumbing; oracles read synthetic truth
                                 "tag": "random" if tags.get(b"random") == b"true"
                                 else "oracle" if tags.get(b"oracle") == b"true" else None}
    return {"uri": str(uri), "rows": rows, "version": ds.version, "columns": columns,
            "bytes_per_sample": sum(c["bytes_per_sample"] for c in columns.values())}


def format_label_stats(stats: dict[str, Any]) -> str:
    lines = [f"label store {stats['uri']} (version {stats['version']}): {stats['rows']} samples, "
             f"{stats['bytes_per_sample']:,.0f} bytes/sample", "",
             f"{'column':16s} {'encoding':14s} {'bytes/sample':>13s} {'raw bytes/sample':>17s} {'ratio':>7s}  "
             f"{'specialist':12s} tag"]
    for name, c in stats["columns"].items():
        raw = c["raw_bytes_per_sample"]
        ratio = f"{c['bytes_per_sample'] / raw:7.1%}" if raw else "      -"
        lines.append(f"{name:16s} {c.get('encoding') or '-':14s} {c['bytes_per_sample']:13,.1f} "
                     f"{f'{raw:,}' if raw is not None else '-':>17s} {ratio}  {c.get('specialist') or '-':12s} "
                     f"{c.get('tag') or ''}".rstrip())
    return "\n".join(lines)
