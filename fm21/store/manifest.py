"""Stage manifests: what a stage ran on (fingerprint), what it wrote (counts), and how long.

A manifest is written last and atomically, so its presence with ``status: complete``
means the stage's outputs are whole (locally a temporary file renamed into place; on an
object store one put, which is atomic). The fingerprint hashes the stage's own config
slice, the run context it depends on, and the upstream stages' fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from typing import Any

from fm21.store import fs
from fm21.store.fs import Location

LIBRARIES = ("torch", "ray", "prefect", "pylance", "pyarrow", "webdataset", "tokenizers", "numpy")


def fingerprint_of(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def read_manifest(path: Location) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Location, data: Any) -> None:
    fs.write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
