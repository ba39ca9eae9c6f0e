"""X -> RGB: tok_rgb generated from another modality, decoded by the run's RGB tokenizer
and scored against the true image (PSNR, MAE, and the cosine distance of the run's
DINOv2 / CLIP specialist features, ``fm21.evaluate.rgb_features``), on all pixels and on
object pixels. The feature distance is the headline when its specialist has real
weights; with random ones it is tagged ``random`` and PSNR stays the headline.

Beside the tokenizer bound (the stored tok_rgb ids of the truth, decoded), the
training split's mean image (the strongest image-blind constant under squared error)
and chance (a random training image).
"""

from __future__ import annotations

import numpy as np

from fm21.evaluate.conditioning import generate_ids
from fm21.evaluate.metrics import rgb_metrics
from fm21.evaluate.rgb_features import feature_distances, headline


def to_uint8_rgb(decoded: np.ndarray) -> np.ndarray:
    """A tokenizer's decoded RGB labels ((B, R, R, 3) uint8, fm21.tokenize.preprocess) as floats."""
    return np.asarray(decoded, dtype=np.float64)


def evaluate_rgb(model, rows, train_rgb: np.ndarray, *, target: str, condition: str, tok, truth: np.ndarray,
                 objects: np.ndarray, cfg, scorers: dict | None = None) -> dict:
    """Per-predictor metrics of ``condition`` -> RGB; ``truth`` (B, R, R, 3) uint8 and
    ``train_rgb`` (T, R, R, 3) uint8 at the model's resolution; ``scorers``: name -> loaded
    feature specialist (``rgb_features.load_scorers``) for the feature distances."""
    scorers = scorers or {}
    rng = np.random.default_rng(cfg.seed)
    preds = {
        "4m": to_uint8_rgb(tok.decode_labels(generate_ids(model, rows, [condition], target, cfg))),
        "tokenizer_bound": to_uint8_rgb(tok.decode_labels(np.stack([np.asarray(r[target], np.int64) for r in rows]))),
        "mean training image": np.broadcast_to(train_rgb.astype(np.float64).mean(0), truth.shape),
        "chance": train_rgb[rng.integers(len(train_rgb), size=len(truth))].astype(np.float64),
    }
    scores = {"all": {n: rgb_metrics(p, truth) for n, p in preds.items()},
              "objects": {n: rgb_metrics(p, truth, mask=objects) for n, p in preds.items()}}
    for scope, mask in (("all", None), ("objects", objects)):
        for n, dist in feature_distances(scorers, preds, truth, mask).items():
            scores[scope][n].update(dist)
    random = [f"{name}_distance" for name, spec in scorers.items() if spec.is_random]
    return {"scores": scores,
            "baselines": ["mean training image"],
            **({"headline": list(headline(scorers))} if headline(scorers) else {}),
            **({"random_metrics": random} if random else {}),
            "grid": {"truth": truth[:cfg.num_grid_samples].astype(np.uint8),
                     **{n: preds[n][:cfg.num_grid_samples].astype(np.uint8)
                        for n in ("4m", "mean training image", "tokenizer_bound")}}}
