"""The command line: options anywhere, one-line errors with exit status 2, examples in help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fm21.cli import hoist_global_options

ROOT = Path(__file__).resolve().parents[1]
FM21 = [sys.executable, "-m", "fm21.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FM21, *args], capture_output=True, text=True, cwd=ROOT)


def test_hoist_moves_only_global_options_and_keeps_their_values():
    argv = ["stage", "train", "--set", "train.steps=5", "--force", "-v", "--config=x.yaml", "-r", "tiny"]
    assert hoist_global_options(argv) == [
        "--set", "train.steps=5", "-v", "--config=x.yaml", "-r", "tiny", "stage", "train", "--force"]
    assert hoist_global_options(["run", "--", "--set"]) == ["run", "--", "--set"]


def test_options_after_the_subcommand_work_like_before_it():
    before = _run("--set", "train.steps=3", "config", "show")
    after = _run("config", "show", "--set", "train.steps=3")
    assert before.returncode == after.returncode == 0, after.stderr
    assert "steps: 3" in after.stdout and before.stdout == after.stdout


def test_a_failing_stage_is_one_line_on_stderr_with_exit_2(tmp_path):
    out = _run("stage", "evaluate", "--set", f"workdir={tmp_path / 'none'}")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stage evaluate needs tokenizers"), out.stderr
    verbose = _run("stage", "evaluate", "--set", f"workdir={tmp_path / 'none'}", "--verbose")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_bad_config_is_one_line_naming_every_key(tmp_path):
    out = _run("stage", "ingest", "--set", f"workdir={tmp_path / 'w'}", "--set", "ingest.sorce=x",
               "--set", "train.steps=x")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'ingest.sorce'" in lines[0] and "'train.steps'" in lines[0]
    assert not (tmp_path / "w").exists()


def test_help_shows_examples():
    assert "fm21 stage train --set train.steps=50" in _run("--help").stdout
    for command in (["stage"], ["run"], ["stats"], ["config", "show"]):
        assert "Example: fm21 " in _run(*command, "--help").stdout, command
