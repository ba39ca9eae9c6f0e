"""Paths or URIs for the stores: a local path, a shared-filesystem path, or ``s3://...``.

Everything goes through ``pyarrow.fs`` (Lance takes the same URIs itself). Endpoint and
credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ALLOW_HTTP`` for a plain-http endpoint), which
both pyarrow and Lance read; nothing secret is ever in flows.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def filesystem(location: str | Path):
    """(pyarrow FileSystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def remove_tree(location: str | Path) -> None:
    fs, path = filesystem(location)
    fs.delete_dir(path)


def tree_bytes(location: str | Path) -> int:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def list_names(location: str | Path) -> list[str]:
    """Names of the entries directly inside a folder ([] if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def open_input(location: str | Path) -> IO[bytes]:
    """A sequential binary stream (tar files are read front to back: ``tarfile`` mode "r|")."""
    fs, path = filesystem(location)
    return fs.open_input_stream(path)
