"""A tokens.lance of random rows in the store's schema, for loader and resume tests."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

from fm21.modalities import ModalitySpec, resolve_specs
from fm21.store.tokens import tokens_schema


def store_specs() -> dict[str, ModalitySpec]:
    """16 px in 8 px patches (4 tokens a grid), 16 codes, a 300-id text vocab."""
    return resolve_specs(["rgb", "tok_depth", "caption"], resolution=16, patch_size=8,
                         image_vocab_size=16, text_vocab_size=300, max_seq_len=8)


def _column(spec: ModalitySpec, n: int, rng: np.random.Generator) -> list:
    if spec.kind == "pixels":
        return [rng.integers(0, 256, spec.resolution * spec.resolution * 3, dtype=np.uint8) for _ in range(n)]
    if spec.is_image_like:
        return [rng.integers(0, spec.vocab_size, spec.num_tokens).astype(np.int16) for _ in range(n)]
    return [rng.integers(204, spec.vocab_size, int(rng.integers(2, 8))).astype(np.int32) for _ in range(n)]


def write_store(uri: Path, specs: dict[str, ModalitySpec], *, num_keys: int, keys_per_fragment: int,
                num_crops: int = 1, val_every: int = 0, seed: int = 0, prefix: str = "k") -> None:
    """``num_keys`` keys ``<prefix>00000``.. (every ``val_every``-th in the val split), each
    with ``num_crops`` rows written together, ``keys_per_fragment`` keys per fragment."""
    rng = np.random.default_rng(seed)
    schema = tokens_schema(specs, tokenizers={}, labels_fp="test", layout={"num_crops": num_crops})
    for first in range(0, num_keys, keys_per_fragment):
        keys = [f"{prefix}{i:05d}" for i in range(first, min(num_keys, first + keys_per_fragment))]
        rows = {"key": [k for k in keys for _ in range(num_crops)],
                "crop": [c for _ in keys for c in range(num_crops)],
                "split": ["val" if val_every and int(k[len(prefix):]) % val_every == 0 else "train"
                          for k in keys for _ in range(num_crops)]}
        for name, spec in specs.items():
            rows[name] = _column(spec, len(rows["key"]), rng)
        lance.write_dataset(pa.table(rows, schema=schema), str(uri), mode="append" if first else "create")
