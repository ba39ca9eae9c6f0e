"""Self-describing tokenizer checkpoints: save -> load is bit-identical."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fm21.config import VQTokenizerConfig
from fm21.modalities import MODALITIES
from fm21.tokenize.checkpoint import load_tokenizer, save_tokenizer
from fm21.tokenize.image_tokenizer import TokenizerConfig
from fm21.tokenize.vqvae import build_tokenizer


def _random_tok(name: str = "tok_normal"):
    torch.manual_seed(0)
    spec = MODALITIES[name].at(resolution=32, patch_size=8, vocab_size=64)
    cfg = VQTokenizerConfig(hidden_dim=32, num_layers=1)
    return build_tokenizer(TokenizerConfig.from_spec(spec, cfg))


@pytest.mark.parametrize("name", ["tok_normal", "tok_semseg"])
def test_random_init_round_trip_bit_identical(name, tmp_path, scenes32) -> None:
    tok = _random_tok(name).eval()
    labels = scenes32[MODALITIES[name].label_columns[0]][:8]
    fp = save_tokenizer(tok, tmp_path / "tokenizers" / name, metrics={"recon_loss": 1.0})
    # by path, and by bare modality name under a root
    by_path = load_tokenizer(tmp_path / "tokenizers" / name)
    by_name = load_tokenizer(name, root=tmp_path / "tokenizers")
    for loaded in (by_path, by_name):
        assert loaded.fingerprint == fp
        assert loaded.config == tok.config
        for key, value in tok.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert np.array_equal(loaded.encode_labels(labels), tok.encode_labels(labels))
        ids = tok.encode_labels(labels)
        assert np.array_equal(loaded.decode_labels(ids), tok.decode_labels(ids))
    # saving the loaded tokenizer again gives the same fingerprint
    assert save_tokenizer(by_path, tmp_path / "again") == fp


def test_checkpoint_of_a_label_column_preprocess_loads_unchanged(tmp_path, scenes32) -> None:
    """Checkpoints written before label kinds (``preprocess: semseg``) load with their
    recorded fingerprint: the value is kept and resolved to the ``classes`` preprocessor."""
    tok = _random_tok("tok_semseg").eval()
    old = build_tokenizer(dataclasses.replace(tok.config, preprocess="semseg"))
    old.load_state_dict(tok.state_dict())
    fp = save_tokenizer(old, tmp_path / "old")
    loaded = load_tokenizer(tmp_path / "old")
    assert loaded.fingerprint == fp and loaded.config.preprocess == "semseg" and loaded.config.family == "vqvae"
    labels = scenes32["semseg"][:4]
    assert np.array_equal(loaded.encode_labels(labels), tok.encode_labels(labels))


def test_config_json_describes_the_tokenizer(tmp_path, scenes32) -> None:
    tok = _random_tok("tok_depth")
    save_tokenizer(tok, tmp_path / "d", metrics={"x": 1}, recon_labels=scenes32["depth"][:8])
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    for key in ("family", "modality", "preprocess", "resolution", "patch_size", "vocab_size",
                "latent_dim", "hidden_dim", "num_layers", "num_channels", "fingerprint"):
        assert key in cfg, key
    assert cfg["family"] == "vqvae" and cfg["modality"] == "tok_depth"
    assert cfg["preprocess"] == "depth" and cfg["random_init"] is True and cfg["training"] is None
    assert json.loads((tmp_path / "d" / "metrics.json").read_text()) == {"x": 1}
    from PIL import Image

    png = Image.open(tmp_path / "d" / "recon.png")
    assert png.size == (8 * 34 + 2, 2 * 34 + 2)  # 8 samples, originals over reconstructions


def test_edited_checkpoint_is_refused(tmp_path) -> None:
    tok = _random_tok()
    save_tokenizer(tok, tmp_path / "n")
    path = tmp_path / "n" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["ema_decay"] = 0.5  # the config no longer matches the fingerprinted weights
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="fingerprint"):
        load_tokenizer(tmp_path / "n")


def test_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tokenizer("tok_rgb", root=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nothing")
