"""Self-describing tokenizer checkpoints: ``<dir>/config.json`` + ``model.safetensors``
(+ ``metrics.json`` and ``recon.png`` when given).

``config.json`` holds the tokenizer config's fields at top level (``family`` among them:
the loader builds through ``family_module(config["family"]).build``; checkpoints without
it are conv VQ-VAEs) plus ``fingerprint``, ``random_init`` and ``training`` (the training
summary, or null). The fingerprint is a short sha256 over the model config and the
weight bytes (names, dtypes, shapes, data): it identifies what the tokenizer computes, so
it is stable across save/load and equal for two runs that produce the same weights (wall
times in ``training`` do not enter).

The folder may be local or on an object store (``fm21.store.fs``): files are written and
read as bytes, never through a local path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from fm21.store import fs
from fm21.store.fs import Location, UriPath, as_location

from fm21.tokenize.families import family_module

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
RECON_FILE = "recon.png"


LEGACY_FAMILY = "vqvae"  # what a config.json without ``family`` was written by

Tokenizer = Any  # any family's tokenizer: an nn.Module with ``config`` (to_dict), ``fingerprint``


def config_class(module: ModuleType) -> type:
    """A family module's config dataclass: ``module.Config`` when it names one, else the one
    dataclass defined there with ``from_spec``, ``from_dict`` and a ``family`` field."""
    if isinstance(getattr(module, "Config", None), type):
        return module.Config
    found = [v for v in vars(module).values()
             if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__
             and hasattr(v, "from_dict") and hasattr(v, "from_spec")
             and "family" in {f.name for f in dataclasses.fields(v)}]
    if len(found) != 1:
        raise ValueError(f"{module.__name__}: cannot tell its config class (found {[c.__name__ for c in found]}); "
                         "name it ``Config``")
    return found[0]


def build_from_config(raw: dict[str, Any]) -> tuple[Tokenizer, Any]:
    """A randomly initialised tokenizer of a ``config.json`` dict, by its family."""
    family = raw.get("family") or LEGACY_FAMILY
    module = family_module(family)
    config = config_class(module).from_dict({**raw, "family": family})
    return module.build(config), config


def _weights(tok: Tokenizer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tok.state_dict().items()}


def tokenizer_fingerprint(config: Any, weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(weights):
        t = weights[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_tokenizer(
    tok: Tokenizer,
    directory: Location | str,
    *,
    metrics: dict | None = None,
    recon_labels: np.ndarray | None = None,
) -> str:
    """Write the checkpoint folder; returns the fingerprint. ``recon_labels`` (label
    maps) adds ``recon.png``, originals over reconstructions."""
    directory = as_location(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = _weights(tok)
    fingerprint = tokenizer_fingerprint(tok.config, weights)
    summary = getattr(tok, "training_summary", None)
    config: dict[str, Any] = {
        **tok.config.to_dict(),
        "fingerprint": fingerprint,
        "random_init": summary is None,
        "training": summary,
    }
    fs.write_atomic(directory / WEIGHTS_FILE, save(weights, metadata={"fingerprint": fingerprint}))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if metrics is not None:
        (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if recon_labels is not None:
        family_module(tok.config.family).save_recon_png(tok, recon_labels, directory / RECON_FILE)
    tok.fingerprint = fingerprint
    return fingerprint


def read_tokenizer_config(directory: Location | str) -> dict[str, Any]:
    return json.loads((as_location(directory) / CONFIG_FILE).read_text())


def _load_dir(directory: Location) -> Tokenizer:
    raw = read_tokenizer_config(directory)
    tok, config = build_from_config(raw)
    weights = load(fs.read_bytes(directory / WEIGHTS_FILE))
    tok.load_state_dict(weights, strict=True)
    fingerprint = tokenizer_fingerprint(config, _weights(tok))
    if raw.get("fingerprint") not in (None, fingerprint):
        raise ValueError(
            f"{directory}: weights/config fingerprint {fingerprint} does not match the recorded "
            f"{raw['fingerprint']} (edited or corrupt checkpoint)"
        )
    tok.fingerprint = fingerprint
    tok.training_summary = raw.get("training")
    return tok.eval()


def load_tokenizer(name_or_path: str | Path | UriPath, *, root: Location | str | None = None) -> Tokenizer:
    """A checkpoint folder (local or a URI), a bare modality name under ``root``, or a HF hub repo id."""
    path = as_location(name_or_path)
    if (path / CONFIG_FILE).is_file():
        return _load_dir(path)
    if root is not None and (as_location(root) / str(name_or_path) / CONFIG_FILE).is_file():
        return _load_dir(as_location(root) / str(name_or_path))
    if isinstance(name_or_path, str) and name_or_path.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download  # real user path; needs network

        return _load_dir(Path(snapshot_download(repo_id=name_or_path)))
    where = f" (root {root})" if root is not None else ""
    raise FileNotFoundError(f"no tokenizer checkpoint at {name_or_path!r}{where}")
