"""SAM instances (tiny random-init SAM through the real loader) and SAM edges from them.

No hub or URL is contacted: checkpoints are saved to tmp_path from a random-init model of
SAM's own modules and loaded by the specialist's ``weights: path`` code; the URL download
is the one thing mocked (it writes that local checkpoint).
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest
import torch

from fm21.config import ConfigError, SpecialistConfig
from fm21.modalities import MODALITIES
from fm21.pseudolabel.specialists import NETWORKS, SPECIALISTS, specialist_class
from fm21.pseudolabel.specialists.sam import INSTANCE_STRUCT, decode_rle, encode_rle, instances_from_records
from fm21.pseudolabel.specialists.sam_edge import SamEdge
from fm21.pseudolabel.specialists.weights import cache_dir
from fm21.store import labels as store

S = 64
# Low thresholds: a random-init SAM predicts no confident mask, so the filters are off.
TINY = {"model_type": "tiny", "points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def two_squares(num: int = 2) -> dict:
    rgb = np.full((num, S, S, 3), 40, np.uint8)
    rgb[:, 8:30, 8:30] = (230, 30, 30)
    rgb[:, 30:60, 34:60] = (30, 200, 40)
    return {"key": [f"r{i}" for i in range(num)], "rgb": rgb, "meta": [{}] * num, "gt": [None] * num}


def sam(weights: str = "random", **cfg):
    options = {**TINY, **cfg.pop("options", {})}
    return NETWORKS["sam"](SpecialistConfig(weights=weights, options=options, **cfg), image_size=S)


def check_instances(values: list, field: pa.Field) -> int:
    """Structure of a ``sam_instances`` column; returns the number of instances."""
    assert field.type == pa.list_(INSTANCE_STRUCT)
    arr = store.encode_column(values, field)
    assert arr.type == field.type and arr.null_count == 0
    count = 0
    for row in arr.to_pylist():  # what a reader of labels.lance gets
        scores = [inst["score"] for inst in row]
        assert scores == sorted(scores, reverse=True)
        for inst in row:
            mask = decode_rle(inst["rle"])
            assert inst["rle"]["size"] == [S, S] and mask.shape == (S, S)
            assert inst["area"] == mask.sum() > 0
            x0, y0, x1, y1 = inst["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            ys, xs = np.nonzero(mask)  # the box covers exactly the mask's pixels
            np.testing.assert_allclose(inst["box"], [xs.min() / S, ys.min() / S, (xs.max() + 1) / S,
                                                     (ys.max() + 1) / S], atol=1e-6)
            assert np.isfinite(inst["score"]) and np.isfinite(inst["stability_score"])
            count += 1
    return count


def test_registry_names_the_column_the_modality_reads():
    spec = MODALITIES["sam_instance"]
    cls = specialist_class(spec.specialist, "random")
    assert cls.name == "sam" and cls is NETWORKS["sam"]
    assert specialist_class(spec.specialist, "none") is SPECIALISTS["sam"]  # the oracle (sam_oracle.py)
    assert [f.name for f in sam().columns()] == list(spec.label_columns)


def test_plan_runs_sam_before_sam_edge(tiny_config):
    from fm21.pseudolabel.job import plan_specialists

    cfg = tiny_config("pseudolabel.specialists.sam.enabled=true", "pseudolabel.specialists.sam.weights=random")
    order = plan_specialists(cfg.pseudolabel, cfg.specs())
    assert order.index("sam") < order.index("sam_edge") and order.index("semseg") < order.index("sam_edge")


def test_random_tiny_sam_saved_and_loaded_through_path(tmp_path):
    rand = sam("random")
    rand.load()
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(rand.model.state_dict(), ckpt)  # the released checkpoints' format: a state dict
    loaded = sam("path", path=str(ckpt))
    loaded.load()
    for key, value in rand.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key

    batch = two_squares()
    out = loaded(batch)
    assert list(out) == ["sam_instances"] and len(out["sam_instances"]) == 2
    assert check_instances(out["sam_instances"], loaded.columns()[0]) >= 1  # thresholds off: masks come out
    assert out == rand(batch)  # same weights, same instances
    meta = loaded.columns()[0].metadata
    assert meta[b"random"] == b"false" and rand.columns()[0].metadata[b"random"] == b"true"


def test_pretrained_url_is_downloaded_into_the_cache(tmp_path, monkeypatch):
    rand = sam("random")
    rand.load()
    src = tmp_path / "served.pth"
    torch.save(rand.model.state_dict(), src)
    fetched = []

    def fake_download(url, dst, progress=True):  # stands in for the download only
        fetched.append(url)
        dst_path = type(src)(dst)
        dst_path.write_bytes(src.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    url = "https://example.invalid/sam/sam_tiny_0000.pth"
    spec = sam("pretrained", model_id=url)
    assert not spec.is_cached()
    spec.load()
    assert fetched == [url] and (cache_dir() / "url" / "sam_tiny_0000.pth").exists() and spec.is_cached()
    again = sam("pretrained", model_id=url)
    again.load()  # from the cache: no second download
    assert fetched == [url]
    assert torch.equal(again.model.mask_decoder.iou_prediction_head.layers[0].weight,
                       rand.model.mask_decoder.iou_prediction_head.layers[0].weight)


def test_default_checkpoints_and_option_errors():
    assert sam("pretrained", options={"model_type": "vit_h"}).model_id.endswith("sam_vit_h_4b8939.pth")
    assert sam("pretrained", options={"model_type": "vit_b"}).model_id.endswith("sam_vit_b_01ec64.pth")
    with pytest.raises(ConfigError, match="no released checkpoint"):
        sam("pretrained")  # tiny has no URL
    with pytest.raises(ConfigError, match=r"sam\.options\.points_per_sid"):
        sam(options={"points_per_sid": 4})
    with pytest.raises(ConfigError, match="none"):
        NETWORKS["sam"](SpecialistConfig(), image_size=S)  # the network: weights: none is the oracle's


def test_wrong_image_size_names_the_sample():
    spec = sam()
    batch = two_squares(1)
    batch["rgb"] = batch["rgb"][:, :32, :32]
    with pytest.raises(ValueError, match="r0"):
        spec(batch)


def square(y0: int, x0: int, side: int) -> np.ndarray:
    mask = np.zeros((S, S), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


def test_instances_from_known_masks():
    """Generator records (binary masks) -> instances: exact RLE, box, area; empty dropped."""
    big, small = square(4, 4, 20), square(30, 40, 6)
    records = [
        {"segmentation": small, "predicted_iou": 0.7, "stability_score": 0.9},
        {"segmentation": np.zeros((S, S), bool), "predicted_iou": 0.99, "stability_score": 1.0},
        {"segmentation": big, "predicted_iou": 0.95, "stability_score": 0.97},
    ]
    inst = instances_from_records(records)
    assert [i["area"] for i in inst] == [400, 36]  # best score first, the empty mask gone
    assert inst[0]["box"] == pytest.approx([4 / S, 4 / S, 24 / S, 24 / S])
    assert inst[1]["box"] == pytest.approx([40 / S, 30 / S, 46 / S, 36 / S])
    assert np.array_equal(decode_rle(inst[0]["rle"]), big)
    # COCO uncompressed RLE, column-major: a mask of column 0 rows 0..1 is 0 zeros, 2 ones, rest zeros
    corner = np.zeros((4, 3), bool)
    corner[:2, 0] = True
    assert encode_rle(corner) == {"size": [4, 3], "counts": [0, 2, 10]}
    assert check_instances([inst], sam().columns()[0]) == 2


# ------------------------------------------------------------------ sam_edge from sam_instances
def record(mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    return {"rle": encode_rle(mask), "area": int(mask.sum()), "score": 0.9, "stability_score": 0.9,
            "box": [xs.min() / S, ys.min() / S, (xs.max() + 1) / S, (ys.max() + 1) / S]}


def neighbour_edges(ids: np.ndarray) -> np.ndarray:
    """The boundary rule spelt out pixel by pixel: 255 where the pixel below or right differs."""
    edge = np.zeros(ids.shape, np.uint8)
    for y in range(ids.shape[0]):
        for x in range(ids.shape[1]):
            if (y + 1 < ids.shape[0] and ids[y + 1, x] != ids[y, x]) or (
                    x + 1 < ids.shape[1] and ids[y, x + 1] != ids[y, x]):
                edge[y, x] = 255
    return edge


@pytest.mark.parametrize("order", [1, -1])
def test_sam_edge_paints_larger_masks_first(order):
    big, small = square(10, 10, 20), square(20, 20, 16)  # overlap: rows/cols 20..29
    expected_ids = np.zeros((S, S), np.int32)
    expected_ids[10:30, 10:30] = 1
    expected_ids[20:36, 20:36] = 2  # the smaller square on top, whole
    batch = two_squares(1)
    batch["sam_instances"] = [[record(big), record(small)][::order]]
    batch["instance"] = [np.zeros(S * S, np.uint8)]  # present, but SAM's instances win
    edge = SamEdge(SpecialistConfig(), image_size=S)(batch)["sam_edge"][0].reshape(S, S)
    np.testing.assert_array_equal(edge, neighbour_edges(expected_ids))
    assert edge[35, 25] == 255 and edge[25, 25] == 0  # the small square's outline, not its inside


def test_sam_edge_falls_back_to_the_instance_column():
    ids = np.zeros((S, S), np.uint8)
    ids[5:15, 5:15] = 3
    batch = two_squares(2)
    batch["sam_instances"] = [None, []]  # no SAM row for sample 0; SAM found nothing in sample 1
    batch["instance"] = [ids.reshape(-1), ids.reshape(-1)]
    edges = SamEdge(SpecialistConfig(), image_size=S)(batch)["sam_edge"]
    np.testing.assert_array_equal(edges[0].reshape(S, S), neighbour_edges(ids))
    assert not edges[1].any()  # SAM's empty list: no masks, no edges
    with pytest.raises(KeyError, match="sam_instances"):
        SamEdge(SpecialistConfig(), image_size=S)(two_squares(1))


def test_sam_edge_source_option_picks_the_instances():
    """``source: instance`` (the demo: synthetic truth beside a random-init SAM) ignores SAM's
    masks; ``source: sam`` refuses to fall back to the instance column."""
    ids = np.zeros((S, S), np.uint8)
    ids[5:15, 5:15] = 3
    batch = two_squares(1)
    batch["sam_instances"] = [[record(square(10, 10, 20))]]
    batch["instance"] = [ids.reshape(-1)]
    edge = SamEdge(SpecialistConfig(options={"source": "instance"}), image_size=S)(batch)["sam_edge"][0]
    np.testing.assert_array_equal(edge.reshape(S, S), neighbour_edges(ids))
    no_sam = two_squares(1)
    no_sam["instance"] = [ids.reshape(-1)]
    with pytest.raises(KeyError, match="source: sam"):
        SamEdge(SpecialistConfig(options={"source": "sam"}), image_size=S)(no_sam)
