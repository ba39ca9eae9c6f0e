"""Self-describing 4M checkpoints and the ``LATEST`` pointer of a checkpoints folder.

A checkpoint is a folder: ``model.safetensors``, optionally ``optimizer.pt`` and
``trainer.pt`` (RNG states and the data-stream layout: what an exact resume needs), and
``config.json``. ``config.json`` holds everything needed to rebuild the model without
flags: the model config (sizes, token budgets, the modality set), every modality spec
as a dict, the step, whatever the caller adds under ``extra`` (tokenizer fingerprints,
tags such as specialists run with random weights, the run fingerprint), and the name and
size of every other file of the checkpoint.

Completeness. ``config.json`` is removed first and written last, so its presence marks a
complete checkpoint; a checkpoint whose ``config.json`` lists a file that is missing or
has another size (a folder copied or pruned by hand, a store that lost an object) is
refused with :class:`IncompleteCheckpoint` naming the file, by both :func:`load_checkpoint`
and :func:`load_training_state`.

``checkpoints/LATEST`` names the newest complete step folder. It is written with
``fs.write_atomic`` after that folder's ``config.json`` (a rename locally, one PUT on S3),
so a reader sees the previous or the new checkpoint, never a mix. :func:`resolve_latest`
is the one way to find it; it still reads the ``latest/`` folder older runs copied.

The folder may be local or under a URI (an ``s3://`` workdir): every file is written and
read as bytes through ``fm21.store.fs`` (a 4M checkpoint fits in memory, since the model does).
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from fm21.faults import crash_point
from fm21.modalities import ModalitySpec
from fm21.store import fs
from fm21.store.fs import Location, as_location
from fm21.train.model import FourM, FourMConfig

FORMAT = "fm21.fourm/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer.pt"
LATEST_FILE = "LATEST"
LEGACY_LATEST = "latest"  # the folder copy older runs kept beside the step folders


class IncompleteCheckpoint(RuntimeError):
    """A checkpoint folder that lacks a file its config.json lists (or has it truncated)."""


def spec_to_dict(spec: ModalitySpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_dict(data: dict[str, Any]) -> ModalitySpec:
    fields = {f.name for f in dataclasses.fields(ModalitySpec)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"checkpoint modality spec has unknown fields {sorted(unknown)}")
    return ModalitySpec(**{**data, "label_columns": tuple(data.get("label_columns", ()))})


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(
    directory: Location | str,
    *,
    model: FourM,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights, optimizer and trainer state, then ``config.json`` listing them."""
    directory = as_location(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)  # incomplete until config.json is back
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    files = {WEIGHTS_FILE: save(state, metadata={"format": FORMAT, "step": str(step)})}
    if optimizer is not None:
        files[OPTIMIZER_FILE] = _torch_bytes(optimizer.state_dict())
    if trainer_state is not None:
        files[TRAINER_FILE] = _torch_bytes(trainer_state)
    for name, data in files.items():
        fs.write_atomic(directory / name, data)
        crash_point("train.checkpoint_write")  # a kill here leaves a folder without config.json
    config = {
        "format": FORMAT,
        "step": int(step),
        "model": model.config.to_dict(),
        "specs": {name: spec_to_dict(spec) for name, spec in model.specs.items()},
        "num_parameters": model.num_parameters(),
        "files": {name: len(data) for name, data in files.items()},
        "extra": extra or {},
    }
    fs.write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=False))  # last: complete


def read_checkpoint_config(directory: Location | str) -> dict[str, Any]:
    """``config.json`` of a checkpoint, after checking every file it lists is there, whole."""
    directory = as_location(directory)
    path = directory / CONFIG_FILE
    if not path.exists():
        raise IncompleteCheckpoint(f"{directory}: no {CONFIG_FILE}, not a complete checkpoint")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not an fm21 4M checkpoint (format {config.get('format')!r})")
    # Checkpoints written before the file list had weights and optimizer only.
    for name, size in config.get("files", {WEIGHTS_FILE: None}).items():
        found = _file_size(directory / name)
        if found is None:
            raise IncompleteCheckpoint(f"{directory}: checkpoint is incomplete, {name} is missing")
        if size is not None and found != size:
            raise IncompleteCheckpoint(f"{directory}: checkpoint is incomplete, {name} has {found} bytes, not {size}")
    return config


def _file_size(location: Location) -> int | None:
    """Bytes of a file from its metadata (no read: weights may be large and remote); None if absent."""
    import pyarrow.fs as pafs

    filesystem, path = fs.filesystem(location)
    info = filesystem.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


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


def load_training_state(
    directory: Location | str, optimizer: torch.optim.Optimizer, *, map_location: str = "cpu"
) -> dict[str, Any]:
    """Load ``optimizer.pt`` into ``optimizer`` and return ``trainer.pt``'s dict.

    Both are required: resuming without optimizer moments or RNG states would silently
    change the run, so a checkpoint without them is an :class:`IncompleteCheckpoint`."""
    directory = as_location(directory)
    config = read_checkpoint_config(directory)
    for name in (OPTIMIZER_FILE, TRAINER_FILE):
        if name not in config.get("files", {}):
            raise IncompleteCheckpoint(f"{directory}: cannot resume from it, it has no {name}")
    data = io.BytesIO(fs.read_bytes(directory / OPTIMIZER_FILE))
    optimizer.load_state_dict(torch.load(data, map_location=map_location, weights_only=True))
    return torch.load(io.BytesIO(fs.read_bytes(directory / TRAINER_FILE)), weights_only=True)


# ------------------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Any]:
    """torch, numpy and Python global RNG states, in types ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
        "python": list(random.getstate()[1]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {"key": np.array(np_state["state"]["key"], dtype=np.uint32),
                                                "pos": np_state["state"]["pos"]}})
    random.setstate((3, tuple(state["python"]), None))


# ------------------------------------------------------------------------------ LATEST
def publish_latest(checkpoint: Location) -> None:
    """Point ``<checkpoints>/LATEST`` at the complete checkpoint folder ``checkpoint``."""
    read_checkpoint_config(checkpoint)  # never point at an incomplete folder
    fs.write_atomic(checkpoint.parent / LATEST_FILE, checkpoint.name + "\n")


def resolve_latest(ckpt_dir: Location | str) -> Location | None:
    """The checkpoint ``LATEST`` names (or an older run's ``latest/`` copy); None if neither."""
    ckpt_dir = as_location(ckpt_dir)
    pointer = ckpt_dir / LATEST_FILE
    if pointer.exists():
        return ckpt_dir / pointer.read_text().strip()
    legacy = ckpt_dir / LEGACY_LATEST
    return legacy if (legacy / CONFIG_FILE).exists() else None


def load_latest(ckpt_dir: Location | str, *, map_location: str = "cpu") -> tuple[FourM, dict[str, Any]]:
    """:func:`load_checkpoint` of the latest checkpoint; a clear error when there is none."""
    latest = resolve_latest(ckpt_dir)
    if latest is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint ({LATEST_FILE} missing); run the train stage first")
    return load_checkpoint(latest, map_location=map_location)


def init_weights(model: FourM, source: Location | str) -> dict[str, Any]:
    """Start a run from the weights of checkpoint ``source`` (fine-tuning, e.g. from
    ``fm21 import 4m21``): a checkpoint folder, or a checkpoints folder with ``LATEST``.

    Every tensor of ``model`` must be in the checkpoint with its shape (the run's
    ``train.model`` must describe the checkpoint's architecture). The checkpoint's
    tensors of modalities this run does not train are left out; any other difference is
    an error listing every key. Returns the checkpoint's config (its ``step``, ``extra``).
    """
    source = as_location(source)
    folder = source if (source / CONFIG_FILE).exists() else resolve_latest(source)
    if folder is None or not (folder / CONFIG_FILE).exists():
        raise FileNotFoundError(f"train.init_from: no checkpoint at {source} (no {CONFIG_FILE}, no {LATEST_FILE})")
    config = read_checkpoint_config(folder)
    state = load(fs.read_bytes(folder / WEIGHTS_FILE))
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    misshapen = sorted(f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} here"
                       for k, v in own.items() if k in state and state[k].shape != v.shape)
    others = set(config.get("specs") or {}) - set(model.specs)
    unused = sorted(k for k in state if k not in own and not _of_modality(k, others))
    if missing or misshapen or unused:
        raise ValueError(
            f"train.init_from {folder}: the checkpoint does not fit train.model "
            f"(checkpoint model: {config.get('model')}): missing {missing}, mis-shaped {misshapen}, "
            f"left over {unused}")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return config


def _of_modality(key: str, names: set[str]) -> bool:
    """Whether parameter ``key`` belongs to one of the modalities ``names`` (their embeddings)."""
    parts = key.split(".")
    return len(parts) > 1 and parts[0] in ("encoder_embeddings", "decoder_embeddings", "mod_emb") and parts[1] in names
