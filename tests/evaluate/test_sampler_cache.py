"""The K/V-cached autoregressive path, per-row stopping, raster autoregression of grids and
weighted multi-condition guidance (random-init tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from fourm_tiny import tiny_model, tiny_specs  # noqa: E402

from fm21.evaluate.sampler import (  # noqa: E402
    Guidance, Sampling, blank_conditions, generate, init_empty_target, init_full_input,
)
from fm21.train.masking import EOS_ID, sentinel_id  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    specs = tiny_specs()
    model = tiny_model(specs, seed=1).eval()
    torch.manual_seed(0)
    rgb = torch.randn(4, 3, 32, 32)
    cond = init_full_input({"rgb": {"tensor": rgb}}, "rgb", specs)
    return specs, model, cond


def _with_target(specs, cond, target, rows=slice(None)):
    md = {m: {k: v[rows].clone() for k, v in d.items()} for m, d in cond.items()}
    return init_empty_target(md, target, specs)


def test_cached_decoder_matches_teacher_forced_logits(setup):
    """decode_cached, one slot at a time and as one causal chunk, reproduces the logits
    of the full teacher-forced forward pass at every position."""
    specs, model, cond = setup
    md = _with_target(specs, cond, "caption")
    d = md["caption"]
    B, L = d["tensor"].shape
    g = torch.Generator().manual_seed(0)
    d["tensor"][:, 2:-1] = torch.randint(10, specs["caption"].vocab_size, (B, L - 3), generator=g)
    d["target_mask"] = torch.ones(B, L, dtype=torch.bool)
    d["target_mask"][:, 1:] = False
    d["decoder_attention_mask"] = (~d["target_mask"]).int()
    with torch.no_grad():
        full = model.forward_logits(md, targets=["caption"])["caption"][:, 2:]  # (B, L-2, V)
        context, ignore = model.encode(md)
        head = model.decoder_embeddings["caption"]
        cache = model.new_decode_cache()
        stepwise = torch.cat([
            head.logits(model.decode_cached(
                model.sequence_queries("caption", d["tensor"][:, k:k + 1], k - 1), context, ignore, cache))
            for k in range(1, L - 1)], dim=1)
        chunk = head.logits(model.decode_cached(
            model.sequence_queries("caption", d["tensor"][:, 1:L - 1], 0), context, ignore,
            model.new_decode_cache()))
    assert cache[0].self_k.shape[2] == L - 2  # one cached key per decoded slot
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunk, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("target", ["caption", "color_palette", "metadata"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_cached_and_uncached_greedy_decoding_agree(setup, target, cfg_scale):
    specs, model, cond = setup
    md = _with_target(specs, cond, target)
    runs = [generate(model, md, target=target, temperature=0.0, cfg_scale=cfg_scale,
                     kv_cache=cache, use_eos=False)[target] for cache in (True, False)]
    assert torch.equal(runs[0]["tensor"], runs[1]["tensor"])
    assert torch.equal(runs[0]["input_mask"], runs[1]["input_mask"])
    # every slot up to the cap decoded, then EOS: max_seq_len tokens, EOS included
    assert ((~runs[0]["input_mask"]).sum(dim=1) == specs[target].max_seq_len).all()


def test_each_row_stops_at_its_own_end(setup, monkeypatch):
    """Rows of one batch that end at different lengths get what they get alone."""
    specs, model, cond = setup
    head = model.decoder_embeddings["caption"]
    w = head.token_emb.weight  # tied to the caption logits
    saved = w[EOS_ID].clone()
    # every sentinel also ends a row: keep the random model's argmax off them, so EOS decides
    no_sentinels = torch.zeros(specs["caption"].vocab_size)
    no_sentinels[sentinel_id(1) - 1:sentinel_id(199) + 1] = -1e4
    original = head.logits
    monkeypatch.setattr(head, "logits", lambda y: original(y) + no_sentinels)
    try:
        with torch.no_grad():
            w[EOS_ID] *= 3.0  # make EOS likely enough that the random model stops early, unevenly
        batch = generate(model, _with_target(specs, cond, "caption"), target="caption",
                         temperature=0.0)["caption"]
        lengths = (~batch["input_mask"]).sum(dim=1)
        assert len(set(lengths.tolist())) > 1, "the rows must end at different lengths"
        for i in range(4):
            alone = generate(model, _with_target(specs, cond, "caption", slice(i, i + 1)),
                             target="caption", temperature=0.0)["caption"]
            assert torch.equal(alone["tensor"][0], batch["tensor"][i])
            assert torch.equal(alone["input_mask"][0], batch["input_mask"][i])
        ends = batch["tensor"][torch.arange(4), lengths - 1]
        assert (ends == EOS_ID).all() and not (batch["tensor"][:, :-1] == sentinel_id(2)).any()
    finally:
        with torch.no_grad():
            w[EOS_ID] = saved


def test_grid_autoregressive_decodes_in_raster_order(setup, monkeypatch):
    specs, model, cond = setup
    queried = []
    original = model.forward_logits

    def spy(mod_dict, *, targets):
        queried.append((~mod_dict["tok_depth"]["target_mask"][0]).nonzero().flatten().tolist())
        return original(mod_dict, targets=targets)

    monkeypatch.setattr(model, "forward_logits", spy)
    md = _with_target(specs, cond, "tok_depth")
    out = generate(model, md, target="tok_depth", scheme="autoregressive", temperature=1.0,
                   top_k=10, generator=torch.Generator().manual_seed(0))["tok_depth"]
    assert queried == [[i] for i in range(16)]
    assert not out["input_mask"].any()
    assert int(out["tensor"].min()) >= 0 and int(out["tensor"].max()) < specs["tok_depth"].vocab_size


def test_weighted_guidance_is_one_forward_and_matches_separate_passes(setup, monkeypatch):
    specs, model, cond = setup
    md = _with_target(specs, cond, "tok_normal", slice(0, 2))
    md = init_full_input({**md, "tok_depth": {"tensor": torch.randint(0, 64, (2, 16))}},
                         "tok_depth", specs)
    weights = {"rgb": 1.5, "tok_depth": 0.7}
    with torch.no_grad():
        guided = Sampling(guidance=Guidance.make(cfg_conditions=weights)).logits(model, md, "tok_normal")

        def single(blank):
            return model.forward_logits(blank_conditions(md, keep="tok_normal", specs=specs, only=blank),
                                        targets=["tok_normal"])["tok_normal"]

        uncond = single(["rgb", "tok_depth"])
        by_hand = (uncond + 1.5 * (single(["tok_depth"]) - uncond)
                   + 0.7 * (single(["rgb"]) - uncond))
    torch.testing.assert_close(guided, by_hand, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(guided, single([]), atol=1e-3)  # control: guidance changes them

    calls = []
    original = model.forward_logits
    monkeypatch.setattr(model, "forward_logits",
                        lambda m, *, targets: calls.append(m["rgb"]["tensor"].shape[0])
                        or original(m, targets=targets))
    generate(model, md, target="tok_normal", num_steps=2, temperature=0.0, cfg_conditions=weights)
    assert calls == [6, 6]  # 3 passes x 2 rows, one forward per step
    with pytest.raises(ValueError, match="either"):
        generate(model, md, target="tok_normal", cfg_scale=2.0, cfg_conditions=weights)


def test_weighted_guidance_on_a_cached_sequence(setup):
    specs, model, cond = setup
    md = _with_target(specs, cond, "metadata", slice(0, 2))
    runs = [generate(model, md, target="metadata", temperature=0.0, use_eos=False, kv_cache=c,
                     cfg_conditions={"rgb": 2.0})["metadata"]["tensor"] for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
