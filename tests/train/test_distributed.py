"""The train stage on Ray Train (CPU, gloo): two workers follow one process's loss curve at
the same global batch, with a worker killed mid-run and restarted from the last checkpoint
(one run for both: a Ray Train start costs tens of seconds here)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pyarrow as pa
import pytest

from fm21.config import RayConfig, TrainConfig
from fm21.modalities import resolve_specs
from fm21.stages import RunContext
from fm21.store.layout import Workdir
from fm21.store.tokens import tokens_schema

SPECS = resolve_specs(["rgb", "tok_depth", "tok_normal"], resolution=32, patch_size=8, image_vocab_size=64,
                      text_vocab_size=4500)
ROWS = 24


def tiny_train(**over) -> TrainConfig:
    """dim 32, 1+1 layers, global batch 16, a few steps: seconds per run."""
    base = {"model": {"dim": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2},
            "num_input_tokens": 16, "num_target_tokens": 16, "batch_size": 16, "steps": 6, "lr": 1e-2,
            "warmup_steps": 1, "log_every": 1, "val_every": 0, "checkpoint_every": 3}
    return TrainConfig.model_validate(base | over)


def write_store(root) -> RunContext:
    """A workdir holding a tokens.lance of ROWS random rows (and its manifest)."""
    import lance

    wd = Workdir(root)
    rng = np.random.default_rng(0)
    schema = tokens_schema(SPECS, tokenizers={}, labels_fp="test")
    table = pa.table({
        "key": [f"k{i:03d}" for i in range(ROWS)], "crop": pa.array([0] * ROWS, pa.int16()),
        "split": ["train"] * (ROWS - 4) + ["val"] * 4,
        "rgb": [r.tolist() for r in rng.integers(0, 256, (ROWS, 32 * 32 * 3), dtype=np.uint8)],
        **{n: [r.tolist() for r in rng.integers(0, 64, (ROWS, 16))] for n in ("tok_depth", "tok_normal")},
    }, schema=schema)
    lance.write_dataset(table, str(wd.tokens_uri), schema=schema)
    wd.manifest("tokens").write_text(json.dumps({"status": "complete", "fingerprint": "tokens-test"}))
    return RunContext(workdir=wd, seed=0, specs=SPECS, ray=RayConfig(num_cpus=2))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store")).workdir.root


def _ctx(store, target) -> RunContext:
    shutil.copytree(store, target)
    return RunContext(workdir=Workdir(target), seed=0, specs=SPECS, ray=RayConfig(num_cpus=2))


def _losses(ctx: RunContext) -> list[float]:
    lines = (ctx.workdir.stage_dir("train") / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_two_workers_follow_one_process_and_a_killed_worker_restarts_from_the_last_checkpoint(
        ray_local, store, tmp_path, monkeypatch):
    """One Ray Train run (2 gloo workers, global batch 16) whose rank 1 dies after step
    index 4: FailureConfig restarts the group from the checkpoint of step 3 and the run
    finishes; its loss curve follows one process's at the same global batch."""
    from fm21.train.checkpoint import resolve_latest
    from fm21.train.loop import run_train

    one, two = _ctx(store, tmp_path / "one"), _ctx(store, tmp_path / "two")
    t0 = time.time()
    alone = run_train(tiny_train(), one)
    t1 = time.time()
    monkeypatch.setenv("FM21_KILL_WORKER_AT", "1:4")
    monkeypatch.setenv("FM21_CRASH_DIR", str(tmp_path / "hits"))
    pair = run_train(tiny_train(ray={"num_workers": 2, "max_failures": 2}), two)
    print(f"one process {t1 - t0:.1f}s, two Ray Train workers, one killed and restarted {time.time() - t1:.1f}s")
    assert (tmp_path / "hits" / "kill-worker-1-4").exists()  # the worker did die
    assert pair["workers"] == 2 and pair["steps"] == 6 and pair["resumed_from"] == 3
    assert pair["parameters"] == alone["parameters"]
    a, b = np.array(_losses(one)), np.array(_losses(two))
    assert len(a) == len(b) == 6  # steps 3-4, logged before the kill, are not logged twice
    # Not bitwise: each rank takes the mean loss of its own half (per modality), one process
    # the mean over the whole batch. The curve itself moves far more than the gap.
    gap = np.abs(a - b).max()
    assert gap < 0.02 * a[0], (a, b)
    assert a[0] - a[-1] > 5 * gap, (a, b)
    # rank 0 alone wrote the checkpoints; Ray Train's last one points at the final fm21 checkpoint
    latest = resolve_latest(two.workdir.checkpoints_dir)
    assert latest is not None and json.loads((latest / "config.json").read_text())["step"] == 6
    ray_state = two.workdir.stage_dir("train") / "ray" / "fm21-train"
    pointers = sorted(json.loads(p.read_text())["step"] for p in ray_state.glob("checkpoint_*/fm21.json"))
    assert pointers[-1] == 6


def test_world_size_one_is_the_loop_unchanged(store, tmp_path):
    """Without train.ray the stage is one process and writes what it always wrote."""
    from fm21.train.loop import run_train

    ctx = _ctx(store, tmp_path / "one")
    counts = run_train(tiny_train(steps=2, checkpoint_every=2), ctx)
    assert "workers" not in counts and counts["resumed_from"] == 0
    assert len(_losses(ctx)) == 2 and not (ctx.workdir.stage_dir("train") / "ray").exists()


def test_batch_must_split_evenly_across_workers(store, tmp_path):
    from fm21.train.loop import Alone, train_worker

    class Three(Alone):
        world_size = 3

    with pytest.raises(ValueError, match="not divisible by 3"):
        train_worker(tiny_train(), _ctx(store, tmp_path / "x"), Three())
