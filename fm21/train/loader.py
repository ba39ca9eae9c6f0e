"""Lance token store -> masked, batched ``mod_dict``s.

Rows are streamed fragment by fragment (shuffled per epoch, split across DataLoader
workers and, under Ray Train, across ranks), permuted within shuffle windows, turned into
per-sample dicts (the masking contract), masked by ``UnifiedMasking`` and collated. The
batch of each training step is a pure function of the seed and the step, so a resumed
run sees the batches of an uninterrupted one (``LanceTokenDataset``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fm21.modalities import ModalitySpec
from fm21.store.tokens import read_schema_metadata

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
# Sequences masked in chunks of ids rather than id by id, by label kind: each metadata
# field serialises to `v1=<id> v0=<value>`, two ids masked together (apple/ml-4m
# `fourm/data/masking.py`, chunked span masking of metadata).
MASK_CHUNK = {"metadata": 2}


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
        elif spec.label_kind in MASK_CHUNK:
            ids, size = list(value), MASK_CHUNK[spec.label_kind]
            sample[name] = [ids[i:i + size] for i in range(0, len(ids), size)]
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
    """Endless stream of masked, collated batches from one split of tokens.lance.

    The batch of training step ``s`` is a pure function of ``(seed, rank, s)`` and the
    reader layout (:meth:`layout`): resuming at step ``s`` needs no saved loader state, only
    the step, and gives the batches an uninterrupted run would have seen.

    - *Streams.* Each rank reads ``num_streams`` streams (one per DataLoader worker); step
      ``s`` takes the next ``batch_size`` rows of stream ``s % num_streams``. The DataLoader
      hands its i-th batch to worker ``i % num_workers``, so worker ``w`` serves stream
      ``(start_step + w) % num_streams`` for the whole run, whatever step it resumes at.
    - *Epochs.* Every epoch the fragments are shuffled by ``(seed, epoch)``; stream ``g`` of
      ``G = world_size * num_streams`` reads fragments ``g, g + G, ...`` of that order, so
      readers share no fragment (a store with fewer fragments than readers is read whole
      by each). Each key contributes one stored crop per epoch, chosen by a hash of
      ``(seed, epoch, key)``: a sample is seen once per epoch, in a different crop.
    - *Shuffle windows.* A stream's fragments are grouped into windows of at least
      ``shuffle_buffer`` rows, and each window's rows are permuted by
      ``(seed, epoch, stream, window)``. Seeking to a position reads only the row counts
      of the windows it skips (the split and crop columns).
    - *Masking.* Step ``s``'s samples are masked with ``default_rng([seed, rank, s])``.

    Lance is opened inside ``__iter__``, i.e. in the worker (Lance is not fork-safe; the
    loader starts workers with ``spawn``). Only ``key``, ``crop`` and the modalities in
    ``specs`` are read. Assumes rows are never deleted (tokens.lance only grows) and
    every key has rows for crops ``0..num_crops-1`` in one fragment (the tokens job
    writes a key's crops together).
    """

    def __init__(
        self,
        uri: Path | str,
        specs: dict[str, ModalitySpec],
        masking: Callable[[dict, np.random.Generator], dict],
        *,
        batch_size: int,
        split: str = "train",
        shuffle_buffer: int = 1024,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_streams: int = 1,
        start_step: int = 0,
        num_crops: int | None = None,
        collate: Callable[[list], Any] | None = None,
    ) -> None:
        self.uri, self.specs, self.masking = str(uri), specs, masking
        self.batch_size, self.split, self.shuffle_buffer, self.seed = batch_size, split, shuffle_buffer, seed
        self.rank, self.world_size, self.num_streams, self.start_step = rank, world_size, num_streams, start_step
        self.num_crops = num_crops  # None: the store's layout metadata (1 if it has none)
        self.collate = collate
        self.columns = ["key", "crop", *specs]
        self._counts: dict[int, int] = {}  # fragment id -> keys in the split (fixed: the store only grows)

    def layout(self) -> dict[str, Any]:
        """What, besides the step, decides the batch stream: a resume with another layout
        still works but sees other batches than the interrupted run would have."""
        return {"seed": self.seed, "batch_size": self.batch_size, "split": self.split,
                "shuffle_buffer": self.shuffle_buffer, "world_size": self.world_size,
                "num_streams": self.num_streams}

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if num_workers != self.num_streams:
            raise ValueError(f"{num_workers} loader workers read a dataset of {self.num_streams} streams")
        from fm21.train.masking import collate_mod_dicts

        collate = self.collate or collate_mod_dicts
        step = self.start_step + worker
        stream = step % self.num_streams
        rows = self._stream(stream, skip=(step // self.num_streams) * self.batch_size)
        while True:
            batch = [next(rows) for _ in range(self.batch_size)]
            rng = np.random.default_rng([self.seed, self.rank, step])
            yield collate([self._sample(row, rng) for row in batch])
            step += self.num_streams

    def _sample(self, row: dict[str, Any], rng: np.random.Generator) -> Any:
        return self.masking(row_to_sample(row, self.specs), rng)

    def _stream(self, stream: int, *, skip: int) -> Iterator[dict[str, Any]]:
        """Rows of one stream, from position ``skip`` on (positions count from the run's start)."""
        import lance

        ds = lance.dataset(self.uri)  # opened here, in the worker process
        num_crops = self.num_crops or int(read_schema_metadata(ds.schema)["layout"].get("num_crops", 1))
        fragments = sorted(ds.get_fragments(), key=lambda f: f.fragment_id)
        reader, readers = self.rank * self.num_streams + stream, self.world_size * self.num_streams
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(fragments))
            mine = [fragments[i] for i in order]
            mine = mine if len(mine) < readers else mine[reader::readers]
            windows = self._windows(mine)
            if not any(n for _, n in windows):
                raise ValueError(f"{self.uri} has no rows in split {self.split!r} for reader {reader} of {readers}")
            for index, (window, size) in enumerate(windows):
                if skip >= size:
                    skip -= size
                    continue
                rows = self._read(window, epoch=epoch, num_crops=num_crops)
                perm = np.random.default_rng([self.seed, epoch, reader, index]).permutation(len(rows))
                for i in perm[skip:]:
                    yield rows[i]
                skip = 0
            epoch += 1

    def _windows(self, fragments: list) -> list[tuple[list, int]]:
        """Consecutive fragments grouped into windows of >= shuffle_buffer rows, with sizes."""
        windows: list[tuple[list, int]] = []
        current: list = []
        size = 0
        for frag in fragments:
            if frag.fragment_id not in self._counts:
                # Not frag.count_rows(filter): it holds the GIL through its I/O, which deadlocks
                # against an S3 endpoint served from this process (moto in the tests).
                where = f"split = '{self.split}' AND crop = 0"
                self._counts[frag.fragment_id] = frag.to_table(columns=["crop"], filter=where).num_rows
            current.append(frag)
            size += self._counts[frag.fragment_id]
            if size >= self.shuffle_buffer:
                windows.append((current, size))
                current, size = [], 0
        if current:
            windows.append((current, size))
        return windows

    def _read(self, window: list, *, epoch: int, num_crops: int) -> list[dict[str, Any]]:
        """The rows of a window, one crop per key: key and crop are read first, then only
        the chosen rows' modality columns (``take`` by offset in the fragment)."""
        rows: list[dict[str, Any]] = []
        for frag in window:
            index = frag.to_table(columns=["key", "crop"], filter=f"split = '{self.split}'", with_row_address=True)
            keys, crops = index.column("key").to_pylist(), index.column("crop").to_pylist()
            addresses = index.column("_rowaddr").to_numpy()
            chosen = [int(a) & 0xFFFFFFFF for k, c, a in zip(keys, crops, addresses)
                      if c == crop_choice(k, seed=self.seed, epoch=epoch, num_crops=num_crops)]
            rows += table_rows(frag.take(chosen, columns=self.columns))
        return rows


def crop_choice(key: str, *, seed: int, epoch: int, num_crops: int) -> int:
    """The stored crop of ``key`` used in ``epoch``: uniform, independent across epochs and
    keys, and the same in every process (a keyed hash, not Python's salted ``hash``)."""
    if num_crops <= 1:
        return 0
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_crops


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


def make_loader(dataset: LanceTokenDataset, *, num_workers: int = 0, prefetch_factor: int = 2):
    """A DataLoader over the dataset's batches (it batches itself). Workers are started with
    ``spawn``: a forked worker would inherit any Lance dataset the parent has open, and
    Lance (its Tokio runtime and file handles) is not fork-safe. Each worker prefetches
    ``prefetch_factor`` batches; with ``num_workers=0`` the batches are made in the caller."""
    if max(1, num_workers) != dataset.num_streams:
        raise ValueError(f"num_workers={num_workers} needs a dataset of {max(1, num_workers)} streams, "
                         f"not {dataset.num_streams}")
    extra = {"multiprocessing_context": "spawn", "prefetch_factor": prefetch_factor} if num_workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, **extra)
