"""Aligned multi-crop: windows, per-kind resampling/flips, boxes and the val split."""

from __future__ import annotations

import numpy as np
import pytest

from fm21.tokenize.crops import Crop, apply_crop, crop_boxes, crop_window, is_val_key

SIZE = 224
MIN_SCALE = 0.2


def _windows(key: str = "sample-0", *, seed: int = 0, num: int = 200, size: int = SIZE) -> list[Crop]:
    return [crop_window(size, key=key, index=i, seed=seed, min_scale=MIN_SCALE) for i in range(1, num + 1)]


# ------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("key", ["a", "sample-17"])
@pytest.mark.parametrize("seed", [0, 5])
def test_crop_zero_is_full_unflipped_window(key, seed):
    assert crop_window(64, key=key, index=0, seed=seed, min_scale=0.3) == Crop(0, 0, 64, 64, False)


def test_crop_window_is_deterministic():
    first = _windows("k", seed=3, num=20)
    again = _windows("k", seed=3, num=20)
    assert first == again


def test_crop_windows_differ_across_indices_keys_and_seeds():
    crops = _windows("k", num=20)
    assert len(set(crops)) == len(crops)  # 20 distinct windows for 20 indices
    other_key = _windows("k2", num=20)
    other_seed = _windows("k", seed=1, num=20)
    assert sum(a != b for a, b in zip(crops, other_key)) >= 18
    assert sum(a != b for a, b in zip(crops, other_seed)) >= 18


def test_crop_windows_are_inside_the_image_with_bounded_area_and_aspect():
    crops = _windows(num=300)
    for c in crops:
        assert 0 <= c.top and 0 <= c.left and c.height > 0 and c.width > 0
        assert c.top + c.height <= SIZE and c.left + c.width <= SIZE
        area = c.height * c.width / SIZE**2
        # w and h are rounded to whole pixels: allow a few percent around the bounds
        assert MIN_SCALE * 0.97 <= area <= 1.0
        assert 0.75 * 0.98 <= c.width / c.height <= (4 / 3) * 1.02
    areas = np.array([c.height * c.width / SIZE**2 for c in crops])
    assert areas.min() < MIN_SCALE + 0.1 and areas.max() > 0.85  # the whole scale range is used


def test_crop_windows_flip_about_half_the_time():
    flips = np.array([c.hflip for c in _windows(num=400)])
    assert 0.35 < flips.mean() < 0.65


# ------------------------------------------------------------------------------ apply_crop
def test_apply_crop_semseg_is_nearest_resized_and_flipped():
    rng = np.random.default_rng(0)
    classes = np.array([3, 7, 200], np.uint8)
    label = classes[rng.integers(0, 3, (64, 64))]  # (S, S) categorical map
    crop = Crop(5, 9, 37, 45, False)
    out = apply_crop(label, crop, kind="classes", out_size=16)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {3, 7, 200}  # no blended class ids (area/linear would make some)
    flipped = apply_crop(label, Crop(5, 9, 37, 45, True), kind="classes", out_size=16)
    np.testing.assert_array_equal(flipped, out[:, ::-1])


def test_apply_crop_semseg_upsamples_by_repetition():
    label = np.array([[1, 2], [3, 4]], np.uint8)
    out = apply_crop(label, Crop(0, 0, 2, 2, False), kind="classes", out_size=4)
    expected = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_apply_crop_window_without_resize_is_a_plain_slice():
    label = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    out = apply_crop(label, Crop(10, 20, 16, 16, False), kind="depth", out_size=16)
    np.testing.assert_array_equal(out, label[10:26, 20:36])


def _unit_normals(size: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(1)
    n = rng.standard_normal((size, size, 3))
    n[..., 2] = np.abs(n[..., 2]) + 0.5
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_apply_crop_normal_flip_negates_x_and_stays_unit(dtype):
    normals = _unit_normals(48, dtype)
    plain = apply_crop(normals, Crop(4, 6, 40, 30, False), kind="normal", out_size=16)
    flipped = apply_crop(normals, Crop(4, 6, 40, 30, True), kind="normal", out_size=16)
    assert plain.shape == (16, 16, 3) and plain.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 3e-3
    for out in (plain, flipped):
        np.testing.assert_allclose(np.linalg.norm(out.astype(np.float32), axis=-1), 1.0, atol=tol)
    mirrored = plain[:, ::-1]
    np.testing.assert_allclose(flipped[..., 0], -mirrored[..., 0], atol=tol)
    np.testing.assert_allclose(flipped[..., 1:], mirrored[..., 1:], atol=tol)


def test_apply_crop_flip_of_a_non_normal_map_does_not_negate():
    depth = np.linspace(1, 2, 16 * 16, dtype=np.float32).reshape(16, 16)
    out = apply_crop(depth, Crop(0, 0, 16, 16, True), kind="depth", out_size=16)
    np.testing.assert_array_equal(out, depth[:, ::-1])


# ------------------------------------------------------------------------------ boxes
def test_crop_boxes_moves_drops_and_clips():
    crop = Crop(top=20, left=10, height=50, width=40, hflip=False)  # on a 100 px image
    instances = [
        {"box": [0.2, 0.3, 0.3, 0.5], "label": "inside"},
        {"box": [0.6, 0.0, 0.9, 0.1], "label": "outside"},
        {"box": [0.0, 0.6, 0.3, 0.9], "label": "partial"},
    ]
    out = crop_boxes(instances, crop, size=100)
    assert [o["label"] for o in out] == ["inside", "partial"]
    np.testing.assert_allclose(out[0]["box"], [0.25, 0.2, 0.5, 0.6])
    np.testing.assert_allclose(out[1]["box"], [0.0, 0.8, 0.5, 1.0])
    assert instances[0]["box"] == [0.2, 0.3, 0.3, 0.5]  # inputs are not modified


def test_crop_boxes_mirror_x_on_hflip():
    crop = Crop(top=20, left=10, height=50, width=40, hflip=True)
    instances = [{"box": [0.2, 0.3, 0.3, 0.5]}, {"box": [0.0, 0.6, 0.3, 0.9]}]
    out = crop_boxes(instances, crop, size=100)
    np.testing.assert_allclose(out[0]["box"], [0.5, 0.2, 0.75, 0.6])
    np.testing.assert_allclose(out[1]["box"], [0.5, 0.8, 1.0, 1.0])


def test_crop_boxes_full_window_is_identity_and_none_is_empty():
    boxes = [{"box": [0.1, 0.2, 0.7, 0.9]}]
    out = crop_boxes(boxes, Crop(0, 0, 64, 64, False), size=64)
    np.testing.assert_allclose(out[0]["box"], [0.1, 0.2, 0.7, 0.9])
    assert crop_boxes(None, Crop(0, 0, 64, 64, False), size=64) == []


# ------------------------------------------------------------------------------ split
def test_is_val_key_is_deterministic_and_near_the_fraction():
    rng = np.random.default_rng(0)
    keys = [f"{rng.integers(0, 2**62):x}" for _ in range(5000)]
    val = [is_val_key(k, 0.1) for k in keys]
    assert val == [is_val_key(k, 0.1) for k in keys]
    assert abs(np.mean(val) - 0.1) < 0.02
    wider = [is_val_key(k, 0.3) for k in keys]
    assert abs(np.mean(wider) - 0.3) < 0.03
    assert all(w for v, w in zip(val, wider) if v)  # a larger fraction keeps every val key
    assert not any(is_val_key(k, 0.0) for k in keys[:100])
    assert all(is_val_key(k, 1.0) for k in keys[:100])


def test_apply_crop_refuses_a_kind_that_is_not_a_map_label_kind():
    """A column name (the old key) or a non-map kind would be silently interpolated."""
    with pytest.raises(ValueError, match="not a label kind of maps"):
        apply_crop(np.zeros((8, 8), np.uint8), Crop(0, 0, 8, 8, False), kind="semseg", out_size=4)
