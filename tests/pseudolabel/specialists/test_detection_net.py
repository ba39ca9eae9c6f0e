"""Detection network: YOLO and DETR backends load through the real loaders from local
random-init checkpoints and produce the detection oracle's ``det`` column.

Nothing touches the network: ultralytics runs with ``YOLO_OFFLINE=1`` and its settings in
tmp_path, hubs are offline, and any socket connect or DNS lookup fails the test.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from fm21.config import ConfigError, SpecialistConfig
from fm21.pseudolabel.specialists import NETWORKS, SPECIALISTS, specialist_class
from fm21.pseudolabel.specialists.detection import DetectionOracle
from fm21.pseudolabel.specialists.detection_net import DetectionNet, coco_label_table, detr_coco_id2label
from fm21.store import labels as store
from fm21.tokenize.serialize import serialize_det
from fm21.tokenize.text import COCO_CLASSES

S = 64
TINY_DETR = {  # DetrConfig overrides: a tiny HF ResNet backbone at random init, nothing pretrained
    "backbone_config": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 8, 16, 16],
                        "depths": [1, 1, 1, 1], "out_features": ["stage4"]},
    "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 12,
}
YOLO_64 = {"preprocess": {"input_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bilinear"}}


def batch(num: int = 2) -> dict:
    rgb = np.full((num, S, S, 3), 60, np.uint8)
    rgb[:, 10:40, 12:36] = (200, 40, 40)
    return {"key": [f"r{i}" for i in range(num)], "rgb": rgb, "meta": [{}] * num, "gt": [None] * num}


def detector(weights: str, **options) -> DetectionNet:
    path = options.pop("path", None)
    return specialist_class("detection", weights)(
        SpecialistConfig(weights=weights, path=path, options={"min_score": 0.0, **options}), image_size=S)


def check_det(values: list, spec: DetectionNet, *, min_score: float = 0.0) -> int:
    """The oracle's column: same Arrow type, COCO names, boxes in [0, 1], best first."""
    oracle = DetectionOracle(SpecialistConfig(), image_size=S).columns()[0]
    field = spec.columns()[0]
    assert field.name == oracle.name == "det" and field.type == oracle.type
    arr = store.encode_column(values, field)
    assert arr.type == field.type and arr.null_count == 0
    count = 0
    for row in arr.to_pylist():
        scores = [r["score"] for r in row]
        assert scores == sorted(scores, reverse=True) and all(s >= min_score for s in scores)
        for r in row:
            x0, y0, x1, y1 = r["box"]
            assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
            assert r["class_name"] in COCO_CLASSES
            count += 1
        serialize_det(row, threshold=0.0)  # the det serializer reads the records
    return count


def test_registry_swaps_the_oracle_for_the_network():
    assert SPECIALISTS["detection"] is DetectionOracle and NETWORKS["detection"] is DetectionNet
    assert specialist_class("detection", "none") is DetectionOracle
    assert specialist_class("detection", "path") is DetectionNet and DetectionNet.name == "detection"


def test_label_tables_map_to_the_tokenizer_coco_names():
    detr = coco_label_table(detr_coco_id2label())  # DETR's 91 ids, "N/A" gaps
    assert detr[1] == "person" and detr[67] == "dining table" and detr[72] == "tv" and detr[12] is None
    assert sorted(n for n in detr.values() if n) == sorted(COCO_CLASSES)
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    yolo_names = YAML.load(check_yaml("coco.yaml"))["names"]  # the package's own COCO label file
    assert coco_label_table(yolo_names) == dict(enumerate(COCO_CLASSES))
    assert coco_label_table({i: str(i) for i in range(80)}) == dict(enumerate(COCO_CLASSES))  # yaml-built
    assert coco_label_table({0: "TV_monitor", 1: "Sofa", 2: "zebra crossing"}) == {0: "tv", 1: "couch", 2: None}


def test_yolo_random_saved_and_loaded_through_path(tmp_path):
    rand = detector("random", **YOLO_64)
    rand.load()
    ckpt = tmp_path / "yolo_random.pt"
    rand.model.save(ckpt)  # ultralytics' checkpoint format (weights stored in fp16)
    loaded = detector("path", path=str(ckpt), **YOLO_64)
    loaded.load()
    saved = {k: v.half().float() for k, v in rand.model.model.state_dict().items()}
    for key, value in loaded.model.model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value.float(), saved[key]), key
    out = loaded(batch())
    assert list(out) == ["det"] and len(out["det"]) == 2
    assert check_det(out["det"], loaded) > 0  # floor 0: a random network still boxes something
    few = detector("path", path=str(ckpt), max_det=3, min_score=0.0, **YOLO_64)
    assert all(len(row) <= 3 for row in few(batch())["det"])


def test_detr_random_saved_and_loaded_through_path(tmp_path):
    opts = {"backend": "detr", "preprocess": {"input_size": 64}}
    rand = detector("random", detr_config=TINY_DETR, **opts)
    rand.load()
    assert not rand.model.config.backbone_config.to_dict().get("use_pretrained_backbone", False)
    rand.model.save_pretrained(tmp_path / "detr")  # the hub's format: config.json + safetensors
    loaded = detector("path", path=str(tmp_path / "detr"), **opts)
    loaded.load()
    b = batch()
    out = loaded(b)
    field = loaded.columns()[0]
    stored = store.encode_column(out["det"], field).to_pylist()
    assert stored == store.encode_column(rand(b)["det"], field).to_pylist()  # same weights, same boxes
    n = check_det(out["det"], loaded)
    assert 0 < n <= 2 * TINY_DETR["num_queries"]
    floor = detector("path", path=str(tmp_path / "detr"), min_score=0.02, **opts)
    check_det(floor(b)["det"], floor, min_score=0.02)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="multiple of 32"):
        detector("random", preprocess={"input_size": 70})
    with pytest.raises(ConfigError, match=r"detection\.options\.backend"):
        detector("random", backend="vitdet")
    assert detector("pretrained").model_id == "yolo26n.pt"
    assert detector("pretrained", backend="detr").model_id == "facebook/detr-resnet-50"
    assert detector("pretrained").source == "ultralytics" and detector("random", backend="detr").source == "hf"


def test_wrong_image_size_names_the_sample(tmp_path):
    spec = detector("random", backend="detr", detr_config=TINY_DETR, preprocess={"input_size": 64})
    b = batch(1)
    b["rgb"] = b["rgb"][:, :32]
    with pytest.raises(ValueError, match="r0"):
        spec(b)
