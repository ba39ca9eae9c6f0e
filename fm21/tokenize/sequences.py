"""Label rows -> the 4M text serialisations of each sequence modality, for one crop.

The serialisers themselves live in ``fm21.tokenize.serialize``; this module only picks
the label column each sequence modality reads and applies the crop (boxes move with
the crop window; the palette size k is drawn per (sample, crop)).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fm21.tokenize.crops import Crop, crop_boxes
from fm21.tokenize.serialize import serialize_color_palette, serialize_det, serialize_metadata


def _caption(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> str | None:
    return row.get("caption")


def _det(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> str | None:
    if row.get("det") is None:
        return None
    return serialize_det(crop_boxes(row["det"], crop, size=size))


def _color_palette(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> str | None:
    palettes = row.get("color_palette")
    if not palettes:
        return None
    k = int(rng.integers(1, len(palettes) + 1))  # apple/ml-4m `fourm/data/modality_transforms.py`, ColorPaletteTransform: k uniform in 1..7
    flat = list(palettes[k - 1])
    colors = [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]
    return serialize_color_palette({k: colors}, k)


def _metadata(row: dict, crop: Crop, size: int, rng: np.random.Generator) -> list[str] | None:
    fields = row.get("metadata")
    if not fields:
        return None
    present = {k: v for k, v in fields.items() if v is not None}
    return serialize_metadata(present) if present else None


SERIALIZERS: dict[str, Callable[[dict, Crop, int, np.random.Generator], Any]] = {
    "caption": _caption,
    "det": _det,
    "color_palette": _color_palette,
    "metadata": _metadata,
}


def serialize(name: str, row: dict, crop: Crop, *, size: int, rng: np.random.Generator) -> str | list[str] | None:
    try:
        fn = SERIALIZERS[name]
    except KeyError:
        raise KeyError(f"no serialisation for sequence modality {name!r} yet (have: {sorted(SERIALIZERS)})") from None
    return fn(row, crop, size, rng)


def corpus_of(rows: list[dict], names: list[str], *, size: int, seed: int) -> list[str]:
    """Every serialised string of ``rows`` (crop 0): what the WordPiece vocabulary learns."""
    rng = np.random.default_rng(seed)
    full = Crop(0, 0, size, size, False)
    texts: list[str] = []
    for row in rows:
        for name in names:
            value = serialize(name, row, full, size=size, rng=rng)
            if isinstance(value, list):
                texts.extend(value)
            elif value:
                texts.append(value)
    return texts
