"""4M text serialisations of structured labels, and their parsers (apple/ml-4m `fourm/data/modality_transforms.py`).

- det: ``v0=x0 v1=y0 v2=x1 v3=y1 <class>`` per box (coords ``round(c * 999)``), boxes
  with score >= threshold, ordered by ``xmin**2 + ymin**2``; no boxes -> ``""``.
- color palette: ``v1=k v0=R v0=G v0=B ...`` (k colours, 0..255 values); the tokens
  stage stores every k (``split_palettes``), the loader draws one per load.
- metadata: one chunk ``v1=<field id> v0=<value>`` per present field, values clamped to
  0..999, optionally shuffled; the model span-masks the chunks.
- caption: the raw string (the text tokenizer lower-cases).

Parsers accept the text tokenizer's decoded string (tokens joined by single spaces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

COORD_BINS = 1000  # coordinates are written as round(c * (COORD_BINS - 1))

_VALUE = re.compile(r"v(\d)=(\d+)")


# --------------------------------------------------------------------------- det
def serialize_det(instances: Sequence[Mapping], *, threshold: float = 0.6) -> str:
    """Instances ``{"box": [x0, y0, x1, y1] in 0..1, "class_name", "score"}`` -> text."""
    kept = [i for i in instances if float(i.get("score", 1.0)) >= threshold]
    kept.sort(key=lambda i: float(i["box"][0]) ** 2 + float(i["box"][1]) ** 2)
    parts = []
    for inst in kept:
        coords = np.clip(np.asarray(inst["box"], dtype=np.float64), 0.0, 1.0)
        bins = np.round(coords * (COORD_BINS - 1)).astype(int)
        parts.append(" ".join(f"v{k}={b}" for k, b in enumerate(bins)) + f" {inst['class_name']}")
    return " ".join(parts)


_DET = re.compile(r"v0=(\d+)\s+v1=(\d+)\s+v2=(\d+)\s+v3=(\d+)\s+(.+?)(?=\s+v0=|\s*$)")


def parse_det(text: str) -> list[dict]:
    """Text -> ``[{"box": [x0, y0, x1, y1] in 0..1, "class_name"}]``; malformed parts skipped."""
    out = []
    for m in _DET.finditer(text.strip()):
        coords = [int(m.group(k)) / (COORD_BINS - 1) for k in range(1, 5)]
        out.append({"box": coords, "class_name": m.group(5).strip()})
    return out


# --------------------------------------------------------------------------- palette
def serialize_color_palette(
    palettes: Mapping[int, Sequence[tuple[int, int, int]]], k: int
) -> str:
    """The k-colour palette of ``palettes`` (k -> k RGB triples) -> ``v1=k v0=R v0=G ...``."""
    colors = palettes[k]
    if len(colors) != k:
        raise ValueError(f"palette for k={k} has {len(colors)} colours")
    values = " ".join(f"v0={int(np.clip(c, 0, 255))}" for rgb in colors for c in rgb)
    return f"v1={k} {values}"


def parse_color_palette(text: str) -> list[tuple[int, int, int]]:
    """``v1=k v0=R v0=G v0=B ...`` -> k RGB triples (a trailing partial triple is dropped)."""
    values = [(int(kind), int(v)) for kind, v in _VALUE.findall(text)]
    if not values or values[0][0] != 1:
        return []
    k = values[0][1]
    channels = [v for kind, v in values[1:] if kind == 0][: 3 * k]
    return [tuple(channels[i : i + 3]) for i in range(0, len(channels) - 2, 3)]


def palette_num_ids(k: int) -> int:
    """Text-token ids of a k-colour palette: ``v1=k`` and 3k ``v0=c``, each one added token
    of the text tokenizer (``fm21.tokenize.text``)."""
    return 1 + 3 * k


def split_palettes(ids: Sequence[int]) -> list[list[int]]:
    """A stored palette sequence -> its palettes ``[k=1, k=2, ..., k=n]``.

    The tokens stage stores the ids of the palettes for every k, concatenated in k order,
    so that the loader redraws k at every load as the reference does (apple/ml-4m
    `fourm/data/modality_transforms.py`, ColorPaletteTransform: ``random.randint(1, 7)``
    per load). A sequence that is not such a concatenation (one palette, from a store
    tokenized before) is returned as the only palette: no length ``1 + 3k`` of one palette
    is a sum of the lengths of palettes 1..n except k = 1, which is both.
    """
    ids = list(ids)
    out, start, k = [], 0, 1
    while start < len(ids):
        end = start + palette_num_ids(k)
        if end > len(ids):
            return [ids]
        out.append(ids[start:end])
        start, k = end, k + 1
    return out or [ids]


# --------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class MetadataField:
    id: int
    name: str
    rule: Literal["int", "div32", "float", "bins"]
    vmin: float = 0.0
    vmax: float = 1.0
    edges: tuple[float, ...] = ()  # rule "bins": manual bin edges

    def encode(self, value: float) -> int:
        if self.rule == "div32":
            v = int(value) // 32
        elif self.rule == "float":
            # int((clip(v) - vmin) / (vmax - vmin) * 49): 50 bins, 0..49
            clipped = float(np.clip(value, self.vmin, self.vmax))
            v = int((clipped - self.vmin) / (self.vmax - self.vmin) * 49)
        elif self.rule == "bins":
            v = int(np.searchsorted(np.asarray(self.edges), value, side="right"))
        else:
            v = int(value)
        return int(np.clip(v, 0, 999))  # special_vmin / special_vmax

    def decode(self, v: int) -> float:
        if self.rule == "div32":
            return float(v * 32)
        if self.rule == "float":
            # The reference decoder divides by 50 where the encoder multiplies by 49
            # (plotting_utils.decode_metadata); kept as is, the mismatch is small.
            return v / 50 * (self.vmax - self.vmin) + self.vmin
        return float(v)  # raw ints, and the bin index of manually binned fields


def _f(i: int, name: str, rule: str, vmin: float = 0.0, vmax: float = 1.0) -> MetadataField:
    return MetadataField(i, name, rule, vmin, vmax)  # type: ignore[arg-type]


METADATA_FIELDS: tuple[MetadataField, ...] = (
    _f(0, "original_width", "div32"),
    _f(1, "original_height", "div32"),
    _f(2, "caption_n_chars", "int"),
    _f(3, "caption_n_words", "int"),
    _f(4, "caption_n_sentences", "int"),
    _f(5, "n_humans", "int"),
    _f(6, "n_sam_instances", "int"),
    _f(7, "n_coco_instances", "int"),
    _f(8, "coco_instance_diversity", "int"),
    _f(9, "colorfulness", "float", 0.0, 150.0),
    _f(10, "brightness", "float", 0.0, 255.0),
    _f(11, "contrast", "float", 0.0, 127.0),
    _f(12, "saturation", "float", 0.0, 255.0),
    _f(13, "entropy", "float", 0.0, 10.0),
    _f(14, "walkability", "float", 0.0, 1.0),
    _f(15, "objectness", "float", 0.0, 1.0),
    _f(16, "semantic_diversity", "int"),
    _f(17, "geometric_complexity", "float", 0.0, 0.75),
    _f(18, "occlusion_score", "float", 0.0, 0.25),
    MetadataField(19, "watermark_score", "bins", edges=(0.5,)),
    MetadataField(20, "aesthetic_score", "bins", edges=(4.5, 5.5)),
)
METADATA_BY_NAME: dict[str, MetadataField] = {f.name: f for f in METADATA_FIELDS}
METADATA_BY_ID: dict[int, MetadataField] = {f.id: f for f in METADATA_FIELDS}


def serialize_metadata(
    fields: Mapping[str, float | int], *, rng: np.random.Generator | None = None
) -> list[str]:
    """One chunk ``v1=<id> v0=<value>`` per present field (table order, or shuffled)."""
    unknown = set(fields) - set(METADATA_BY_NAME)
    if unknown:
        raise KeyError(f"unknown metadata fields {sorted(unknown)}")
    chunks = [
        f"v1={f.id} v0={f.encode(fields[f.name])}"
        for f in METADATA_FIELDS
        if f.name in fields and fields[f.name] is not None
    ]
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    return chunks


def metadata_bins(text: str) -> dict[str, int]:
    """The raw bins of a metadata string (the exact inverse of serialisation's binning)."""
    values = _VALUE.findall(text)
    out: dict[str, int] = {}
    for (k1, fid), (k0, v) in zip(values[::2], values[1::2]):
        if k1 == "1" and k0 == "0" and int(fid) in METADATA_BY_ID:
            out[METADATA_BY_ID[int(fid)].name] = int(v)
    return out


def parse_metadata(text: str) -> dict[str, float]:
    """Metadata text (chunks joined in any order) -> field name -> decoded value."""
    return {name: METADATA_BY_NAME[name].decode(v) for name, v in metadata_bins(text).items()}
