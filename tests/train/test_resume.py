"""Exact resume: a train stage killed with SIGKILL (after an optimizer step, or in the
middle of writing a checkpoint) and run again logs the same losses, bit for bit, and
ends with the same weights as an uninterrupted run (CPU, one thread, same seed). A
checkpoint that lost a file is refused with an error naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from resume_run import make_workdir, run

from fm21.store.layout import Workdir
from fm21.train.checkpoint import IncompleteCheckpoint, load_latest, resolve_latest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _killed_run(workdir: Path, crash_at: str, tmp: Path) -> None:
    """``resume_run.py`` in a process of its own, killed by SIGKILL at ``crash_at``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FM21_")}
    env.update(FM21_CRASH_AT=crash_at, FM21_CRASH_DIR=str(tmp / f"hits-{crash_at}"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    proc = subprocess.run([sys.executable, str(HERE / "resume_run.py"), str(workdir)], env=env, cwd=ROOT,
                          start_new_session=True, capture_output=True, timeout=900)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]


def _history(workdir: Path) -> list[dict]:
    path = Workdir(workdir).stage_dir("train") / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    make_workdir(workdir)
    assert run(workdir)["resumed_from"] == 0
    return workdir


@pytest.mark.parametrize("crash_at, resumed_from, written", [
    ("train.after_step:6", 4, "step 5 logged, step-0000004 the latest checkpoint"),
    ("train.checkpoint_write:4", 4, "step-0000008 has its weights only"),  # 3 files a checkpoint
])
def test_a_killed_run_resumes_on_the_uninterrupted_trajectory(reference, tmp_path, crash_at, resumed_from, written):
    workdir = tmp_path / "work"
    make_workdir(workdir)
    _killed_run(workdir, crash_at, tmp_path)
    ckpts = Workdir(workdir).checkpoints_dir
    assert resolve_latest(ckpts) == ckpts / "step-0000004", written
    assert not (ckpts / "step-0000008" / "config.json").exists()
    if crash_at.startswith("train.after_step"):
        _refuses_a_checkpoint_missing_a_file(workdir, tmp_path / "broken")

    assert run(workdir)["resumed_from"] == resumed_from
    expected = _history(reference)
    assert [h["step"] for h in expected] == list(range(12))
    assert _history(workdir) == expected  # every logged float equal: losses, val losses, grad norms
    a, b = load_latest(Workdir(reference).checkpoints_dir)[0], load_latest(ckpts)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))




def _refuses_a_checkpoint_missing_a_file(workdir: Path, broken: Path) -> None:
    """A copy of the killed workdir whose latest checkpoint lost a file its config.json lists
    (here optimizer.pt) is not resumed without it, nor restarted: an error names the file."""
    shutil.copytree(workdir, broken)
    (resolve_latest(Workdir(broken).checkpoints_dir) / "optimizer.pt").unlink()
    with pytest.raises(IncompleteCheckpoint, match="optimizer.pt is missing.*delete"):
        run(broken)
