"""Compact label encodings: encode -> labels.lance -> decode round-trips within each
encoding's stated error, the field metadata describes the column, and the consumers
(tokenizer preprocessing, the pseudolabel batch) get the arrays they got before."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from fm21.config import SpecialistConfig
from fm21.ingest.synthetic import render_scene
from fm21.pseudolabel.specialists import SPECIALISTS
from fm21.store import labels as store
from fm21.store.encodings import MAX_ABS_ERROR, EncodingError, encoding_for_kind, field_meta, storage_type

S = 32


def _fields() -> dict[str, pa.Field]:
    out = {}
    for name in ("image", "depth", "normal", "semseg", "canny_edge"):
        for f in SPECIALISTS[name](SpecialistConfig(), image_size=S).columns():
            out[f.name] = f
    return out


def _maps(num: int = 4) -> dict[str, list[np.ndarray]]:
    """What the specialists return for synthetic scenes: flat arrays of the declared dtype."""
    scenes = [render_scene(100 + i, S, min_objects=2, max_objects=3) for i in range(num)]
    return {
        "rgb": [s.rgb.astype(np.uint8).reshape(-1) for s in scenes],
        "depth": [s.depth.astype(np.float16).reshape(-1) for s in scenes],
        "normal": [s.normal.astype(np.float16).reshape(-1) for s in scenes],
        "semseg": [s.semantic.astype(np.uint8).reshape(-1) for s in scenes],
        "instance": [s.instance.astype(np.uint8).reshape(-1) for s in scenes],
        "canny_edge": [np.where(s.instance > 0, 255, 0).astype(np.uint8).reshape(-1) for s in scenes],
    }


def test_fields_describe_themselves():
    fields = _fields()
    want = {"rgb": "png", "depth": "png16_float16", "normal": "png8_unit", "semseg": "png", "instance": "png",
            "canny_edge": "png"}
    for name, encoding in want.items():
        meta = field_meta(fields[name])
        assert meta["encoding"] == encoding and fields[name].type == pa.binary()
        assert meta["shape"][:2] == (S, S)
    assert field_meta(fields["normal"])["dtype"] == "float16" and field_meta(fields["normal"])["shape"] == (S, S, 3)


def test_encode_store_decode_round_trips_within_the_stated_error(tmp_path):
    import lance

    fields, maps = _fields(), _maps()
    columns = {name: store.encode_column(values, fields[name]) for name, values in maps.items()}
    schema = pa.schema([pa.field("key", pa.string())] + [fields[n] for n in maps])
    table = pa.table({"key": [f"k{i}" for i in range(4)], **columns}, schema=schema)
    lance.write_dataset(table, str(tmp_path / "labels.lance"))
    back = store.read_maps(tmp_path / "labels.lance", list(maps))
    for name, values in maps.items():
        meta = field_meta(fields[name])
        want = np.stack(values).reshape((4, *meta["shape"]))
        got = back[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        err = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
        assert err <= MAX_ABS_ERROR[meta["encoding"]], (name, err)
        if MAX_ABS_ERROR[meta["encoding"]] == 0:
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name  # bit-identical
    # the quantised normals: non-zero error, but within 1/254 + fp16 rounding, under half a degree
    err = np.abs(back["normal"].astype(np.float64) - np.stack(maps["normal"]).reshape(4, S, S, 3)).max()
    assert 0 < err <= 1 / 254 + 2**-12
    # compact: far below the raw size on these flat-shaded scenes
    for name in ("rgb", "semseg", "depth"):
        assert sum(len(v) for v in columns[name].to_pylist()) < 0.5 * sum(v.nbytes for v in maps[name])


def test_nulls_stay_null_and_raw_columns_still_decode():
    field = _fields()["canny_edge"]
    column = store.encode_column([np.zeros(S * S, np.uint8), None], field)
    out = store.column_to_python(column, field)
    assert out[1] is None and out[0].shape == (S, S) and out[0].dtype == np.uint8
    # a store written before the encodings: fixed-size lists with shape/dtype metadata only
    raw_field = pa.field("depth", pa.list_(pa.float16(), 4), metadata={"shape": "[2, 2]", "dtype": "float16"})
    raw = pa.array([np.arange(4, dtype=np.float16)], type=raw_field.type)
    assert store.column_to_python(raw, raw_field).shape == (1, 2, 2)


def test_bad_maps_are_clear_errors():
    fields = _fields()
    with pytest.raises(EncodingError, match="needs 1024"):
        store.encode_column([np.zeros(7, np.uint8)], fields["semseg"])
    with pytest.raises(EncodingError, match=r"components in \[-1, 1\]"):
        store.encode_column([np.full(S * S * 3, 2.0, np.float16)], fields["normal"])
    with pytest.raises(EncodingError, match="not a PNG"):
        store.column_to_python(pa.array([b"junk"], pa.binary()), fields["semseg"])
    with pytest.raises(ValueError, match="unknown label kind"):
        encoding_for_kind("feature")
    with pytest.raises(ValueError, match="cannot hold"):
        storage_type("png8_unit", (S, S), "float16")


def test_tokenizer_preprocessing_gets_the_same_arrays():
    """A consumer reading the decoded maps sees the shapes and dtypes it saw before."""
    from fm21.tokenize.crops import Crop, apply_crop
    from fm21.modalities import MODALITIES
    from fm21.tokenize.preprocess import PREPROCESSORS

    label_kinds = {s.label_columns[0]: s.label_kind for s in MODALITIES.values()}  # column -> label kind
    fields, maps = _fields(), _maps()
    full = Crop(0, 0, S, S, False)
    for name in ("rgb", "depth", "normal", "semseg", "canny_edge"):
        meta = field_meta(fields[name])
        before = np.stack(maps[name]).reshape((4, *meta["shape"]))  # the fixed-size-list reader's output
        after = store.column_to_python(store.encode_column(maps[name], fields[name]), fields[name])
        assert after.shape == before.shape and after.dtype == before.dtype, name
        kind = label_kinds[name]
        crops = [np.stack([apply_crop(m, full, kind=kind, out_size=16) for m in x]) for x in (before, after)]
        x_before, x_after = (PREPROCESSORS[kind].to_model(c) for c in crops)
        assert x_before.shape == x_after.shape and x_before.dtype == x_after.dtype
        tol = 1e-6 if name != "normal" else 2 / 254  # renormalised after the resize
        assert float((x_before.float() - x_after.float()).abs().max()) <= tol, name


def test_json_metadata_is_plain():
    meta = {k.decode(): v.decode() for k, v in _fields()["depth"].metadata.items()}
    assert json.loads(meta["shape"]) == [S, S] and meta["dtype"] == "float16" and meta["encoding"] == "png16_float16"


def test_label_stats_report_encoded_bytes_beside_the_raw_size(tmp_path):
    import lance

    from fm21.store.stats import format_label_stats, label_store_stats

    fields, maps = _fields(), _maps()
    schema = pa.schema([pa.field("key", pa.string())] + [fields[n] for n in maps])
    table = pa.table({"key": [f"k{i}" for i in range(4)],
                      **{n: store.encode_column(v, fields[n]) for n, v in maps.items()}}, schema=schema)
    lance.write_dataset(table, str(tmp_path / "labels.lance"))
    stats = label_store_stats(tmp_path / "labels.lance")
    cols = stats["columns"]
    assert cols["rgb"]["raw_bytes_per_sample"] == S * S * 3 and cols["depth"]["raw_bytes_per_sample"] == S * S * 2
    assert cols["normal"]["raw_bytes_per_sample"] == S * S * 3 * 2 and cols["normal"]["encoding"] == "png8_unit"
    for name in maps:
        assert 0 < cols[name]["bytes_per_sample"] < cols[name]["raw_bytes_per_sample"], name
    assert cols["key"]["encoding"] is None and cols["key"]["raw_bytes_per_sample"] is None
    text = format_label_stats(stats)
    assert "png16_float16" in text and f"{S * S * 3 * 2:,}" in text


def test_a_store_written_before_the_encodings_is_rebuilt_not_appended_to(tmp_path):
    import lance

    from fm21.pseudolabel.job import _build, _drop_if_stale, labels_schema

    schema = labels_schema({"depth": _build("depth", None, image_size=S)}, ingest_fp="fp")
    uri = tmp_path / "labels.lance"
    old_field = pa.field("depth", pa.list_(pa.float16(), S * S), metadata={"shape": f"[{S}, {S}]", "dtype": "float16"})
    old = pa.schema([schema.field("key"), old_field], metadata=schema.metadata)
    lance.write_dataset(old.empty_table(), str(uri), schema=old)
    _drop_if_stale(uri, "fp", schema)
    assert not uri.exists()  # rebuilt from scratch by the job
    lance.write_dataset(schema.empty_table(), str(uri), schema=schema)
    _drop_if_stale(uri, "fp", schema)
    assert uri.exists()  # same types and encodings: kept, resumed
