"""X -> RGB feature distance: the run's own (tiny, random) DINOv2 specialist embeds the
generated and true images; a random specialist never becomes the headline."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fm21.config import SpecialistConfig
from fm21.evaluate.rgb_features import feature_distances, headline, load_scorers
from fm21.evaluate.stage import summarise

TINY_DINO = SpecialistConfig(weights="random", options={
    "hidden_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "mlp_ratio": 2,
    "preprocess": {"input_size": 32}})


@pytest.fixture(scope="module")
def scorers():
    return load_scorers({"dinov2": TINY_DINO, "clip": SpecialistConfig(weights="none")}, image_size=32)


def test_the_runs_specialist_is_loaded_random_and_leaves_the_torch_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    loaded = load_scorers({"dinov2": TINY_DINO}, image_size=32)
    assert torch.equal(torch.rand(4), expected)  # generation after loading draws what it drew before
    assert list(loaded) == ["dinov2"] and loaded["dinov2"].is_random
    assert headline(loaded) is None  # random features: PSNR stays the headline
    assert headline({"dinov2": SimpleNamespace(is_random=False)}) == ("dinov2_distance", -1)
    # weights not on this machine: no distance (evaluate never downloads), the stage goes on
    missing = SpecialistConfig(weights="path", path="/nonexistent/dinov2", options=TINY_DINO.options)
    assert load_scorers({"dinov2": missing}, image_size=32) == {}


def test_distance_is_zero_for_the_truth_and_grows_with_a_different_image(scorers):
    assert list(scorers) == ["dinov2"]  # clip with weights none has no network: skipped
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    other = np.roll(truth, 1, axis=0).astype(np.float64)  # each image replaced by another sample
    d = feature_distances(scorers, {"same": truth.astype(np.float64), "other": other}, truth)
    assert d["same"]["dinov2_distance"] == pytest.approx(0.0, abs=1e-3)
    assert d["other"]["dinov2_distance"] > 10 * max(d["same"]["dinov2_distance"], 1e-4)
    # object pixels only: with no object pixel both images are black, so nothing differs
    none = feature_distances(scorers, {"other": other}, truth, mask=np.zeros((3, 32, 32), bool))
    assert none["other"]["dinov2_distance"] == pytest.approx(0.0, abs=1e-3)


def test_a_task_headline_overrides_its_label_kinds():
    scores = {"all": {"4m": {"psnr": 15.0, "dinov2_distance": 0.1},
                      "tokenizer_bound": {"psnr": 24.0, "dinov2_distance": 0.0},
                      "mean training image": {"psnr": 18.0, "dinov2_distance": 0.2}}}
    by_psnr = summarise("rgb", {"scores": scores, "baselines": ["mean training image"]})
    assert not by_psnr["beats_strongest_baseline"] and by_psnr["gap_closed"]["all"] == pytest.approx(-0.5)
    by_features = summarise("rgb", {"scores": scores, "baselines": ["mean training image"],
                                    "headline": ["dinov2_distance", -1]})
    assert by_features["beats_strongest_baseline"] and by_features["gap_closed"]["all"] == pytest.approx(0.5)
