"""X -> RGB: tok_rgb generated from another modality, decoded by the run's RGB tokenizer
and scored against the true image (PSNR, MAE, and the cosine distance of the run's
DINOv2 / CLIP specialist features, ``fm21.evaluate.rgb_features``), on all pixels and on
object pixels. The feature distance is the headline when its specialist has real
weights; with random ones it is tagged ``random`` and PSNR stays the headline.

Beside the tokenizer bound (the stored tok_rgb ids of the truth, decoded), the
training split's mean image (the strongest image-blind constant under squared error)
and chance (a random training image). One reference that is *not* image-blind, so never
the verdict's baseline: the *condition's nearest neighbours*, the mean image of the
``NEIGHBOURS`` training samples whose stored condition is closest (Hamming distance of
grid token ids, Jaccard distance of sequence id sets). It measures how much the
condition can tell about the pixels under these metrics at all: on the demo's scenes,
where every object, wall and floor takes a random colour, it does not beat the mean
image's PSNR from depth, semseg or the caption (docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np

from fm21.evaluate.conditioning import generate_ids
from fm21.evaluate.metrics import rgb_metrics, structure_auc
from fm21.evaluate.rgb_features import feature_distances, headline
from fm21.modalities import ModalitySpec

NEIGHBOURS = 32  # training samples averaged by the condition-neighbours reference
NEIGHBOURS_NAME = f"condition's {NEIGHBOURS} nearest neighbours (not image-blind)"


def condition_distances(rows: list[dict], train_rows: list[dict], name: str, spec: ModalitySpec) -> np.ndarray:
    """(B, T) distances between the stored condition ``name`` of ``rows`` and of
    ``train_rows``: the share of differing ids of a token grid, the Jaccard distance of the
    id sets of a sequence."""
    if spec.is_image_like:
        a, b = (np.stack([np.asarray(r[name], np.int64).ravel() for r in rs]) for rs in (rows, train_rows))
        return (a[:, None, :] != b[None, :, :]).mean(-1)
    a, b = ([set(int(t) for t in (r.get(name) or [])) for r in rs] for rs in (rows, train_rows))
    return np.array([[1.0 - len(x & y) / max(1, len(x | y)) for y in b] for x in a])


def condition_neighbours(rows, train_rows, train_rgb: np.ndarray, name: str, spec: ModalitySpec,
                         k: int = NEIGHBOURS) -> np.ndarray:
    """The mean training image of the ``k`` training samples nearest in condition ``name``."""
    order = np.argsort(condition_distances(rows, train_rows, name, spec), axis=1, kind="stable")
    return train_rgb[order[:, :min(k, len(train_rgb))]].astype(np.float64).mean(1)


def to_uint8_rgb(decoded: np.ndarray) -> np.ndarray:
    """A tokenizer's decoded RGB labels ((B, R, R, 3) uint8, fm21.tokenize.preprocess) as floats."""
    return np.asarray(decoded, dtype=np.float64)


def mean_of_samples_name(k: int) -> str:
    return f"4M, mean of {k} samples"


def sample_mean(model, rows, condition: str, target: str, tok, cfg) -> np.ndarray:
    """The pixel mean of ``cfg.rgb_samples`` decoded samples at ``cfg.rgb_temperature``."""
    total = None
    for i in range(cfg.rgb_samples):
        run = cfg.model_copy(update={"seed": cfg.seed + i, "temperature": cfg.rgb_temperature})
        img = to_uint8_rgb(tok.decode_labels(generate_ids(model, rows, [condition], target, run)))
        total = img if total is None else total + img
    return total / cfg.rgb_samples


def evaluate_rgb(model, rows, train_rows, train_rgb: np.ndarray, *, target: str, condition: str, tok,
                 truth: np.ndarray, objects: np.ndarray, cfg, scorers: dict | None = None) -> dict:
    """Per-predictor metrics of ``condition`` -> RGB; ``truth`` (B, R, R, 3) uint8 and
    ``train_rgb`` (T, R, R, 3) uint8 (the images of ``train_rows``) at the model's
    resolution; ``scorers``: name -> loaded feature specialist (``rgb_features.load_scorers``)
    for the feature distances."""
    scorers = scorers or {}
    rng = np.random.default_rng(cfg.seed)
    preds = {
        "4m": to_uint8_rgb(tok.decode_labels(generate_ids(model, rows, [condition], target, cfg))),
        **({mean_of_samples_name(cfg.rgb_samples): sample_mean(model, rows, condition, target, tok, cfg)}
           if cfg.rgb_samples > 1 else {}),
        "tokenizer_bound": to_uint8_rgb(tok.decode_labels(np.stack([np.asarray(r[target], np.int64) for r in rows]))),
        "mean training image": np.broadcast_to(train_rgb.astype(np.float64).mean(0), truth.shape),
        "chance": train_rgb[rng.integers(len(train_rgb), size=len(truth))].astype(np.float64),
        NEIGHBOURS_NAME: condition_neighbours(rows, train_rows, train_rgb, condition, model.specs[condition]),
    }
    scores = {"all": {n: rgb_metrics(p, truth) for n, p in preds.items()},
              "objects": {n: rgb_metrics(p, truth, mask=objects) for n, p in preds.items()}}
    for scope, mask in (("all", None), ("objects", objects)):
        for n, dist in feature_distances(scorers, preds, truth, mask).items():
            scores[scope][n].update(dist)
    for n, p in preds.items():  # does the generation follow its own scene? (0.5: no)
        scores["all"][n]["structure_auc"] = structure_auc(p, truth)
    random = [f"{name}_distance" for name, spec in scorers.items() if spec.is_random]
    return {"scores": scores,
            "baselines": ["mean training image"],
            **({"headline": list(headline(scorers))} if headline(scorers) else {}),
            **({"random_metrics": random} if random else {}),
            "grid": {"truth": truth[:cfg.num_grid_samples].astype(np.uint8),
                     **{n: preds[n][:cfg.num_grid_samples].astype(np.uint8)
                        for n in ("4m", "mean training image", "tokenizer_bound")}}}
