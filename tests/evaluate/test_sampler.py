"""Generation: MaskGIT / ROAR for grids, autoregression for sequences, guidance."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from fourm_tiny import tiny_model, tiny_specs  # noqa: E402

from fm21.evaluate.sampler import (  # noqa: E402
    blank_conditions, filter_logits, generate, init_empty_target, init_full_input, token_schedule,
)
from fm21.train.masking import EOS_ID  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    specs = tiny_specs()
    model = tiny_model(specs, seed=1).eval()
    torch.manual_seed(0)
    rgb = torch.randn(2, 3, 32, 32)
    cond = init_full_input({"rgb": {"tensor": rgb}}, "rgb", specs)
    return specs, model, cond


def _rgb_to(specs, cond, target):
    md = {m: {k: v.clone() for k, v in d.items()} for m, d in cond.items()}
    return init_empty_target(md, target, specs)


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_generate_fills_the_target_with_valid_ids(setup, scheme):
    specs, model, cond = setup
    md = _rgb_to(specs, cond, "tok_depth")
    out = generate(model, md, target="tok_depth", scheme=scheme, num_steps=4, temperature=1.0,
                   top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(0))
    d = out["tok_depth"]
    assert d["tensor"].shape == (2, 16)
    assert not d["input_mask"].any() and d["target_mask"].all()  # now a full input
    assert int(d["tensor"].min()) >= 0 and int(d["tensor"].max()) < specs["tok_depth"].vocab_size
    assert md["tok_depth"]["input_mask"].all()  # the caller's dict is untouched


def test_greedy_generation_is_deterministic(setup):
    specs, model, cond = setup
    runs = [
        generate(model, _rgb_to(specs, cond, "tok_normal"), target="tok_normal", num_steps=3,
                 temperature=0.0, generator=torch.Generator().manual_seed(seed))["tok_normal"]["tensor"]
        for seed in (0, 1)
    ]
    assert torch.equal(runs[0], runs[1])
    sampled = [
        generate(model, _rgb_to(specs, cond, "tok_normal"), target="tok_normal", num_steps=3,
                 temperature=5.0, generator=torch.Generator().manual_seed(seed))["tok_normal"]["tensor"]
        for seed in (0, 1)
    ]
    assert not torch.equal(sampled[0], sampled[1])  # control: sampling does use the generator


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_n_steps_decode_one_token_per_step(setup, monkeypatch, scheme, kind):
    specs, model, cond = setup
    unknown, queries = [], []
    original = model.forward_logits

    def spy(mod_dict, *, targets):
        unknown.append(int(mod_dict["tok_depth"]["input_mask"][0].sum()))
        queries.append(int((~mod_dict["tok_depth"]["target_mask"][0]).sum()))
        return original(mod_dict, targets=targets)

    monkeypatch.setattr(model, "forward_logits", spy)
    generate(model, _rgb_to(specs, cond, "tok_depth"), target="tok_depth", scheme=scheme,
             num_steps=16, token_schedule_kind=kind, temperature=0.0)
    assert unknown == list(range(16, 0, -1))  # one more token known after every step
    assert queries == (unknown if scheme == "maskgit" else [1] * 16)


def test_token_schedules_match_the_reference():
    assert token_schedule(8, 784, "cosine") == [30, 85, 127, 150, 150, 127, 85, 30]
    assert token_schedule(49, 196, "linear") == [4] * 49
    assert sum(token_schedule(25, 196, "linear")) == 196
    assert token_schedule(1, 16, "cosine") == [16]


def test_guidance_blanks_conditions_and_changes_logits(setup):
    specs, model, cond = setup
    md = _rgb_to(specs, cond, "tok_depth")
    blank = blank_conditions(md, keep="tok_depth", specs=specs)
    assert blank["rgb"]["input_mask"].all() and torch.equal(blank["tok_depth"]["input_mask"],
                                                            md["tok_depth"]["input_mask"])
    plain = generate(model, md, target="tok_depth", num_steps=2, temperature=0.0)
    guided = generate(model, md, target="tok_depth", num_steps=2, temperature=0.0, cfg_scale=3.0)
    assert not torch.equal(plain["tok_depth"]["tensor"], guided["tok_depth"]["tensor"])


def test_autoregressive_caption_ends_with_eos(setup):
    specs, model, cond = setup
    md = _rgb_to(specs, cond, "caption")
    out = generate(model, md, target="caption", temperature=0.0)
    d = out["caption"]
    lengths = (~d["input_mask"]).sum(dim=1)
    assert (lengths >= 1).all()
    ends = d["tensor"][torch.arange(2), lengths - 1]
    assert (ends == EOS_ID).all()
    assert int(d["tensor"].max()) < specs["caption"].vocab_size
    again = generate(model, md, target="caption", temperature=0.0)
    assert torch.equal(again["caption"]["tensor"], d["tensor"])


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=None)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_k=None, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert not torch.isinf(filter_logits(logits, top_k=0.5, top_p=None)[0, :2]).any()
