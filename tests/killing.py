"""Run the CLI in a fresh process (its own Ray) armed to kill its own process group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def killed_cli_run(work: Path, command: list[str], crash_at: str, tmp: Path, sets: list[str] = ()) -> None:
    """``fm21 --recipe tiny --set workdir=<work> [--set s ...] <command>`` with
    ``FM21_CRASH_AT=<crash_at>``; asserts it died of the armed SIGKILL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FM21_"))}
    env.update(FM21_CRASH_AT=crash_at, FM21_CRASH_DIR=str(tmp / "hits"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fm21.cli", "--config", str(ROOT / "flows.yaml"),
           "--recipe", str(ROOT / "configs" / "tiny.yaml"), "--set", f"workdir={work}",
           *(a for s in sets for a in ("--set", s)), *command]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, start_new_session=True, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]
