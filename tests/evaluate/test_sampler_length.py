"""Generated sequences respect their modality's max_seq_len (EOS included), row by row, and
per-row generators make a row's samples independent of its batch mates (random-init tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from fourm_tiny import tiny_model, tiny_specs  # noqa: E402

from fm21.evaluate.autoregressive import is_end_token  # noqa: E402
from fm21.evaluate.sampler import generate, init_empty_target, init_full_input  # noqa: E402
from fm21.train.masking import EOS_ID, max_budget, sentinel_id  # noqa: E402

B = 3


@pytest.fixture(scope="module")
def setup():
    specs = tiny_specs()
    model = tiny_model(specs, seed=1).eval()
    torch.manual_seed(0)
    cond = init_full_input({"rgb": {"tensor": torch.randn(B, 3, 32, 32)}}, "rgb", specs)
    return specs, model, cond


def _target(specs, cond, target, rows=slice(None)):
    md = {m: {k: v[rows].clone() for k, v in d.items()} for m, d in cond.items()}
    return init_empty_target(md, target, specs)


def _bias_head(monkeypatch, model, target, ids: torch.Tensor, value: float | torch.Tensor) -> None:
    """Add ``value`` to the logits of ``ids`` in both the cached and uncached paths."""
    head = model.decoder_embeddings[target]
    original = head.logits
    bias = torch.zeros(model.specs[target].vocab_size)
    bias[ids] = value
    monkeypatch.setattr(head, "logits", lambda y: original(y) + bias)


def _end_ids(vocab: int) -> torch.Tensor:
    return torch.tensor([i for i in range(vocab) if bool(is_end_token(torch.tensor(i)))])


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("target", ["caption", "metadata"])
def test_an_unfinished_sequence_is_closed_by_eos_at_its_cap(setup, monkeypatch, target, kv_cache):
    """A model that never emits an end token, sampled at temperature 1: every row holds
    exactly max_seq_len tokens, EOS the last; no sentinel or EOS in the body."""
    specs, model, cond = setup
    spec = specs[target]
    _bias_head(monkeypatch, model, target, _end_ids(spec.vocab_size), -1e4)
    out = generate(model, _target(specs, cond, target), target=target, temperature=1.0,
                   kv_cache=kv_cache, generator=torch.Generator().manual_seed(0))[target]
    cap = max_budget(spec)
    assert cap == spec.max_seq_len < spec.seq_tensor_len - 2  # the tensor alone would allow more
    visible = (~out["input_mask"]).sum(dim=1)
    assert visible.tolist() == [cap] * B
    assert (out["tensor"][:, cap - 1] == EOS_ID).all()
    assert not is_end_token(out["tensor"][:, : cap - 1]).any()
    assert (out["tensor"][:, cap:] == 0).all()
    assert len({tuple(r) for r in out["tensor"].tolist()}) == B  # sampled, not constant rows


def test_rows_ending_early_and_rows_at_the_cap_share_a_batch(setup, monkeypatch):
    """Per row: a row that meets EOS stops there, the others run to the cap, none past it."""
    specs, model, cond = setup
    spec = specs["caption"]
    _bias_head(monkeypatch, model, "caption", _end_ids(spec.vocab_size), -1e4)
    md = _target(specs, cond, "caption")
    out = generate(model, md, target="caption", temperature=0.0)["caption"]
    first = out["tensor"][0, 2].item()  # row 0's third id, greedy: make it end the row instead
    assert not is_end_token(torch.tensor(first))
    head = model.decoder_embeddings["caption"]
    biased = head.logits

    def row0_ends_at_3(y):  # call k=3 predicts position 4 for row 0 only (batch order kept)
        logits = biased(y)
        if logits.dim() == 2 and logits.shape[0] == B and step["k"] == 3:
            logits[0, EOS_ID] = 1e5
        step["k"] += logits.dim() == 2
        return logits

    step = {"k": 1}
    monkeypatch.setattr(head, "logits", row0_ends_at_3)
    out = generate(model, md, target="caption", temperature=0.0)["caption"]
    assert (~out["input_mask"]).sum(dim=1).tolist() == [3, spec.max_seq_len, spec.max_seq_len]
    assert out["tensor"][0, 2].item() == EOS_ID


def test_a_sentinel_ends_a_row_and_stays_out_of_the_result(setup, monkeypatch):
    specs, model, cond = setup
    _bias_head(monkeypatch, model, "caption", torch.tensor([sentinel_id(3)]), 1e4)
    out = generate(model, _target(specs, cond, "caption"), target="caption", temperature=0.0)["caption"]
    assert (~out["input_mask"]).sum(dim=1).tolist() == [1] * B  # EOS alone
    assert (out["tensor"][:, 0] == EOS_ID).all() and not (out["tensor"] == sentinel_id(3)).any()


@pytest.mark.parametrize("target, scheme", [("caption", "maskgit"), ("tok_depth", "roar"),
                                            ("tok_depth", "maskgit")])
def test_per_row_generators_sample_each_row_as_if_alone(setup, monkeypatch, target, scheme):
    """One generator per row, temperature 1: row b of a batch gets what it gets alone with
    the same seed, even when its batch mates stop at other lengths."""
    specs, model, cond = setup
    if target == "caption":  # uneven, early ends: finished rows must not draw from their generator
        bias = torch.zeros(specs["caption"].vocab_size)
        bias[_end_ids(len(bias))] = -1e4
        bias[EOS_ID] = 3.5  # about one chance in four per step of ending
        _bias_head(monkeypatch, model, "caption", torch.arange(len(bias)), bias)
    gens = [torch.Generator().manual_seed(10 + b) for b in range(B)]
    batch = generate(model, _target(specs, cond, target), target=target, scheme=scheme, num_steps=3,
                     temperature=1.0, generator=gens)
    if target == "caption":  # then a second target on the same generators
        batch = generate(model, init_empty_target(batch, "tok_depth", specs), target="tok_depth",
                         scheme="roar", num_steps=2, temperature=1.0, generator=gens)
    for b in range(B):
        g = torch.Generator().manual_seed(10 + b)
        alone = generate(model, _target(specs, cond, target, slice(b, b + 1)), target=target,
                         scheme=scheme, num_steps=3, temperature=1.0, generator=[g])
        if target == "caption":
            alone = generate(model, init_empty_target(alone, "tok_depth", specs), target="tok_depth",
                             scheme="roar", num_steps=2, temperature=1.0, generator=[g])
        for name in alone:
            assert torch.equal(alone[name]["tensor"][0], batch[name]["tensor"][b]), (name, b)
    if target == "caption":
        lengths = (~batch["caption"]["input_mask"]).sum(dim=1)
        assert len(set(lengths.tolist())) > 1, "the rows must end at different lengths"


def test_generators_must_match_the_batch(setup):
    specs, model, cond = setup
    with pytest.raises(ValueError, match="one per row"):
        generate(model, _target(specs, cond, "tok_depth"), target="tok_depth", temperature=1.0,
                 generator=[torch.Generator()])
