"""Network specialists: where their weights come from, the cache workers read them from,
how pixels are prepared for them, and the device and precision a forward runs at.

A network specialist's ``weights`` (``pseudolabel.specialists.<name>.weights``):

- ``pretrained``: the released model, ``model_id`` (a hub id or checkpoint URL; the
  specialist's ``default_model_id`` when unset), loaded through the library's own loader
  (``from_pretrained``, ``open_clip.create_model``, ``sam_model_registry``, ``YOLO``) into the
  weights cache. ``fm21 weights fetch`` fills the cache once, on a machine with network;
  workers then load offline from it (``FM21_WEIGHTS_CACHE``, a folder every node can read).
- ``path``: a local checkpoint or model folder in the library's own format, loaded by the
  same code as ``pretrained`` (tests save a random-init model of the real architecture
  and load it through this path: hubs are never contacted in tests).
- ``random``: the architecture at random init, seeded by the specialist's name, so every
  worker and every rerun builds the same network. For plumbing only: every output is
  tagged ``random`` (store metadata, ``fm21 stats``, reports).

Preprocessing (input size, mean/std, interpolation) is part of a specialist's options, next
to its weights, never decided by the caller (:class:`Preprocess`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fm21.config import ConfigError
from fm21.pseudolabel.specialists.base import Specialist

CACHE_ENV = "FM21_WEIGHTS_CACHE"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def cache_dir() -> Path:
    """The weights cache: ``$FM21_WEIGHTS_CACHE`` or ``~/.cache/fm21/weights``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fm21" / "weights").expanduser()


class Preprocess(BaseModel):
    """How pixels are prepared for a network: resized to ``input_size`` (square), scaled to
    [0, 1], normalised by ``mean``/``std``. Belongs to the weights, so it lives in options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(224, ge=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"

    def __call__(self, rgb: np.ndarray, device: Any = "cpu"):
        """``(B, S, S, 3)`` uint8 -> ``(B, 3, R, R)`` float32 tensor on ``device``."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            kw = {} if self.interpolation == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation, **kw)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std


class NetworkSpecialist(Specialist):
    """A specialist with network weights. Subclasses set ``default_model_id`` and implement
    :meth:`build` (the model from :meth:`weights_location`, or at random init when it is
    None); :meth:`load` calls it once per worker and moves the model to :attr:`device`."""

    supported_weights: ClassVar[tuple[str, ...]] = ("pretrained", "path", "random")
    default_model_id: ClassVar[str]  # what ``pretrained`` loads when model_id is unset
    source: ClassVar[Literal["hf", "url", "open_clip", "ultralytics"]] = "hf"

    model: Any = None

    # ------------------------------------------------------------------ weights
    @property
    def model_id(self) -> str:
        return self.cfg.model_id or self.default_model_id

    def weights_location(self) -> str | None:
        """Hub id / URL (pretrained), local path (path), or None (random init)."""
        if self.cfg.weights == "random":
            return None
        if self.cfg.weights == "path":
            if not self.cfg.path:
                raise ConfigError(f"'pseudolabel.specialists.{self.name}.path' is required with weights: path")
            if not Path(self.cfg.path).expanduser().exists():
                raise ConfigError(f"'pseudolabel.specialists.{self.name}.path': {self.cfg.path} does not exist")
            return str(Path(self.cfg.path).expanduser())
        return self.model_id

    def describe_source(self) -> str:
        return {"pretrained": self.model_id, "path": str(self.cfg.path), "random": "random init"}[self.cfg.weights]

    def is_cached(self) -> bool:
        """Whether ``load`` can run offline: pretrained weights present in the cache."""
        if self.cfg.weights != "pretrained":
            return self.cfg.weights == "random" or bool(self.cfg.path and Path(self.cfg.path).exists())
        if self.source == "hf":
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(self.model_id, "config.json", cache_dir=str(cache_dir() / "hf"))
            return isinstance(hit, str)
        return (cache_dir() / self.source / Path(self.model_id).name).exists()

    def fetch(self) -> None:
        """Download the pretrained weights into the cache (``fm21 weights fetch``)."""
        self.build(self.weights_location())

    def weights_fingerprint(self) -> str:
        """What produced the labels: the algorithm's options plus the weights' identity
        (hub id, or the checkpoint files' names and sizes, or the random seed)."""
        ident: dict[str, Any] = {"mode": self.cfg.weights}
        if self.cfg.weights == "pretrained":
            ident["model_id"] = self.model_id
        elif self.cfg.weights == "path":
            root = Path(self.cfg.path or "").expanduser()
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            ident["files"] = [[str(p.relative_to(root.parent)), p.stat().st_size] for p in files]
        else:
            ident["seed"] = self.random_seed()
        payload = {"specialist": self.name, "version": self.version, "options": self.options.model_dump(mode="json"),
                   "weights": ident}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def random_seed(self) -> int:
        return int.from_bytes(hashlib.sha256(f"fm21-random-init:{self.name}".encode()).digest()[:4], "little")

    # ------------------------------------------------------------------ model
    def build(self, location: str | None):
        """The model loaded from ``location`` (hub id, URL or path), or random init (None)."""
        raise NotImplementedError

    def load(self) -> None:
        import torch

        if self.model is not None:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_seed())  # random init: the same network on every worker
            model = self.build(self.weights_location())
        if hasattr(model, "eval"):
            model = model.eval().to(self.device)
        self.model = model

    @property
    def device(self):
        import torch

        return torch.device("cuda" if self.cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu")

    def autocast(self):
        """bf16 autocast on GPU; full precision on CPU (bf16 on CPU was slower, docs/learning.md)."""
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inference(self):
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.autocast())
        return stack
