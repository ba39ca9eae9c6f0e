"""Shard samples and the writer that rolls them into ``shard-000000.tar``, ``shard-000001.tar``...

A sample is the webdataset dict the pseudolabel stage reads back:

- ``__key__``: unique, stable, no dots or slashes.
- ``png``: the normalised 8-bit RGB ``image_size`` square (lossless PNG, also for photos).
- ``json``: provenance: key, source, source_path, url, original_size [w, h], original_mode,
  original_format, exif_transposed, num_frames, caption; synthetic samples add
  ``synthetic: {boxes, objects, classes}``.
- ``gt.npz`` (synthetic only): depth float32 (S,S), normal float16 (S,S,3), instance uint8
  (S,S), semantic uint8 (S,S), rendered at ``image_size`` (never resized).

Tars are written with ``webdataset.TarWriter`` and a fixed member mtime, so the same
inputs give byte-identical shards.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from fm21.ingest.normalize import NormalizedImage
from fm21.ingest.sources import RawInput
from fm21.ingest.synthetic import SEMANTIC_CLASSES, Scene

SHARD_PATTERN = "shard-{:06d}.tar"
_FIXED_MTIME = 946684800.0  # 2000-01-01: reproducible tar headers


@dataclasses.dataclass(frozen=True)
class ShardSample:
    key: str
    png: bytes
    meta: dict[str, Any]
    extra: dict[str, bytes] = dataclasses.field(default_factory=dict)  # e.g. {"gt.npz": ...}

    def as_wds(self) -> dict[str, Any]:
        payload = json.dumps(self.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return {"__key__": self.key, "png": self.png, "json": payload, **self.extra}


def image_sample(raw: RawInput, norm: NormalizedImage) -> ShardSample:
    """A decoded folder/webdataset input."""
    meta = {
        "key": raw.key,
        "source": raw.source,
        "source_path": raw.source_path,
        "url": raw.url,
        "original_size": list(norm.original_size),
        "original_mode": norm.original_mode,
        "original_format": norm.original_format,
        "exif_transposed": norm.exif_transposed,
        "num_frames": norm.num_frames,
        "caption": raw.caption,
    }
    if raw.shard is not None:
        meta["shard"] = raw.shard
        meta["source_key"] = raw.source_key
    return ShardSample(key=raw.key, png=norm.png_bytes(), meta=meta)


def synthetic_key(seed: int, index: int) -> str:
    return f"syn{seed:04d}-{index:07d}"


def synthetic_sample(scene: Scene, *, key: str, index: int) -> ShardSample:
    """A rendered scene: its RGB plus exact ground truth, already at the stored size."""
    height, width = scene.rgb.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(scene.rgb, dtype=np.uint8), mode="RGB").save(buf, "PNG")
    meta = {
        "key": key,
        "source": "synthetic",
        "source_path": f"synthetic/scene-{index:07d}",
        "url": None,
        "original_size": [int(width), int(height)],
        "original_mode": "RGB",
        "original_format": None,
        "exif_transposed": False,
        "num_frames": 1,
        "caption": scene.caption,
        "synthetic": {
            "seed": int(scene.seed),
            "boxes": jsonable(scene.boxes),
            "objects": [jsonable(obj) for obj in scene.objects],
            "classes": list(SEMANTIC_CLASSES),
        },
    }
    return ShardSample(key=key, png=buf.getvalue(), meta=meta, extra={"gt.npz": gt_npz(scene)})


def gt_npz(scene: Scene) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        depth=np.asarray(scene.depth, dtype=np.float32),  # (S, S)
        normal=np.asarray(scene.normal, dtype=np.float16),  # (S, S, 3)
        instance=np.asarray(scene.instance, dtype=np.uint8),  # (S, S)
        semantic=np.asarray(scene.semantic, dtype=np.uint8),  # (S, S)
    )
    return buf.getvalue()


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and numpy values -> plain JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ShardWriter:
    """Writes samples into ``directory/shard-%06d.tar``, ``samples_per_shard`` per tar."""

    def __init__(self, directory: Path, *, samples_per_shard: int) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.num_samples = 0
        self.num_shards = 0
        self._tar: wds.TarWriter | None = None
        self._in_shard = 0

    def write(self, sample: ShardSample) -> None:
        if "." in sample.key or "/" in sample.key or not sample.key:
            raise ValueError(f"invalid sample key {sample.key!r}: no dots or slashes allowed")
        if self._tar is None or self._in_shard == self.samples_per_shard:
            self._roll()
        assert self._tar is not None
        self._tar.write(sample.as_wds())
        self._in_shard += 1
        self.num_samples += 1

    def _roll(self) -> None:
        self._close_tar()
        path = self.directory / SHARD_PATTERN.format(self.num_shards)
        self._tar = wds.TarWriter(str(path), encoder=False, mtime=_FIXED_MTIME)
        self.num_shards += 1
        self._in_shard = 0

    def _close_tar(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def close(self) -> None:
        self._close_tar()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
