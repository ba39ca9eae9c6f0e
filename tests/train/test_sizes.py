"""Trunk sizes: presets, the reference's parameter counts, the gelu/bias variants and the
checkpoint compatibility of the new architecture fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fourm_tiny import tiny_batch, tiny_specs

from fm21.config import MODEL_SIZES, ModelConfig, load_config
from fm21.modalities import resolve_specs
from fm21.train.model import FourM, FourMConfig

ROOT = Path(__file__).resolve().parents[2]

# The 4M paper's model sizes (4M-B / 4M-L / 4M-XL), built in apple/ml-4m `fourm/models/fm.py`
# as fm_{base_12e_12d,large_24e_24d,xlarge_24e_24d}_swiglu_nobias.
#
# "Trunk" = FourM.num_parameters(trunk_only=True) = fm21.train.model.TRUNK_MODULES: the
# encoder blocks, the decoder blocks (self-attention, cross-attention with its query and
# context norms, SwiGLU MLP), the encoder and decoder final norms and the context projection.
# Per-modality embeddings, output heads, mod_emb and mask_token are left out: they depend on
# the modality set and vocabularies, the published sizes do not. The blocks alone are
# 198.24M / 704.7M / 2.819B; the norms and the projection add 0.59M / 1.05M / 4.2M.
REFERENCE_TRUNK = {"base": 198e6, "large": 705e6, "xlarge": 2.8e9}
REFERENCE_SWIGLU_HIDDEN = {"base": 2048, "large": 2730, "xlarge": 5461}  # GatedMlp: int(2 * 4d / 3)


def _meta_model(cfg: ModelConfig) -> FourM:
    """A FourM on the meta device: shapes without memory (one modality, the trunk is the same)."""
    specs = resolve_specs(["tok_depth"], resolution=32, patch_size=8, image_vocab_size=16)
    with torch.device("meta"):
        return FourM(specs, cfg)


@pytest.mark.parametrize("size", sorted(REFERENCE_TRUNK))
def test_trunk_parameter_count_matches_the_reference(size):
    model = _meta_model(ModelConfig(size=size))
    assert next(model.parameters()).is_meta
    trunk = model.num_parameters(trunk_only=True)
    assert abs(trunk / REFERENCE_TRUNK[size] - 1) < 0.01, (size, trunk)
    assert model.encoder[0].mlp.fc1.out_features == REFERENCE_SWIGLU_HIDDEN[size]
    assert all(p.ndim == 1 for n, p in model.named_parameters() if "norm" in n)  # LayerNorm weights only
    assert not any(n.endswith(".bias") for n, _ in model.named_parameters())


def test_size_presets_and_explicit_overrides():
    for size, preset in MODEL_SIZES.items():
        cfg = ModelConfig(size=size)
        assert {k: getattr(cfg, k) for k in preset} == preset
    cfg = ModelConfig(size="large", num_heads=8, dim=None)  # explicit wins, null takes the preset
    assert (cfg.dim, cfg.encoder_depth, cfg.num_heads) == (1024, 24, 8)
    assert ModelConfig() == ModelConfig(size=None)  # no size: the field defaults (base)


def test_recipes_resolve_their_trunks():
    demo = load_config(ROOT / "flows.yaml").train.model
    assert (demo.size, demo.dim, demo.encoder_depth, demo.decoder_depth, demo.num_heads) == (None, 128, 3, 3, 4)
    assert (demo.mlp, demo.bias, demo.pos_emb_scale, demo.token_emb_std) == ("swiglu", False, 3.0, 0.5)
    b = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "4m21-b.yaml").train
    assert (b.model.size, b.model.dim, b.model.encoder_depth, b.model.decoder_depth, b.model.num_heads) == (
        "base", 768, 12, 12, 12)
    assert (b.model.mlp, b.model.bias, b.model.pos_emb_scale, b.model.token_emb_std) == ("swiglu", False, 1.0, 0.02)
    large = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "4m21-b.yaml",
                        overrides=["train.model.size=large"]).train.model
    assert (large.dim, large.encoder_depth, large.num_heads) == (1024, 24, 16)


def test_gelu_with_biases_builds_runs_and_counts_like_the_reference():
    specs = tiny_specs()
    cfg = ModelConfig(dim=64, encoder_depth=1, decoder_depth=1, num_heads=4, mlp="gelu", bias=True)
    torch.manual_seed(0)
    model = FourM(specs, cfg, num_input_tokens=32, num_target_tokens=32)
    assert model.encoder[0].mlp.fc1.out_features == 256  # Mlp: int(4 * dim)
    assert model.encoder[0].attn.qkv.bias is not None and model.decoder[0].query_norm.bias is not None
    # reference Block with biases: norms 2 x 2d, qkv 3d^2 + 3d, proj d^2 + d, Mlp 8d^2 + 5d
    d = 64
    encoder_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d)
    assert sum(p.numel() for p in model.encoder[0].parameters()) == encoder_block
    loss, _ = model(tiny_batch(specs))
    loss.backward()
    assert torch.isfinite(loss) and model.encoder[0].mlp.fc1.bias.grad is not None


def test_checkpoint_configs_without_the_new_fields_build_the_same_model():
    """A config.json written before mlp/bias/size existed rebuilds the 4M-21 trunk it held."""
    old = {"dim": 64, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 4, "mlp_ratio": 4.0,
           "num_input_tokens": 32, "num_target_tokens": 32, "tie_sequence_logits": True, "init_std": 0.02,
           "token_emb_std": 0.02, "pos_emb_scale": 1.0, "modalities": list(tiny_specs())}
    cfg = FourMConfig.from_dict(old)
    assert (cfg.mlp, cfg.bias) == ("swiglu", False)
    rebuilt = FourM(tiny_specs(), cfg, num_input_tokens=32, num_target_tokens=32)
    current = FourM(tiny_specs(), ModelConfig(dim=64, encoder_depth=1, decoder_depth=1, num_heads=4),
                    num_input_tokens=32, num_target_tokens=32)
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in current.state_dict().items()}
    assert FourMConfig.from_dict(rebuilt.config.to_dict()) == rebuilt.config
