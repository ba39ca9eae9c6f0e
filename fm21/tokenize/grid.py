"""PNG grids of label maps: originals over reconstructions.

``labels_to_rgb`` colours any map label kind (``ModalitySpec.label_kind``, the keys of
``PREPROCESSORS``) as uint8 RGB: rgb as is, depth through a perceptual colour ramp,
normals as ``(n + 1) / 2``, classes through a fixed palette (class 0 = black), edges
grey, feature maps by their first three channels.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image

from fm21.store import fs
from fm21.store.fs import Location

# Anchor colours of a blue -> green -> yellow ramp (viridis-like), interpolated linearly.
_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def _ramp(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape -> uint8 colours of shape ``(..., 3)``."""
    pos = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def semseg_palette(num_classes: int = 256) -> np.ndarray:
    """A fixed ``(num_classes, 3)`` uint8 palette; class 0 ("no class") is black."""
    palette = np.random.default_rng(12345).integers(40, 256, size=(num_classes, 3))
    palette[0] = 0
    return palette.astype(np.uint8)


def _depth(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)  # (B, R, R); per image min-max to [0, 1]
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    return _ramp((x - lo) / np.maximum(hi - lo, 1e-6))


def _normal(x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float64) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def _semseg(x: np.ndarray) -> np.ndarray:
    return semseg_palette()[np.asarray(x).astype(np.int64) % 256]


def _grey(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(x).astype(np.uint8)[..., None], 3, axis=-1)


def _feature(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)[..., :3]  # (B, g, g, C): the first three channels
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    out = ((x - lo) / np.maximum(hi - lo, 1e-6) * 255).round().astype(np.uint8)
    return np.concatenate([out, np.zeros((*out.shape[:3], 3 - out.shape[3]), np.uint8)], axis=-1)


# label kind -> colouring
COLORIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rgb": lambda x: np.asarray(x).astype(np.uint8),
    "depth": _depth,
    "normal": _normal,
    "classes": _semseg,
    "edges": _grey,
    "feature": _feature,
}


def labels_to_rgb(kind: str, labels: np.ndarray) -> np.ndarray:
    """Label maps of one label kind ``(B, R, R[, C])`` -> ``(B, R, R, 3)`` uint8."""
    try:
        colorize = COLORIZERS[kind]
    except KeyError:
        raise KeyError(f"no colouring for label kind {kind!r}; have {', '.join(COLORIZERS)}") from None
    return colorize(labels)


def _text_width(draw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def save_grid(
    rows: list[np.ndarray],
    path: Location,
    *,
    pad: int = 2,
    col_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    scale: int = 1,
) -> None:
    """Rows of ``(B, R, R, 3)`` uint8 images -> one PNG, rows stacked top to bottom.

    ``col_labels`` become a header line above the columns and ``row_labels`` a margin on
    the left, so the picture reads without its report. ``scale`` enlarges each tile
    (nearest neighbour) so that small label maps and the text stay legible.
    """
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    num_cols = max(len(r) for r in rows)
    side = rows[0].shape[1] * scale
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(_text_width(probe, t, font) for t in row_labels) + 6 if row_labels else 0
    line = 12  # px per header line
    header = 0
    if col_labels:
        header = line * max(len(t.split("\n")) for t in col_labels) + 2
    canvas = Image.new("RGB", (left + num_cols * (side + pad) + pad, header + len(rows) * (side + pad) + pad),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or []):
        for k, text in enumerate(label.split("\n")):
            x = left + pad + j * (side + pad) + max(0, (side - _text_width(draw, text, font)) // 2)
            draw.text((x, 1 + k * line), text, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = header + pad + i * (side + pad)
        if row_labels:
            draw.text((2, y + side // 2 - 5), row_labels[i], fill=(0, 0, 0), font=font)
        for j, img in enumerate(row):
            tile = Image.fromarray(np.asarray(img, dtype=np.uint8))
            if scale != 1:
                tile = tile.resize((side, side), Image.NEAREST)
            canvas.paste(tile, (left + pad + j * (side + pad), y))
    buf = io.BytesIO()  # bytes, so that ``path`` may be on an object store
    canvas.save(buf, format="PNG")
    fs.write_atomic(path, buf.getvalue())
