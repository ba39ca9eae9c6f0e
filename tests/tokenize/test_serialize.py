"""4M serialisations: det, colour palette and metadata round trips through the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from fm21.tokenize.serialize import (
    METADATA_FIELDS,
    metadata_bins,
    parse_color_palette,
    parse_det,
    parse_metadata,
    serialize_color_palette,
    serialize_det,
    serialize_metadata,
    split_palettes,
)
from fm21.tokenize.text import COCO_CLASSES, TextTokenizer, train_text_tokenizer


@pytest.fixture(scope="module")
def text_tok() -> TextTokenizer:
    return train_text_tokenizer(["a small corpus of words", "more words here"], vocab_size=4400)


def _through(tok: TextTokenizer, text: str) -> str:
    return tok.decode(tok.encode(text))


def test_det_round_trip_within_one_bin(text_tok: TextTokenizer) -> None:
    rng = np.random.default_rng(0)
    instances = []
    for _ in range(12):
        x0, y0 = rng.uniform(0, 0.7, size=2)
        box = [x0, y0, x0 + rng.uniform(0.05, 0.3), y0 + rng.uniform(0.05, 0.3)]
        name = COCO_CLASSES[int(rng.integers(len(COCO_CLASSES)))]
        instances.append({"box": box, "class_name": name, "score": float(rng.uniform(0.6, 1))})
    text = serialize_det(instances)
    assert len(text_tok.encode(text)) == 5 * len(instances)  # 4 coords + 1 class token each
    parsed = parse_det(_through(text_tok, text))
    order = sorted(instances, key=lambda i: i["box"][0] ** 2 + i["box"][1] ** 2)
    assert [p["class_name"] for p in parsed] == [i["class_name"] for i in order]
    got = np.array([p["box"] for p in parsed])
    want = np.array([i["box"] for i in order])
    assert np.abs(got - want).max() <= 1 / 999


def test_det_threshold_order_and_empty() -> None:
    inst = [
        {"box": [0.5, 0.5, 0.9, 0.9], "class_name": "dog", "score": 0.9},
        {"box": [0.1, 0.0, 0.2, 0.3], "class_name": "hot dog", "score": 0.61},
        {"box": [0.0, 0.0, 0.1, 0.1], "class_name": "cat", "score": 0.59},  # below 0.6
    ]
    assert serialize_det(inst) == (
        "v0=100 v1=0 v2=200 v3=300 hot dog v0=500 v1=500 v2=899 v3=899 dog"
    )
    assert serialize_det(inst[2:]) == ""
    assert parse_det("") == []


def test_color_palette_round_trip_exact(text_tok: TextTokenizer) -> None:
    rng = np.random.default_rng(1)
    palettes = {
        k: [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(k)] for k in range(1, 8)
    }
    for k in range(1, 8):
        text = serialize_color_palette(palettes, k)
        assert len(text_tok.encode(text)) == 1 + 3 * k
        assert parse_color_palette(_through(text_tok, text)) == palettes[k]
    assert serialize_color_palette({2: [(255, 0, 17), (1, 2, 3)]}, 2) == (
        "v1=2 v0=255 v0=0 v0=17 v0=1 v0=2 v0=3"
    )


def test_metadata_bins_round_trip_exact(text_tok: TextTokenizer) -> None:
    fields = {
        "original_width": 640, "original_height": 480, "caption_n_words": 12,
        "n_coco_instances": 3, "colorfulness": 75.0, "brightness": 300.0,  # clipped
        "entropy": 7.3, "walkability": 0.25, "geometric_complexity": 0.1,
        "watermark_score": 0.7, "aesthetic_score": 5.0, "caption_n_chars": 5000,  # clamped
    }
    chunks = serialize_metadata(fields, rng=np.random.default_rng(0))
    assert len(chunks) == len(fields)
    assert chunks != serialize_metadata(fields)  # shuffled (fixed seed)
    text = _through(text_tok, " ".join(chunks))
    bins = metadata_bins(text)
    assert bins == {
        "original_width": 20, "original_height": 15, "caption_n_words": 12,
        "n_coco_instances": 3, "colorfulness": 24, "brightness": 49, "entropy": 35,
        "walkability": 12, "geometric_complexity": 6, "watermark_score": 1,
        "aesthetic_score": 1, "caption_n_chars": 999,
    }
    values = parse_metadata(text)
    assert values["original_width"] == 640.0 and values["caption_n_words"] == 12.0
    # the reference's inverse divides by 50 where the encoder multiplies by 49
    assert values["colorfulness"] == pytest.approx(24 / 50 * 150)


def test_metadata_table_and_unknown_field() -> None:
    assert [f.id for f in METADATA_FIELDS] == list(range(21))
    with pytest.raises(KeyError):
        serialize_metadata({"not_a_field": 1})
    # every chunk is exactly two tokens
    assert serialize_metadata({"semantic_diversity": 2}) == ["v1=16 v0=2"]


def test_the_tokens_stage_keeps_every_palette_size_and_the_loader_draws_k_per_load(text_tok: TextTokenizer) -> None:
    """The reference draws k uniform in 1..7 every time a sample is loaded (apple/ml-4m
    `fourm/data/modality_transforms.py`, ColorPaletteTransform: ``random.randint(1, 7)``),
    so tokens.lance holds the palettes of every k; the loader picks one per (seed, step,
    sample), and without an rng (evaluation) the largest."""
    from fm21.modalities import resolve_specs
    from fm21.tokenize.crops import Crop
    from fm21.tokenize.sequences import serialize
    from fm21.train.loader import row_to_sample

    rng = np.random.default_rng(0)
    stored = [rng.integers(0, 256, 3 * k).astype(np.uint8) for k in range(1, 8)]  # labels.lance: k = 1..7
    texts = serialize("color_palette", {"color_palette": stored}, Crop(0, 0, 32, 32, False), size=32, rng=rng)
    ids = [i for t in texts for i in text_tok.encode(t)]  # as the tokens stage stores them
    palettes = split_palettes(ids)
    assert [len(p) for p in palettes] == [1 + 3 * k for k in range(1, 8)]
    for k, p in enumerate(palettes, start=1):
        assert parse_color_palette(text_tok.decode(p)) == [tuple(int(c) for c in stored[k - 1][i:i + 3])
                                                           for i in range(0, 3 * k, 3)]
    spec = resolve_specs(["color_palette"], resolution=32, patch_size=8, image_vocab_size=16, text_vocab_size=4400)
    drawn = [row_to_sample({"color_palette": ids}, spec, np.random.default_rng([0, step, 3]))["color_palette"]
             for step in range(700)]
    counts = np.bincount([palettes.index(d) for d in drawn], minlength=7)
    assert counts.min() > 70 and counts.max() < 130, counts  # uniform over k = 1..7 (100 expected each)
    again = row_to_sample({"color_palette": ids}, spec, np.random.default_rng([0, 5, 3]))["color_palette"]
    assert again == drawn[5]  # a function of (seed, step, sample): resume sees the same k
    assert row_to_sample({"color_palette": ids}, spec)["color_palette"] == palettes[-1]
    one = palettes[2]  # a store tokenized before: one palette per row, used as it is
    assert split_palettes(one) == [one]
    assert row_to_sample({"color_palette": one}, spec, np.random.default_rng(1))["color_palette"] == one


def test_metadata_chunks_are_shuffled_per_load_as_the_reference(text_tok: TextTokenizer) -> None:
    """apple/ml-4m MetadataTransform (``shuffle=True``) shuffles the fields on every load; the
    loader permutes the stored ``v1=<id> v0=<value>`` chunks by the sample's rng (id order
    without one)."""
    from fm21.modalities import resolve_specs
    from fm21.train.loader import row_to_sample

    spec = resolve_specs(["metadata"], resolution=32, patch_size=8, image_vocab_size=16, text_vocab_size=4400)
    chunks = [text_tok.encode(c) for c in serialize_metadata({f.name: 1 for f in METADATA_FIELDS[:5]})]
    assert all(len(c) == 2 for c in chunks)
    ids = [i for c in chunks for i in c]
    assert row_to_sample({"metadata": ids}, spec)["metadata"] == chunks
    orders = [row_to_sample({"metadata": ids}, spec, np.random.default_rng([0, s, 0]))["metadata"] for s in range(200)]
    assert all(sorted(o) == sorted(chunks) for o in orders)  # the same fields, reordered
    firsts = np.bincount([chunks.index(o[0]) for o in orders], minlength=5)
    assert firsts.min() > 20, firsts  # every field leads sometimes (40 expected each)
    assert row_to_sample({"metadata": ids}, spec, np.random.default_rng([0, 9, 0]))["metadata"] == orders[9]
