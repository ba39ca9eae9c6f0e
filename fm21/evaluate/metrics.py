"""Task metrics against ground truth: depth (delta1, AbsRel), normals (angle), semseg (mIoU)."""

from __future__ import annotations

import numpy as np


def align_depth(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-image least-squares scale and shift of ``pred`` onto ``true``.

    The depth tokenizer works on robustly standardised depth (REFERENCE §2), so its
    output has no metric scale; relative-depth evaluation aligns scale and shift first.
    """
    out = np.empty_like(true, dtype=np.float64)
    for i, (p, t) in enumerate(zip(pred.astype(np.float64), true.astype(np.float64))):
        a = np.stack([p.ravel(), np.ones(p.size)], axis=1)  # (P, 2)
        (scale, shift), *_ = np.linalg.lstsq(a, t.ravel(), rcond=None)
        out[i] = scale * p + shift
    return out


def depth_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """delta1 (higher is better) and AbsRel (lower is better) after alignment. (B, R, R)."""
    true = true.astype(np.float64)
    aligned = np.maximum(align_depth(pred, true), 1e-3)
    ratio = np.maximum(aligned / true, true / aligned)
    return {"delta1": float((ratio < 1.25).mean()), "abs_rel": float((np.abs(aligned - true) / true).mean())}


def normal_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean and median angle error in degrees (lower is better). (B, R, R, 3)."""
    p = pred / np.maximum(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-6)
    t = true / np.maximum(np.linalg.norm(true, axis=-1, keepdims=True), 1e-6)
    angle = np.degrees(np.arccos(np.clip((p * t).sum(-1), -1.0, 1.0)))
    return {"mean_angle": float(angle.mean()), "median_angle": float(np.median(angle)),
            "within_11.25": float((angle < 11.25).mean())}


def semseg_metrics(pred: np.ndarray, true: np.ndarray, *, num_classes: int) -> dict[str, float]:
    """mIoU over the classes present in ground truth or prediction, and pixel accuracy."""
    conf = np.bincount(true.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel(),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return {"miou": float((inter[present] / union[present]).mean()), "pixel_acc": float(inter.sum() / conf.sum()),
            "num_classes_present": int(present.sum())}


def task_metrics(task: str, pred: np.ndarray, true: np.ndarray, *, num_classes: int = 134) -> dict[str, float]:
    if task == "depth":
        return depth_metrics(pred, true)
    if task == "normal":
        return normal_metrics(pred, true)
    if task == "semseg":
        return semseg_metrics(pred, true, num_classes=num_classes)
    raise KeyError(f"no metrics for task {task!r}")


# Which metric decides "better", and in which direction.
HEADLINE = {"depth": ("delta1", +1), "normal": ("mean_angle", -1), "semseg": ("miou", +1)}

# Direction of every reported metric: +1 higher is better, -1 lower is better.
DIRECTION = {"delta1": +1, "abs_rel": -1, "mean_angle": -1, "median_angle": -1, "within_11.25": +1,
             "miou": +1, "pixel_acc": +1}
