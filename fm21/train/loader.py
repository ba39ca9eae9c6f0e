"""Lance token stores -> masked, batched ``mod_dict``s.

Each rank (and each of its DataLoader workers) reads only the rows of the samples it
trains on, from one or more token stores mixed by weight (``fm21.train.stores`` reads a
store as a positioned stream); rows become per-sample dicts (the masking contract, with
the reference's per-load transforms: metadata chunk order, palette size), are masked by
``UnifiedMasking`` and collated. The global batch of each training step is a pure
function of the seed and the step, whatever the number of ranks, so a resumed run sees
the batches of an uninterrupted one (``LanceTokenDataset``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fm21.modalities import ModalitySpec
from fm21.tokenize.serialize import split_palettes
from fm21.train.stores import StoreStream, crop_choice, store_modalities, table_rows

__all__ = ["LanceTokenDataset", "MASK_CHUNK", "crop_choice", "make_loader", "read_split", "row_to_sample",
           "table_rows"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
# Sequences masked in chunks of ids rather than id by id, by label kind: each metadata
# field serialises to `v1=<id> v0=<value>`, two ids masked together (apple/ml-4m
# `fourm/data/masking.py`, chunked span masking of metadata).
MASK_CHUNK = {"metadata": 2}


def row_to_sample(row: dict[str, Any], specs: dict[str, ModalitySpec],
                  rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One token-store row -> the per-modality sample the masking expects.

    Missing values (null, or a column the store lacks) are left out: masking treats them
    as fully masked. With ``rng`` (training and validation), the reference's per-load
    transforms (apple/ml-4m `fourm/data/modality_transforms.py`): metadata chunks in a
    random order (MetadataTransform, ``shuffle=True``) and a palette of ``k`` colours with
    ``k`` uniform in 1..7 (ColorPaletteTransform). Without it (evaluation): metadata in id
    order and the largest stored palette.
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
            chunks = [ids[i:i + size] for i in range(0, len(ids), size)]
            sample[name] = chunks if rng is None else [chunks[i] for i in rng.permutation(len(chunks))]
        elif spec.label_kind == "palette":
            palettes = split_palettes(list(value))  # k = 1..n, or the one palette of an older store
            k = len(palettes) if rng is None else int(rng.integers(1, len(palettes) + 1))
            sample[name] = palettes[k - 1]
        else:
            sample[name] = list(value)
    return sample


class LanceTokenDataset(IterableDataset):
    """Endless stream of masked, collated batches from one split of one or more token stores.

    The global batch of training step ``s`` is a pure function of ``(seed, s)`` and the
    reader layout (:meth:`layout`), not of the number of ranks: resuming at step ``s`` needs
    no saved loader state, only the step, and W ranks together train on the samples one
    process would. Each rank yields only its part of it (``batch_size / world_size`` samples)
    and reads only those rows (``fm21.train.stores``).

    - *Streams.* Each store is read as ``num_streams`` streams (one per DataLoader worker);
      step ``s`` takes stream positions ``[(s // N) * B, (s // N + 1) * B)`` of stream
      ``s % N`` (``N = num_streams``, ``B = batch_size``). The DataLoader hands its i-th
      batch to worker ``i % num_workers``, so worker ``w`` serves stream
      ``(start_step + w) % N`` for the whole run, whatever step it resumes at.
    - *Ranks.* Rank ``r`` of ``W`` takes batch positions ``[r * B / W, (r + 1) * B / W)``.
    - *Samples.* The stores of step ``s``'s samples are drawn together from
      ``default_rng([seed, s])`` (weights of ``stores``); everything else the sample at batch
      position ``p`` draws comes from its own ``default_rng([seed, s, p])``: at load the
      metadata chunk order and the palette size (:func:`row_to_sample`), then its masks.
    - *Read-ahead.* A reader entering rows it lacks also reads the rows this rank will
      need in the next ``readahead_steps`` steps of the same shuffle window, one ``take``
      per fragment for them all.
    - *Stores.* Every store's stream advances by ``B`` positions a step; a position's row
      is read only from the store drawn for it. A store of weight ``w`` thus gives each
      step ``~w * B`` samples and sees each of its rows ``w`` times an epoch on average.
      With one store (the default) every row is seen once an epoch.

    Only ``key``, ``crop`` and the modalities in ``specs`` a store holds are read; a
    modality a store lacks is absent from its samples (fully masked: never an input or a
    target). Assumes rows are never deleted (tokens.lance only grows) and every key has
    rows for crops ``0..num_crops-1`` in one fragment (the tokens job writes them together).
    """

    def __init__(
        self,
        uri: Path | str | Sequence[tuple[Path | str, float]],
        specs: dict[str, ModalitySpec],
        masking: Callable[[dict, np.random.Generator], dict] | None,
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
        readahead_steps: int = 8,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} ranks")
        stores = [(uri, 1.0)] if isinstance(uri, (str, Path)) else list(uri)
        self.stores = [(str(u), float(w)) for u, w in stores]
        if not self.stores or any(w <= 0 for _, w in self.stores):
            raise ValueError(f"token stores need positive weights: {self.stores}")
        self.uri = self.stores[0][0]
        self.specs, self.masking = specs, masking
        self.batch_size, self.split, self.shuffle_buffer, self.seed = batch_size, split, shuffle_buffer, seed
        self.rank, self.world_size, self.num_streams, self.start_step = rank, world_size, num_streams, start_step
        self.num_crops = num_crops  # None: each store's layout metadata (1 if it has none)
        self.collate = collate
        self.readahead_steps = readahead_steps  # steps of this rank's rows read at once (memory: their rows)
        self.columns = ["key", "crop", *specs]
        weights = np.array([w for _, w in self.stores])
        self._cumulative = np.cumsum(weights) / weights.sum()
        self._choices: dict[int, np.ndarray] = {}  # step -> stores of its samples

    def layout(self) -> dict[str, Any]:
        """What, besides the step, decides the batch stream: a resume with another layout
        still works but sees other batches than the interrupted run would have. The number
        of ranks is not part of it."""
        return {"seed": self.seed, "batch_size": self.batch_size, "split": self.split,
                "shuffle_buffer": self.shuffle_buffer, "num_streams": self.num_streams,
                "stores": [list(s) for s in self.stores], "sample_rng": "seed/step/position"}

    def stores_of(self, step: int) -> np.ndarray:
        """The store of each of the ``batch_size`` samples of ``step``: all drawn at once from
        ``default_rng([seed, step])``, so any rank (or a read-ahead) finds them cheaply."""
        if len(self.stores) == 1:
            return np.zeros(self.batch_size, np.int64)
        cached = self._choices.get(step)
        if cached is None:
            if len(self._choices) > 256:
                self._choices.clear()
            u = np.random.default_rng([self.seed, step]).random(self.batch_size)
            cached = self._choices[step] = np.minimum(np.searchsorted(self._cumulative, u, side="right"),
                                                      len(self.stores) - 1)
        return cached

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if num_workers != self.num_streams:
            raise ValueError(f"{num_workers} loader workers read a dataset of {self.num_streams} streams")
        from fm21.train.masking import collate_mod_dicts

        collate = self.collate or collate_mod_dicts
        step = self.start_step + worker
        readers = self.open_streams(step % self.num_streams)
        mine = self._mine()
        while True:
            base = (step // self.num_streams) * self.batch_size
            store = self.stores_of(step)
            rows: dict[int, dict[str, Any]] = {}
            for j, reader in enumerate(readers):
                chosen = [p for p in mine if store[p] == j]
                rows.update(zip(chosen, reader.rows_at([base + p for p in chosen])))
            # everything else a sample draws (load transforms, masks) comes from its own rng
            yield collate([self._sample(rows[p], np.random.default_rng([self.seed, step, p])) for p in mine])
            step += self.num_streams

    def _mine(self) -> range:
        """This rank's positions in every global batch."""
        per_rank = self.batch_size // self.world_size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def _wanted(self, stream: int, store: int):
        """Whether this rank will read stream position ``q`` of ``store`` (for read-ahead)."""
        mine, size, streams = self._mine(), self.batch_size, self.num_streams

        def wanted(q: int) -> bool:
            p = q % size
            return p in mine and int(self.stores_of((q // size) * streams + stream)[p]) == store
        return wanted

    def open_streams(self, stream: int) -> list[StoreStream]:
        """One reader per store for ``stream``, projected on the modalities it holds."""
        import lance

        readers = []
        for j, (uri, _) in enumerate(self.stores):
            ds = lance.dataset(uri)  # opened here, in the worker process
            present = store_modalities(uri, self.specs, schema=ds.schema)
            readers.append(StoreStream(uri, ["key", "crop", *present], split=self.split,
                                       shuffle_buffer=self.shuffle_buffer, seed=self.seed, stream=stream,
                                       num_streams=self.num_streams, num_crops=self.num_crops,
                                       salt=() if j == 0 else (j,), wanted=self._wanted(stream, j),
                                       readahead=self.readahead_steps * self.batch_size))
        return readers

    def _sample(self, row: dict[str, Any], rng: np.random.Generator) -> Any:
        return self.masking(row_to_sample(row, self.specs, rng), rng)


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
