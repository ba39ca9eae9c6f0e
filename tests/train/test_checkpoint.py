"""Checkpoint round trip (rebuilt from config.json alone, bit-identical), refusal of an
incomplete checkpoint, the LATEST pointer and the RNG state."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from fourm_tiny import tiny_batch, tiny_model, tiny_specs

from fm21.train.checkpoint import (
    IncompleteCheckpoint, load_checkpoint, load_latest, load_training_state, publish_latest, resolve_latest,
    rng_state, save_checkpoint, set_rng_state,
)


def test_save_load_is_bit_identical(tmp_path):
    specs = tiny_specs()
    model = tiny_model(specs, seed=3)
    batch = tiny_batch(specs, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = model(batch)
    loss.backward()
    opt.step()  # weights and optimizer state both move away from init
    model.eval()
    with torch.no_grad():
        expected, _ = model(batch)
    extra = {"tokenizers": {"tok_depth": "abc123"}, "random_weights": ["clip"]}
    save_checkpoint(tmp_path / "ckpt", model=model, step=7, optimizer=opt, extra=extra,
                    trainer_state={"step": 7, "loader": {"seed": 0}})

    loaded, config = load_checkpoint(tmp_path / "ckpt")
    assert config["step"] == 7 and config["extra"] == extra
    assert config["model"]["modalities"] == list(specs)
    assert loaded.specs == specs and loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch)[0], expected)

    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    assert load_training_state(tmp_path / "ckpt", opt2) == {"step": 7, "loader": {"seed": 0}}
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    # the config alone describes the run: sizes, budgets and specs are plain JSON
    raw = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert raw["model"]["dim"] == 64 and raw["specs"]["caption"]["max_seq_len"] == 12
    assert set(raw["files"]) == {"model.safetensors", "optimizer.pt", "trainer.pt"}


def _saved(path, *, optimizer: bool = True):
    model = tiny_model(tiny_specs())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3) if optimizer else None
    save_checkpoint(path, model=model, step=3, optimizer=opt, trainer_state={"step": 3} if optimizer else None)
    return model


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "trainer.pt"])
def test_a_checkpoint_missing_a_listed_file_is_refused_naming_it(tmp_path, name):
    model = _saved(tmp_path / "ckpt")
    (tmp_path / "ckpt" / name).unlink()
    with pytest.raises(IncompleteCheckpoint, match=f"{name} is missing"):
        load_training_state(tmp_path / "ckpt", torch.optim.AdamW(model.parameters()))
    with pytest.raises(IncompleteCheckpoint, match=f"{name} is missing"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_truncated_file_or_a_missing_config_is_refused(tmp_path):
    _saved(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(IncompleteCheckpoint, match="model.safetensors has 100 bytes"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()  # a kill between the data files and config.json
    with pytest.raises(IncompleteCheckpoint, match="no config.json"):
        load_checkpoint(tmp_path / "ckpt")


def test_resume_needs_optimizer_and_trainer_state(tmp_path):
    model = _saved(tmp_path / "ckpt", optimizer=False)  # an inference-only checkpoint
    load_checkpoint(tmp_path / "ckpt")  # loads for inference
    with pytest.raises(IncompleteCheckpoint, match="no optimizer.pt"):
        load_training_state(tmp_path / "ckpt", torch.optim.AdamW(model.parameters()))


def test_latest_points_at_the_newest_complete_checkpoint(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert resolve_latest(ckpts) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_latest(ckpts)
    _saved(ckpts / "step-0000003")
    publish_latest(ckpts / "step-0000003")
    assert resolve_latest(ckpts) == ckpts / "step-0000003"
    assert (ckpts / "LATEST").read_text() == "step-0000003\n"
    (ckpts / "step-0000006").mkdir()  # a checkpoint being written: never published
    with pytest.raises(IncompleteCheckpoint):
        publish_latest(ckpts / "step-0000006")
    assert load_latest(ckpts)[1]["step"] == 3


def test_an_older_runs_latest_folder_is_still_read(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _saved(ckpts / "latest")
    assert resolve_latest(ckpts) == ckpts / "latest"
    assert load_latest(ckpts)[1]["step"] == 3


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    import io

    buf = io.BytesIO()
    torch.save(state, buf)  # as the checkpoint stores it, read back with weights_only
    set_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_checkpoint_and_latest_on_an_object_store(s3):
    """On S3 (moto): the same protocol with puts only; the file check uses object sizes."""
    from fm21.store.fs import as_location

    ckpts = as_location(f"{s3}/run/train/checkpoints")
    model = _saved(ckpts / "step-0000003")
    publish_latest(ckpts / "step-0000003")
    assert resolve_latest(ckpts) == ckpts / "step-0000003"
    loaded, config = load_latest(ckpts)
    assert config["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    (ckpts / "step-0000003" / "trainer.pt").unlink()
    with pytest.raises(IncompleteCheckpoint, match="trainer.pt is missing"):
        load_training_state(ckpts / "step-0000003", torch.optim.AdamW(model.parameters()))
