"""The ViT trunk of the VQ-VAE family (``trunk: vit``, fm21.tokenize.vit): shapes, the
reference's parameter names, a few training steps, and a save -> load round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fm21.modalities import MODALITIES
from fm21.tokenize import vqvae
from fm21.tokenize.checkpoint import load_tokenizer, save_tokenizer
from fm21.tokenize.divae import DiVAEConfig
from fm21.tokenize.image_tokenizer import TokenizerConfig
from fm21.tokenize.vit import ViTDecoder, ViTEncoder, sincos_pos_emb

TINY_VIT = {"trunk": "vit", "hidden_dim": 16, "num_layers": 1, "num_heads": 2, "latent_dim": 8,
            "class_embed_dim": 8, "steps": 3, "batch_size": 4}


def _semseg_spec():
    return MODALITIES["tok_semseg"].at(resolution=32, patch_size=8, vocab_size=32)


def test_vit_trunk_shapes_and_reference_names() -> None:
    cfg = TokenizerConfig.from_spec(_semseg_spec(), TINY_VIT)
    enc, dec = ViTEncoder(3, cfg), ViTDecoder(5, cfg)
    x = torch.randn(2, 3, 32, 32)
    h = enc(x)
    assert h.shape == (2, 16, 4, 4)
    assert dec(h).shape == (2, 5, 32, 32)
    # apple/ml-4m `fourm/vq/models/vit_models.py` ViTEncoder keys, one to one
    reference = {"proj.weight", "proj.bias", "pos_emb", "norm_mlp.weight", "norm_mlp.bias"} | {
        f"blocks.0.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")} | {f"post_mlp.{m}.{p}" for m in ("fc1", "fc2") for p in ("weight", "bias")}
    assert set(enc.state_dict()) == reference
    assert "out_proj.weight" in dec.state_dict() and dec.state_dict()["out_proj.weight"].shape == (5 * 64, 16)
    assert "pos_emb" not in dict(enc.named_parameters())  # fixed sin-cos: a buffer, never trained


def test_position_embedding_resizes_to_another_grid() -> None:
    """A tokenizer whose embedding was stored for 8x8 cells reads a 4x4 grid (bicubic, as the reference)."""
    cfg = TokenizerConfig.from_spec(_semseg_spec(), TINY_VIT)
    enc = ViTEncoder(3, dataclasses.replace(cfg, pos_grid=8))
    assert enc.pos_emb.shape == (1, 16, 8, 8)
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 16, 4, 4)
    emb = sincos_pos_emb(4, 16)
    # channel quarters: sin, cos of the column index, then of the row index; at cell (0, 0) sin 0, cos 1
    assert emb.shape == (1, 16, 4, 4)
    torch.testing.assert_close(emb[0, :, 0, 0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))


def test_conv_configs_keep_their_dict() -> None:
    """The ViT-only fields stay out of a conv config's dict, so older checkpoints keep their fingerprint."""
    conv = TokenizerConfig.from_spec(_semseg_spec(), {"hidden_dim": 16})
    assert "num_heads" not in conv.to_dict() and "pos_grid" not in conv.to_dict()
    assert TokenizerConfig.from_dict(conv.to_dict()) == conv
    vit = TokenizerConfig.from_spec(_semseg_spec(), TINY_VIT)
    assert vit.to_dict()["num_heads"] == 2 and TokenizerConfig.from_dict(vit.to_dict()) == vit
    assert "num_heads" not in DiVAEConfig.from_spec(MODALITIES["tok_depth"].at(resolution=32, patch_size=8),
                                                    {}).to_dict()
    with pytest.raises(ValueError, match="trunk"):
        TokenizerConfig.from_spec(_semseg_spec(), {"trunk": "resnet"})


def test_vit_vqvae_trains_saves_and_loads(tmp_path, scenes32) -> None:
    spec = _semseg_spec()
    train, val = scenes32["semseg"][:8], scenes32["semseg"][8:10]
    tok, metrics = vqvae.train(spec, TINY_VIT, train, val, seed=0)
    assert tok.config.trunk == "vit" and isinstance(tok.encoder, ViTEncoder)
    assert {"miou", "train"} <= set(metrics) and np.isfinite(metrics["recon_loss"])
    assert isinstance(tok.post_mlp, torch.nn.Identity)  # the ViT encoder ends in the tanh post-MLP
    ids = tok.encode_labels(val)
    assert ids.shape == (2, 16) and ids.dtype == np.int16
    save_tokenizer(tok, tmp_path / "tok", metrics=metrics)
    back = load_tokenizer(tmp_path / "tok")
    assert back.config == tok.config
    for name, tensor in tok.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    np.testing.assert_array_equal(back.encode_labels(val), ids)
    assert back.decode_labels(ids).shape == (2, 32, 32)


def test_vit_trunk_reads_feature_maps_at_patch_one() -> None:
    """Feature maps: a 1x1 input projection (the reference's ``patch_proj=False``), one token per cell."""
    spec = MODALITIES["tok_clip"].at(vocab_size=16)
    cfg = TokenizerConfig.from_spec(spec, TINY_VIT)
    tok = vqvae.build(cfg)
    assert cfg.patch_size == 1 and tok.encoder.proj.kernel_size == (1, 1)
    feats = np.random.default_rng(0).normal(size=(2, cfg.resolution, cfg.resolution, spec.num_channels))
    ids = tok.encode_labels(feats.astype(np.float16))
    assert ids.shape == (2, cfg.resolution**2)
    assert tok.decode_labels(ids).shape == feats.shape
