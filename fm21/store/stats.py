"""`fm21 stats`: what is in the token and label stores, per modality.

Every figure comes from one streaming pass (record batches with a column projection,
accumulated into per-modality histograms: memory O(vocab + max length + columns), never
O(rows)) or from Lance's metadata (per-field bytes on disk, versions, tags, indices).
Modality behaviour is read from the stored specs (kind, ``is_image_like``,
``is_sequence``), never from modality names.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fm21.modalities import MODALITIES, ModalitySpec
from fm21.store.encodings import field_meta, raw_bytes
from fm21.store.fs import tree_bytes
from fm21.store.tokens import read_store_metadata

PAD_ID = 0  # [PAD]: a fixed id of the shared WordPiece vocabulary (fm21/tokenize/text.py)
BYTES_ON_DISK = "on disk (Lance per-field data statistics)"
BYTES_IN_MEMORY = "Arrow in-memory size (Lance gave no per-field statistics)"


def stored_spec(d: dict[str, Any]) -> ModalitySpec:
    """A stored spec dict (``dataclasses.asdict``) back to a ModalitySpec; unknown keys ignored."""
    names = {f.name for f in dataclasses.fields(ModalitySpec)}
    kw = {k: v for k, v in d.items() if k in names}
    kw["label_columns"] = tuple(kw.get("label_columns") or ())
    return ModalitySpec(**kw)


def _quote(column: str) -> str:
    return f"`{column}`"


def _token_stats(counts: np.ndarray, vocab: int | None) -> dict[str, Any]:
    total = int(counts.sum())
    if total == 0:
        return {"tokens": 0}
    p = counts[counts > 0] / total
    out: dict[str, Any] = {
        "tokens": total,
        "unique": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }
    if vocab:
        used = int((counts[:vocab] > 0).sum())
        out |= {"vocab": vocab, "usage": out["unique"] / vocab, "dead_codes": vocab - used,
                "out_of_vocab": int(counts[vocab:].sum())}
    return out


def _quantiles(hist: np.ndarray) -> dict[str, int]:
    """min / median / p95 / max of the values counted in ``hist`` (nearest rank)."""
    cum = np.cumsum(hist)
    n = int(cum[-1])

    def rank(q: float) -> int:
        return int(np.searchsorted(cum, max(1, int(np.ceil(q * n)))))

    return {"min": int(np.flatnonzero(hist)[0]), "median": rank(0.5), "p95": rank(0.95),
            "max": int(np.flatnonzero(hist)[-1])}


class _ModalityTally:
    """Running counts for one token column: a code histogram (vocab) and, for sequences,
    a histogram of non-pad lengths (max length). Memory O(vocab + max length)."""

    def __init__(self, spec: ModalitySpec) -> None:
        self.spec = spec
        self.nulls = 0
        self.arrow_bytes = 0
        self.counts = np.zeros(spec.vocab_size or 0, np.int64)
        self.lengths = np.zeros(1, np.int64)  # lengths[n] = rows with n non-pad tokens

    def add(self, column: pa.Array) -> None:
        self.nulls += column.null_count
        self.arrow_bytes += column.nbytes
        column = column.drop_null()
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)  # (sum of lengths,)
        if values.size:
            counts = np.bincount(values, minlength=self.counts.size)
            counts[: self.counts.size] += self.counts
            self.counts = counts
        if self.spec.is_sequence and len(column):
            rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)  # row of each value
            per_row = np.bincount(rows[values != PAD_ID], minlength=len(column))  # (rows,) non-pad tokens
            hist = np.bincount(per_row, minlength=self.lengths.size)
            hist[: self.lengths.size] += self.lengths
            self.lengths = hist

    def entry(self, rows: int, tokenizer_fp: str) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.spec.kind, "coverage": (rows - self.nulls) / rows if rows else 0.0}
        out.update(_token_stats(self.counts, self.spec.vocab_size))
        num = int(self.lengths.sum())
        if self.spec.is_sequence and num:
            out["mean_len"] = float((np.arange(self.lengths.size) * self.lengths).sum() / num)
            out["max_len"] = int(np.flatnonzero(self.lengths)[-1])
            out["seq_len"] = _quantiles(self.lengths)
        out["random_tokenizer"] = bool(tokenizer_fp.startswith("random"))
        return out


@dataclass
class TokenScan:
    """The stats of a token store, and the histograms behind them (for the PNGs)."""

    stats: dict[str, Any]
    code_counts: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (>= vocab,) counts per code
    seq_lengths: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> rows per non-pad length


def scan_token_store(uri: Path, *, batch_size: int = 4096) -> TokenScan:
    """One streaming pass over the token columns (pixel columns are not read: their
    coverage is a Lance ``count_rows`` with a null filter)."""
    import lance

    ds = lance.dataset(str(uri))
    meta = read_store_metadata(uri)
    specs = {name: stored_spec(d) for name, d in meta["specs"].items()}
    tallies = {n: _ModalityTally(s) for n, s in specs.items() if s.kind not in ("pixels", "embedding")}
    rows = samples = 0
    splits: Counter[str] = Counter()
    crops = np.zeros(1, np.int64)
    for batch in ds.to_batches(columns=["crop", "split", *tallies], batch_size=batch_size):
        rows += batch.num_rows
        crop = batch.column("crop").to_numpy(zero_copy_only=False).astype(np.int64)
        samples += int((crop == 0).sum())  # every sample has exactly one crop 0
        counted = np.bincount(crop, minlength=crops.size)
        counted[: crops.size] += crops
        crops = counted
        splits.update(batch.column("split").to_pylist())
        for name, tally in tallies.items():
            tally.add(batch.column(name))
    on_disk = column_bytes(ds)
    modalities: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        if name in tallies:
            entry = tallies[name].entry(rows, meta["tokenizers"].get(name, ""))
            arrow = tallies[name].arrow_bytes
        else:  # pixels and embeddings (no codes): coverage only
            present = ds.count_rows(filter=f"{_quote(name)} IS NOT NULL")
            entry = {"kind": spec.kind, "coverage": present / rows if rows else 0.0,
                     "random_tokenizer": bool(meta["tokenizers"].get(name, "").startswith("random"))}
            arrow = None
        nbytes = on_disk.get(name) if on_disk is not None else arrow
        entry["bytes"] = nbytes
        entry["bytes_per_row"] = nbytes / rows if rows and nbytes is not None else None
        modalities[name] = entry
    stats = {
        "uri": str(uri),
        "rows": rows,
        "samples": samples,
        "crops": {str(c): int(n) for c, n in enumerate(crops) if n},
        "splits": dict(sorted(splits.items())),
        "bytes": tree_bytes(uri),
        "bytes_source": BYTES_ON_DISK if on_disk is not None else BYTES_IN_MEMORY,
        "version": ds.version,
        "lance": lance_info(ds),
        "tokenizers": meta["tokenizers"],
        "modalities": modalities,
    }
    return TokenScan(stats, {n: t.counts for n, t in tallies.items()},
                     {n: t.lengths for n, t in tallies.items() if t.spec.is_sequence})


def token_store_stats(uri: Path, *, batch_size: int = 4096) -> dict[str, Any]:
    """One streaming pass over the store (the stats of a tokens run at any size)."""
    return scan_token_store(uri, batch_size=batch_size).stats


def column_bytes(ds) -> dict[str, int] | None:
    """Bytes on disk per top-level column (a nested column: its own + its children's),
    from Lance's per-field statistics (no data read); None if Lance has none."""
    try:
        on_disk = {f.id: f.bytes_on_disk for f in ds.stats.data_stats().fields}
    except Exception:  # noqa: BLE001 - an older format or store without data statistics
        return None

    def total(f) -> int:
        return on_disk.get(f.id(), 0) + sum(total(c) for c in f.children())

    return {f.name(): total(f) for f in ds.lance_schema.fields()}


def lance_info(ds) -> dict[str, Any]:
    """The store's Lance version, version count, tags and indices (metadata only)."""
    versions = ds.versions()
    latest = max(versions, key=lambda v: v["version"]) if versions else None
    return {
        "version": ds.version,
        "num_versions": len(versions),
        "latest_timestamp": latest["timestamp"].isoformat(timespec="seconds") if latest else None,
        "tags": {name: t["version"] for name, t in sorted(ds.tags.list().items())},
        "indices": [{"name": d.name, "type": d.index_type, "columns": list(d.field_names),
                     "indexed_rows": d.num_rows_indexed} for d in ds.describe_indices()],
    }


def _lance_line(info: dict[str, Any]) -> str:
    tags = ", ".join(f"{n}=v{v}" for n, v in info["tags"].items()) or "none"
    indices = ", ".join(f"{i['name']} ({i['type']} on {'/'.join(i['columns'])}, {i['indexed_rows']} rows)"
                        for i in info["indices"]) or "none"
    return (f"lance: version {info['version']} of {info['num_versions']} (latest {info['latest_timestamp']}); "
            f"tags: {tags}; indices: {indices}")


def format_stats(stats: dict[str, Any]) -> str:
    crops = " ".join(f"{c}:{n}" for c, n in stats.get("crops", {}).items())
    lines = [
        f"token store {stats['uri']} (version {stats['version']})",
        f"rows {stats['rows']}  samples {stats['samples']}  crops {{{crops}}}  splits {stats['splits']}  "
        f"bytes {stats['bytes']:,}",
    ]
    if "lance" in stats:
        lines.append(_lance_line(stats["lance"]))
    w = max([16, *(len(n) for n in stats["modalities"])])  # names line up whatever their length
    lines += ["", f"{'modality':{w}s} {'kind':14s} {'coverage':>8s} {'tokens':>9s} {'usage':>7s} {'perplexity':>10s} "
              f"{'dead':>6s} {'len':>9s} {'min/med/p95/max':>16s} {'bytes/row':>10s}"]
    for name, e in stats["modalities"].items():
        usage = f"{e['usage']:.1%}" if "usage" in e else "-"
        ppl = f"{e['perplexity']:.1f}" if "perplexity" in e else "-"
        length = f"{e['mean_len']:.1f}/{e['max_len']}" if "mean_len" in e else "-"
        q = e.get("seq_len")
        dist = f"{q['min']}/{q['median']}/{q['p95']}/{q['max']}" if q else "-"
        per_row = f"{e['bytes_per_row']:,.1f}" if e.get("bytes_per_row") is not None else "-"
        lines.append(f"{name:{w}s} {e['kind']:14s} {e['coverage']:8.1%} {e.get('tokens', '-'):>9} {usage:>7s} "
                     f"{ppl:>10s} {e.get('dead_codes', '-'):>6} {length:>9s} {dist:>16s} {per_row:>10s}")
    if "bytes_source" in stats:
        lines += ["", f"usage = codes used / vocab; dead = vocab - codes used; len = non-pad tokens (mean/max); "
                      f"bytes/row: {stats['bytes_source']}"]
    return "\n".join(lines)


def label_store_stats(uri: Path, *, coverage: bool = False) -> dict[str, Any]:
    """Bytes on disk per sample for each column of labels.lance (from Lance's per-field
    statistics, no data read), beside the raw in-memory size of each dense map (shape x
    dtype of the decoded array) and the map's stored encoding (``fm21.store.encodings``).

    ``coverage=True`` adds, per column, the share of rows with a non-null value (a Lance
    ``count_rows`` with a null filter per column: the store is streamed by Lance, one
    column at a time) and the registry modalities whose tokenizers read the column.
    """
    import lance

    from fm21.store.vector_index import global_embedding_columns

    ds = lance.dataset(str(uri))
    on_disk = column_bytes(ds) or {}
    rows = ds.count_rows()
    readers: dict[str, list[str]] = {}
    for spec in MODALITIES.values():
        for col in spec.label_columns:
            readers.setdefault(col, []).append(spec.name)

    columns: dict[str, dict[str, Any]] = {}
    for arrow in ds.schema:
        meta = field_meta(arrow)
        tags = arrow.metadata or {}
        entry = {"bytes_per_sample": on_disk.get(arrow.name, 0) / rows if rows else 0.0,
                 "raw_bytes_per_sample": raw_bytes(arrow),
                 "encoding": meta["encoding"] if meta["shape"] is not None else None,
                 "specialist": tags.get(b"specialist", b"").decode() or None,
                 # outputs of random-init weights are plumbing; oracles read synthetic truth
                 "tag": "random" if tags.get(b"random") == b"true"
                 else "oracle" if tags.get(b"oracle") == b"true" else None}
        if coverage and arrow.name != "key":
            entry |= {"coverage": _coverage(ds, arrow, rows), "modalities": readers.get(arrow.name, [])}
        columns[arrow.name] = entry
    return {"uri": str(uri), "rows": rows, "version": ds.version, "columns": columns,
            "bytes_per_sample": sum(c["bytes_per_sample"] for c in columns.values()),
            "lance": lance_info(ds), "embedding_columns": global_embedding_columns(ds.schema)}


def _coverage(ds, arrow: pa.Field, rows: int) -> float | None:
    """Rows with a value / rows; None where the file format cannot tell: Lance file
    format 2.0 stores no struct-level validity (a null struct reads back as a struct of
    defaults), so a top-level struct column looks fully covered whatever was written."""
    if not rows:
        return 0.0
    if pa.types.is_struct(arrow.type) and ds.data_storage_version == "2.0":
        return None
    return ds.count_rows(filter=f"{_quote(arrow.name)} IS NOT NULL") / rows


def format_label_stats(stats: dict[str, Any]) -> str:
    lines = [f"label store {stats['uri']} (version {stats['version']}): {stats['rows']} samples, "
             f"{stats['bytes_per_sample']:,.0f} bytes/sample"]
    if "lance" in stats:
        lines.append(_lance_line(stats["lance"]))
    lines += ["", f"{'column':16s} {'encoding':14s} {'coverage':>8s} {'bytes/sample':>13s} {'raw bytes/sample':>17s} "
              f"{'ratio':>7s}  {'specialist':12s} tag"]
    for name, c in stats["columns"].items():
        raw = c["raw_bytes_per_sample"]
        ratio = f"{c['bytes_per_sample'] / raw:7.1%}" if raw else "      -"
        cov = (f"{'-':>8s}" if "coverage" not in c else f"{'n/a':>8s}" if c["coverage"] is None
               else f"{c['coverage']:8.1%}")
        lines.append(f"{name:16s} {c.get('encoding') or '-':14s} {cov} {c['bytes_per_sample']:13,.1f} "
                     f"{f'{raw:,}' if raw is not None else '-':>17s} {ratio}  {c.get('specialist') or '-':12s} "
                     f"{c.get('tag') or ''}".rstrip())
    lines += ["", f"bytes: {BYTES_ON_DISK}; raw = one decoded map in memory (shape x dtype)"]
    if any("coverage" in c and c["coverage"] is None for c in stats["columns"].values()):
        lines.append("coverage n/a: a struct column in Lance file format 2.0, which stores no struct-level nulls")
    return "\n".join(lines)


def write_histograms(scan: TokenScan, out_dir) -> list:
    """PNGs of a token store: ``codes_<modality>.png`` (code-usage histogram: counts per
    code id, and the same counts sorted) per token modality, ``seq_len_<modality>.png``
    (rows per non-pad length) per sequence modality. ``out_dir`` may be an object-store
    URI; returns the paths written."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fm21.store.fs import as_location, write_atomic

    out = as_location(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        buf = io.BytesIO()  # bytes, so that ``out`` may be on an object store
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        write_atomic(out / name, buf.getvalue())
        written.append(out / name)

    for name, counts in scan.code_counts.items():
        e = scan.stats["modalities"][name]
        if not counts.sum():
            continue
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
        a.stairs(counts, fill=True, color="tab:blue")  # one step per code id: fast at any vocab size
        a.set(xlabel="code id", ylabel="tokens", title=f"{name}: tokens per code")
        ranked = np.sort(counts[counts > 0])[::-1]  # used codes only (dead ones have no log)
        b.plot(np.arange(1, ranked.size + 1), ranked, color="tab:blue")
        b.set(xscale="log", yscale="log", xlabel="code rank", ylabel="tokens",
              title=f"used {e.get('unique')}/{e.get('vocab', '?')}, dead {e.get('dead_codes', '-')}, "
                    f"perplexity {e.get('perplexity', 0):.1f}")
        save(fig, f"codes_{name}.png")
    for name, hist in scan.seq_lengths.items():
        if not hist.sum():
            continue
        q = scan.stats["modalities"][name]["seq_len"]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.stairs(hist, np.arange(hist.size + 1) - 0.5, fill=True, color="tab:green")
        ax.set(xlabel="non-pad tokens", ylabel="rows",
               title=f"{name}: length min {q['min']} / median {q['median']} / p95 {q['p95']} / max {q['max']}")
        save(fig, f"seq_len_{name}.png")
    return written
