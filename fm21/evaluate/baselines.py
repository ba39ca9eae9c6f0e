"""Image-blind baselines: predictions made without looking at the evaluated image.

A learned RGB -> X result only means something beside the strongest predictor that
never sees the input. On scenes with a fixed layout (floor below, wall behind) the
per-pixel prior of the training split is that predictor; the per-image / global
constants are kept as weaker references. ``BASELINES[label_kind]`` lists them by name; every
function maps (truth (B, R, R[, C]), training maps (T, R, R[, C])) -> a prediction
shaped like ``truth``. Only the depth constant reads the truth: its per-image mean is
what depth alignment would recover from any constant anyway.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Baseline = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _tile(prior: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.broadcast_to(prior, like.shape).astype(like.dtype if like.dtype != np.uint8 else np.uint8).copy()


def per_pixel_mean_depth(truth: np.ndarray, train: np.ndarray) -> np.ndarray:
    return _tile(train.astype(np.float64).mean(axis=0), truth)


def per_image_mean_depth(truth: np.ndarray, train: np.ndarray) -> np.ndarray:
    del train
    return _tile(truth.mean(axis=(1, 2), keepdims=True), truth)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


def per_pixel_mean_normal(truth: np.ndarray, train: np.ndarray) -> np.ndarray:
    return _tile(_unit(train.astype(np.float64).mean(axis=0)), truth)


def mean_normal(truth: np.ndarray, train: np.ndarray) -> np.ndarray:
    return _tile(_unit(train.reshape(-1, 3).astype(np.float64).mean(0)), truth)


def per_pixel_majority_class(truth: np.ndarray, train: np.ndarray) -> np.ndarray:
    t = train.astype(np.int64).reshape(len(train), -1)  # (T, P)
    num_classes = int(t.max()) + 1
    counts = np.zeros((num_classes, t.shape[1]), np.int64)  # (K, P) votes per pixel
    for k in range(num_classes):
        counts[k] = (t == k).sum(axis=0)
    return _tile(counts.argmax(axis=0).reshape(train.shape[1:]).astype(truth.dtype), truth)


def majority_class(truth: np.ndarray, train: np.ndarray) -> np.ndarray:
    return np.full_like(truth, int(np.bincount(train.ravel().astype(np.int64)).argmax()))


# label kind -> baseline name -> function; the first is the per-pixel prior of the training split
BASELINES: dict[str, dict[str, Baseline]] = {
    "depth": {"per-pixel mean depth": per_pixel_mean_depth, "per-image mean depth": per_image_mean_depth},
    "normal": {"per-pixel mean normal": per_pixel_mean_normal, "mean training normal": mean_normal},
    "classes": {"per-pixel majority class": per_pixel_majority_class, "majority class": majority_class},
}


def object_classes(train_semseg: np.ndarray, train_objects: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Classes whose training pixels lie mostly on object instances ("things"): read off
    the data (instance masks), so no class list is hard-coded."""
    cls = train_semseg.astype(np.int64).ravel()
    inside = np.asarray(train_objects, dtype=bool).ravel()
    total = np.bincount(cls)
    on_objects = np.bincount(cls[inside], minlength=len(total))
    frac = on_objects / np.maximum(total, 1)
    return np.flatnonzero((total > 0) & (frac > threshold))
