"""One tiny random-init run per test session, shared by the generation tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_run import build_run  # noqa: E402


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("generate") / "work"
    build_run(work)
    return work
