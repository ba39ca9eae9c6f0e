"""Paths or URIs for the stores: a local path, a shared-filesystem path, or ``s3://...``.

Everything goes through ``pyarrow.fs`` (Lance takes the same URIs itself). Endpoint and
credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ALLOW_HTTP`` for a plain-http endpoint), which
both pyarrow and Lance read; nothing secret is ever in flows.yaml.

A location is a :class:`pathlib.Path` for a local path and a :class:`UriPath` for a URI;
``UriPath`` has the small part of the ``Path`` API the stages use, so they read and write
either alike. The functions below take both (or a plain string). Atomic writes differ: a
local file is written under a temporary name and renamed, an object is one put (visible
only when complete).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

# What a Ray worker needs to reach the store; passed to workers by ``fm21.faults.worker_env``.
STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
               "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP")


def is_uri(location: str | Path | UriPath) -> bool:
    return "://" in str(location)


def storage_env() -> dict[str, str]:
    """The object-store settings of this process's environment (for Ray workers)."""
    return {k: v for k, v in os.environ.items() if k in STORAGE_ENV}


@functools.lru_cache(maxsize=16)
def _object_store(root: str, env: tuple):  # env: part of the key, so a new endpoint gets a new client
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(root)[0]


def filesystem(location: str | Path | UriPath):
    """(pyarrow FileSystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if is_uri(location):
        scheme, _, rest = str(location).partition("://")
        bucket = rest.split("/", 1)[0]
        return _object_store(f"{scheme}://{bucket}", tuple(sorted(storage_env().items()))), rest.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def as_location(location: str | Path | UriPath) -> Path | UriPath:
    """A URI as a :class:`UriPath`, anything else as a :class:`Path` (unchanged if already one)."""
    if isinstance(location, (Path, UriPath)):
        return location
    return UriPath(str(location).rstrip("/")) if is_uri(location) else Path(location)


def _type(location) -> str:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(kind, "")


def exists(location: str | Path | UriPath) -> bool:
    return _type(location) != ""


def remove_tree(location: str | Path | UriPath) -> None:
    fs, path = filesystem(location)
    fs.delete_dir(path)


def tree_bytes(location: str | Path | UriPath) -> int:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def list_names(location: str | Path | UriPath) -> list[str]:
    """Names of the entries directly inside a folder ([] if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def open_input(location: str | Path | UriPath) -> IO[bytes]:
    """A sequential binary stream (tar files are read front to back: ``tarfile`` mode "r|")."""
    fs, path = filesystem(location)
    return fs.open_input_stream(path)


def read_bytes(location: str | Path | UriPath) -> bytes:
    """The whole file; ``FileNotFoundError`` if there is none (as ``Path.read_bytes``)."""
    try:
        with open_input(location) as stream:
            return stream.read()
    except OSError as err:  # pyarrow reports a missing object as a plain OSError on S3
        if isinstance(err, FileNotFoundError) or not exists(location):
            raise FileNotFoundError(f"no file at {location}") from err
        raise


@contextlib.contextmanager
def open_atomic(location: str | Path | UriPath) -> Iterator[IO[bytes]]:
    """A binary output stream whose file appears only when the block ends without error.

    Locally the bytes go to ``.tmp-<name>`` (no ``*-name`` glob matches it), renamed into
    place at the end; a killed writer leaves only that temporary file. On an object store
    the object is one (multipart) upload, completed at close: a killed writer leaves no
    object. An error in the block removes what was written.
    """
    location = as_location(location)
    if isinstance(location, Path):
        location.parent.mkdir(parents=True, exist_ok=True)
        tmp = location.with_name(f".tmp-{location.name}")
        try:
            with open(tmp, "wb") as out:
                yield out
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, location)
        return
    fs, path = filesystem(location)
    out = fs.open_output_stream(path)
    try:
        yield out
    except BaseException:
        out.close()  # pyarrow cannot abort an upload: complete it, then delete the object
        fs.delete_file(path)
        raise
    out.close()


def write_atomic(location: str | Path | UriPath, data: bytes | str) -> None:
    """The whole file at once, atomically (temp name + rename locally, one put on S3)."""
    with open_atomic(location) as out:
        out.write(data.encode() if isinstance(data, str) else data)


def append_text(location: str | Path | UriPath, text: str) -> None:
    """Append to a small text file (a log); an object store has no append, so the object is
    read and put again: fine for a file of a few hundred lines."""
    location = as_location(location)
    if isinstance(location, Path):
        location.parent.mkdir(parents=True, exist_ok=True)
        with location.open("a") as f:
            f.write(text)
        return
    old = location.read_bytes() if location.exists() else b""
    write_atomic(location, old + text.encode())


def copy_file(src: str | Path | UriPath, dst: str | Path | UriPath) -> None:
    """Copy one file within a filesystem (server-side on an object store)."""
    dst = as_location(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(src)
    fs.copy_file(path, filesystem(dst)[1])


def move(src: str | Path | UriPath, dst: str | Path | UriPath) -> None:
    """Rename a file or folder. Locally one atomic ``os.replace``; an object store has no
    rename, so each object is copied (server-side), then the source is deleted: not atomic,
    callers commit afterwards (a stage's manifest is written after its outputs)."""
    src, dst = as_location(src), as_location(dst)
    if isinstance(src, Path):
        os.replace(src, dst)
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(src)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        fs.move(path, filesystem(dst)[1])
        return
    if kind == pafs.FileType.NotFound:  # an empty folder: no object holds it
        return
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, filesystem(dst)[1] + info.path[len(path):])
    fs.delete_dir(path)


def replace_tree(src: str | Path | UriPath, dst: str | Path | UriPath) -> None:
    """``dst`` becomes ``src``. Locally the old ``dst`` is first moved aside, so a reader sees
    the old folder, none, or the new one, never a mix; on an object store it is deleted."""
    src, dst = as_location(src), as_location(dst)
    if not exists(dst):
        move(src, dst)
    elif isinstance(dst, Path):
        retired = dst.with_name(f".retired-{uuid.uuid4().hex[:12]}")
        os.replace(dst, retired)
        os.replace(src, dst)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        remove_tree(dst)
        move(src, dst)


@dataclass(frozen=True, order=True)
class UriPath:
    """An object-store location (``s3://bucket/prefix/name``) with the part of the
    ``pathlib.Path`` API the stages use. Folders are key prefixes: ``mkdir`` does nothing,
    a folder exists when an object lies below it."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, part: str | os.PathLike) -> UriPath:
        return UriPath(f"{self.uri}/{str(part).strip('/')}")

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> UriPath:
        return UriPath(self.uri.rsplit("/", 1)[0])

    def with_name(self, name: str) -> UriPath:
        return self.parent / name

    def exists(self) -> bool:
        return exists(self)

    def is_file(self) -> bool:
        return _type(self) == "file"

    def is_dir(self) -> bool:
        return _type(self) == "dir"

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        pass  # a prefix needs no folder object

    def read_bytes(self) -> bytes:
        return read_bytes(self)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        write_atomic(self, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        write_atomic(self, text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.is_file():
            return
        fs, path = filesystem(self)
        fs.delete_file(path)

    def iterdir(self) -> Iterator[UriPath]:
        return iter([self / n for n in list_names(self)])

    def glob(self, pattern: str) -> Iterator[UriPath]:
        """Entries whose path below this folder matches ``pattern`` part by part (no ``**``)."""
        import pyarrow.fs as pafs

        fs, path = filesystem(self)
        parts = pattern.split("/")
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=len(parts) > 1, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            rel = info.path[len(path) + 1:].split("/")
            if len(rel) == len(parts) and all(fnmatch.fnmatchcase(r, p) for r, p in zip(rel, parts)):
                yield self / "/".join(rel)


Location = Union[Path, UriPath]
