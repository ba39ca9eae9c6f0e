"""Self-describing 4M checkpoints: ``model.safetensors`` + ``config.json`` (+ ``optimizer.pt``).

``config.json`` holds everything needed to rebuild the model without flags: the model
config (sizes, token budgets, the modality set), every modality spec as a dict, the
step, and whatever the caller adds under ``extra`` (tokenizer fingerprints, tags such
as specialists run with random weights, the run fingerprint).

The folder may be local or under a URI (an ``s3://`` workdir): every file is written and
read as bytes through ``fm21.store.fs`` (safetensors and torch serialise to memory; a 4M
checkpoint fits in memory, since the model does). ``config.json`` is written last and
removed first, so its presence marks a complete checkpoint on both.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import torch
from safetensors.torch import load, save

from fm21.modalities import ModalitySpec
from fm21.store import fs
from fm21.store.fs import Location, as_location
from fm21.train.model import FourM, FourMConfig

FORMAT = "fm21.fourm/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"


def spec_to_dict(spec: ModalitySpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_dict(data: dict[str, Any]) -> ModalitySpec:
    fields = {f.name for f in dataclasses.fields(ModalitySpec)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"checkpoint modality spec has unknown fields {sorted(unknown)}")
    return ModalitySpec(**{**data, "label_columns": tuple(data.get("label_columns", ()))})


def save_checkpoint(
    directory: Location | str,
    *,
    model: FourM,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights, config and (optionally) optimizer state into ``directory``."""
    directory = as_location(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)  # incomplete until config.json is back
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    fs.write_atomic(directory / WEIGHTS_FILE, save(state, metadata={"format": FORMAT, "step": str(step)}))
    config = {
        "format": FORMAT,
        "step": int(step),
        "model": model.config.to_dict(),
        "specs": {name: spec_to_dict(spec) for name, spec in model.specs.items()},
        "num_parameters": model.num_parameters(),
        "extra": extra or {},
    }
    if optimizer is not None:
        buf = io.BytesIO()
        torch.save(optimizer.state_dict(), buf)
        fs.write_atomic(directory / OPTIMIZER_FILE, buf.getvalue())
    # config.json last: its presence marks completeness
    fs.write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=False))


def copy_checkpoint(src: Location, dst: Location) -> None:
    """``dst`` becomes a copy of the checkpoint ``src`` (server-side on an object store);
    ``dst/config.json`` is removed first and copied last, so ``dst`` is never a mix."""
    (dst / CONFIG_FILE).unlink(missing_ok=True)
    if dst.exists():
        fs.remove_tree(dst)
    names = [n for n in fs.list_names(src) if n != CONFIG_FILE]
    for name in [*names, CONFIG_FILE]:
        fs.copy_file(src / name, dst / name)


def read_checkpoint_config(directory: Location | str) -> dict[str, Any]:
    path = as_location(directory) / CONFIG_FILE
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not an fm21 4M checkpoint (format {config.get('format')!r})")
    return config


def build_model(config: dict[str, Any]) -> FourM:
    """A freshly initialised model with the architecture described by a checkpoint config."""
    model_cfg = FourMConfig.from_dict(config["model"])
    specs = {name: spec_from_dict(d) for name, d in config["specs"].items()}
    return FourM(
        specs, model_cfg, num_input_tokens=model_cfg.num_input_tokens,
        num_target_tokens=model_cfg.num_target_tokens,
        tie_sequence_logits=model_cfg.tie_sequence_logits,
    )


def load_checkpoint(directory: Location | str, *, map_location: str = "cpu") -> tuple[FourM, dict[str, Any]]:
    """Rebuild the model from ``config.json`` alone and load its weights (strict)."""
    directory = as_location(directory)
    config = read_checkpoint_config(directory)
    model = build_model(config)
    state = load(fs.read_bytes(directory / WEIGHTS_FILE))  # CPU tensors; the model moves below
    model.load_state_dict(state, strict=True)
    return model.to(map_location), config


def load_optimizer_state(
    directory: Location | str, optimizer: torch.optim.Optimizer, *, map_location: str = "cpu"
) -> bool:
    """Load ``optimizer.pt`` into ``optimizer`` if the checkpoint has one; True if it did."""
    path = as_location(directory) / OPTIMIZER_FILE
    if not path.exists():
        return False
    data = io.BytesIO(fs.read_bytes(path))
    optimizer.load_state_dict(torch.load(data, map_location=map_location, weights_only=True))
    return True
