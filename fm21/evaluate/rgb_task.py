"""X -> RGB: tok_rgb generated from another modality, decoded by the run's RGB tokenizer
and scored against the true image (PSNR, MAE), on all pixels and on object pixels.

Beside the tokenizer bound (the stored tok_rgb ids of the truth, decoded), the
training split's mean image (the strongest image-blind constant under squared error)
and chance (a random training image).
"""

from __future__ import annotations

import numpy as np

from fm21.evaluate.conditioning import generate_ids
from fm21.evaluate.metrics import rgb_metrics


def to_uint8_rgb(decoded: np.ndarray) -> np.ndarray:
    """A tokenizer's decoded RGB labels ((B, R, R, 3) uint8, fm21.tokenize.preprocess) as floats."""
    return np.asarray(decoded, dtype=np.float64)


def evaluate_rgb(model, rows, train_rgb: np.ndarray, *, target: str, condition: str, tok, truth: np.ndarray,
                 objects: np.ndarray, cfg) -> dict:
    """Per-predictor metrics of ``condition`` -> RGB; ``truth`` (B, R, R, 3) uint8 and
    ``train_rgb`` (T, R, R, 3) uint8 at the model's resolution."""
    rng = np.random.default_rng(cfg.seed)
    preds = {
        "4m": to_uint8_rgb(tok.decode_labels(generate_ids(model, rows, [condition], target, cfg))),
        "tokenizer_bound": to_uint8_rgb(tok.decode_labels(np.stack([np.asarray(r[target], np.int64) for r in rows]))),
        "mean training image": np.broadcast_to(train_rgb.astype(np.float64).mean(0), truth.shape),
        "chance": train_rgb[rng.integers(len(train_rgb), size=len(truth))].astype(np.float64),
    }
    return {"scores": {"all": {n: rgb_metrics(p, truth) for n, p in preds.items()},
                       "objects": {n: rgb_metrics(p, truth, mask=objects) for n, p in preds.items()}},
            "baselines": ["mean training image"],
            "grid": {"truth": truth[:cfg.num_grid_samples].astype(np.uint8),
                     **{n: preds[n][:cfg.num_grid_samples].astype(np.uint8)
                        for n in ("4m", "mean training image", "tokenizer_bound")}}}
