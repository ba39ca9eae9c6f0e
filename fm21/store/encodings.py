"""Compact encodings of dense label maps in labels.lance, one per label *kind*.

A specialist declares what its map is (``Specialist.map_field(..., kind=...)``); the kind
picks the encoding here (``ENCODING_OF_KIND``), and the field's metadata names it
(``encoding``), next to the decoded ``shape`` and ``dtype``. Readers never look at the kind
or the column name: :func:`fm21.store.labels.column_to_python` decodes any column from its
field metadata alone, so every reader (tokenizer training, the tokens job, evaluate, the
pseudolabel worker reading earlier columns) gets the same ``(B, *shape)`` arrays of
``dtype`` as before the encodings existed.

Encodings (each value is one PNG per sample, in a ``binary`` column; nulls stay null):

- ``raw``: the map as a fixed-size list of ``dtype`` (the format before compact
  encodings; still read, and written for kinds without a compact encoding).
- ``png``: lossless PNG of a uint8 map (1 or 3 channels) or uint16 map. Class ids,
  instance ids, 0/255 edge maps and RGB images.
- ``png16_float16``: lossless. The float16 map's 16-bit patterns as a 16-bit grey PNG.
  For positive values the pattern is monotonic in the value (sign 0, then exponent, then
  mantissa), so a smooth depth surface is a smooth 16-bit image and PNG's predictive
  filters compress it; the decoded array is bit-identical to the float16 one.
- ``png8_unit``: unit vectors (surface normals), each component in [-1, 1] quantised to
  ``q = round((v + 1) * 127)`` in 0..254 (so -1, 0 and 1 are exact), an 8-bit RGB PNG;
  decoded as ``q / 127 - 1`` in float16. Quantisation error: at most ``1/254`` (0.0039)
  per component, plus the float16 rounding of the decoded value (at most 2^-12 near 1),
  i.e. below 0.5 degree of angle. The 4M reference reads its normals from 8-bit images
  too (apple/ml-4m ``fourm/data/modality_transforms.py``, ``NormalTransform``: an 8-bit
  image normalised with mean and std 0.5 to [-1, 1]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

ENCODING_KEY = b"encoding"
PNG_LEVEL = 6  # zlib level: 9 is ~2x slower for ~2% smaller maps (benchmarks/bench_store_bytes.py)

# label kind -> encoding. The kinds a specialist may declare for a dense map.
ENCODING_OF_KIND: dict[str, str] = {
    "image": "png",  # uint8 RGB
    "class_map": "png",  # uint8 class / instance ids
    "binary_map": "png",  # 0/255 edge maps
    "depth": "png16_float16",  # float16 metres (lossless)
    "unit_vector": "png8_unit",  # float16 components in [-1, 1] (8 bits per component)
    "raw": "raw",
}

# the largest absolute error of a decoded value, per encoding (0: lossless)
MAX_ABS_ERROR: dict[str, float] = {"raw": 0.0, "png": 0.0, "png16_float16": 0.0,
                                   "png8_unit": 1.0 / 254 + 2.0**-12}


class EncodingError(ValueError):
    """A map that its field's encoding cannot hold (wrong shape, dtype or range)."""


def encoding_for_kind(kind: str) -> str:
    try:
        return ENCODING_OF_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown label kind {kind!r}; known kinds: {', '.join(ENCODING_OF_KIND)}") from None


def storage_type(encoding: str, shape: tuple[int, ...], dtype: str) -> pa.DataType:
    """The Arrow type a map of ``shape``/``dtype`` is stored as under ``encoding``."""
    _check_supported(encoding, shape, dtype)
    if encoding == "raw":
        return pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), int(np.prod(shape)))
    return pa.binary()


def _check_supported(encoding: str, shape: tuple[int, ...], dtype: str) -> None:
    channels = shape[2] if len(shape) == 3 else 1
    ok = {
        "raw": True,
        "png": len(shape) in (2, 3) and channels in (1, 3, 4) and dtype in ("uint8", "uint16"),
        "png16_float16": len(shape) == 2 and dtype == "float16",
        "png8_unit": len(shape) == 3 and channels == 3 and dtype == "float16",
    }
    if encoding not in ok:
        raise ValueError(f"unknown label encoding {encoding!r}; known: {', '.join(ok)}")
    if not ok[encoding]:
        raise ValueError(f"encoding {encoding!r} cannot hold maps of shape {list(shape)} and dtype {dtype}")


# ------------------------------------------------------------------------------ PNG codecs
def _png(image: np.ndarray) -> bytes:
    import cv2

    if image.ndim == 3:  # OpenCV writes BGR(A): swap so the file views as RGB
        image = image[..., [2, 1, 0, 3][: image.shape[2]]] if image.shape[2] >= 3 else image
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise EncodingError("PNG encoding failed")
    return buf.tobytes()


def _unpng(data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise EncodingError("stored value is not a PNG")
    if image.ndim == 3 and image.shape[2] >= 3:
        image = image[..., [2, 1, 0, 3][: image.shape[2]]]
    if image.shape != tuple(shape) or image.dtype != dtype:
        raise EncodingError(f"stored PNG holds {image.shape} {image.dtype}, the field says {list(shape)} {dtype}")
    return image


@dataclass(frozen=True)
class _Codec:
    encode: Callable[[np.ndarray], bytes]  # one map of the field's shape and dtype -> bytes
    decode: Callable[[bytes, tuple[int, ...]], np.ndarray]  # bytes -> map of shape, field dtype


def _encode_unit(v: np.ndarray) -> bytes:
    v = v.astype(np.float32)
    if not np.all(np.isfinite(v)) or np.abs(v).max(initial=0.0) > 1.001:
        raise EncodingError(f"png8_unit holds components in [-1, 1], got range "
                            f"[{np.nanmin(v):.4g}, {np.nanmax(v):.4g}] (non-finite: {int((~np.isfinite(v)).sum())})")
    return _png(np.clip(np.rint((v + 1.0) * 127.0), 0, 254).astype(np.uint8))


def _decode_unit(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    q = _unpng(data, shape, np.dtype(np.uint8))
    return (q.astype(np.float32) / 127.0 - 1.0).astype(np.float16)


_CODECS: dict[str, _Codec] = {
    "png16_float16": _Codec(
        encode=lambda m: _png(np.ascontiguousarray(m, dtype=np.float16).view(np.uint16)),
        decode=lambda b, shape: _unpng(b, shape, np.dtype(np.uint16)).view(np.float16),
    ),
    "png8_unit": _Codec(encode=_encode_unit, decode=_decode_unit),
}


def _codec(encoding: str, dtype: str) -> _Codec:
    if encoding == "png":
        return _Codec(encode=lambda m: _png(np.asarray(m, dtype=dtype)),
                      decode=lambda b, shape: _unpng(b, shape, np.dtype(dtype)))
    return _CODECS[encoding]


# ------------------------------------------------------------------------------ columns
def field_meta(field: pa.Field) -> dict[str, Any]:
    meta = field.metadata or {}
    return {
        "shape": tuple(json.loads(meta[b"shape"])) if b"shape" in meta else None,
        "dtype": meta[b"dtype"].decode() if b"dtype" in meta else None,
        "encoding": meta[ENCODING_KEY].decode() if ENCODING_KEY in meta else "raw",
    }


def encode_column(values: list[Any], field: pa.Field) -> pa.Array:
    """One batch of a specialist's maps (flat or shaped arrays, or None) -> the stored column."""
    meta = field_meta(field)
    if meta["shape"] is None or meta["encoding"] == "raw":
        return pa.array(values, type=field.type)
    shape, dtype = meta["shape"], meta["dtype"]
    codec = _codec(meta["encoding"], dtype)
    size = int(np.prod(shape))
    out: list[bytes | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        array = np.asarray(value)
        if array.size != size:
            raise EncodingError(f"column {field.name!r}: a map has {array.size} values, the field's shape "
                                f"{list(shape)} needs {size}")
        out.append(codec.encode(array.astype(dtype, copy=False).reshape(shape)))
    return pa.array(out, type=field.type)


def decode_column(column: pa.Array, field: pa.Field) -> np.ndarray | list[np.ndarray | None]:
    """A stored encoded column -> ``(B, *shape)`` of ``dtype``, or a list when it has nulls."""
    meta = field_meta(field)
    shape, codec = meta["shape"], _codec(meta["encoding"], meta["dtype"])
    maps = [None if v is None else codec.decode(v, shape) for v in column.to_pylist()]
    if column.null_count:
        return maps
    if not maps:
        return np.empty((0, *shape), dtype=meta["dtype"])
    return np.stack(maps)


def raw_bytes(field: pa.Field) -> int | None:
    """Bytes of one decoded map in memory (shape x dtype), or None for non-map columns."""
    meta = field_meta(field)
    if meta["shape"] is not None and meta["dtype"] is not None:
        return int(np.prod(meta["shape"])) * np.dtype(meta["dtype"]).itemsize
    if pa.types.is_fixed_size_list(field.type) and pa.types.is_primitive(field.type.value_type):
        return field.type.list_size * field.type.value_type.bit_width // 8
    return None
