"""Pieces of the training loop: LR schedule, optimizer groups, loss plot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fm21.config import ModelConfig, TrainConfig
from fm21.modalities import resolve_specs
from fm21.train.loop import build_optimizer, lr_at, plot_losses
from fm21.train.model import FourM

CFG = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)


# ------------------------------------------------------------------------------ schedule
def test_lr_warmup_is_linear_from_zero():
    assert lr_at(0, CFG) == 0.0
    assert lr_at(5, CFG) == pytest.approx(CFG.lr / 2)
    assert lr_at(CFG.warmup_steps, CFG) == pytest.approx(CFG.lr)
    warm = [lr_at(s, CFG) for s in range(CFG.warmup_steps + 1)]
    assert all(b > a for a, b in zip(warm, warm[1:]))


def test_lr_cosine_decays_to_min_lr():
    decay = [lr_at(s, CFG) for s in range(CFG.warmup_steps, CFG.steps + 1)]
    assert all(b <= a for a, b in zip(decay, decay[1:]))
    assert all(CFG.min_lr <= v <= CFG.lr for v in decay)
    midpoint = CFG.warmup_steps + (CFG.steps - CFG.warmup_steps) // 2
    assert lr_at(midpoint, CFG) == pytest.approx((CFG.lr + CFG.min_lr) / 2)
    assert lr_at(CFG.steps, CFG) == pytest.approx(CFG.min_lr)
    # the last trained step is steps - 1: within 0.1% of the range above min_lr
    assert lr_at(CFG.steps - 1, CFG) - CFG.min_lr < 1e-3 * (CFG.lr - CFG.min_lr)
    assert lr_at(CFG.steps + 50, CFG) == pytest.approx(CFG.min_lr)  # stays there


def test_lr_without_warmup_starts_at_peak():
    cfg = TrainConfig(steps=20, warmup_steps=0, lr=1e-3, min_lr=0.0)
    assert lr_at(0, cfg) == pytest.approx(1e-3)
    assert lr_at(20, cfg) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------ optimizer
class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 4)
        self.frozen = nn.Linear(4, 4, bias=False)
        self.frozen.weight.requires_grad_(False)


def _groups(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0.0
    return decay, no_decay


def test_build_optimizer_groups_weight_decay():
    model = _Small()
    cfg = TrainConfig(weight_decay=0.05, lr=2e-3)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = _groups(opt)
    assert decay["weight_decay"] == 0.05
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model.embed.weight, model.proj.weight])
    assert ids(no_decay["params"]) == ids([model.norm.weight, model.norm.bias, model.proj.bias])
    assert id(model.frozen.weight) not in ids(decay["params"]) | ids(no_decay["params"])
    assert opt.defaults["lr"] == 2e-3 and opt.defaults["betas"] == (0.9, 0.95)


def _tiny_fourm(names: list[str]) -> FourM:
    specs = resolve_specs(names, resolution=16, patch_size=8, image_vocab_size=8, text_vocab_size=300)
    cfg = ModelConfig(dim=16, encoder_depth=1, decoder_depth=1, num_heads=2)
    return FourM(specs, cfg, num_input_tokens=4, num_target_tokens=4)


def test_build_optimizer_on_fourm_decays_matrices_only_for_plain_modalities():
    model = _tiny_fourm(["tok_depth"])
    decay, no_decay = _groups(build_optimizer(model, TrainConfig()))
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in no_decay_ids) == (p.ndim <= 1), name  # norms/biases are the 1-d params


def test_build_optimizer_decays_the_tok_normal_modality_embeddings():
    model = _tiny_fourm(["tok_depth", "tok_normal"])
    _, no_decay = _groups(build_optimizer(model, TrainConfig()))
    no_decay_ids = {id(p) for p in no_decay["params"]}
    wrongly_exempt = [n for n, p in model.named_parameters() if id(p) in no_decay_ids and p.ndim > 1]
    assert wrongly_exempt == []


# ------------------------------------------------------------------------------ plot
def test_plot_losses_writes_a_png(tmp_path):
    history = [
        {"step": 0, "loss": 5.0, "lr": 0.0, "loss/tok_depth": 5.2, "loss/caption": 4.8},
        {"step": 10, "loss": 3.0, "lr": 1e-3, "loss/tok_depth": 3.1, "loss/caption": 2.9},
        {"step": 20, "loss": 2.0, "lr": 5e-4, "loss/tok_depth": 2.2, "loss/caption": 1.8},
    ]
    path = tmp_path / "loss.png"
    plot_losses(history, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_plot_losses_of_empty_history_writes_nothing(tmp_path):
    path = tmp_path / "loss.png"
    plot_losses([], path)
    assert not path.exists()


def test_weighted_loss_with_unit_weights_is_the_model_loss_and_weights_scale_one_term():
    from fourm_tiny import tiny_batch, tiny_model, tiny_specs

    from fm21.train.loop import weighted_loss

    torch.manual_seed(0)
    specs = tiny_specs()
    loss, per_mod = tiny_model(specs)(tiny_batch(specs))
    assert torch.allclose(weighted_loss(per_mod, {}), loss)
    name = next(iter(per_mod))
    heavier = weighted_loss(per_mod, {name: 3.0})
    assert torch.allclose(heavier - loss, 2.0 * per_mod[name] / len(per_mod))


def test_loss_weights_must_name_target_modalities():
    TrainConfig(loss_weights={"tok_semseg": 5.0, "tok_clip": 2.0})  # tok_clip: a target, enabled or not
    with pytest.raises(ValueError, match="tok_semsg"):
        TrainConfig(loss_weights={"tok_semsg": 5.0})
    with pytest.raises(ValueError, match="rgb"):
        TrainConfig(loss_weights={"rgb": 1.0})  # input only


# ------------------------------------------------------------------------------ precision
def test_precision_auto_follows_the_device_and_explicit_values_are_kept(monkeypatch):
    from fm21.train.loop import resolve_precision

    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"  # emulated bf16 would be slower
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    with pytest.raises(ValueError):
        TrainConfig(precision="fp16")


def test_bf16_autocast_runs_the_matmuls_in_bf16_and_keeps_the_loss_fp32():
    from fourm_tiny import tiny_batch, tiny_model, tiny_specs

    from fm21.train.loop import autocast

    torch.manual_seed(0)
    specs = tiny_specs()
    model, batch = tiny_model(specs), tiny_batch(specs)
    seen = []
    linear = next(m for m in model.encoder.modules() if isinstance(m, nn.Linear))
    hook = linear.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    with autocast("bf16", "cpu"):
        loss16, per_mod = model(batch)
    with autocast("fp32", "cpu"):
        loss32, _ = model(batch)
    hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert loss16.dtype == torch.float32 and all(v.dtype == torch.float32 for v in per_mod.values())
    assert abs(float(loss16) - float(loss32)) < 0.02 * float(loss32)  # same model, bf16 rounding only
    loss16.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


# ------------------------------------------------------------------------------ schedule in tokens
def test_lr_counted_in_tokens_follows_the_steps_schedule_it_equals():
    """warmup_tokens / total_tokens (apple/ml-4m `run_training_4m.py` --warmup_tokens,
    --total_tokens): the same curve as the steps schedule they amount to; a steps-only
    config is the steps schedule itself, bit for bit."""
    from fm21.schedules import warmup_cosine

    base = dict(batch_size=4, num_input_tokens=8, num_target_tokens=8, lr=1e-3, min_lr=1e-5)
    per_step = 4 * 16
    by_steps = TrainConfig(steps=100, warmup_steps=10, **base)
    by_tokens = TrainConfig(total_tokens=100 * per_step, warmup_tokens=10 * per_step, **base)
    assert by_tokens.steps == 100 and by_tokens.tokens_per_step == per_step
    for s in range(0, 101, 7):
        assert lr_at(s, by_steps) == warmup_cosine(s, steps=100, peak=1e-3, warmup=10, floor=1e-5)
        assert lr_at(s, by_tokens) == pytest.approx(lr_at(s, by_steps), rel=1e-12, abs=1e-15)
    # warmup in tokens alone: half of a step's tokens more warmup moves the curve
    half = TrainConfig(steps=100, warmup_tokens=int(10.5 * per_step), **base)
    assert lr_at(10, half) == pytest.approx(1e-3 * 10 / 10.5)
    assert TrainConfig(total_tokens=100 * per_step + 1, **base).steps == 101  # ceil: every token trained
    with pytest.raises(ValueError, match="train.steps=50 and train.total_tokens"):
        TrainConfig(steps=50, total_tokens=100 * per_step, **base)
