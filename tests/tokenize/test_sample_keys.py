"""The tokenizer-training sample: a seeded hash sample of labels.lance keys, streamed."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa

from fm21.tokenize.stage import sample_keys, sampled_rows


def _store(uri: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 40):  # several fragments
        part = keys[start:start + 40]
        table = pa.table({"key": part, "caption": [f"text {k}" if i % 2 else None for i, k in enumerate(part)]})
        lance.write_dataset(table, uri, mode="append" if start else "create")


def test_sample_is_exact_size_order_free_and_seeded(tmp_path):
    keys = [f"k{i:04d}" for i in range(300)]
    a, b = str(tmp_path / "a.lance"), str(tmp_path / "b.lance")
    _store(a, keys)
    _store(b, list(np.random.default_rng(0).permutation(keys)))  # same keys, other row order
    sample = sample_keys(a, 50, seed=0)
    assert len(sample) == 50 == len(set(sample)) and sample == sorted(sample)
    assert sample == sample_keys(b, 50, seed=0)
    assert sample != sample_keys(a, 50, seed=1)
    assert sample_keys(a, 1000, seed=0) == sorted(keys)  # fewer rows than asked: all of them
    stored = sample_keys(a, 20, seed=0, where="caption IS NOT NULL")
    assert len(stored) == 20
    rows = sampled_rows(a, ["caption"], stored)
    assert sorted(r["key"] for r in rows) == stored and all(r["caption"] for r in rows)
