"""Conditions given as files or text -> the model's inputs.

How a value is read is looked up from the modality's registry spec, never its name:

- ``kind`` ``pixels``: an image file -> the RGB pixels at the run's resolution, fed with
  ImageNet statistics as training fed them (``fm21.train.loader.row_to_sample``);
- ``image_tokens`` / ``feature_tokens`` / ``global_tokens``: a label file, read by its
  ``label_kind`` (:data:`MAP_READERS`; any kind also takes the raw labels as ``.npy``),
  -> tokens through that modality's tokenizer ``encode_labels``;
- ``sequence``: text, or a JSON / text file, serialised by its ``label_kind``
  (:data:`TEXT_READERS`, the serialisers of ``fm21.tokenize.serialize``) -> the shared
  text tokenizer's ids, closed by EOS as the masking closes them;
- ``embedding``: a ``.npy`` of ``(L, embedding_dim)`` vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from fm21.generate.run import MAP_KINDS, GenerateError, TrainedRun
from fm21.modalities import ModalitySpec
from fm21.tokenize.crops import Crop, apply_crop
from fm21.tokenize.serialize import METADATA_BY_NAME, serialize_color_palette, serialize_det, serialize_metadata
from fm21.train.loader import row_to_sample
from fm21.train.masking import closed_sequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class Condition:
    """One modality's input: the batch-of-one tensor the sampler takes and what the grid
    shows of it (``labels``: a label map of ``label_kind``; ``text``: a string)."""

    name: str
    tensor: torch.Tensor
    source: str
    labels: np.ndarray | None = None
    text: str | None = None


# ------------------------------------------------------------------------------ parsing
def parse_assignment(item: str) -> tuple[str, str]:
    """``name=value`` -> (name, value); value may contain further ``=``."""
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        raise GenerateError(f"--cond {item!r}: expected MODALITY=VALUE (a file, or text for a sequence)")
    return name.strip(), value


def parse_key_values(text: str) -> dict[str, float]:
    """``brightness=0.5 contrast=30`` -> {field: value}; a clear error on a bad pair."""
    out: dict[str, float] = {}
    for pair in text.replace(",", " ").split():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GenerateError(f"bad key=value {pair!r} (expected e.g. brightness=120)")
        if key not in METADATA_BY_NAME:
            raise GenerateError(f"unknown metadata field {key!r} (known: {', '.join(METADATA_BY_NAME)})")
        try:
            out[key] = float(value)
        except ValueError:
            raise GenerateError(f"bad key=value {pair!r}: {value!r} is not a number") from None
    if not out:
        raise GenerateError("metadata: no key=value pairs given")
    return out


# ------------------------------------------------------------------------------ image files
def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise GenerateError(f"no such file: {path}")
    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types on corrupt bytes
        raise GenerateError(f"cannot decode image {path}: {err}") from None


def _square(a: np.ndarray) -> np.ndarray:
    """The centred square of an (H, W[, C]) map: the model's crops are square."""
    h, w = a.shape[:2]
    s = min(h, w)
    return a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _depth(img: Image.Image) -> np.ndarray:
    # 16-bit / float PNGs keep their values; tokenizers standardise depth per image, so the unit does not matter
    if img.mode in ("I", "I;16", "I;16B", "F"):
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _normal(img: Image.Image) -> np.ndarray:
    return (np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)  # the (n + 1) / 2 colouring, inverted


def _classes(img: Image.Image) -> np.ndarray:
    if img.mode not in ("P", "L"):
        raise GenerateError(f"a class map must be a palette or greyscale PNG of class ids, not mode {img.mode}")
    return np.asarray(img, dtype=np.uint8)  # palette indices are the class ids


def _edges(img: Image.Image) -> np.ndarray:
    return np.where(np.asarray(img.convert("L")) > 127, 255, 0).astype(np.uint8)


# label kind -> image file -> label map in the label store's convention
MAP_READERS: dict[str, Callable[[Image.Image], np.ndarray]] = {
    "rgb": _rgb, "depth": _depth, "normal": _normal, "classes": _classes, "edges": _edges,
}


def read_label_map(path: Path, kind: str, size: int) -> np.ndarray:
    """A label file (an image, or the raw labels as ``.npy``) -> ``(size, size[, C])``."""
    if path.suffix == ".npy":
        labels = _load_npy(path)
    else:
        if kind not in MAP_READERS:
            raise GenerateError(f"{path}: {kind} labels are read from .npy, not images")
        labels = MAP_READERS[kind](_open_image(path))
    labels = _square(labels)
    full = Crop(0, 0, labels.shape[0], labels.shape[0], False)
    return apply_crop(labels, full, kind=kind, out_size=size)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise GenerateError(f"no such file: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise GenerateError(f"cannot read {path}: {err}") from None


# ------------------------------------------------------------------------------ sequences
def _json_or_text(value: str) -> Any:
    """A JSON file's content, a text file's text, or the value itself."""
    path = Path(value)
    if value.endswith((".json", ".txt")) or (len(value) < 4096 and path.suffix and path.exists()):
        if not path.is_file():
            raise GenerateError(f"no such file: {path}")
        raw = path.read_text()
        if path.suffix == ".json":
            try:
                return json.loads(raw)
            except json.JSONDecodeError as err:
                raise GenerateError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return raw.strip()
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise GenerateError("expected text")
    return value


def _boxes(value: Any) -> str:
    if isinstance(value, str):
        return value  # already the serialisation (v0=.. v1=.. v2=.. v3=.. class)
    try:
        return serialize_det([{"score": 1.0, **b} for b in value], threshold=0.0)
    except (KeyError, TypeError, ValueError) as err:
        raise GenerateError(f"boxes JSON: expected [{{\"box\": [x0, y0, x1, y1] in 0..1, \"class_name\": ...}}] "
                            f"({type(err).__name__}: {err})") from None


def _palette(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        colors = [tuple(int(c) for c in rgb) for rgb in value]
        if not colors or any(len(c) != 3 for c in colors):
            raise ValueError("need [[R, G, B], ...]")
        return serialize_color_palette({len(colors): colors}, len(colors))
    except (TypeError, ValueError) as err:
        raise GenerateError(f"palette JSON: expected [[R, G, B], ...] with 0..255 values ({err})") from None


def _metadata(value: Any) -> list[str]:
    if isinstance(value, dict):
        unknown = set(value) - set(METADATA_BY_NAME)
        if unknown:
            raise GenerateError(f"unknown metadata fields {sorted(unknown)} (known: {', '.join(METADATA_BY_NAME)})")
        return serialize_metadata(value)
    if "v1=" in value:
        return [value]  # already serialised chunks
    return serialize_metadata(parse_key_values(value))


def _serialised_only(kind: str) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if not isinstance(value, str):
            raise GenerateError(f"{kind} conditions are given as their serialised text (a .txt file or a string): "
                                f"their JSON needs the embedded tokenizer's inputs")
        return value
    return read


# label kind -> value (text, or parsed JSON) -> serialisation (a string, or metadata's chunks)
TEXT_READERS: dict[str, Callable[[Any], str | list[str]]] = {
    "text": _text, "boxes": _boxes, "palette": _palette, "metadata": _metadata,
    "poses": _serialised_only("poses"), "instances": _serialised_only("instances"),
}


def sequence_tensor(ids: list[int], spec: ModalitySpec) -> torch.Tensor:
    """Ids -> ``(1, seq_tensor_len)``: the ids closed by EOS, cut to ``max_seq_len`` tokens,
    then PAD. As in training, the EOS counts (``fm21.train.masking.sequence_units``, apple/ml-4m
    `fourm/data/masking.py`): a sequence of ``max_seq_len`` ids or more keeps that many ids
    and no EOS."""
    ids = closed_sequence(ids, spec)
    out = torch.zeros(1, spec.seq_tensor_len, dtype=torch.long)
    out[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


# ------------------------------------------------------------------------------ per kind
def read_condition(run: TrainedRun, name: str, value: str) -> Condition:
    """``--cond name=value`` -> a :class:`Condition`, by the spec's kind and label kind."""
    spec = run.spec(name)
    kind, label_kind = spec.kind, spec.label_kind
    if kind == "pixels":
        rgb = read_label_map(Path(value), "rgb", spec.resolution)
        return pixels_condition(spec, rgb, source=value)
    if kind in ("image_tokens", "feature_tokens"):
        labels = read_label_map(Path(value), label_kind, spec.label_size)
        ids = run.tokenizer(name).encode_labels(labels[None])
        return Condition(name, torch.as_tensor(np.asarray(ids), dtype=torch.long), value, labels=labels)
    if kind == "global_tokens":
        vector = np.asarray(_json_or_text(value) if value.endswith(".json") else _load_npy(Path(value)),
                            dtype=np.float32).reshape(1, -1)
        ids = run.tokenizer(name).encode_labels(vector)
        return Condition(name, torch.as_tensor(np.asarray(ids), dtype=torch.long), value,
                         text=f"{vector.shape[1]}-d vector")
    if kind == "sequence":
        if label_kind not in TEXT_READERS:
            raise GenerateError(f"{name}: no reader for {label_kind} sequences")
        serialised = TEXT_READERS[label_kind](_json_or_text(value))
        chunks = serialised if isinstance(serialised, list) else [serialised]
        ids = [i for chunk in chunks for i in run.text.encode(chunk)]
        return Condition(name, sequence_tensor(ids, spec), value, text=" ".join(chunks))
    if kind == "embedding":
        vectors = _load_npy(Path(value)).astype(np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != spec.embedding_dim:
            raise GenerateError(f"{name}: expected (L, {spec.embedding_dim}) vectors, got {vectors.shape}")
        return Condition(name, torch.from_numpy(vectors[: spec.max_seq_len])[None], value,
                         text=f"{len(vectors)} vectors")
    raise GenerateError(f"{name}: cannot read a condition of kind {kind}")


def pixels_condition(spec: ModalitySpec, rgb: np.ndarray, *, source: str) -> Condition:
    """RGB ``(R, R, 3)`` uint8 -> the pixels input, normalised as training normalised it."""
    sample = row_to_sample({spec.name: rgb.reshape(-1)}, {spec.name: spec})
    return Condition(spec.name, torch.from_numpy(sample[spec.name])[None], source, labels=rgb)


def stored_condition(run: TrainedRun, name: str, value: Any, *, source: str) -> Condition:
    """A tokens-store value (pixels, grid ids, WordPiece ids without EOS) -> a condition."""
    spec = run.spec(name)
    if spec.kind == "pixels":
        r = spec.resolution
        return pixels_condition(spec, np.asarray(value, dtype=np.uint8).reshape(r, r, 3), source=source)
    if spec.is_image_like:
        ids = torch.as_tensor(np.asarray(value, dtype=np.int64))[None]
        # the grid shows what the stored ids decode to, not the row they came from
        labels = run.decode_map(name, ids) if spec.kind in MAP_KINDS else None
        return Condition(name, ids, source, labels=labels)
    if spec.kind == "sequence":
        ids = [int(i) for i in value]
        return Condition(name, sequence_tensor(ids, spec), source, text=run.text.decode(ids))
    vectors = np.asarray(value, dtype=np.float32)[: spec.max_seq_len]
    return Condition(name, torch.from_numpy(vectors)[None], source, text=f"{len(vectors)} vectors")
