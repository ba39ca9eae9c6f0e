"""Ingest inputs: every file of an image folder, every sample of existing webdataset shards.

Both readers yield ``RawInput`` (still-encoded image bytes plus provenance) or ``Rejection``
(an input that failed before decoding: unreadable file, sample without an image, truncated
shard). Decoding and normalisation happen in ``normalize.py``; synthetic scenes are rendered
straight to shard samples in ``shards.py``. Iteration order is sorted, so keys and shard
contents are deterministic.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

# members of an img2dataset sample that can hold the image, in order of preference
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")  # shards in a directory
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class RawInput:
    key: str  # the shard sample key: unique, no dots or slashes
    source: str  # "folder" | "webdataset"
    source_path: str  # folder: path relative to the root; webdataset: "<shard>#<key>"
    data: bytes
    caption: str | None = None
    url: str | None = None
    shard: str | None = None  # webdataset only
    source_key: str | None = None  # webdataset only: the key as found in the shard


@dataclass(frozen=True)
class Rejection:
    source_path: str
    reason: str  # "<category>: <detail>", see normalize.REJECT_CATEGORIES
    shard: str | None = None
    key: str | None = None

    def record(self) -> dict:
        """One line of rejects.jsonl."""
        out: dict = {"source_path": self.source_path, "reason": self.reason, "stage": "ingest"}
        if self.shard is not None:
            out["shard"] = self.shard
            out["key"] = self.key
        return out


# ------------------------------------------------------------------------------ folder
def folder_key(relative_path: str) -> str:
    """Stable key of a folder input: ``img-`` + sha1 of its POSIX path relative to the root."""
    return "img-" + hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:16]


def list_folder(root: Path) -> list[Path]:
    """Every non-directory entry under ``root`` (hidden ones included), sorted; links to
    directories are not followed."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in filenames)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def iter_folder_paths(root: Path, prefix: str = "") -> Iterator[str]:
    """The relative POSIX paths of :func:`list_folder`, in the same order, streamed: one
    directory's entries at a time (memory O(depth x width), not O(files)).

    Sorting a directory's entries by name, with a directory compared as ``name + "/"``, and
    descending depth first gives exactly the sorted order of the relative paths: everything
    under ``d/`` shares that prefix, and no sibling name can fall between ``d/`` and its
    contents. A link to a directory is not followed: it is listed as an input (and then
    rejected as not a regular file) rather than skipped."""
    try:
        entries = list(os.scandir(root / prefix if prefix else root))
    except OSError:
        return
    named = sorted((e.name + ("/" if e.is_dir(follow_symlinks=False) else ""), e) for e in entries)
    del entries
    for name, _entry in named:
        if name.endswith("/"):
            yield from iter_folder_paths(root, prefix + name)
        else:
            yield prefix + name


def folder_input(root: Path, rel: str) -> RawInput | Rejection:
    """One file of the folder, read, or the reason it cannot be."""
    path = root / rel
    try:
        mode = path.stat().st_mode  # follows file symlinks
        if not stat.S_ISREG(mode):
            return Rejection(rel, "unreadable: not a regular file")
        data = path.read_bytes()
    except OSError as err:
        return Rejection(rel, f"unreadable: {err.strerror or err}")
    return RawInput(key=folder_key(rel), source="folder", source_path=rel, data=data)


def iter_folder(root: str | Path) -> Iterator[RawInput | Rejection]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ingest.path {str(root)!r} is not a directory")
    for rel in iter_folder_paths(root):
        yield folder_input(root, rel)


# ------------------------------------------------------------------------------ webdataset
def expand_shard_pattern(pattern: str) -> list[Path]:
    """Shard paths of ``pattern``: a directory (its files ending in ``TAR_SUFFIXES``), a
    glob, or a brace pattern ``/d/{00000..00009}.tar`` (globs inside braces work too).

    Brace-expanded names are returned even when missing (the reader rejects them), so a
    gap in a numbered range is reported instead of skipped. Raises when nothing matches.
    """
    base = Path(pattern).expanduser()
    if base.is_dir():
        paths = sorted(
            p for p in base.iterdir() if p.name.endswith(TAR_SUFFIXES) and p.is_file()
        )
    else:
        paths = []
        for expanded in braceexpand(str(base)):
            if glob.has_magic(expanded):
                paths.extend(sorted(Path(p) for p in glob.glob(expanded)))
            else:
                paths.append(Path(expanded))
    if not paths or not any(p.exists() for p in paths):
        raise FileNotFoundError(f"ingest.path {pattern!r} matches no webdataset shard")
    return paths


def sanitize_key(key: str) -> str:
    """Dots, slashes and anything outside ``[A-Za-z0-9_-]`` become ``_``."""
    return _UNSAFE_KEY_CHARS.sub("_", key) or "_"


class KeyDeduper:
    """Sanitises keys and makes them unique across all shards of one ingest run."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str) -> str:
        base = sanitize_key(key)
        candidate, n = base, 0
        while candidate in self._seen:
            n += 1
            candidate = f"{base}-dup{n}"
        self._seen.add(candidate)
        return candidate


def _split_member(name: str) -> tuple[str | None, str | None]:
    """webdataset's rule: the key is everything before the first dot of the basename."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2).lower()) if match else (None, None)


class _CheckedTarInfo(tarfile.TarInfo):
    """Notes on the archive why the member list ended. ``tarfile`` treats a missing,
    cut-off or garbage header past the first member as a normal end of archive; only a zero
    block (the end-of-archive marker) is one."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except (
            tarfile.EmptyHeaderError,
            tarfile.TruncatedHeaderError,
            tarfile.InvalidHeaderError,
        ) as err:
            tarfile_.fm21_end_error = err  # type: ignore[attr-defined]
            raise


def _iter_tar_groups(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members with the same key, as webdataset groups them. On truncation
    raises ``tarfile.ReadError``/``EOFError``/``OSError`` with ``.pending`` set to the key
    of the group that was being read (``None`` if none)."""
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*", tarinfo=_CheckedTarInfo) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, ext = _split_member(info.name)
                if member_key is None or Path(info.name).name.startswith("."):
                    continue
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                handle = tar.extractfile(info)
                members[ext] = handle.read() if handle is not None else b""
            end_error = getattr(tar, "fm21_end_error", None)
            if end_error is not None:
                raise tarfile.ReadError(f"no end-of-archive marker ({end_error})")
    except (tarfile.TarError, EOFError, OSError) as err:
        err.pending = key  # type: ignore[attr-defined]
        raise
    if key is not None:
        yield key, members


def _sample_text(members: dict[str, bytes]) -> tuple[str | None, str | None]:
    """Caption (``.txt`` first, then the json ``caption``) and url of an img2dataset sample."""
    meta: dict = {}
    if "json" in members:
        try:
            loaded = json.loads(members["json"].decode("utf-8"))
            meta = loaded if isinstance(loaded, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
    caption = None
    if "txt" in members:
        caption = members["txt"].decode("utf-8", errors="replace").strip()
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    url = meta.get("url") if isinstance(meta.get("url"), str) else None
    return caption, url


def iter_shard(path: Path, dedupe: KeyDeduper) -> Iterator[RawInput | Rejection]:
    """The samples of one img2dataset-style tar. A truncated or unreadable tar yields what
    was fully read, then one ``Rejection`` for the rest (naming the sample cut short)."""
    shard = str(path)
    if not path.is_file():
        yield Rejection(shard, "unreadable: shard not found", shard=shard, key=None)
        return
    groups = _iter_tar_groups(path)
    num_read = 0
    while True:
        try:
            source_key, members = next(groups)
        except StopIteration:
            return
        except (tarfile.TarError, EOFError, OSError) as err:
            yield _shard_failure(shard, err, first=num_read == 0)
            return
        num_read += 1
        yield _shard_sample(shard, source_key, members, dedupe)


def _shard_failure(shard: str, err: BaseException, *, first: bool) -> Rejection:
    """A tar that fails at its first header is not a tar; one that fails later is cut short."""
    pending = getattr(err, "pending", None)
    detail = f"{type(err).__name__}: {err}"
    if first and pending is None:
        return Rejection(shard, f"corrupt shard: {detail}", shard=shard, key=None)
    if pending is not None:
        detail += f" (sample {pending} incomplete)"
    return Rejection(f"{shard}#{pending or ''}", f"truncated shard: {detail}",
                     shard=shard, key=pending)


def _shard_sample(
    shard: str, source_key: str, members: dict[str, bytes], dedupe: KeyDeduper
) -> RawInput | Rejection:
    source_path = f"{shard}#{source_key}"
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_ext is None:
        found = ",".join(sorted(members)) or "none"
        return Rejection(source_path, f"no image in sample: members {found}",
                         shard=shard, key=source_key)
    caption, url = _sample_text(members)
    return RawInput(
        key=dedupe(source_key),
        source="webdataset",
        source_path=source_path,
        data=members[image_ext],
        caption=caption,
        url=url,
        shard=shard,
        source_key=source_key,
    )


def iter_webdataset(pattern: str) -> Iterator[RawInput | Rejection]:
    dedupe = KeyDeduper()
    for path in expand_shard_pattern(pattern):
        yield from iter_shard(path, dedupe)
