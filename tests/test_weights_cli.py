"""`fm21 weights list | fetch`: what each enabled specialist loads, and the weights cache that
air-gapped workers read. The cache is filled here the way a download would fill it (a tiny
random-init DINOv2 saved into the Hugging Face cache layout), never from a hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fm21.cli import main_cli

ROOT = Path(__file__).resolve().parents[1]
TINY_DINO = ["pseudolabel.specialists.dinov2.weights=pretrained",
             "pseudolabel.specialists.dinov2.options.hidden_size=32",
             "pseudolabel.specialists.dinov2.options.patch_size=8"]


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FM21_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def _cli(*argv: str) -> int:
    """The console script in this process (its exit status; Typer ends with SystemExit)."""
    try:
        main_cli(["--config", str(ROOT / "flows.yaml"), *argv])
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def _sets(overrides) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def _rows(capsys, *overrides: str) -> dict[str, dict]:
    capsys.readouterr()
    assert _cli(*_sets(overrides), "weights", "list", "--json") == 0
    return {r["specialist"]: r for r in json.loads(capsys.readouterr().out)}


def test_list_shows_sources_tags_and_cache_state(capsys, offline_cache):
    rows = _rows(capsys)
    assert rows["depth"]["oracle"] and rows["depth"]["cached"] == "-"
    assert rows["dinov2"]["random"] and rows["dinov2"]["source"] == "random init"
    rows = _rows(capsys, *TINY_DINO)
    assert rows["dinov2"] == {**rows["dinov2"], "weights": "pretrained", "source": "facebook/dinov2-base",
                              "cached": "no", "random": False}


def test_fetch_offline_fails_in_one_line(capsys, offline_cache):
    assert _cli(*_sets(TINY_DINO), "weights", "fetch", "dinov2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err


def test_a_filled_cache_loads_offline(capsys, offline_cache):
    """What `fetch` leaves behind (the hub cache layout under FM21_WEIGHTS_CACHE/hf) is
    listed as cached and loads with the hub unreachable, through the pretrained path."""
    import numpy as np
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from fm21.config import load_config
    from fm21.pseudolabel.worker import build_specialist

    repo = offline_cache / "hf" / "models--facebook--dinov2-base"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     patch_size=8, image_size=64))
    model.save_pretrained(repo / "snapshots" / ("0" * 40))
    assert _rows(capsys, *TINY_DINO)["dinov2"]["cached"] == "yes"
    assert _cli(*_sets(TINY_DINO), "weights", "fetch") == 0
    assert "nothing" in capsys.readouterr().out  # cached already: no download attempted
    cfg = load_config(ROOT / "flows.yaml", overrides=TINY_DINO)
    spec = build_specialist("dinov2", cfg.pseudolabel.specialists["dinov2"], image_size=64)
    spec.load()
    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    out = spec({"key": ["a", "b"], "rgb": rgb, "meta": [{}, {}], "gt": [None, None]})
    assert np.asarray(out["dinov2_global"][0]).shape == (32,) and not spec.is_random
    torch.testing.assert_close(dict(spec.model.named_parameters())["embeddings.cls_token"],
                               dict(model.named_parameters())["embeddings.cls_token"])
