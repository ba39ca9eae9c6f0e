"""Task metrics: depth alignment, normal angles, semseg mIoU, and the dispatch."""

from __future__ import annotations

import numpy as np
import pytest

from fm21.evaluate.metrics import HEADLINE, METRICS, depth_metrics, normal_metrics, semseg_metrics, task_metrics


def _depth(seed: int = 0, shape=(2, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 10.0, shape)


# ------------------------------------------------------------------------------ depth
@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (3.0, 2.0), (0.01, -5.0)])
def test_depth_perfect_up_to_affine_is_perfect(scale, shift):
    true = _depth()
    m = depth_metrics(scale * true + shift, true)
    assert m["delta1"] == 1.0
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-9)


def test_depth_metrics_invariant_to_affine_transform_of_prediction():
    true, pred = _depth(0), _depth(1)
    base = depth_metrics(pred, true)
    moved = depth_metrics(4.0 * pred + 7.0, true)
    assert moved["delta1"] == pytest.approx(base["delta1"])
    assert moved["abs_rel"] == pytest.approx(base["abs_rel"], rel=1e-9)
    assert base["delta1"] < 1.0 and base["abs_rel"] > 0.05  # random pred is not perfect


def test_depth_alignment_is_per_image():
    true = _depth(shape=(2, 6, 6))
    pred = true.copy()
    pred[0] = 2 * pred[0] + 1  # a different affine map on each image
    pred[1] = 0.5 * pred[1] - 3
    assert depth_metrics(pred, true)["abs_rel"] == pytest.approx(0.0, abs=1e-9)


def test_depth_constant_prediction_gives_per_image_mean():
    true = np.stack([np.array([[1.0, 2.0], [3.0, 6.0]]), np.array([[4.5, 5.0], [5.0, 5.5]])])  # means 3, 5
    pred = np.full_like(true, 0.7)
    m = depth_metrics(pred, true)
    aligned = np.stack([np.full((2, 2), 3.0), np.full((2, 2), 5.0)])
    ratio = np.maximum(aligned / true, true / aligned)
    assert m["delta1"] == pytest.approx((ratio < 1.25).mean())
    assert m["delta1"] == pytest.approx(5 / 8)  # one pixel of image 1, all four of image 2
    assert m["abs_rel"] == pytest.approx((2 + 0.5 + 0 + 0.5 + 0.5 / 4.5 + 0 + 0 + 0.5 / 5.5) / 8)
    assert m["abs_rel"] == pytest.approx((np.abs(aligned - true) / true).mean())


# ------------------------------------------------------------------------------ normals
def _unit(shape=(2, 4, 4, 3), seed: int = 0) -> np.ndarray:
    n = np.random.default_rng(seed).standard_normal(shape)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def test_normals_identical_is_zero_degrees():
    n = _unit()
    m = normal_metrics(n, n)
    assert m["mean_angle"] == pytest.approx(0.0, abs=1e-3)
    assert m["median_angle"] == pytest.approx(0.0, abs=1e-3)
    assert m["within_11.25"] == 1.0


def test_normals_opposite_is_180_degrees():
    n = _unit()
    m = normal_metrics(-n, n)
    assert m["mean_angle"] == pytest.approx(180.0, abs=1e-3)
    assert m["within_11.25"] == 0.0


def test_normals_right_angle_and_mixture():
    true = np.zeros((1, 1, 4, 3))
    true[..., 2] = 1.0
    pred = np.zeros_like(true)
    pred[0, 0, 0] = [1.0, 0.0, 0.0]  # 90
    pred[0, 0, 1] = [0.0, 1.0, 0.0]  # 90
    pred[0, 0, 2] = [0.0, 0.0, 1.0]  # 0
    pred[0, 0, 3] = [0.0, 1.0, 1.0]  # 45
    m = normal_metrics(pred, true)
    assert m["mean_angle"] == pytest.approx((90 + 90 + 0 + 45) / 4)
    assert m["median_angle"] == pytest.approx(67.5)
    assert m["within_11.25"] == pytest.approx(0.25)


def test_normals_unnormalised_predictions_are_normalised():
    n = _unit()
    lengths = np.random.default_rng(3).uniform(0.1, 10.0, n.shape[:-1] + (1,))
    assert normal_metrics(n * lengths, n)["mean_angle"] == pytest.approx(0.0, abs=1e-3)
    other = _unit(seed=1)
    assert normal_metrics(other * lengths, n)["mean_angle"] == pytest.approx(normal_metrics(other, n)["mean_angle"])


# ------------------------------------------------------------------------------ semseg
def test_semseg_miou_hand_example():
    true = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 2]])  # class 2 appears only in the prediction
    m = semseg_metrics(pred, true, num_classes=3)
    # IoU: class 0 = 1/2, class 1 = 1/3, class 2 = 0/1
    assert m["miou"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert m["pixel_acc"] == pytest.approx(2 / 4)
    assert m["num_classes_present"] == 3


def test_semseg_absent_classes_do_not_count():
    true = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 2]])
    m = semseg_metrics(pred, true, num_classes=10)  # classes 3..9 are in neither map
    assert m["miou"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert m["num_classes_present"] == 3


def test_semseg_perfect_and_pixel_accuracy():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, (2, 8, 8))
    assert semseg_metrics(true, true, num_classes=5)["miou"] == 1.0
    pred = true.copy()
    pred[0, 0, :4] = (pred[0, 0, :4] + 1) % 5  # 4 wrong pixels out of 128
    assert semseg_metrics(pred, true, num_classes=5)["pixel_acc"] == pytest.approx(124 / 128)


# ------------------------------------------------------------------------------ dispatch
def test_task_metrics_dispatches_by_label_kind():
    depth = _depth()
    assert task_metrics("depth", 2 * depth, depth) == depth_metrics(2 * depth, depth)
    n = _unit()
    assert task_metrics("normal", n, n) == normal_metrics(n, n)
    seg = np.array([[0, 1, 2, 2]])
    assert task_metrics("classes", seg, seg, num_classes=3) == semseg_metrics(seg, seg, num_classes=3)


def test_task_metrics_unknown_label_kind_raises():
    with pytest.raises(KeyError, match="edges"):
        task_metrics("edges", np.zeros(1), np.zeros(1))


def test_headline_metrics_exist_for_every_task():
    depth, n, seg = _depth(), _unit(), np.array([[0, 1]])
    outputs = {"depth": task_metrics("depth", depth, depth), "normal": task_metrics("normal", n, n),
               "classes": task_metrics("classes", seg, seg, num_classes=2)}
    for kind in METRICS:  # the pixel kinds; the sequence/vector kinds: tests/evaluate/test_task_metrics.py
        metric, direction = HEADLINE[kind]
        assert metric in outputs[kind] and direction in (-1, 1)
