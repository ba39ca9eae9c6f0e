"""Image-blind baselines, object-pixel scoring and the gap-closed figure."""

from __future__ import annotations

import numpy as np
import pytest

from fm21.evaluate.baselines import (
    BASELINES, object_classes, per_pixel_majority_class, per_pixel_mean_depth, per_pixel_mean_normal,
)
from fm21.evaluate.metrics import depth_metrics, gap_closed, normal_metrics, semseg_metrics
from fm21.evaluate.stage import score_task


def _scenes(n: int, seed: int = 0):
    """Layout-prior scenes: floor class 1 (bottom), wall class 0 (top), one square object
    of class 2 or 3 at a random place; depth grows toward the top, the object is closer."""
    rng = np.random.default_rng(seed)
    sem = np.zeros((n, 16, 16), np.uint8)
    sem[:, 8:] = 1
    depth = np.tile(np.linspace(10.0, 2.0, 16)[:, None], (n, 1, 16))
    objects = np.zeros((n, 16, 16), bool)
    for i in range(n):
        r, c = rng.integers(2, 11, size=2)
        sem[i, r:r + 4, c:c + 4] = 2 + i % 2
        depth[i, r:r + 4, c:c + 4] = 1.5
        objects[i, r:r + 4, c:c + 4] = True
    return sem, depth, objects


def test_per_pixel_prior_is_the_training_mean_and_majority():
    sem, depth, _ = _scenes(40)
    prior = per_pixel_majority_class(sem[:2], sem)
    assert prior.shape == (2, 16, 16) and (prior[:, :8] == 0).all() and (prior[:, 8:] == 1).all()
    np.testing.assert_allclose(per_pixel_mean_depth(depth[:2], depth)[0], depth.mean(0))
    normals = np.zeros((40, 16, 16, 3))
    normals[..., 2] = 1.0
    normals[:20, ..., 0] = 1.0
    assert np.allclose(np.linalg.norm(per_pixel_mean_normal(normals[:1], normals), axis=-1), 1.0)


def test_every_task_has_the_per_pixel_prior_first():
    assert [next(iter(b)) for b in BASELINES.values()] == [
        "per-pixel mean depth", "per-pixel mean normal", "per-pixel majority class"]


def test_object_classes_come_from_instance_masks():
    sem, _, objects = _scenes(40)
    assert object_classes(sem, objects).tolist() == [2, 3]


def test_a_floor_and_wall_model_scores_near_zero_on_objects():
    sem, depth, objects = _scenes(30)
    prior = per_pixel_majority_class(sem, sem)
    classes = object_classes(sem, objects)
    overall = semseg_metrics(prior, sem, num_classes=4)
    on_objects = semseg_metrics(prior, sem, num_classes=4, mask=objects, classes=classes)
    assert overall["miou"] > 0.3 and overall["pixel_acc"] > 0.8
    assert on_objects["miou"] == 0.0 and on_objects["pixel_acc"] == 0.0
    perfect = semseg_metrics(sem, sem, num_classes=4, mask=objects, classes=classes)
    assert perfect["miou"] == 1.0 and perfect["pixel_acc"] == 1.0


def test_masked_depth_and_normal_metrics_score_only_masked_pixels():
    _, depth, objects = _scenes(10)
    wrong = depth.copy()
    wrong[~objects] *= 3.0  # wrong off the objects (and not an affine map of the truth)
    wrong[~objects] += np.random.default_rng(0).uniform(0, 5, size=(~objects).sum())
    assert depth_metrics(depth, depth, mask=objects)["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    assert depth_metrics(wrong, depth)["abs_rel"] > 0.05
    n = np.zeros((2, 4, 4, 3))
    n[..., 2] = 1
    bad = n.copy()
    bad[:, :2] = [1.0, 0.0, 0.0]
    mask = np.zeros((2, 4, 4), bool)
    mask[:, 2:] = True
    assert normal_metrics(bad, n, mask=mask)["mean_angle"] == pytest.approx(0.0, abs=1e-6)
    assert normal_metrics(bad, n)["mean_angle"] == pytest.approx(45.0)


def test_gap_closed_runs_from_prior_to_bound_in_either_direction():
    assert gap_closed(0.9, prior=0.8, bound=1.0) == pytest.approx(0.5)
    assert gap_closed(15.0, prior=20.0, bound=10.0) == pytest.approx(0.5)  # lower is better
    assert gap_closed(0.7, prior=0.8, bound=1.0) == pytest.approx(-0.5)
    assert np.isnan(gap_closed(0.7, prior=0.8, bound=0.8))


def test_score_task_picks_the_strongest_baseline_and_judges_against_it():
    sem, _, objects = _scenes(30)
    predictions = {
        "4m": sem.copy(),  # perfect
        "tokenizer_bound": sem.copy(),
        "per-pixel majority class": per_pixel_majority_class(sem, sem),
        "majority class": np.ones_like(sem),
    }
    predictions["4m"][:, :, :2] = 0  # slightly wrong: gap closed just under 100 %
    res = score_task("classes", predictions, sem, objects, baselines=["per-pixel majority class", "majority class"],
                     num_classes=4, classes=object_classes(sem, objects))
    assert res["strongest_baseline"]["all"] == "per-pixel majority class"
    assert 0.5 < res["gap_closed"]["all"] < 1.0
    assert res["beats_strongest_baseline"]
