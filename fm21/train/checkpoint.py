"""Self-describing 4M checkpoints: ``model.safetensors`` + ``config.json`` (+ ``optimizer.pt``).

``config.json`` holds everything needed to rebuild the model without flags: the model
config (sizes, token budgets, the modality set), every modality spec as a dict, the
step, and whatever the caller adds under ``extra`` (tokenizer fingerprints, tags such
as specialists run with random weights, the run fingerprint).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fm21.modalities import ModalitySpec
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
    directory: Path,
    *,
    model: FourM,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights, config and (optionally) optimizer state into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT, "step": str(step)})
    config = {
        "format": FORMAT,
        "step": int(step),
        "model": model.config.to_dict(),
        "specs": {name: spec_to_dict(spec) for name, spec in model.specs.items()},
        "num_parameters": model.num_parameters(),
        "extra": extra or {},
    }
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=False))
    os.replace(tmp, directory / CONFIG_FILE)  # config.json last: its presence marks completeness
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
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


def load_checkpoint(directory: Path, *, map_location: str = "cpu") -> tuple[FourM, dict[str, Any]]:
    """Rebuild the model from ``config.json`` alone and load its weights (strict)."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    model = build_model(config)
    state = load_file(str(directory / WEIGHTS_FILE), device=map_location)
    model.load_state_dict(state, strict=True)
    return model.to(map_location), config


def load_optimizer_state(
    directory: Path, optimizer: torch.optim.Optimizer, *, map_location: str = "cpu"
) -> bool:
    """Load ``optimizer.pt`` into ``optimizer`` if the checkpoint has one; True if it did."""
    path = Path(directory) / OPTIMIZER_FILE
    if not path.exists():
        return False
    optimizer.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
    return True
