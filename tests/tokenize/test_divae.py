"""DiVAE tokenizers (diffusion decoder), generated from the registry: every modality whose
tokenizer family is ``divae`` is built, encoded and decoded at 32 px, patch 8 (plumbing
at random init); one tiny training run shows the diffusion loss falls. Quality figures
live in ``benchmarks/bench_divae.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from fm21.modalities import MODALITIES, resolve_specs
from fm21.tokenize import divae
from fm21.tokenize.divae import DiVAEConfig

DIVAE_NAMES = [n for n, s in MODALITIES.items() if s.tokenizer == divae.FAMILY]
SPECS = resolve_specs(DIVAE_NAMES, resolution=32, patch_size=8, image_vocab_size=64)
TINY = {"hidden_dim": 16, "num_layers": 1, "unet_channels": [16, 32], "decode_steps": 2}

# label kind -> (decoded dtype, per-sample decoded shape at 32 px)
DECODED = {
    "rgb": (np.uint8, (32, 32, 3)),
    "depth": (np.float32, (32, 32)),
    "normal": (np.float32, (32, 32, 3)),
    "canny_edge": (np.uint8, (32, 32)),
    "sam_edge": (np.uint8, (32, 32)),
}


def _tiny(name: str) -> divae.DiVAE:
    torch.manual_seed(0)
    return divae.build(DiVAEConfig.from_spec(SPECS[name], TINY)).eval()


def test_registry_divae_modalities_are_covered() -> None:
    assert {"tok_rgb", "tok_depth", "tok_normal", "tok_canny_edge", "tok_sam_edge"} <= set(DIVAE_NAMES)
    assert {SPECS[n].label_columns[0] for n in DIVAE_NAMES} <= set(DECODED)


def test_config_round_trips_and_rejects_bad_options() -> None:
    cfg = DiVAEConfig.from_spec(SPECS["tok_rgb"], {**TINY, "family": "divae", "steps": 3})
    assert (cfg.family, cfg.preprocess, cfg.grid_size, cfg.unet_channels) == ("divae", "rgb", 4, (16, 32))
    assert DiVAEConfig.from_dict({**cfg.to_dict(), "fingerprint": "x"}) == cfg  # unknown keys ignored
    with pytest.raises(ValueError, match="'hiden_dim'"):
        DiVAEConfig.from_spec(SPECS["tok_rgb"], {"hiden_dim": 8})
    with pytest.raises(ValueError, match="family"):
        DiVAEConfig.from_spec(SPECS["tok_rgb"], {"family": "vqvae"})
    with pytest.raises(ValueError, match="continuous"):  # class maps stay with the VQ-VAE
        DiVAEConfig.from_spec(MODALITIES["tok_semseg"], {})
    with pytest.raises(ValueError, match="decoder_patch"):
        DiVAEConfig.from_spec(SPECS["tok_rgb"], {"decoder_patch": 3})


@pytest.mark.parametrize("name", DIVAE_NAMES)
def test_encode_decode_shapes_and_determinism(name: str, scenes32: dict[str, np.ndarray]) -> None:
    tok = _tiny(name)
    labels = scenes32[SPECS[name].label_columns[0]][:3]
    ids = tok.encode_labels(labels)
    assert ids.dtype == np.int16 and ids.shape == (3, 16)
    assert ids.min() >= 0 and ids.max() < 64
    np.testing.assert_array_equal(tok.encode_labels(labels), ids)  # eval: no codebook update
    dtype, shape = DECODED[SPECS[name].label_columns[0]]
    out = tok.decode_labels(ids)
    assert out.dtype == dtype and out.shape == (3, *shape)
    np.testing.assert_array_equal(tok.decode_labels(ids), out)  # same seed, same map
    # a pure function of (ids, seed): the same ids decode alike alone or in a batch
    np.testing.assert_allclose(tok.decode_labels(ids[1:2], batch_size=1).astype(np.float32),
                               out[1:2].astype(np.float32), atol=1 if dtype == np.uint8 else 1e-4)


def test_decode_seed_and_steps_change_the_sample(scenes32: dict[str, np.ndarray]) -> None:
    tok = _tiny("tok_rgb")
    ids = tok.encode_labels(scenes32["rgb"][:2])
    base = tok.decode_labels(ids, seed=0)
    assert not np.array_equal(base, tok.decode_labels(ids, seed=1))
    assert not np.array_equal(base, tok.decode_labels(ids, steps=1))


def test_training_lowers_the_diffusion_loss_deterministically(
    scenes32: dict[str, np.ndarray], tmp_path
) -> None:
    rgb = scenes32["rgb"]
    opts = {**TINY, "steps": 25, "batch_size": 8, "lr": 3e-3, "ema_decay": 0.9}
    tok, metrics = divae.train(SPECS["tok_rgb"], opts, rgb[8:40], rgb[:8], seed=0)
    untrained = divae.build(tok.config)
    before, after = divae.diffusion_loss(untrained, rgb[8:40]), divae.diffusion_loss(tok, rgb[8:40])
    assert after < 0.5 * before, (before, after)
    assert {"psnr", "codebook_usage", "diffusion_loss"} <= set(metrics)
    assert metrics["train"]["steps"] == 25 and tok.training_summary["seed"] == 0
    # state dict round trip through safetensors and the config dict: same ids, same decodes
    loaded = divae.build(DiVAEConfig.from_dict(tok.config.to_dict()))
    loaded.load_state_dict(load(save({k: v.contiguous() for k, v in tok.state_dict().items()})), strict=True)
    ids = tok.encode_labels(rgb[:4])
    np.testing.assert_array_equal(loaded.encode_labels(rgb[:4]), ids)
    np.testing.assert_array_equal(loaded.decode_labels(ids), tok.decode_labels(ids))
    divae.save_recon_png(tok, rgb[:4], tmp_path / "recon.png")
    assert Image.open(tmp_path / "recon.png").size[0] > 4 * 32


def test_training_is_deterministic_for_a_seed(scenes32: dict[str, np.ndarray]) -> None:
    depth = scenes32["depth"]
    opts = {**TINY, "steps": 3, "batch_size": 4}
    runs = [divae.train(SPECS["tok_depth"], opts, depth[8:24], depth[:4], seed=7) for _ in range(2)]
    a, b = (r[0].state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0][1]["abs_rel_aligned"] == runs[1][1]["abs_rel_aligned"]


def test_released_layout_options_stay_out_of_the_default_dump() -> None:
    """fm21's own DiVAEs keep their config dump (and fingerprints); the released layout's
    options are written only when set, and round-trip."""
    released = set(divae.DIVAE_OPTIONAL_FIELDS) - {"num_heads", "pos_grid"}
    assert not released & set(DiVAEConfig.from_spec(SPECS["tok_rgb"], TINY).to_dict())
    adm = DiVAEConfig.from_spec(SPECS["tok_sam_edge"], {
        **TINY, "unet_channels": [32, 64], "unet_layout": "adm", "unet_attention_levels": [1], "decoder_channels": 3,
        "prediction_type": "v_prediction", "zero_terminal_snr": True, "thresholding": True})
    assert released <= set(adm.to_dict()) | {"unet_num_heads", "unet_scale_shift", "beta_schedule"}
    assert DiVAEConfig.from_dict(adm.to_dict()) == adm
    with pytest.raises(ValueError, match="unet_layout: adm"):
        DiVAEConfig.from_spec(SPECS["tok_rgb"], {**TINY, "unet_attention_levels": [1]})
    with pytest.raises(ValueError, match="only a 1-channel label"):
        DiVAEConfig.from_spec(SPECS["tok_rgb"], {**TINY, "decoder_channels": 1})


def test_v_prediction_adm_divae_trains_and_decodes(scenes32: dict[str, np.ndarray]) -> None:
    """The v target is alpha_t^0.5 * noise - sigma_t * x (on the 3 repeated edge channels); a
    training step and a decode run through the ADM-shaped UNet with those schedulers."""
    opts = {**TINY, "unet_channels": [32, 64], "unet_layout": "adm", "unet_attention_levels": [1],
            "decoder_channels": 3, "prediction_type": "v_prediction", "zero_terminal_snr": True,
            "thresholding": True, "steps": 2, "batch_size": 4}
    edges = scenes32["sam_edge"]
    tok, _ = divae.train(SPECS["tok_sam_edge"], opts, edges[4:12], edges[:4], seed=0)
    x = tok.preprocessor.to_model(edges[:2])  # (2, 1, 32, 32)
    noise, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 999])
    a = tok.noise_schedule.alphas_cumprod[t][:, None, None, None]
    v = a.sqrt() * noise - (1 - a).sqrt() * x.expand(-1, 3, -1, -1)
    torch.testing.assert_close(tok.diffusion_target(x, noise, t), v)
    assert float(a[1]) == pytest.approx(0.0, abs=1e-9)  # zero terminal SNR: pure noise at t = 999
    out = tok.decode_labels(tok.encode_labels(edges[:2]), steps=2)
    assert out.shape == (2, 32, 32) and out.dtype == np.uint8
