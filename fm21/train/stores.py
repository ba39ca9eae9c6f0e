"""One token store read as a positioned stream: row ``i`` of stream ``s`` is found without
reading rows ``0..i-1``, and only the rows asked for are read (their modality columns).

The stream order (``StoreStream``): every epoch the store's fragments are shuffled by
``(seed, epoch)``; stream ``s`` of ``num_streams`` reads fragments ``s, s + num_streams, ...``
of that order (a store with fewer fragments than streams is read whole by each). A
stream's fragments are grouped into windows of at least ``shuffle_buffer`` rows, and each
window's rows are permuted by ``(seed, epoch, stream, window)``. Each key contributes one
stored crop per epoch (:func:`crop_choice`).

Seeking to a position reads the row counts of the windows it skips (the ``split`` and
``crop`` columns); entering a window reads its ``key`` and ``crop`` columns; a row handed
out is then read with ``take`` by its offset in the fragment, projected on the columns
asked for. So a reader that wants a quarter of each batch (one rank of four) reads a
quarter of the payload.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fm21.modalities import ModalitySpec


def crop_choice(key: str, *, seed: int, epoch: int, num_crops: int) -> int:
    """The stored crop of ``key`` used in ``epoch``: uniform, independent across epochs and
    keys, and the same in every process (a keyed hash, not Python's salted ``hash``)."""
    if num_crops <= 1:
        return 0
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_crops


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


def store_modalities(uri: str, specs: dict[str, ModalitySpec], *, schema=None) -> list[str]:
    """The modalities of ``specs`` that the store at ``uri`` holds, in ``specs`` order. A
    modality it holds under another spec (other resolution, vocabulary, ...) is an error;
    one it lacks is simply absent from its samples (a text-only store has no rgb)."""
    import dataclasses
    import json

    from fm21.store.tokens import read_schema_metadata

    if schema is None:
        import lance

        schema = lance.dataset(uri).schema
    stored = read_schema_metadata(schema)["specs"]
    present = [n for n in specs if n in stored and n in schema.names]
    for name in present:
        expected = json.loads(json.dumps(dataclasses.asdict(specs[name])))
        if stored[name] != expected:
            raise ValueError(f"{uri}: modality {name!r} was tokenized with another spec: {stored[name]} != {expected}")
    return present


@dataclass
class _Window:
    fragments: list
    start: int  # stream position of its first row
    size: int  # rows in the split, one crop per key
    epoch: int
    index: int  # within the epoch
    rows: list[tuple[Any, int]] | None = field(default=None)  # (fragment, offset), permuted; read lazily


class StoreStream:
    """Stream ``stream`` of ``num_streams`` over one split of one token store.

    ``salt`` separates the streams of several stores mixed in one run (``()`` for the run's
    first store, whose order is then that of a single-store run). Lance is opened here:
    build it inside the DataLoader worker (Lance is not fork-safe).
    """

    def __init__(self, uri: str, columns: Sequence[str], *, split: str, shuffle_buffer: int, seed: int,
                 stream: int, num_streams: int, num_crops: int | None = None, salt: tuple[int, ...] = (),
                 wanted: Callable[[int], bool] | None = None, readahead: int = 0) -> None:
        import lance

        from fm21.store.tokens import read_schema_metadata

        ds = lance.dataset(uri)
        self.uri, self.columns, self.split = uri, list(columns), split
        self.shuffle_buffer, self.seed, self.salt = shuffle_buffer, seed, tuple(salt)
        self.stream, self.num_streams = stream, num_streams
        self.num_crops = num_crops or int(read_schema_metadata(ds.schema)["layout"].get("num_crops", 1))
        self.fragments = sorted(ds.get_fragments(), key=lambda f: f.fragment_id)
        self._counts: dict[int, int] = {}  # fragment id -> keys in the split (the store only grows)
        # Read-ahead: on a miss at position p, the rows of the positions in [p, p + readahead)
        # of the same window that ``wanted`` says this reader will ask for are read too,
        # with one ``take`` per fragment (Lance calls cost more than the rows they read).
        self.wanted, self.readahead = wanted, readahead
        self._cache: dict[int, dict[str, Any]] = {}  # position -> row read ahead
        self._epoch_windows: list[_Window] = []
        self._next_epoch = 0
        self._current: _Window | None = None
        self.rows_read = 0  # payload rows taken (for tests and benchmarks)

    # ------------------------------------------------------------------ positions
    def rows_at(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """The rows at increasing stream ``positions`` (never before an earlier call's)."""
        for pos in positions:
            if pos in self._cache:
                continue
            window = self._window_at(pos)  # reads go window by window, in order
            end = window.start + window.size
            batch = {q for q in positions if pos <= q < end and q not in self._cache}
            if self.wanted is not None:
                batch.update(q for q in range(pos + 1, min(end, pos + self.readahead))
                             if q not in self._cache and self.wanted(q))
            self._cache.update(self._read(sorted(batch)))
        return [self._cache.pop(p) for p in positions]

    def _read(self, positions: list[int]) -> dict[int, dict[str, Any]]:
        """Rows at increasing ``positions``: one ``take`` per fragment, projected on ``columns``."""
        wanted: dict[int, tuple[Any, list[tuple[int, int]]]] = {}  # fragment id -> (fragment, [(pos, offset)])
        for pos in positions:
            window = self._window_at(pos)
            frag, offset = self._rows(window)[pos - window.start]
            wanted.setdefault(frag.fragment_id, (frag, []))[1].append((pos, offset))
        out: dict[int, dict[str, Any]] = {}
        for frag, items in wanted.values():
            offsets = sorted({o for _, o in items})
            rows = dict(zip(offsets, table_rows(frag.take(offsets, columns=self.columns))))
            self.rows_read += len(offsets)
            for pos, offset in items:
                out[pos] = rows[offset]
        return out

    def _window_at(self, pos: int) -> _Window:
        if self._current is not None and pos < self._current.start:
            raise ValueError(f"stream position {pos} is behind the current window (at {self._current.start})")
        while self._current is None or pos >= self._current.start + self._current.size:
            if not self._epoch_windows:
                self._epoch_windows = self._windows(self._next_epoch,
                                                    self._current.start + self._current.size if self._current else 0)
                self._next_epoch += 1
            self._current = self._epoch_windows.pop(0)
        return self._current

    def _windows(self, epoch: int, start: int) -> list[_Window]:
        """The windows of one epoch of this stream, with their sizes and start positions."""
        order = np.random.default_rng([*self.salt, self.seed, epoch]).permutation(len(self.fragments))
        mine = [self.fragments[i] for i in order]
        mine = mine if len(mine) < self.num_streams else mine[self.stream::self.num_streams]
        windows: list[_Window] = []
        current: list = []
        size = 0
        for frag in mine:
            current.append(frag)
            size += self._count(frag)
            if size >= self.shuffle_buffer:
                windows.append(_Window(current, start, size, epoch, len(windows)))
                start, current, size = start + size, [], 0
        if current:
            windows.append(_Window(current, start, size, epoch, len(windows)))
        if not any(w.size for w in windows):
            raise ValueError(f"{self.uri} has no rows in split {self.split!r} for stream {self.stream} "
                             f"of {self.num_streams}")
        return windows

    def _count(self, frag) -> int:
        if frag.fragment_id not in self._counts:
            # Not frag.count_rows(filter): it holds the GIL through its I/O, which deadlocks
            # against an S3 endpoint served from this process (moto in the tests).
            where = f"split = '{self.split}' AND crop = 0"
            self._counts[frag.fragment_id] = frag.to_table(columns=["crop"], filter=where).num_rows
        return self._counts[frag.fragment_id]

    def _rows(self, window: _Window) -> list[tuple[Any, int]]:
        """A window's rows in stream order, one crop per key: its key and crop columns are
        read (not the payload) and permuted."""
        if window.rows is None:
            rows: list[tuple[Any, int]] = []
            for frag in window.fragments:
                index = frag.to_table(columns=["key", "crop"], filter=f"split = '{self.split}'",
                                      with_row_address=True)
                keys, crops = index.column("key").to_pylist(), index.column("crop").to_pylist()
                addresses = index.column("_rowaddr").to_numpy()
                rows += [(frag, int(a) & 0xFFFFFFFF) for k, c, a in zip(keys, crops, addresses)
                         if c == crop_choice(k, seed=self.seed, epoch=window.epoch, num_crops=self.num_crops)]
            perm = np.random.default_rng([*self.salt, self.seed, window.epoch, self.stream, window.index])
            window.rows = [rows[i] for i in perm.permutation(len(rows))]
        return window.rows
