"""FourM: loss contract, attention masks, overfitting, and the light-import rule."""

from __future__ import annotations

import subprocess
import sys

import torch
from fourm_tiny import tiny_batch, tiny_model, tiny_specs

from fm21.train.masking import grid_decoder_attention_mask


def _clone(batch):
    return {m: {k: v.clone() for k, v in d.items()} for m, d in batch.items()}


def _with_caption_targets(batch, *, input_budget: int = 3, length: int = 6):
    """Caption: inputs [0, 2), targets [input_budget, input_budget + length) in every sample."""
    d = batch["caption"]
    B, L = d["tensor"].shape
    d["tensor"] = torch.randint(204, 300, (B, L))
    d["input_mask"] = torch.ones(B, L, dtype=torch.bool)
    d["input_mask"][:, :2] = False
    d["target_mask"] = torch.ones(B, L, dtype=torch.bool)
    d["target_mask"][:, input_budget:input_budget + length] = False
    d["decoder_attention_mask"] = (~d["target_mask"]).int()
    return batch


def _with_grid_targets(batch, name: str):
    d = batch[name]
    d["target_mask"] = torch.zeros_like(d["target_mask"])
    d["target_mask"][:, ::2] = True
    d["input_mask"] = ~d["target_mask"]  # inputs and targets disjoint
    d["decoder_attention_mask"] = grid_decoder_attention_mask(d["target_mask"])
    return batch


def test_forward_returns_mean_of_per_modality_losses_counting_empty_ones():
    specs = tiny_specs()
    model = tiny_model(specs)
    batch = tiny_batch(specs)
    batch["tok_normal"]["target_mask"][:] = True  # no targets for tok_normal in this batch
    loss, per_mod = model(batch)
    assert set(per_mod) == {n for n, s in specs.items() if s.can_be_target}
    assert float(per_mod["tok_normal"]) == 0.0
    assert torch.isclose(loss, torch.stack(list(per_mod.values())).sum() / len(per_mod))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.mask_token.grad is not None


def test_masked_inputs_do_not_reach_the_model():
    specs = tiny_specs()
    model = tiny_model(specs).eval()
    batch = tiny_batch(specs)
    loss, _ = model(batch)
    perturbed = _clone(batch)
    hidden = perturbed["tok_depth"]["input_mask"] & perturbed["tok_depth"]["target_mask"]
    perturbed["tok_depth"]["tensor"][hidden] = (perturbed["tok_depth"]["tensor"][hidden] + 1) % 64
    perturbed["rgb"]["tensor"] += 0.0  # untouched control
    assert torch.equal(model(perturbed)[0], loss)
    visible = ~perturbed["tok_depth"]["input_mask"]
    assert visible.any()
    perturbed["tok_depth"]["tensor"][visible] = (perturbed["tok_depth"]["tensor"][visible] + 1) % 64
    assert not torch.equal(model(perturbed)[0], loss)  # positive control: inputs matter


@torch.no_grad()
def test_decoder_self_attention_is_per_modality_and_causal_for_sequences():
    specs = tiny_specs()
    model = tiny_model(specs).eval()
    batch = _with_grid_targets(_with_caption_targets(tiny_batch(specs)), "tok_depth")
    targets = ["tok_depth", "caption"]
    base = model.forward_logits(batch, targets=targets)

    # another modality's targets (teacher-forced caption tokens) do not touch depth logits
    other = _clone(batch)
    other["caption"]["tensor"][:, 3:9] = torch.randint(204, 300, (4, 6))
    changed = model.forward_logits(other, targets=targets)
    assert torch.equal(changed["tok_depth"], base["tok_depth"])
    assert not torch.allclose(changed["caption"], base["caption"])  # control

    # a future caption token does not affect earlier predictions (causal) ...
    future = _clone(batch)
    future["caption"]["tensor"][:, 7] = (future["caption"]["tensor"][:, 7] + 1 - 204) % 96 + 204
    out = model.forward_logits(future, targets=targets)["caption"]
    assert torch.equal(out[:, :8], base["caption"][:, :8])  # rows 4..7 come from slots 3..6
    assert not torch.allclose(out[:, 8], base["caption"][:, 8])  # slot 7 sees its own token
    # ... and every depth target sees every other (bidirectional): query layout changes matter
    fewer = _clone(batch)
    drop = torch.nonzero(~fewer["tok_depth"]["target_mask"][0])[0, 0]
    fewer["tok_depth"]["target_mask"][:, drop] = True
    fewer["tok_depth"]["decoder_attention_mask"] = grid_decoder_attention_mask(fewer["tok_depth"]["target_mask"])
    out = model.forward_logits(fewer, targets=["tok_depth"])["tok_depth"]
    keep = ~fewer["tok_depth"]["target_mask"]
    assert not torch.allclose(out[keep], base["tok_depth"][keep])


def test_trunk_overfits_one_tiny_batch():
    specs = tiny_specs()
    model = tiny_model(specs)
    batch = tiny_batch(specs, batch_size=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    first = None
    for _ in range(50):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    final = float(model(batch)[0])
    assert final < 0.5 * first, (first, final)


def test_encoder_with_no_inputs_stays_finite():
    specs = tiny_specs()
    model = tiny_model(specs).eval()
    batch = tiny_batch(specs)
    for d in batch.values():
        d["input_mask"][0] = True  # sample 0 has nothing to condition on
    loss, per_mod = model(batch)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in per_mod.values())


def test_model_code_imports_without_ray_prefect_lance():
    code = (
        "import sys, fm21.train.model, fm21.train.masking, fm21.train.checkpoint\n"
        "bad = [m for m in ('ray', 'prefect', 'lance') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_embeddings_positions_and_tied_heads():
    """Every registry modality gets an encoder embedding; only targets get a decoder one
    (T5 vectors are input-only); global tokens have learned positions, grids fixed sin-cos;
    sequence heads are tied to the decoder token table unless the config unties them."""
    import dataclasses

    from fm21.config import ModelConfig
    from fm21.modalities import MODALITIES, resolve_specs
    from fm21.train.model import FourM

    specs = resolve_specs(list(MODALITIES), resolution=32, patch_size=8, image_vocab_size=32, text_vocab_size=300,
                          max_seq_len=8)
    specs = {n: dataclasses.replace(s, embedding_dim=8) if s.kind == "embedding" else s for n, s in specs.items()}
    small = {"dim": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2}
    tied = FourM(specs, ModelConfig(**small), num_input_tokens=16, num_target_tokens=16)
    assert set(tied.encoder_embeddings) == set(MODALITIES)
    assert set(tied.decoder_embeddings) == {n for n, s in specs.items() if s.can_be_target}
    assert "t5_caption" not in tied.decoder_embeddings and "rgb" not in tied.decoder_embeddings
    learned = {n for n, p in tied.named_parameters() if n.endswith("positions.pos_emb")}
    globals_ = {n for n, s in specs.items() if s.kind == "global_tokens"}
    assert learned == {f"{side}_embeddings.{n}.positions.pos_emb" for n in globals_ for side in ("encoder", "decoder")}
    assert tied.decoder_embeddings["caption"].to_logits is None  # logits use token_emb.weight
    untied = FourM(specs, ModelConfig(**small, tie_sequence_logits=False), num_input_tokens=16, num_target_tokens=16)
    assert untied.config.tie_sequence_logits is False
    assert untied.decoder_embeddings["caption"].to_logits.weight.shape == (300, 32)
    vocab_dim = 300 * 32 * sum(s.kind == "sequence" for s in specs.values())
    assert untied.num_parameters() - tied.num_parameters() == vocab_dim
