"""Label-space <-> model-space conversions, one per label kind (apple/ml-4m `fourm/data/modality_info.py`, `fourm/vq/`).

A tokenizer's ``config.json`` names its preprocessor by label kind
(``PREPROCESSORS[spec.label_kind]``), so the normalisation travels with the weights,
never with the caller. Label arrays are what
the pseudolabel store gives: square ``(B, R, R[, C])`` maps.

Each preprocessor has ``to_model`` (numpy labels -> torch tensor), ``from_model``
(decoder output -> numpy labels), the training ``loss`` (in model space), ``hflip``
(model-space augmentation) and reconstruction ``metrics`` (in label space).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _as_float(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))


def robust_standardize(depth: np.ndarray, *, trim: float = 0.1) -> np.ndarray:
    """Per-image depth standardisation of ``(B, R, R)``: drop the top and bottom ``trim``
    of values, subtract the mean and divide by the std of the rest (apple/ml-4m `fourm/data/modality_info.py`).
    Non-finite pixels are set to the image's largest finite depth first."""
    depth = np.asarray(depth, dtype=np.float32)
    out = np.empty_like(depth)
    for i, d in enumerate(depth):
        finite = np.isfinite(d)
        fill = d[finite].max() if finite.any() else 0.0
        d = np.where(finite, d, fill)
        lo, hi = np.quantile(d, [trim, 1.0 - trim])
        kept = d[(d >= lo) & (d <= hi)]
        std = kept.std() if kept.size else 0.0
        out[i] = (d - kept.mean()) / max(float(std), 1e-6)
    return out


@dataclass(frozen=True)
class Preprocessor:
    """Continuous maps scaled to about [-1, 1]; ``channels`` per pixel in model space."""

    name: str
    channels: int
    categorical: bool = False

    def to_model(self, labels: np.ndarray) -> torch.Tensor:
        """``(B, R, R, C)`` uint8 in 0..255 -> ``(B, C, R, R)`` float in [-1, 1]."""
        x = _as_float(labels) / 127.5 - 1.0  # mean/std 0.5 ("inception"), not ImageNet
        return x.permute(0, 3, 1, 2).contiguous()  # (B, C, R, R)

    def from_model(self, out: torch.Tensor) -> np.ndarray:
        x = ((out.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
        return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()  # (B, R, R, C)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target)

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    def as_decoded(self, labels: np.ndarray) -> np.ndarray:
        """Labels on the scale ``from_model`` returns, for side-by-side pictures."""
        return labels

    def metrics(self, pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
        mse = float(np.mean((pred.astype(np.float64) - true.astype(np.float64)) ** 2))
        return {"mse": mse, "psnr": float(10 * np.log10(255.0**2 / max(mse, 1e-10)))}


@dataclass(frozen=True)
class DepthPreprocessor(Preprocessor):
    def to_model(self, labels: np.ndarray) -> torch.Tensor:
        """``(B, R, R)`` metres -> ``(B, 1, R, R)`` robustly standardised depth."""
        return torch.from_numpy(robust_standardize(labels)).unsqueeze(1)

    def from_model(self, out: torch.Tensor) -> np.ndarray:
        # Standardised depth: the evaluator aligns scale and shift to metric depth.
        return out.detach().float()[:, 0].numpy()  # (B, R, R)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(out, target)  # the reference's depth loss

    def as_decoded(self, labels: np.ndarray) -> np.ndarray:
        return robust_standardize(labels)  # decode gives standardised depth, not metres

    def metrics(self, pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
        true_std = robust_standardize(true)
        abs_rel = []
        for p, t in zip(pred.astype(np.float64), np.asarray(true, dtype=np.float64)):
            ok = np.isfinite(t) & (t > 0)
            # least-squares scale and shift of the standardised prediction onto metres
            a = np.stack([p[ok], np.ones(ok.sum())], axis=1)
            coef, *_ = np.linalg.lstsq(a, t[ok], rcond=None)
            aligned = a @ coef
            abs_rel.append(np.mean(np.abs(aligned - t[ok]) / t[ok]))
        return {
            "mse_standardized": float(np.mean((pred - true_std) ** 2)),
            "abs_rel_aligned": float(np.mean(abs_rel)),
        }


@dataclass(frozen=True)
class NormalPreprocessor(Preprocessor):
    def to_model(self, labels: np.ndarray) -> torch.Tensor:
        """``(B, R, R, 3)`` unit vectors in [-1, 1] -> ``(B, 3, R, R)``."""
        return _as_float(labels).permute(0, 3, 1, 2).contiguous()

    def from_model(self, out: torch.Tensor) -> np.ndarray:
        n = F.normalize(out.detach().float(), dim=1, eps=1e-6)  # back to unit length
        return n.permute(0, 2, 3, 1).numpy()  # (B, R, R, 3)

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        # A mirrored image mirrors the surface: the x component changes sign.
        x = x.flip(-1).clone()
        x[:, 0] = -x[:, 0]
        return x

    def metrics(self, pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
        def unit(v: np.ndarray) -> np.ndarray:  # float16 labels are only nearly unit
            v = v.astype(np.float64)
            return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)

        cos = np.clip(np.sum(unit(pred) * unit(true), axis=-1), -1.0, 1.0)
        angle = np.degrees(np.arccos(cos))
        return {
            "mean_angle_deg": float(angle.mean()),
            "within_11_25": float((angle < 11.25).mean()),
        }


@dataclass(frozen=True)
class SemsegPreprocessor(Preprocessor):
    """Class ids; the model embeds them (``Embedding(num_classes, d)``) and predicts logits."""

    categorical: bool = True

    def to_model(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(labels).astype(np.int64))  # (B, R, R) long

    def from_model(self, out: torch.Tensor) -> np.ndarray:
        return out.detach().argmax(dim=1).to(torch.uint8).numpy()  # logits (B, K, R, R)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])  # (B*R*R, K)
        return F.cross_entropy(logits, target.reshape(-1))

    def metrics(self, pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
        pred, true = pred.astype(np.int64).ravel(), true.astype(np.int64).ravel()
        ious = []
        for c in np.union1d(np.unique(pred), np.unique(true)):  # classes present anywhere
            inter = np.sum((pred == c) & (true == c))
            union = np.sum((pred == c) | (true == c))
            ious.append(inter / union)
        return {"pixel_accuracy": float(np.mean(pred == true)), "miou": float(np.mean(ious))}


@dataclass(frozen=True)
class EdgePreprocessor(Preprocessor):
    """Edges in [-1, 1] in, edge *logits* out. The reference trains its edge DiVAE with
    smooth-L1; on the tiny recipe a 1-px edge map (about 5% positives) under a regression
    loss collapses to "no edge" (F1 = 0), so fm21 uses a positive-weighted BCE instead."""

    pos_weight: float = 4.0

    def to_model(self, labels: np.ndarray) -> torch.Tensor:
        """``(B, R, R)`` uint8 0/255 -> ``(B, 1, R, R)`` in [-1, 1]."""
        return (_as_float(labels) / 127.5 - 1.0).unsqueeze(1)

    def soft(self, out: torch.Tensor) -> np.ndarray:
        """Edge probability in [0, 1], ``(B, R, R)`` float32."""
        return torch.sigmoid(out.detach().float()[:, 0]).numpy()

    def from_model(self, out: torch.Tensor) -> np.ndarray:
        return np.where(self.soft(out) >= 0.5, 255, 0).astype(np.uint8)  # (B, R, R)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = torch.tensor(self.pos_weight, dtype=out.dtype)
        return F.binary_cross_entropy_with_logits(out, (target + 1.0) / 2.0, pos_weight=weight)

    def metrics(self, pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
        """Pixel-exact F1, and F1 with a 1-pixel matching tolerance (an edge pixel counts
        when the other map has an edge within its 3x3 neighbourhood), the usual way edge
        maps are scored (BSDS-style distance tolerance) since a 1-px line one pixel off
        is the same edge."""
        p, t = pred > 127, true > 127
        exact = _f1(float(np.sum(p & t)), float(np.sum(p & t)), float(p.sum()), float(t.sum()))
        tol = _f1(float(np.sum(p & _dilate(t))), float(np.sum(t & _dilate(p))), float(p.sum()), float(t.sum()))
        return {"f1": exact[0], "precision": exact[1], "recall": exact[2],
                "f1_tol1": tol[0], "precision_tol1": tol[1], "recall_tol1": tol[2]}


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of (B, R, R) masks."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    r, c = mask.shape[1:]
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[:, dy:dy + r, dx:dx + c]
    return out


def _f1(tp_pred: float, tp_true: float, num_pred: float, num_true: float) -> tuple[float, float, float]:
    precision = tp_pred / max(num_pred, 1.0)
    recall = tp_true / max(num_true, 1.0)
    return 2 * precision * recall / max(precision + recall, 1e-12), precision, recall


@dataclass(frozen=True)
class FeaturePreprocessor(Preprocessor):
    """Patch feature maps of a frozen network (CLIP, DINOv2, ImageBind), ``(B, g, g, C)``
    at the token grid, taken as they come (fp16 in the store -> float32). ``channels`` 0:
    the tokenizer takes the spec's ``num_channels``. Reconstruction is scored by MSE and
    the mean cosine similarity of the feature vectors."""

    def to_model(self, labels: np.ndarray) -> torch.Tensor:
        return _as_float(labels).permute(0, 3, 1, 2).contiguous()  # (B, C, g, g)

    def from_model(self, out: torch.Tensor) -> np.ndarray:
        return out.detach().float().permute(0, 2, 3, 1).numpy()  # (B, g, g, C)

    def metrics(self, pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
        p, t = pred.astype(np.float64), np.asarray(true, dtype=np.float64)
        dot = np.sum(p * t, axis=-1)
        norms = np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1)
        return {"mse": float(np.mean((p - t) ** 2)), "cosine": float(np.mean(dot / np.maximum(norms, 1e-12)))}


# Keyed by label kind (``ModalitySpec.label_kind``); a new modality of a known kind needs
# no entry here.
PREPROCESSORS: dict[str, Preprocessor] = {
    "rgb": Preprocessor(name="rgb", channels=3),
    "depth": DepthPreprocessor(name="depth", channels=1),
    "normal": NormalPreprocessor(name="normal", channels=3),
    "classes": SemsegPreprocessor(name="classes", channels=1),
    "edges": EdgePreprocessor(name="edges", channels=1),
    # feature_tokens modalities (clip, dinov2, ...): (g, g, C) at the token grid
    "feature": FeaturePreprocessor(name="feature", channels=0),
}

# Checkpoints written before preprocessors were keyed by label kind name the label column
# they read; their config.json (and so their fingerprint) keeps that value, resolved here.
LEGACY_PREPROCESS = {"semseg": "classes", "canny_edge": "edges", "sam_edge": "edges"}


def preprocessor_for(name: str) -> Preprocessor:
    """The preprocessor of a label kind (or of a legacy checkpoint's ``preprocess`` value)."""
    try:
        return PREPROCESSORS[LEGACY_PREPROCESS.get(name, name)]
    except KeyError:
        raise KeyError(f"no preprocessor for label kind {name!r}; have {', '.join(PREPROCESSORS)}") from None
