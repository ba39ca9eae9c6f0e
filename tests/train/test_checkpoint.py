"""Checkpoint round trip: rebuilt from config.json alone, bit-identical."""

from __future__ import annotations

import json

import torch
from fourm_tiny import tiny_batch, tiny_model, tiny_specs

from fm21.train.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint


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
    save_checkpoint(tmp_path / "ckpt", model=model, step=7, optimizer=opt, extra=extra)

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
    assert load_optimizer_state(tmp_path / "ckpt", opt2)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    # the config alone describes the run: sizes, budgets and specs are plain JSON
    raw = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert raw["model"]["dim"] == 64 and raw["specs"]["caption"]["max_seq_len"] == 12
