"""A non-editable install finds its default config and recipes; `fm21 init` writes one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_default_config_and_runs_from_an_empty_directory(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "flows.yaml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "configs", src / "configs")
    shutil.copytree(ROOT / "fm21", src / "fm21", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(src), "-w", str(tmp_path / "wheel")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("fm21-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fm21/defaults/flows.yaml", "fm21/defaults/configs/tiny.yaml"} <= names
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)  # the wheel's fm21 shadows the editable checkout on sys.path
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def fm21(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fm21.cli", *args], cwd=empty, env=env,
                              capture_output=True, text=True)

    where = subprocess.run([sys.executable, "-c", "import fm21.config as c; print(c.DEFAULT_CONFIG)"],
                           cwd=empty, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    shown = fm21("config", "show", "--recipe", "tiny")
    assert shown.returncode == 0, shown.stderr
    assert "workdir: work/tiny" in shown.stdout and "resolution: 32" in shown.stdout
    assert fm21("init").returncode == 0 and (empty / "flows.yaml").read_text() == (ROOT / "flows.yaml").read_text()
    again = fm21("init")
    assert again.returncode == 2 and "exists" in again.stderr
    (empty / "flows.yaml").write_text((empty / "flows.yaml").read_text().replace("seed: 0", "seed: 7"))
    assert "seed: 7" in fm21("config", "show").stdout  # ./flows.yaml wins over the packaged one
    bad = fm21("config", "show", "--recipe", "tinyy")
    assert bad.returncode == 2 and "recipe 'tinyy' not found" in bad.stderr
