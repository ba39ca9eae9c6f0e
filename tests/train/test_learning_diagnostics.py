"""Learning diagnostics: does 4M learn, and from what? (CPU, tiny model, seconds each)

Each test fails when a learning behaviour breaks, not when a number drifts:
- the trunk can memorise one fixed batch (loss close to zero);
- a model trained on an RGB -> X task whose answer is in the pixels uses its RGB: the
  loss with each sample's own RGB is far below the loss with the RGB shuffled across the
  batch (an image-blind model scores the same on both);
- the masking contract holds for the shipped mixtures: inputs and targets never overlap,
  every target position reaches the loss, and RGB pixels are an input at the rate the
  mixture implies;
- greedy generation from a model trained to copy a modality reproduces it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fourm_tiny import NUM_INPUT, NUM_TARGET, TINY_MODEL, random_sample, tiny_batch, tiny_model, tiny_specs

from fm21.config import MixtureComponent, load_config
from fm21.evaluate.sampler import generate, init_empty_target, init_full_input
from fm21.train.masking import UnifiedMasking, collate_mod_dicts
from fm21.train.model import FourM

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = load_config(ROOT / "flows.yaml").train.model


def demo_init_model(specs, *, seed: int = 0) -> FourM:
    """The tiny trunk with the demo recipe's init (content/position scales): the
    diagnostics check that what the demo trains can learn these behaviours at all."""
    torch.manual_seed(seed)
    cfg = TINY_MODEL.model_copy(update={"token_emb_std": DEMO_MODEL.token_emb_std,
                                        "pos_emb_scale": DEMO_MODEL.pos_emb_scale})
    return FourM(specs, cfg, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET)
RGB_ONLY = [MixtureComponent(input_alphas={"rgb": 1000.0}, default_input_alpha=0.0,
                             target_alphas={"tok_depth": 1.0}, default_target_alpha=0.0)]


def _train(model, make_batch, *, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for step in range(steps):
        loss, _ = model(make_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_overfits_one_fixed_batch_to_near_zero_loss():
    torch.manual_seed(0)
    specs = tiny_specs()
    model = tiny_model(specs)
    batch = tiny_batch(specs, batch_size=4)
    losses = _train(model, lambda step: batch, steps=150)
    model.eval()
    with torch.no_grad():
        final = float(model(batch)[0])
    assert losses[0] > 3.0  # chance level of 64-way grids / 300-way text
    assert final < 0.05, (losses[0], final)


# ------------------------------------------------------------------------------ uses its input
def _patch_brightness_ids(pixels: torch.Tensor, patch: int, vocab: int) -> torch.Tensor:
    """(B, 3, R, R) -> (B, N) ids: each patch's mean brightness, quantised to ``vocab``
    levels. A target fully determined by the image, patch by patch."""
    B, _, R, _ = pixels.shape
    g = R // patch
    mean = pixels.mean(1).reshape(B, g, patch, g, patch).mean((2, 4))  # (B, g, g)
    levels = torch.sigmoid(3.0 * mean)  # spread N(0, small) around 0.5
    return (levels * vocab).long().clamp(0, vocab - 1).reshape(B, -1)


def _rgb_task_batch(specs, masking, rng, *, batch_size: int = 16) -> dict:
    samples = []
    for _ in range(batch_size):
        sample = random_sample(specs, rng)
        # a blocky image: patch means must vary strongly between samples
        coarse = rng.standard_normal((3, 4, 4)).astype(np.float32)
        sample["rgb"] = np.kron(coarse, np.ones((8, 8), np.float32))
        pixels = torch.from_numpy(sample["rgb"])[None]
        sample["tok_depth"] = _patch_brightness_ids(pixels, 8, specs["tok_depth"].vocab_size)[0].numpy()
        samples.append(masking(sample, rng))
    return collate_mod_dicts(samples)


def _all_targets_loss(model, batch, rgb: torch.Tensor) -> float:
    """tok_depth loss with every position a target and ``rgb`` as the only input."""
    md = init_full_input({"rgb": {"tensor": rgb}}, "rgb", model.specs)
    md = init_empty_target(md, "tok_depth", model.specs)
    md["tok_depth"]["tensor"] = batch["tok_depth"]["tensor"]
    with torch.no_grad():
        return float(model(md)[1]["tok_depth"])


def test_trained_model_uses_its_rgb_input():
    torch.manual_seed(0)
    specs = {n: s for n, s in tiny_specs().items() if n in ("rgb", "tok_depth")}
    model = demo_init_model(specs)
    masking = UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET,
                             mixture=RGB_ONLY, seed=0)
    rng = np.random.default_rng(0)
    _train(model, lambda step: _rgb_task_batch(specs, masking, rng), steps=300)
    model.eval()
    held_out = _rgb_task_batch(specs, masking, np.random.default_rng(99), batch_size=32)
    rgb = held_out["rgb"]["tensor"]
    own = _all_targets_loss(model, held_out, rgb)
    shuffled = _all_targets_loss(model, held_out, rgb.roll(1, dims=0))
    # an image-blind model has own == shuffled; one that reads its input is far better
    assert own < 0.5 * shuffled, (own, shuffled)


# ------------------------------------------------------------------------------ masking contract
def _recipe_mixtures():
    demo = load_config(ROOT / "flows.yaml")
    b = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "4m21-b.yaml")
    return {"demo": demo.train.mixture, "4m21-b": b.train.mixture}


def _rgb_input_rate(mixture, names) -> float:
    """P(rgb gets >= 1 input token) implied by the mixture, by direct draws of the
    reference's budget rule (apple/ml-4m `fourm/data/masking.py`, UnifiedMasking: floor(Dirichlet * total), the remainder
    handed out one token at a time to the argmax of fresh Dirichlet draws), written
    here independently of the masking code."""
    rng = np.random.default_rng(1)
    weights = np.array([c.weight for c in mixture], dtype=float)
    weights /= weights.sum()
    i = names.index("rgb")
    rate = 0.0
    for w, comp in zip(weights, mixture):
        alphas = np.array([comp.input_alphas.get(n, comp.default_input_alpha) for n in names], dtype=float)
        alphas = np.clip(alphas, 1e-9, None)
        hits = 0
        for _ in range(2000):
            budget = np.floor(rng.dirichlet(alphas) * NUM_INPUT)
            extra = rng.dirichlet(alphas, size=int(NUM_INPUT - budget.sum())).argmax(axis=1)
            hits += budget[i] >= 1 or bool((extra == i).any())
        rate += w * hits / 2000
    return rate


@pytest.mark.parametrize("recipe", ["demo", "4m21-b"])
def test_masking_contract_for_the_shipped_mixtures(recipe):
    mixture = _recipe_mixtures()[recipe]
    specs = tiny_specs()
    names = list(specs)
    masking = UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET,
                             mixture=[c for c in mixture], seed=0)
    rng = np.random.default_rng(0)
    model = tiny_model(specs)
    samples = [masking(random_sample(specs, rng), rng) for _ in range(600)]
    for s in samples:
        for name, d in s.items():
            both = ~np.asarray(d["input_mask"]) & ~np.asarray(d["target_mask"])
            if specs[name].is_image_like:  # grids: a slot is input or target, never both
                assert not both.any(), name
        n_in = sum(int((~np.asarray(d["input_mask"])).sum()) for d in s.values())
        assert n_in <= NUM_INPUT
    # every target position reaches the loss: the decoder keeps all of them (grids), and
    # all but the last of each sequence's targets (teacher forcing has nothing after it)
    batch = collate_mod_dicts(samples[:64])
    slots = model.decoder_slots(batch)
    expected = 0
    for name in slots.names:
        t = ~batch[name]["target_mask"]
        expected += int(t.sum()) - (int((t.sum(1) > 0).sum()) if specs[name].is_sequence else 0)
    assert int((~slots.ignore).sum()) == expected
    # RGB pixels are an input at the rate the mixture implies
    seen = np.mean([(~np.asarray(s["rgb"]["input_mask"])).any() for s in samples])
    implied = _rgb_input_rate(mixture, names)
    assert abs(seen - implied) < 0.06, (seen, implied)


def test_rgb_input_rate_follows_component_weights():
    specs = tiny_specs()
    mixture = [MixtureComponent(weight=1.0, input_alphas={"rgb": 1000.0}, default_input_alpha=0.0),
               MixtureComponent(weight=3.0, input_alphas={"rgb": 0.0}, default_input_alpha=1.0)]
    masking = UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET,
                             mixture=mixture, seed=0)
    rng = np.random.default_rng(0)
    seen = np.mean([(~masking(random_sample(specs, rng), rng)["rgb"]["input_mask"]).any() for _ in range(2000)])
    assert abs(seen - 0.25) < 0.03


# ------------------------------------------------------------------------------ sampler
def test_greedy_sampler_reproduces_a_copied_modality():
    """Trained to predict tok_normal = tok_depth (same ids), MaskGIT at temperature 0
    given tok_depth alone must write tok_depth back."""
    torch.manual_seed(0)
    specs = {n: s for n, s in tiny_specs().items() if n in ("rgb", "tok_depth", "tok_normal")}
    model = demo_init_model(specs)
    copy = [MixtureComponent(input_alphas={"tok_depth": 1000.0}, default_input_alpha=0.0,
                             target_alphas={"tok_normal": 1.0}, default_target_alpha=0.0)]
    masking = UnifiedMasking(specs, num_input_tokens=NUM_INPUT, num_target_tokens=NUM_TARGET, mixture=copy, seed=0)
    rng = np.random.default_rng(0)

    def batch(step: int) -> dict:
        out = []
        for _ in range(16):
            s = random_sample(specs, rng)
            s["tok_normal"] = s["tok_depth"].copy()
            out.append(masking(s, rng))
        return collate_mod_dicts(out)

    _train(model, batch, steps=400)
    model.eval()
    ids = torch.from_numpy(np.random.default_rng(7).integers(0, specs["tok_depth"].vocab_size, (8, 16)))
    md = init_full_input({"tok_depth": {"tensor": ids}}, "tok_depth", specs)
    md = init_empty_target(md, "tok_normal", specs)
    out = generate(model, md, target="tok_normal", scheme="maskgit", num_steps=4, temperature=0.0,
                   generator=torch.Generator().manual_seed(0))
    copied = (out["tok_normal"]["tensor"] == ids).float().mean().item()
    assert copied > 0.95, copied
