"""Task metrics against ground truth, chosen by the target's label kind
(``ModalitySpec.label_kind``): depth (delta1, AbsRel), normal (angle), classes (mIoU),
boxes (mAP@0.5, torchmetrics + pycocotools), text (object/colour F1 of a caption),
rgb (PSNR), vector (recall@k of retrieval by the embedding).

Every metric takes an optional boolean ``mask`` (B, R, R) of the pixels to score, so the
same code scores whole images and object pixels only (the layout prior of a scene, floor
and backdrop, is most of its pixels; a model that ignores the image can score well on
it, never on the objects). Semseg also takes the ``classes`` its mIoU averages over.
"""

from __future__ import annotations

import re

import numpy as np


def align_depth(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-image least-squares scale and shift of ``pred`` onto ``true``.

    The depth tokenizer works on robustly standardised depth (apple/ml-4m `fourm/data/modality_info.py`), so its
    output has no metric scale; relative-depth evaluation aligns scale and shift first,
    always on the whole image (a masked score uses the same alignment).
    """
    out = np.empty_like(true, dtype=np.float64)
    for i, (p, t) in enumerate(zip(pred.astype(np.float64), true.astype(np.float64))):
        a = np.stack([p.ravel(), np.ones(p.size)], axis=1)  # (P, 2)
        (scale, shift), *_ = np.linalg.lstsq(a, t.ravel(), rcond=None)
        out[i] = scale * p + shift
    return out


def _select(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Per-pixel values (B, R, R) -> the scored ones, flat."""
    return values.ravel() if mask is None else values[np.asarray(mask, dtype=bool)]


def depth_metrics(pred: np.ndarray, true: np.ndarray, *, mask: np.ndarray | None = None) -> dict[str, float]:
    """delta1 (higher is better) and AbsRel (lower is better) after alignment. (B, R, R)."""
    true = true.astype(np.float64)
    aligned = np.maximum(align_depth(pred, true), 1e-3)
    ratio = _select(np.maximum(aligned / true, true / aligned), mask)
    abs_rel = _select(np.abs(aligned - true) / true, mask)
    if ratio.size == 0:
        return {"delta1": float("nan"), "abs_rel": float("nan")}
    return {"delta1": float((ratio < 1.25).mean()), "abs_rel": float(abs_rel.mean())}


def normal_metrics(pred: np.ndarray, true: np.ndarray, *, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean and median angle error in degrees (lower is better). (B, R, R, 3)."""
    p = pred / np.maximum(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-6)
    t = true / np.maximum(np.linalg.norm(true, axis=-1, keepdims=True), 1e-6)
    angle = _select(np.degrees(np.arccos(np.clip((p * t).sum(-1), -1.0, 1.0))), mask)
    if angle.size == 0:
        return {"mean_angle": float("nan"), "median_angle": float("nan"), "within_11.25": float("nan")}
    return {"mean_angle": float(angle.mean()), "median_angle": float(np.median(angle)),
            "within_11.25": float((angle < 11.25).mean())}


def confusion(pred: np.ndarray, true: np.ndarray, *, num_classes: int,
              mask: np.ndarray | None = None) -> np.ndarray:
    """(num_classes, num_classes) pixel counts, rows = truth, columns = prediction."""
    t = _select(true.astype(np.int64), mask)
    p = _select(pred.astype(np.int64), mask)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def semseg_metrics(pred: np.ndarray, true: np.ndarray, *, num_classes: int, mask: np.ndarray | None = None,
                   classes: np.ndarray | None = None) -> dict[str, float]:
    """mIoU and pixel accuracy. IoUs are computed on all pixels; ``classes`` picks which
    are averaged (default: those present in truth or prediction); ``mask`` restricts the
    pixel accuracy (and only it: an IoU needs the false positives outside the mask too)."""
    conf = confusion(pred, true, num_classes=num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    if classes is not None:
        chosen = np.zeros(num_classes, bool)
        chosen[np.asarray(classes, dtype=np.int64)] = True
        present = chosen & (conf.sum(1) > 0)  # classes of the set that occur in truth
    t, p = _select(true.astype(np.int64), mask), _select(pred.astype(np.int64), mask)
    miou = float((inter[present] / np.maximum(union[present], 1)).mean()) if present.any() else float("nan")
    acc = float((t == p).mean()) if t.size else float("nan")
    return {"miou": miou, "pixel_acc": acc, "num_classes_present": int(present.sum())}


def task_metrics(kind: str, pred: np.ndarray, true: np.ndarray, *, num_classes: int = 134,
                 mask: np.ndarray | None = None, classes: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of label kind ``kind`` (depth | normal | classes). ``num_classes`` and
    ``classes`` matter to categorical kinds only."""
    try:
        metrics = METRICS[kind]
    except KeyError:
        raise KeyError(f"no metrics for label kind {kind!r}; have {', '.join(METRICS)}") from None
    return metrics(pred, true, mask=mask, num_classes=num_classes, classes=classes)


def gap_closed(value: float, prior: float, bound: float) -> float:
    """How far ``value`` went from the prior toward the bound: 0 = prior, 1 = bound.
    Direction-free (the signs cancel); NaN when the bound does not beat the prior."""
    span = bound - prior
    if not np.isfinite(span) or abs(span) < 1e-12:
        return float("nan")
    return float((value - prior) / span)


# label kind -> its metrics, (pred, true, *, mask, num_classes, classes) -> {name: value}
METRICS = {
    "depth": lambda p, t, *, mask, num_classes, classes: depth_metrics(p, t, mask=mask),
    "normal": lambda p, t, *, mask, num_classes, classes: normal_metrics(p, t, mask=mask),
    "classes": lambda p, t, *, mask, num_classes, classes: semseg_metrics(p, t, num_classes=num_classes, mask=mask,
                                                                         classes=classes),
}

# label kind -> the metric that decides "better", and in which direction. The label kinds
# listed here are the evaluable ones: a target modality of such a kind is an evaluate task.
HEADLINE = {"depth": ("delta1", +1), "normal": ("mean_angle", -1), "classes": ("miou", +1),
            "boxes": ("map_50", +1), "text": ("f1", +1), "rgb": ("psnr", +1), "vector": ("recall@1", +1)}

def headline_of(result: dict, kind: str) -> tuple[str, int]:
    """A task's headline (metric, direction): its own when it names one (X -> RGB with a
    feature specialist of real weights), else its label kind's."""
    metric, sign = result.get("headline") or HEADLINE[kind]
    return metric, int(sign)


# Direction of every reported metric: +1 higher is better, -1 lower is better.
DIRECTION = {"delta1": +1, "abs_rel": -1, "mean_angle": -1, "median_angle": -1, "within_11.25": +1,
             "miou": +1, "pixel_acc": +1, "map_50": +1, "mean_boxes": 0, "recall": +1, "object_recall": +1,
             "colour_recall": +1, "object_precision": +1, "colour_precision": +1, "f1": +1, "object_f1": +1,
             "colour_f1": +1, "object_auc": +1, "colour_auc": +1, "structure_auc": +1, "psnr": +1, "mae": -1,
             "recall@1": +1, "recall@5": +1, "recall@10": +1, "cosine": +1,
             "dinov2_distance": -1, "clip_distance": -1}


# ------------------------------------------------------------------------------ boxes
def detection_map(pred: list[list[dict]], true: list[list[dict]]) -> dict[str, float]:
    """mAP at IoU 0.5 (COCO 101-point interpolation) of box sets, one list per image of
    ``{"box": [x0, y0, x1, y1] in 0..1, "class_name", "score" (optional, default 1)}``.

    Computed by torchmetrics' ``MeanAveragePrecision`` on its pycocotools backend (the
    COCO reference implementation). Generated det sequences carry no scores, so every
    generated box scores 1 (the AP then ranks them by their order in the sequence).
    """
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    names = sorted({b["class_name"] for boxes in (*pred, *true) for b in boxes})
    ids = {n: i for i, n in enumerate(names)}

    def _target(boxes: list[dict], scored: bool) -> dict:
        out = {"boxes": torch.tensor([b["box"] for b in boxes], dtype=torch.float32).reshape(-1, 4),
               "labels": torch.tensor([ids[b["class_name"]] for b in boxes], dtype=torch.int64)}
        if scored:
            out["scores"] = torch.tensor([float(b.get("score", 1.0)) for b in boxes], dtype=torch.float32)
        return out

    metric = MeanAveragePrecision(box_format="xyxy", iou_thresholds=[0.5], backend="pycocotools")
    metric.update([_target(p, True) for p in pred], [_target(t, False) for t in true])
    value = float(metric.compute()["map_50"])
    # torchmetrics reports -1 when no image has a ground-truth box: no score to give
    return {"map_50": value if value >= 0 else float("nan"), "mean_boxes": float(np.mean([len(p) for p in pred]))}


# ------------------------------------------------------------------------------ text
_WORD = re.compile(r"[a-z]+")


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def caption_recall(captions: list[str], objects: list[set[str]], colours: list[set[str]], *,
                   object_vocab: set[str], colour_vocab: set[str]) -> dict[str, float]:
    """Object and colour mentions of each caption against its scene's true object classes
    and colours: recall (how many true ones it names), precision (how many it names are
    true) and their F1, per image then averaged.

    The headline ``f1`` is the mean of the object and colour F1s. Recall alone rewards a
    caption that names every class and colour (a constant one wins it); the F1 of
    precision and recall over the mentioned semantic units is how SPICE scores a caption
    (Anderson et al., "SPICE: Semantic Propositional Image Caption Evaluation", ECCV 2016:
    F-score over object and attribute tuples). ``recall`` (mean of the two recalls) is kept."""
    per: dict[str, list[float]] = {k: [] for k in ("object_recall", "colour_recall", "object_precision",
                                                    "colour_precision", "object_f1", "colour_f1")}
    for text, objs, cols in zip(captions, objects, colours):
        words = set(_WORD.findall(text.lower()))
        for part, named, true in (("object", words & object_vocab, objs), ("colour", words & colour_vocab, cols)):
            if not true:  # nothing visible to name: no recall; naming nothing is then right
                per[f"{part}_recall"].append(np.nan)
                per[f"{part}_precision"].append(0.0 if named else np.nan)
                per[f"{part}_f1"].append(np.nan)
                continue
            recall = len(named & true) / len(true)
            precision = len(named & true) / len(named) if named else 0.0
            per[f"{part}_recall"].append(recall)
            per[f"{part}_precision"].append(precision)
            per[f"{part}_f1"].append(_f1(precision, recall))
    out = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in per.items()}
    return {"f1": (out["object_f1"] + out["colour_f1"]) / 2,
            "recall": (out["object_recall"] + out["colour_recall"]) / 2, **out}


def mentions(captions: list[str], vocab: list[str]) -> np.ndarray:
    """(N, V) 1.0 where caption n names vocab word v."""
    named = [set(_WORD.findall(text.lower())) for text in captions]
    return np.array([[w in words for w in vocab] for words in named], dtype=np.float64).reshape(len(captions), -1)


def mention_auc(scores: np.ndarray, present: np.ndarray) -> float:
    """How far a caption's mentions depend on the image: per vocab word, the ROC AUC of
    ``scores`` (N, V: mention, or the share of K sampled captions naming it) against
    ``present`` (N, V: the word is true of image n), averaged over the words that are
    present in some images and absent in others. Any image-blind predictor scores the
    same on every image, so 0.5; the truth 1.0. ROC AUC by torchmetrics."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    present = np.asarray(present, dtype=bool)
    aucs = [float(binary_auroc(torch.as_tensor(scores[:, v], dtype=torch.float32),
                               torch.as_tensor(present[:, v], dtype=torch.long)))
            for v in range(present.shape[1]) if 0 < present[:, v].sum() < len(present)]
    return float(np.mean(aucs)) if aucs else float("nan")


# ------------------------------------------------------------------------------ rgb
def rgb_metrics(pred: np.ndarray, true: np.ndarray, *, mask: np.ndarray | None = None) -> dict[str, float]:
    """PSNR (dB, peak 255, over the scored pixels of all images together) and mean
    absolute error of uint8-range RGB images (B, R, R, 3); ``mask`` (B, R, R)."""
    err = pred.astype(np.float64) - true.astype(np.float64)
    if mask is not None:
        err = err[np.asarray(mask, dtype=bool)]
    if err.size == 0:
        return {"psnr": float("nan"), "mae": float("nan")}
    mse = float((err ** 2).mean())
    return {"psnr": float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10))), "mae": float(np.abs(err).mean())}


def structure(images: np.ndarray) -> np.ndarray:
    """(B, R, R, 3) -> (B, R*R): each image's grey-level gradient magnitude, divided by its
    own standard deviation: where the image has edges, whatever their colours."""
    grey = np.asarray(images, dtype=np.float64).mean(-1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    mag = np.hypot(gx, gy).reshape(len(grey), -1)
    return mag / (mag.std(axis=1, keepdims=True) + 1e-6)


def structure_auc(pred: np.ndarray, truth: np.ndarray) -> float:
    """How far generated images follow their own scene: over every pair of evaluated scenes
    (i, j), i != j, the share where image i is closer to scene i's true image than to scene
    j's (ties half), distances between :func:`structure` maps. A prediction that is the
    same for every scene (the mean image) scores exactly 0.5, and so, up to sampling, does
    anything else image-blind; the true images score 1.0. Colour does not enter: on scenes
    whose colours no condition predicts, PSNR cannot show that a generation follows its
    condition, and this can."""
    p, t = structure(pred), structure(truth)
    dist = (p ** 2).sum(1)[:, None] - 2 * p @ t.T + (t ** 2).sum(1)[None, :]  # (generated i, truth j)
    own = np.diag(dist)[:, None]
    off = ~np.eye(len(dist), dtype=bool)
    wins = (own < dist) + 0.5 * np.isclose(own, dist, rtol=1e-9, atol=1e-9)
    return float(wins[off].mean()) if off.any() else float("nan")


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise 1 - cos(a_i, b_i) of two (B, D) arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return 1.0 - (a * b).sum(-1)


# ------------------------------------------------------------------------------ vector
def recall_at_k(found: list[list[str]], wanted: list[str], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Share of queries whose wanted key is among their first k results, per k."""
    return {f"recall@{k}": float(np.mean([w in f[:k] for f, w in zip(found, wanted)])) if wanted else float("nan")
            for k in ks}
