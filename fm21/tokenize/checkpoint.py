"""Self-describing tokenizer checkpoints: ``<dir>/config.json`` + ``model.safetensors``
(+ ``metrics.json`` and ``recon.png`` when given).

``config.json`` holds the ``TokenizerConfig`` fields at top level plus ``fingerprint``,
``random_init`` and ``training`` (the training summary, or null). The fingerprint is a
short sha256 over the model config and the weight bytes (names, dtypes, shapes, data):
it identifies what the tokenizer computes, so it is stable across save/load and equal
for two runs that produce the same weights (wall times in ``training`` do not enter).

The folder may be local or on an object store (``fm21.store.fs``): files are written and
read as bytes, never through a local path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from fm21.store import fs
from fm21.store.fs import Location, UriPath, as_location

from fm21.tokenize.image_tokenizer import ImageTokenizer, TokenizerConfig
from fm21.tokenize.vqvae import build_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
RECON_FILE = "recon.png"


def _weights(tok: ImageTokenizer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tok.state_dict().items()}


def tokenizer_fingerprint(config: TokenizerConfig, weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(weights):
        t = weights[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_tokenizer(
    tok: ImageTokenizer,
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
        from fm21.tokenize.train_vq import save_recon_grid  # train_vq imports this module

        save_recon_grid(tok, recon_labels, directory / RECON_FILE)
    tok.fingerprint = fingerprint
    return fingerprint


def read_tokenizer_config(directory: Location | str) -> dict[str, Any]:
    return json.loads((as_location(directory) / CONFIG_FILE).read_text())


def _load_dir(directory: Location) -> ImageTokenizer:
    raw = read_tokenizer_config(directory)
    config = TokenizerConfig.from_dict(raw)
    tok = build_tokenizer(config)
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


def load_tokenizer(name_or_path: str | Path | UriPath, *, root: Location | str | None = None) -> ImageTokenizer:
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
