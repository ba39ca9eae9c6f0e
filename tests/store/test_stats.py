"""tokens.lance metadata and `fm21 stats`: counts, coverage, codebook usage, compatibility."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from fm21.modalities import resolve_specs
from fm21.store.stats import format_stats, token_store_stats
from fm21.store.tokens import check_compatible, read_store_metadata, tokens_schema

NAMES = ["rgb", "tok_depth", "caption"]
TOKENIZERS = {"tok_depth": "random-divae-1234", "caption": "wordpiece-abcd"}
CAPTIONS = [[100, 101], None, [100], [102, 103, 104]]  # 3 of 4 rows have a caption


def _specs(**kw):
    args = {"resolution": 16, "patch_size": 8, "image_vocab_size": 8, "text_vocab_size": 4500} | kw
    return resolve_specs(NAMES, **args)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import lance

    specs = _specs()
    schema = tokens_schema(specs, tokenizers=TOKENIZERS, labels_fp="labels-fp")
    rgb = np.random.default_rng(0).integers(0, 256, (4, 16 * 16 * 3)).astype(np.uint8)
    table = pa.table({
        "key": ["k0", "k0", "k1", "k2"],  # k0 has two crops: 4 rows, 3 samples
        "crop": pa.array([0, 1, 0, 0], pa.int16()),
        "split": ["train", "train", "val", "train"],
        "rgb": [r.tolist() for r in rgb],
        "tok_depth": [[0, 1, 2, 3]] * 4,  # 4 of the 8 codes, each used equally
        "caption": CAPTIONS,
    }, schema=schema)
    uri = tmp_path_factory.mktemp("store") / "tokens.lance"
    lance.write_dataset(table, str(uri), schema=schema)
    return uri


def test_store_metadata_round_trips(store):
    meta = read_store_metadata(store)
    assert list(meta["specs"]) == NAMES
    assert meta["specs"]["tok_depth"]["vocab_size"] == 8
    assert meta["tokenizers"] == TOKENIZERS
    assert meta["labels_fingerprint"] == "labels-fp"


def test_stats_rows_samples_splits(store):
    stats = token_store_stats(store)
    assert stats["rows"] == 4
    assert stats["samples"] == 3
    assert stats["splits"] == {"train": 3, "val": 1}
    assert stats["bytes"] > 0
    assert stats["tokenizers"] == TOKENIZERS
    assert list(stats["modalities"]) == NAMES


def test_stats_pixels_have_coverage_only(store):
    rgb = token_store_stats(store)["modalities"]["rgb"]
    assert rgb["kind"] == "pixels" and rgb["coverage"] == 1.0
    assert "tokens" not in rgb and "perplexity" not in rgb


def test_stats_image_tokens_usage_and_perplexity(store):
    depth = token_store_stats(store)["modalities"]["tok_depth"]
    assert depth["coverage"] == 1.0
    assert depth["tokens"] == 16
    assert depth["unique"] == 4
    assert depth["usage"] == pytest.approx(4 / 8)
    assert depth["perplexity"] == pytest.approx(4.0)  # uniform over 4 codes
    assert depth["random_tokenizer"] is True


def test_stats_sequence_coverage_lengths_and_perplexity(store):
    cap = token_store_stats(store)["modalities"]["caption"]
    assert cap["coverage"] == pytest.approx(0.75)
    assert cap["tokens"] == 6
    assert cap["unique"] == 5
    assert cap["usage"] == pytest.approx(5 / 4500)
    p = np.array([2, 1, 1, 1, 1]) / 6  # id 100 twice, four ids once
    assert cap["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert cap["mean_len"] == pytest.approx(2.0)
    assert cap["max_len"] == 3
    assert cap["random_tokenizer"] is False


def test_format_stats_names_every_modality(store):
    text = format_stats(token_store_stats(store))
    for name in NAMES:
        assert name in text
    assert "75.0%" in text  # caption coverage
    assert "50.0%" in text  # tok_depth codebook usage


def test_check_compatible_accepts_same_specs_and_subsets(store):
    check_compatible(store, _specs(), TOKENIZERS)
    check_compatible(store, {"tok_depth": _specs()["tok_depth"]}, {"caption": TOKENIZERS["caption"]})


@pytest.mark.parametrize("change", [{"image_vocab_size": 16}, {"resolution": 32}, {"patch_size": 4}])
def test_check_compatible_rejects_another_scale(store, change):
    with pytest.raises(ValueError, match="'tok_depth' was tokenized with another spec"):
        check_compatible(store, {"tok_depth": _specs(**change)["tok_depth"]})
    with pytest.raises(ValueError, match="was tokenized with another spec"):
        check_compatible(store, _specs(**change))  # the whole set: the first mismatch is named


def test_check_compatible_rejects_another_text_vocab(store):
    with pytest.raises(ValueError, match="'caption' was tokenized with another spec"):
        check_compatible(store, _specs(text_vocab_size=300))


def test_check_compatible_rejects_missing_modality(store):
    specs = resolve_specs(["tok_normal"], resolution=16, patch_size=8, image_vocab_size=8)
    with pytest.raises(ValueError, match="no modality 'tok_normal'"):
        check_compatible(store, specs)


def test_check_compatible_rejects_another_tokenizer_fingerprint(store):
    with pytest.raises(ValueError, match="tokenizer 'tok_depth' fingerprint random-divae-1234 != other.*make tokens"):
        check_compatible(store, _specs(), {"tok_depth": "other"})


def test_label_store_bytes_per_sample_per_column(tmp_path):
    import lance

    from fm21.store.stats import format_label_stats, label_store_stats

    maps = np.zeros((10, 64), np.uint8)  # constant maps: compress far below their raw size
    table = pa.table({"key": [f"k{i}" for i in range(10)],
                      "semseg": pa.FixedSizeListArray.from_arrays(maps.ravel(), 64),
                      "det": [{"boxes": [1.0, 2.0]}] * 10})
    lance.write_dataset(table, str(tmp_path / "labels.lance"))
    stats = label_store_stats(tmp_path / "labels.lance")
    assert stats["rows"] == 10 and list(stats["columns"]) == ["key", "semseg", "det"]
    assert stats["columns"]["semseg"]["raw_bytes_per_sample"] == 64
    assert stats["columns"]["det"]["raw_bytes_per_sample"] is None
    assert all(c["bytes_per_sample"] > 0 for c in stats["columns"].values())  # struct: children counted
    assert "semseg" in format_label_stats(stats)
