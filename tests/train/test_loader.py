"""read_split picks the first rows of a split in key order without loading the split."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa

from fm21.train.loader import read_split


def _write_store(uri: str, n: int) -> None:
    rng = np.random.default_rng(0)
    keys = [f"k{i:05d}" for i in rng.permutation(n)]  # rows stored out of key order
    split = ["val" if i % 3 == 0 else "train" for i in range(n)]
    for start in range(0, n, 50):  # several fragments
        part = slice(start, start + 50)
        table = pa.table({
            "key": keys[part] * 2,
            "crop": [0] * len(keys[part]) + [1] * len(keys[part]),
            "split": split[part] * 2,
        })
        lance.write_dataset(table, uri, mode="append" if start else "create")


def test_read_split_first_keys_of_split_crop0(tmp_path):
    uri = str(tmp_path / "tokens.lance")
    _write_store(uri, 400)
    table = lance.dataset(uri).to_table(filter="split = 'val' AND crop = 0")
    expected = sorted(table.column("key").to_pylist())[:17]
    rows = read_split(uri, {}, split="val", limit=17)
    assert [r["key"] for r in rows] == expected
    assert {int(r["crop"]) for r in rows} == {0}
    assert len(read_split(uri, {}, split="val", limit=10_000)) == table.num_rows
    assert read_split(uri, {}, split="test", limit=5) == []
