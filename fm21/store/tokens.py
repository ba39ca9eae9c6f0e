"""tokens.lance: one row per (sample key, crop), a column per modality.

- image-like modalities: fixed-size int16 lists of N token ids (row-major grid)
- rgb pixels (input only): fixed-size uint8 lists of R*R*3 values at model resolution
- sequences: variable int32 lists of WordPiece ids, without EOS (added at masking)
- embeddings (t5_caption, input only): variable lists of ``embedding_dim`` float16 vectors, as stored

Schema metadata holds the resolved modality specs and the tokenizer fingerprints, so
training can refuse a store made with other tokenizers or at another scale. It also
holds what the tokens job needs to extend a store in place rather than rebuild it: the
labels store's identity and the crop layout (shared by every column), and per modality
the fingerprint of its inputs (spec, tokenizer, the specialist that made its labels).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from fm21.modalities import ModalitySpec

META_SPECS = b"fm21.specs"
META_TOKENIZERS = b"fm21.tokenizers"
META_LABELS = b"fm21.labels_fingerprint"
META_LAYOUT = b"fm21.layout"  # crops and split: the rows every column is made for
META_INPUTS = b"fm21.inputs"  # {modality: fingerprint of what its column is computed from}


def modality_field(spec: ModalitySpec) -> pa.Field:
    if spec.kind == "pixels":
        size = spec.resolution * spec.resolution * 3
        return pa.field(spec.name, pa.list_(pa.uint8(), size), metadata={"shape": json.dumps([spec.resolution, spec.resolution, 3])})
    if spec.is_image_like:
        return pa.field(spec.name, pa.list_(pa.int16(), spec.num_tokens), metadata={"shape": json.dumps([spec.num_tokens])})
    if spec.kind == "embedding":
        return pa.field(spec.name, pa.list_(pa.list_(pa.float16(), spec.embedding_dim)))
    return pa.field(spec.name, pa.list_(pa.int32()))


def tokens_schema(specs: dict[str, ModalitySpec], *, tokenizers: dict[str, str], labels_fp: str,
                  layout: dict[str, Any] | None = None, inputs: dict[str, str] | None = None) -> pa.Schema:
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("crop", pa.int16(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
    fields += [modality_field(s) for s in specs.values()]
    return pa.schema(fields, metadata={
        META_SPECS: json.dumps({n: dataclasses.asdict(s) for n, s in specs.items()}).encode(),
        META_TOKENIZERS: json.dumps(tokenizers).encode(),
        META_LABELS: labels_fp.encode(),
        META_LAYOUT: json.dumps(layout or {}, sort_keys=True).encode(),
        META_INPUTS: json.dumps(inputs or {}).encode(),
    })


def schema_metadata(specs: dict[str, ModalitySpec], *, tokenizers: dict[str, str], labels_fp: str,
                    layout: dict[str, Any], inputs: dict[str, str]) -> dict[str, str]:
    """The schema metadata of a store holding exactly ``specs`` (for a column add/drop)."""
    schema = tokens_schema(specs, tokenizers=tokenizers, labels_fp=labels_fp, layout=layout, inputs=inputs)
    return {k.decode(): v.decode() for k, v in schema.metadata.items()}


def read_store_metadata(uri: Path) -> dict[str, Any]:
    import lance

    return read_schema_metadata(lance.dataset(str(uri)).schema)


def check_compatible(uri: Path, specs: dict[str, ModalitySpec], tokenizers: dict[str, str] | None = None) -> None:
    """Refuse a store whose specs (or tokenizer fingerprints) differ from the run's."""
    meta = read_store_metadata(uri)
    for name, spec in specs.items():
        stored = meta["specs"].get(name)
        if stored is None:
            raise ValueError(f"{uri} has no modality {name!r} (has: {sorted(meta['specs'])})")
        expected = json.loads(json.dumps(dataclasses.asdict(spec)))
        if stored != expected:
            raise ValueError(f"{uri}: modality {name!r} was tokenized with another spec: {stored} != {expected}")
    for name, fp in (tokenizers or {}).items():
        if meta["tokenizers"].get(name) != fp:
            raise ValueError(f"{uri}: tokenizer {name!r} fingerprint {meta['tokenizers'].get(name)} != {fp}; re-run `make tokens`")


def read_schema_metadata(schema: pa.Schema) -> dict[str, Any]:
    meta = schema.metadata or {}
    return {
        "specs": json.loads(meta.get(META_SPECS, b"{}")),
        "tokenizers": json.loads(meta.get(META_TOKENIZERS, b"{}")),
        "labels_fingerprint": meta.get(META_LABELS, b"").decode(),
        "layout": json.loads(meta.get(META_LAYOUT, b"{}")),
        "inputs": json.loads(meta.get(META_INPUTS, b"{}")),
    }
