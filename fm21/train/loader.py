"""Lance token store -> masked, batched ``mod_dict``s.

Rows are streamed fragment by fragment (shuffled per epoch, split across DataLoader
workers and, under Ray Train, across ranks), mixed in a shuffle buffer, turned into
per-sample dicts (the masking contract), masked by ``UnifiedMasking`` and collated.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fm21.modalities import ModalitySpec

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
METADATA_CHUNK = 2  # each metadata field serialises to `v1=<id> v0=<value>`: two ids


def row_to_sample(row: dict[str, Any], specs: dict[str, ModalitySpec]) -> dict[str, Any]:
    """One token-store row -> the per-modality sample the masking expects.

    Missing values (null) are left out: masking treats them as fully masked.
    """
    sample: dict[str, Any] = {}
    for name, spec in specs.items():
        value = row.get(name)
        if value is None:
            continue
        if spec.kind == "pixels":
            r = spec.resolution
            img = np.asarray(value, dtype=np.uint8).reshape(r, r, 3).transpose(2, 0, 1)  # (3, R, R)
            # 4M feeds RGB pixels with ImageNet statistics (tokenizers use 0.5/0.5 instead).
            sample[name] = ((img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
        elif spec.is_image_like:
            sample[name] = np.asarray(value, dtype=np.int64)  # (N,)
        elif name == "metadata":
            ids = list(value)
            sample[name] = [ids[i:i + METADATA_CHUNK] for i in range(0, len(ids), METADATA_CHUNK)]
        else:
            sample[name] = list(value)
    return sample


def table_rows(table) -> Iterator[dict[str, Any]]:
    """Arrow table -> row dicts; fixed-size columns become numpy rows (no Python lists)."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type) and col.null_count == 0:
            columns[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
        else:
            columns[name] = col.to_pylist()
    for i in range(table.num_rows):
        yield {name: values[i] for name, values in columns.items()}


class LanceTokenDataset(IterableDataset):
    """Endless stream of masked samples from one split of tokens.lance."""

    def __init__(
        self,
        uri: Path,
        specs: dict[str, ModalitySpec],
        masking,
        *,
        split: str = "train",
        shuffle_buffer: int = 1024,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.uri, self.specs, self.masking = str(uri), specs, masking
        self.split, self.shuffle_buffer, self.seed = split, shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size

    def _fragments(self, epoch: int) -> list:
        import lance

        frags = list(lance.dataset(self.uri).get_fragments())
        random.Random(self.seed + epoch).shuffle(frags)
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shards = self.world_size * num_workers
        part = self.rank * num_workers + worker
        # With fewer fragments than readers, every reader reads all of them (tiny stores).
        return frags if len(frags) < shards else frags[part::shards]

    def _rows(self) -> Iterator[dict[str, Any]]:
        columns = ["key", "crop", *self.specs]
        epoch = 0
        while True:
            any_rows = False
            for frag in self._fragments(epoch):
                table = frag.to_table(columns=columns, filter=f"split = '{self.split}'")
                for row in table_rows(table):
                    any_rows = True
                    yield row
            if not any_rows:
                raise ValueError(f"{self.uri} has no rows in split {self.split!r}")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, self.rank, info.id if info else 0])
        buffer: list[dict[str, Any]] = []
        for row in self._rows():
            buffer.append(row)
            if len(buffer) < self.shuffle_buffer:
                continue
            yield self._masked(buffer.pop(int(rng.integers(len(buffer)))), rng)

    def _masked(self, row: dict[str, Any], rng: np.random.Generator) -> dict:
        return self.masking(row_to_sample(row, self.specs), rng)


def read_split(uri: Path, specs: dict[str, ModalitySpec], *, split: str, limit: int) -> list[dict]:
    """The first ``limit`` rows of one split (crop 0) in key order: for evaluation and
    validation. Memory is O(limit), not O(split): the keys are streamed in batches through
    a bounded heap, then only the chosen rows are read."""
    import heapq

    import lance

    ds = lance.dataset(str(uri))
    where = f"split = '{split}' AND crop = 0"
    smallest: list[str] = []  # the `limit` smallest keys seen so far, sorted
    for batch in ds.to_batches(columns=["key"], filter=where, batch_size=8192):
        smallest = heapq.nsmallest(limit, [*smallest, *batch.column("key").to_pylist()])
    if not smallest:
        return []
    keys = ", ".join("'" + k.replace("'", "''") + "'" for k in smallest)
    table = ds.to_table(columns=["key", "crop", *specs], filter=f"{where} AND key IN ({keys})")
    return sorted(table_rows(table), key=lambda r: r["key"])


def make_loader(dataset: LanceTokenDataset, *, batch_size: int, num_workers: int = 0):
    from fm21.train.masking import collate_mod_dicts

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_mod_dicts,
        persistent_workers=num_workers > 0,
    )
