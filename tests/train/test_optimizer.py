"""build_optimizer: AdamW (0.9, 0.95) with the reference's no-decay rule."""

from __future__ import annotations

import pytest
from fourm_tiny import tiny_specs

from fm21.config import ModelConfig, TrainConfig
from fm21.train.loop import build_optimizer
from fm21.train.model import FourM
from fm21.train.parallelize import apply_activation_checkpointing


def reference_no_decay(name: str) -> bool:
    """apple/ml-4m `fourm/utils/optim_factory.py`, get_parameter_groups (empty skip list, as
    FourM.no_weight_decay() returns for every embedding)."""
    return ("norm." in name or ".norm" in name or name.endswith(".bias")
            or name.endswith(".lookup_table_weight") or name.endswith(".gamma"))


def _groups(model, cfg):
    opt = build_optimizer(model, cfg)
    ids = {id(p): n for n, p in model.named_parameters()}
    return opt, {g["weight_decay"]: {ids[id(p)] for p in g["params"]} for g in opt.param_groups}


@pytest.mark.parametrize("mlp,bias", [("swiglu", False), ("gelu", True)])
def test_decay_groups_follow_the_reference_rule(mlp, bias):
    specs = tiny_specs()
    model = FourM(specs, ModelConfig(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2, mlp=mlp, bias=bias),
                  num_input_tokens=16, num_target_tokens=16)
    cfg = TrainConfig(weight_decay=0.05)
    opt, groups = _groups(model, cfg)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    names = {n for n, _ in model.named_parameters()}  # tied tables appear once
    assert groups[0.05] | groups[0.0] == names and not groups[0.05] & groups[0.0]
    assert groups[0.0] == {n for n in names if reference_no_decay(n)}
    # embeddings, mod_emb, mask_token and the global tokens' learned positions decay
    for decayed in ("mask_token", "mod_emb.tok_normal", "encoder_embeddings.tok_dinov2_global.positions.pos_emb",
                    "encoder_embeddings.caption.token_emb.weight", "decoder_embeddings.tok_depth.to_logits.weight"):
        assert decayed in groups[0.05], decayed
    assert any(n.endswith(".bias") for n in groups[0.0]) == bias


def test_rule_is_unchanged_by_wrappers():
    """Module types, not paths: activation-checkpoint wrappers rename parameters, not groups."""
    specs = tiny_specs()
    cfg = ModelConfig(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
    model = apply_activation_checkpointing(FourM(specs, cfg, num_input_tokens=16, num_target_tokens=16))
    _, groups = _groups(model, TrainConfig())
    def unwrap(name: str) -> str:
        return name.replace("_checkpoint_wrapped_module.", "")

    every = {unwrap(n) for n, _ in model.named_parameters()}
    assert {unwrap(n) for n in groups[0.0]} == {n for n in every if reference_no_decay(n)}
    assert len(groups[0.0]) == 8  # norms: 2 per encoder block, 4 per decoder block, 2 final
