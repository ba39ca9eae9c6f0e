"""The token-store readers: read_split (evaluation rows) and the training stream
(resumable at any step, spawn-safe workers on disjoint fragments, one crop per key an epoch)."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import torch
from tiny_store import store_specs, write_store

from fm21.config import MixtureComponent
from fm21.train.loader import LanceTokenDataset, make_loader, read_split
from fm21.train.masking import UnifiedMasking


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


# ------------------------------------------------------------------------------ training stream
class KeyCropDataset(LanceTokenDataset):
    """Batches of "key/crop" strings instead of masked samples (module level: picklable
    into spawned workers)."""

    def _sample(self, row, rng):
        return f"{row['key']}/{int(row['crop'])}"


def test_stream_resumes_at_any_step_and_reads_only_projected_columns(tmp_path):
    specs = store_specs()
    uri = tmp_path / "tokens.lance"
    write_store(uri, specs, num_keys=30, keys_per_fragment=7, num_crops=2, val_every=4)
    used = {"tok_depth": specs["tok_depth"]}  # the store has rgb and caption too
    masking = UnifiedMasking(used, num_input_tokens=2, num_target_tokens=2, mixture=[MixtureComponent()])
    dataset = LanceTokenDataset(uri, used, masking, batch_size=3, shuffle_buffer=8)
    assert dataset.columns == ["key", "crop", "tok_depth"]
    stream = iter(make_loader(dataset))
    batches = [next(stream) for _ in range(12)]  # > 1 epoch: 22 train keys, 36 rows
    for start in (1, 5, 11):  # mid window, mid epoch, the next epoch
        dataset.start_step = start
        resumed = next(iter(make_loader(dataset)))
        expected = batches[start]["tok_depth"]
        assert resumed.keys() == {"tok_depth"}
        assert all(torch.equal(resumed["tok_depth"][k], expected[k]) for k in expected)
    # another seed: another order and other masks
    other = LanceTokenDataset(uri, used, masking, batch_size=3, shuffle_buffer=8, seed=1)
    assert not torch.equal(next(iter(make_loader(other)))["tok_depth"]["tensor"], batches[0]["tok_depth"]["tensor"])


def test_spawned_workers_read_disjoint_fragments_and_every_key_once_per_epoch(tmp_path):
    uri = tmp_path / "tokens.lance"
    write_store(uri, store_specs(), num_keys=40, keys_per_fragment=10, num_crops=3)  # 4 fragments
    dataset = KeyCropDataset(uri, {}, None, batch_size=4, shuffle_buffer=8, num_streams=2, collate=list)
    loader = make_loader(dataset, num_workers=2)
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    stream = iter(loader)
    # each stream reads 2 fragments (20 keys, 5 batches) an epoch; batches alternate streams
    epochs = [[next(stream) for _ in range(10)] for _ in range(2)]
    crops = []
    for epoch in epochs:
        keys = [item.split("/")[0] for batch in epoch for item in batch]
        assert sorted(keys) == [f"k{i:05d}" for i in range(40)]  # every key once
        by_stream = [{item.split("/")[0] for batch in epoch[s::2] for item in batch} for s in (0, 1)]
        fragments = [{int(k[1:]) // 10 for k in keys} for keys in by_stream]
        assert not fragments[0] & fragments[1] and len(fragments[0]) == len(fragments[1]) == 2
        crops.append(dict(item.split("/") for batch in epoch for item in batch))
    assert {c for epoch in crops for c in epoch.values()} == {"0", "1", "2"}  # one stored crop per key
    assert crops[0] != crops[1]  # drawn again every epoch
