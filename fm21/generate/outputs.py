"""Generated tokens -> files a person reads, and one grid of every input and output.

By the spec's kind and label kind, never its name:

- ``image_tokens`` / ``feature_tokens``: decoded through the modality's tokenizer
  (``decode_labels``) to a label map, saved raw (``.npy``, readable back as a condition)
  and coloured (``.png``, ``fm21.tokenize.grid.COLORIZERS``; class maps as palette PNGs
  whose indices are the class ids, so they too read back as conditions);
- ``global_tokens``: decoded to the vector (``.npy``);
- ``sequence``: the text tokenizer's string (``.txt``) and, for structured label kinds,
  the serialiser's parse (:data:`TEXT_PARSERS`) as ``.json``.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fm21.generate.run import MAP_KINDS, TrainedRun
from fm21.tokenize.grid import labels_to_rgb, save_grid, semseg_palette
from fm21.tokenize.serialize import parse_color_palette, parse_det, parse_metadata
from fm21.tokenize.serialize_instances import parse_human_poses, parse_sam_instance
from fm21.train.masking import EOS_ID

TILE = 128  # px per grid tile
NUM_SPECIAL_IDS = 204  # [PAD] [UNK] [SOS] [EOS] and the 200 sentinels (fm21.tokenize.text)

# label kind -> the serialisation's parser (fm21.tokenize.serialize*): text -> JSON-able
TEXT_PARSERS: dict[str, Callable[[str], Any]] = {
    "boxes": parse_det, "palette": parse_color_palette, "metadata": parse_metadata,
    "poses": parse_human_poses, "instances": parse_sam_instance,
}


@dataclass
class Output:
    """One generated modality: the files written and what the grid shows."""

    name: str
    files: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None  # a label map of the spec's label kind
    text: str | None = None
    parsed: Any = None


def sequence_ids(tensor: torch.Tensor) -> list[int]:
    """A full-input sequence row -> its ids before EOS, without PAD and sentinels."""
    ids = [int(i) for i in tensor.reshape(-1).tolist()]
    if EOS_ID in ids:
        ids = ids[: ids.index(EOS_ID)]
    return [i for i in ids if i >= NUM_SPECIAL_IDS]


def decode_output(run: TrainedRun, name: str, tensor: torch.Tensor, out_dir: Path) -> Output:
    """Decode a generated ``(1, ...)`` tensor of ``name`` and write its files."""
    spec = run.specs[name]
    out = Output(name)
    if spec.kind in MAP_KINDS:
        labels = run.decode_map(name, tensor)
        out.labels = labels
        out.files += [_save_npy(out_dir / f"{name}.npy", labels), _save_map_png(out_dir / f"{name}.png",
                                                                                spec.label_kind, labels)]
    elif spec.kind == "global_tokens":
        vector = run.tokenizer(name).decode_labels(tensor.numpy())[0]
        out.files.append(_save_npy(out_dir / f"{name}.npy", vector))
        out.text = f"{len(vector)}-d vector, |v| = {float(np.linalg.norm(vector)):.3g}"
    elif spec.kind == "sequence":
        out.text = run.text.decode(sequence_ids(tensor))
        (out_dir / f"{name}.txt").write_text(out.text + "\n")
        out.files.append(f"{name}.txt")
        parser = TEXT_PARSERS.get(spec.label_kind)
        if parser is not None:
            out.parsed = parser(out.text)
            (out_dir / f"{name}.json").write_text(json.dumps(out.parsed, indent=2, default=float) + "\n")
            out.files.append(f"{name}.json")
    else:
        raise ValueError(f"{name}: cannot decode a generated {spec.kind}")
    return out


def _save_npy(path: Path, array: np.ndarray) -> str:
    np.save(path, np.asarray(array))
    return path.name


def _save_map_png(path: Path, kind: str, labels: np.ndarray) -> str:
    if kind == "classes":  # palette PNG: coloured to look at, class ids to read back
        img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
        img.putpalette(semseg_palette().reshape(-1).tolist())
    else:
        img = Image.fromarray(labels_to_rgb(kind, np.asarray(labels)[None])[0])
    img.save(path)
    return path.name


# ------------------------------------------------------------------------------ tiles
def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_tile(text: str, *, side: int = TILE) -> np.ndarray:
    """Text wrapped on a white tile."""
    img = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    lines = textwrap.wrap(text or "(empty)", width=max(8, side // 6))[: side // 12]
    draw.multiline_text((3, 3), "\n".join(lines), fill=(0, 0, 0), font=_font(10), spacing=1)
    return np.asarray(img)


def map_tile(kind: str, labels: np.ndarray, *, side: int = TILE) -> np.ndarray:
    rgb = labels_to_rgb(kind, np.asarray(labels)[None])[0]
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.NEAREST))


def boxes_tile(boxes: list[dict], background: np.ndarray | None, *, side: int = TILE) -> np.ndarray:
    """Boxes (0..1 corners) drawn over the sample's image, or over white."""
    base = Image.fromarray(background).resize((side, side)) if background is not None else \
        Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(base)
    for b in boxes:
        x0, y0, x1, y1 = (float(v) * (side - 1) for v in b["box"])
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=(255, 0, 0), width=2)
        draw.text((x0 + 2, y0 + 1), str(b.get("class_name", "")), fill=(255, 0, 0), font=_font(10))
    return np.asarray(base)


def palette_tile(colors: list, *, side: int = TILE) -> np.ndarray:
    img = np.full((side, side, 3), 255, np.uint8)
    for i, rgb in enumerate(colors):
        top, bottom = i * side // len(colors), (i + 1) * side // len(colors)
        img[top:bottom] = np.clip(np.asarray(rgb), 0, 255).astype(np.uint8)
    return img


def tile_of(kind: str | None, *, labels: np.ndarray | None, text: str | None, parsed: Any,
            background: np.ndarray | None) -> np.ndarray:
    """The grid tile of one input or output, by label kind."""
    if labels is not None:
        return map_tile(kind, labels)
    if kind == "boxes" and parsed is not None:
        return boxes_tile(parsed, background)
    if kind == "palette" and parsed:
        return palette_tile(parsed)
    if isinstance(parsed, dict) and parsed:  # metadata: the decoded fields, not their bins
        return text_tile(" ".join(f"{k}={v:g}" for k, v in parsed.items()))
    return text_tile(text or "")


def write_grid(path: Path, tiles: list[tuple[str, np.ndarray]]) -> None:
    """One labelled row of tiles (``name`` above each), ``path`` a PNG."""
    save_grid([np.stack([t for _, t in tiles])], path, col_labels=[label for label, _ in tiles])
