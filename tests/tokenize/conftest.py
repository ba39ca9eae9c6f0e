"""Synthetic label maps for the tokenizer tests: discs (spheres) on a ground ramp.

Every label kind of ``fm21.tokenize.preprocess.PREPROCESSORS`` is produced consistently
from the same scene, in the dtypes and shapes the pseudolabel store gives.
"""

from __future__ import annotations

import numpy as np
import pytest


def make_scenes(num: int, resolution: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = resolution
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32) / (r - 1)  # (R, R) in [0, 1]
    out = {
        "rgb": np.zeros((num, r, r, 3), np.uint8),
        "depth": np.zeros((num, r, r), np.float16),
        "normal": np.zeros((num, r, r, 3), np.float16),
        "semseg": np.zeros((num, r, r), np.uint8),
    }
    for i in range(num):
        depth = 10.0 - 8.0 * yy  # ground plane: far at the top, near at the bottom
        normal = np.broadcast_to(np.array([0.0, 0.8, 0.6], np.float32), (r, r, 3)).copy()
        sky = rng.uniform(80, 200, size=3)
        rgb = sky * (1 - yy[..., None]) + rng.uniform(30, 120, size=3) * yy[..., None]
        seg = np.zeros((r, r), np.uint8)
        for _ in range(rng.integers(1, 4)):
            cx, cy, rad = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
            d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / rad**2
            inside = d2 < 1.0
            nz = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
            sphere = np.stack([(xx - cx) / rad, (yy - cy) / rad, nz], axis=-1)
            normal[inside] = sphere[inside]
            depth[inside] = rng.uniform(1.5, 6.0) - nz[inside]
            rgb[inside] = rng.uniform(0, 255, size=3) * (0.5 + 0.5 * nz[inside, None])
            seg[inside] = rng.integers(1, 134)
        out["rgb"][i] = rgb.clip(0, 255).astype(np.uint8)
        out["depth"][i] = depth
        out["normal"][i] = normal / np.linalg.norm(normal, axis=-1, keepdims=True)
        out["semseg"][i] = seg
    seg = out["semseg"]
    edge = np.zeros_like(seg, dtype=bool)  # class boundaries, 1 px
    edge[:, 1:, :] |= seg[:, 1:, :] != seg[:, :-1, :]
    edge[:, :, 1:] |= seg[:, :, 1:] != seg[:, :, :-1]
    out["canny_edge"] = np.where(edge, 255, 0).astype(np.uint8)
    out["sam_edge"] = out["canny_edge"].copy()
    return out


@pytest.fixture(scope="session")
def scenes32() -> dict[str, np.ndarray]:
    return make_scenes(64, 32, seed=0)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tiny models run faster and steadier on one intra-op thread; on a shared
    2-core machine two spinning OpenMP threads can slow a run down tenfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
