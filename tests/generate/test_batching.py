"""`fm21 generate` batch modes group samples into sampler batches: the same outputs as one
sample per forward (greedy: identical; sampled: each row keeps its own seeded generator).
Tiny random-init run: plumbing only, every output is tagged random."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fm21.cli import app
from fm21.generate import driver
from fm21.generate.driver import Settings, generate_tokens, store_rows
from fm21.generate.inputs import Condition, stored_condition
from fm21.generate.run import open_run

TARGETS = ["tok_depth", "det"]  # a grid, then a sequence conditioned on it (chained)


@pytest.fixture(scope="module")
def run_and_rows(tiny_workdir):
    run = open_run(tiny_workdir)
    rows = list(store_rows(run, ["rgb", "caption"], where=None, limit=3))
    samples = [[stored_condition(run, n, row[n], source=row["key"]) for n in ("rgb", "caption")] for row in rows]
    return run, samples


@pytest.mark.parametrize("settings", [
    Settings(scheme="maskgit", num_steps=2, temperature=0.0),
    Settings(scheme="roar", num_steps=2, temperature=1.0, top_k=20, seed=3),
], ids=["greedy", "sampled"])
def test_a_batch_of_three_gives_what_three_singles_give(run_and_rows, settings):
    run, samples = run_and_rows
    batch = generate_tokens(run.model, samples, TARGETS, settings)
    for b, conds in enumerate(samples):
        alone = generate_tokens(run.model, [conds], TARGETS, settings)
        for t in TARGETS:
            assert torch.equal(alone[t]["tensor"][0], batch[t]["tensor"][b]), (t, b)
            assert torch.equal(alone[t]["input_mask"][0], batch[t]["input_mask"][b]), (t, b)
    # control: the samples differ, so equal rows are no accident of identical inputs
    assert not torch.equal(batch["tok_depth"]["tensor"][0], batch["tok_depth"]["tensor"][1])


def test_batch_size_changes_sampler_calls_not_files(tiny_workdir, tmp_path, monkeypatch):
    calls: list[int] = []
    original = driver.generate

    def counting(model, md, **kw):
        calls.append(md[kw["target"]]["tensor"].shape[0])
        return original(model, md, **kw)

    monkeypatch.setattr(driver, "generate", counting)
    outs = {}
    for size in (3, 1):
        calls.clear()
        out = tmp_path / f"b{size}"
        result = CliRunner().invoke(app, ["--set", f"workdir={tiny_workdir}", "generate", "--from-store", "--limit",
                                          "3", "--cond", "rgb", "--cond", "caption", "--target", "tok_depth",
                                          "--target", "det", "--steps", "2", "--temperature", "0",
                                          "--batch-size", str(size), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert calls == ([3, 3] if size == 3 else [1] * 6)  # one call per target and batch
        outs[size] = out
    index = json.loads((outs[3] / "index.json").read_text())
    assert index["batch_size"] == 3 and [s["sample"] for s in index["samples"]] == ["s000-crop0", "s001-crop0",
                                                                                      "s002-crop0"]
    for s in index["samples"]:
        a, b = outs[3] / s["folder"], outs[1] / s["folder"]
        np.testing.assert_array_equal(np.load(a / "tok_depth.npy"), np.load(b / "tok_depth.npy"))
        assert (a / "det.txt").read_text() == (b / "det.txt").read_text()


def _cond(name: str, shape: tuple[int, ...]) -> Condition:
    return Condition(name, torch.zeros(1, *shape), source=name)


def test_samples_are_grouped_by_condition_layout_in_stream_order():
    full = [_cond("rgb", (3, 4, 4)), _cond("caption", (8,))]
    partial = [_cond("rgb", (3, 4, 4))]  # a store row without a caption
    stream = [("a", full), ("b", partial), ("c", full), ("d", full), ("e", partial)]
    batches = [[(i, label) for i, label, _ in batch] for batch in driver._batches(iter(stream), 2)]
    assert batches == [[(0, "a"), (2, "c")], [(1, "b"), (4, "e")], [(3, "d")]]
    assert [[label for _, label, _ in b] for b in driver._batches(iter(stream), 1)] == [[x] for x in "abcde"]


def test_a_batch_size_below_one_is_a_clear_error(tiny_workdir, tmp_path):
    result = CliRunner().invoke(app, ["--set", f"workdir={tiny_workdir}", "generate", "--from-store", "--cond", "rgb",
                                      "--target", "tok_depth", "--batch-size", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--batch-size must be at least 1" in result.output, result.output


def test_a_long_sequence_condition_keeps_max_seq_len_tokens_as_training_does(run_and_rows):
    from fm21.evaluate.sampler import init_full_input
    from fm21.generate.inputs import sequence_tensor
    from fm21.train.masking import EOS_ID

    run, _ = run_and_rows
    spec = run.specs["caption"]
    short = sequence_tensor([300, 301], spec)[0].tolist()
    assert short[:3] == [300, 301, EOS_ID] and not any(short[3:])
    long = sequence_tensor(list(range(300, 300 + 2 * spec.max_seq_len)), spec)
    md = init_full_input({"caption": {"tensor": long}}, "caption", run.specs)
    assert int((~md["caption"]["input_mask"]).sum()) == spec.max_seq_len  # the cut drops the EOS
    assert EOS_ID not in long[0].tolist()
