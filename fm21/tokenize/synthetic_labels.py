"""Random labels of any registry spec, shaped and typed as labels.lance gives them.

For contract tests and benchmarks of the tokenizer families (no store needed): the label
kind of the spec picks the generator; ``side`` = ``spec.label_size`` (the crop for dense
maps, the token grid for feature maps), ``C`` = ``spec.num_channels``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fm21.modalities import ModalitySpec
from fm21.tokenize.memcodes import POSE_DIM
from fm21.tokenize.instances import MASK_SIZE


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# label kind -> (spec, num, rng) -> labels (num, ...)
SYNTHETIC: dict[str, Callable[[ModalitySpec, int, np.random.Generator], np.ndarray]] = {
    "rgb": lambda s, n, r: r.integers(0, 256, (n, s.label_size, s.label_size, s.num_channels), dtype=np.uint8),
    "depth": lambda s, n, r: r.uniform(1, 10, (n, s.label_size, s.label_size)).astype(np.float16),
    "normal": lambda s, n, r: _unit(r.standard_normal((n, s.label_size, s.label_size, 3))).astype(np.float16),
    "classes": lambda s, n, r: r.integers(0, s.num_channels, (n, s.label_size, s.label_size)).astype(np.uint8),
    "edges": lambda s, n, r: ((r.random((n, s.label_size, s.label_size)) < 0.1) * 255).astype(np.uint8),
    "feature": lambda s, n, r: r.standard_normal((n, s.label_size, s.label_size, s.num_channels)).astype(np.float16),
    "vector": lambda s, n, r: r.standard_normal((n, s.num_channels)).astype(np.float16),
    # the labels of the tokenizers embedded in sequences: SMPL body poses, box-cropped masks
    "poses": lambda s, n, r: r.standard_normal((n, POSE_DIM)).astype(np.float32),
    "instances": lambda s, n, r: (r.random((n, MASK_SIZE, MASK_SIZE)) < 0.5).astype(np.uint8),
}


def synthetic_labels(spec: ModalitySpec, num: int = 2, *, seed: int = 0) -> np.ndarray:
    """``num`` random labels of ``spec`` (its label kind decides shape, dtype and range)."""
    return SYNTHETIC[spec.label_kind](spec, num, np.random.default_rng(seed))
