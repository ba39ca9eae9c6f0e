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


# ---------------------------------------------------------------- the inspection stats (issue 8)
PADDED = [[5, 6, 0, 0], [7], None, [5, 5, 5, 5, 5], [8, 9, 10], [11, 12]]  # non-pad lengths 2 1 - 5 3 2
GRIDS = [[0, 1, 2, 3], [1, 1, 1, 1], None, [4, 5, 4, 5], [0, 0, 0, 0], [2, 2, 3, 3]]  # codes 0..5 of 8


@pytest.fixture(scope="module")
def store6(tmp_path_factory):
    """6 rows (4 samples, 2 of them with a second crop), nulls in every modality column."""
    import lance

    specs = _specs()
    schema = tokens_schema(specs, tokenizers=TOKENIZERS, labels_fp="labels-fp")
    rgb = [list(range(16 * 16 * 3 // 3)) * 3] * 5 + [None]
    table = pa.table({
        "key": ["a", "a", "b", "c", "c", "d"], "crop": pa.array([0, 1, 0, 0, 1, 0], pa.int16()),
        "split": ["train", "train", "train", "val", "val", "train"],
        "rgb": [[v % 256 for v in r] if r else None for r in rgb], "tok_depth": GRIDS, "caption": PADDED,
    }, schema=schema)
    uri = tmp_path_factory.mktemp("store6") / "tokens.lance"
    lance.write_dataset(table, str(uri), schema=schema, max_rows_per_file=4)  # two fragments
    lance.dataset(str(uri)).tags.create("first", 1)
    return uri


def test_stats_rows_crops_and_lance_versions_tags(store6):
    stats = token_store_stats(store6)
    assert (stats["rows"], stats["samples"], stats["crops"]) == (6, 4, {"0": 4, "1": 2})
    assert stats["lance"]["tags"] == {"first": 1}
    assert stats["lance"]["version"] == stats["version"] and stats["lance"]["num_versions"] >= 1
    assert stats["lance"]["indices"] == []
    text = format_stats(stats)
    assert "first=v1" in text and "crops {0:4 1:2}" in text


def test_stats_coverage_counts_nulls_in_every_kind(store6):
    mods = token_store_stats(store6)["modalities"]
    assert mods["rgb"]["coverage"] == pytest.approx(5 / 6)  # pixels: counted without reading the pixels
    assert mods["tok_depth"]["coverage"] == pytest.approx(5 / 6)
    assert mods["caption"]["coverage"] == pytest.approx(5 / 6)


def test_stats_codebook_usage_dead_codes_and_perplexity(store6):
    depth = token_store_stats(store6)["modalities"]["tok_depth"]
    counts = np.bincount(np.concatenate([g for g in GRIDS if g]), minlength=8)
    p = counts[counts > 0] / counts.sum()
    assert (depth["tokens"], depth["unique"], depth["vocab"], depth["dead_codes"]) == (20, 6, 8, 2)
    assert depth["usage"] == pytest.approx(6 / 8)
    assert depth["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert depth["out_of_vocab"] == 0


def test_stats_sequence_length_distribution_counts_non_pad_tokens(store6):
    cap = token_store_stats(store6)["modalities"]["caption"]
    lengths = np.array([2, 1, 5, 3, 2])  # [PAD] (id 0) is not a token of the caption
    assert cap["seq_len"] == {"min": 1, "max": 5,
                              "median": int(np.quantile(lengths, 0.5, method="inverted_cdf")),
                              "p95": int(np.quantile(lengths, 0.95, method="inverted_cdf"))}
    assert cap["mean_len"] == pytest.approx(lengths.mean()) and cap["max_len"] == 5
    assert cap["dead_codes"] == 4500 - len({v for s in PADDED if s for v in s})


def test_stats_stream_in_batches_without_changing_a_figure(store6):
    whole = token_store_stats(store6, batch_size=4096)
    assert token_store_stats(store6, batch_size=1) == whole


def test_stats_bytes_per_modality_are_lance_on_disk_bytes(store6):
    from fm21.store.stats import BYTES_ON_DISK

    stats = token_store_stats(store6)
    assert stats["bytes_source"] == BYTES_ON_DISK
    per_mod = {n: e["bytes"] for n, e in stats["modalities"].items()}
    assert all(b > 0 for b in per_mod.values()) and sum(per_mod.values()) < stats["bytes"]
    assert per_mod["rgb"] > per_mod["tok_depth"]  # 768 pixels vs 4 tokens per row
    assert stats["modalities"]["rgb"]["bytes_per_row"] == pytest.approx(per_mod["rgb"] / 6)


def test_histogram_pngs_per_token_and_sequence_modality(store6, tmp_path):
    from fm21.store.stats import scan_token_store, write_histograms

    scan = scan_token_store(store6)
    assert scan.seq_lengths["caption"].tolist() == [0, 1, 2, 1, 0, 1]  # rows per non-pad length
    written = {p.name for p in write_histograms(scan, tmp_path / "png")}
    assert written == {"codes_tok_depth.png", "codes_caption.png", "seq_len_caption.png"}  # no pixels
    assert (tmp_path / "png" / "codes_tok_depth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _label_store(uri):
    import lance

    n = 6
    emb = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float16)
    table = pa.table({
        "key": [f"k{i}" for i in range(n)],
        "semseg": pa.array([b"x", None, b"y", b"z", None, b"w"]),  # 4/6
        "det": pa.array([[{"score": 1.0}], [], None, [{"score": 0.5}], [], []]),  # 5/6 (empty is a value)
        "metadata": pa.array([{"n_humans": 1}] * 5 + [None]),  # a struct: 5/6, but see below
        "dinov2_global": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 8),
    })
    lance.write_dataset(table, str(uri))


def test_label_store_coverage_per_column_and_its_modalities(tmp_path):
    import lance

    from fm21.store.stats import format_label_stats, label_store_stats

    _label_store(tmp_path / "labels.lance")
    quick = label_store_stats(tmp_path / "labels.lance")
    assert "coverage" not in quick["columns"]["semseg"]  # no data read unless asked
    stats = label_store_stats(tmp_path / "labels.lance", coverage=True)
    cols = stats["columns"]
    assert [cols[c]["coverage"] for c in ("semseg", "det", "dinov2_global")] == pytest.approx([4 / 6, 5 / 6, 1.0])
    # Lance file format 2.0 (the default) keeps no struct-level nulls: not measurable, so not guessed
    assert lance.dataset(str(tmp_path / "labels.lance")).data_storage_version == "2.0"
    assert cols["metadata"]["coverage"] is None
    assert cols["semseg"]["modalities"] == ["tok_semseg"]
    assert cols["dinov2_global"]["modalities"] == ["tok_dinov2_global"]
    assert stats["embedding_columns"] == ["dinov2_global"]
    assert stats["lance"]["version"] == 1 and stats["lance"]["tags"] == {}
    text = format_label_stats(stats)
    assert "66.7%" in text and "n/a" in text


def test_cli_stats_json_table_and_pngs_over_both_stores(store6, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from fm21.cli import app
    from fm21.store.layout import Workdir

    wd = Workdir(tmp_path / "wd")
    shutil.copytree(store6, wd.tokens_uri)
    _label_store(wd.labels_uri)
    run = CliRunner().invoke
    out = run(app, ["--set", f"workdir={wd.root}", "stats", "--json", "--png", str(tmp_path / "png")])
    assert out.exit_code == 0, out.output
    stats = json.loads(out.stdout)
    assert stats["uri"] == str(wd.tokens_uri) and stats["rows"] == 6  # the token store stays at the top
    assert stats["labels"]["columns"]["semseg"]["coverage"] == pytest.approx(4 / 6)
    assert (tmp_path / "png" / "seq_len_caption.png").exists()
    table = run(app, ["--set", f"workdir={wd.root}", "stats"])
    assert "token store" in table.stdout and "label store" in table.stdout and "min/med/p95/max" in table.stdout
    labels = json.loads(run(app, ["--set", f"workdir={wd.root}", "stats", "--labels", "--json"]).stdout)
    assert labels["uri"] == str(wd.labels_uri) and labels["columns"]["det"]["coverage"] == pytest.approx(5 / 6)
