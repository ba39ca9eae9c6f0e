"""A feature distance for X -> RGB: the run's own DINOv2 / CLIP specialist embeds the
generated and the true image, and the score is their cosine distance (lower is better).

PSNR rewards the blurry average: under squared error the mean training image is the best
constant, and a sharp sample with the objects slightly off loses to it. A distance in a
pretrained network's feature space scores what the image shows instead (the idea behind
perceptual metrics: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018; apple/ml-4m ``run_generation.py`` scores generations in
feature space too: FID on Inception features and CLIPScore). The specialist is the one that labelled the run
(``pseudolabel.specialists``, built by ``fm21.pseudolabel.worker.build_specialist``), so
the distance is measured in the space the run's feature modalities come from. A random
specialist is tagged ``random``: its distance is plumbing, not quality.

The image embedding is the specialist's global column where it has one (DINOv2's CLS
token, ``dinov2_global``), else its patch feature map averaged over the grid (CLIP's).
On object pixels, pixels off the objects are blacked out in both images before
embedding, so only the objects differ.
"""

from __future__ import annotations

import logging

import numpy as np

from fm21.evaluate.metrics import cosine_distance

log = logging.getLogger("fm21")

FEATURE_SPECIALISTS = ("dinov2", "clip")  # tried in this order; the first with real weights is the headline


def metric_name(specialist: str) -> str:
    return f"{specialist}_distance"


def load_scorers(specialists: dict, *, image_size: int) -> dict:
    """name -> loaded feature specialist, for each of ``FEATURE_SPECIALISTS`` the run
    configures with network weights (pretrained, path or random) that are on this machine."""
    import torch

    from fm21.pseudolabel.specialists.feature_network import FeatureNetwork
    from fm21.pseudolabel.worker import build_specialist

    out = {}
    state = torch.get_rng_state()  # a random init seeds torch: keep the generation's stream as it was
    try:
        for name in FEATURE_SPECIALISTS:
            cfg = specialists.get(name)
            if cfg is None or not cfg.enabled or cfg.weights == "none":
                continue
            spec = build_specialist(name, cfg, image_size=image_size)
            if not isinstance(spec, FeatureNetwork):
                continue
            if not spec.is_cached():  # evaluate never downloads: the pseudolabel stage fetched them
                log.warning("evaluate: %s weights (%s) are not in the cache: no %s for X -> RGB",
                            name, spec.describe_source(), metric_name(name))
                continue
            spec.load()
            out[name] = spec
    finally:
        torch.set_rng_state(state)
    return out


def embed(specialist, rgb: np.ndarray) -> np.ndarray:
    """(B, R, R, 3) uint8 -> (B, D) float64 image embeddings."""
    column = (specialist.global_columns or specialist.feature_maps)[0]
    out = specialist.run(np.ascontiguousarray(rgb, dtype=np.uint8), (column,))[column].astype(np.float64)
    return out.reshape(len(rgb), -1, out.shape[-1]).mean(axis=1) if out.ndim == 4 else out


def feature_distances(scorers: dict, preds: dict[str, np.ndarray], truth: np.ndarray,
                      mask: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """predictor -> {``<specialist>_distance``: mean cosine distance to the truth's embedding}.
    ``preds`` and ``truth`` (B, R, R, 3) in 0..255; ``mask`` (B, R, R): score object pixels only."""
    keep = None if mask is None else np.asarray(mask, dtype=bool)[..., None]

    def prepared(img: np.ndarray) -> np.ndarray:
        img = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return img if keep is None else np.where(keep, img, 0).astype(np.uint8)

    out: dict[str, dict[str, float]] = {n: {} for n in preds}
    for name, spec in scorers.items():
        true = embed(spec, prepared(truth))
        for pred_name, pred in preds.items():
            out[pred_name][metric_name(name)] = float(cosine_distance(embed(spec, prepared(pred)), true).mean())
    return out


def headline(scorers: dict) -> tuple[str, int] | None:
    """The X -> RGB headline: the feature distance of the first specialist with real
    (non-random) weights; None (PSNR stays the headline) when every one is random."""
    for name, spec in scorers.items():
        if not spec.is_random:
            return metric_name(name), -1
    return None
