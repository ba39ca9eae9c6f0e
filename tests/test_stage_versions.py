"""A stage's code version re-runs that stage on existing workdirs, and no other."""

from __future__ import annotations

from pathlib import Path

from fm21 import stages
from fm21.config import load_config
from fm21.store.layout import STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_a_bumped_code_version_changes_only_its_stage_fingerprint(monkeypatch):
    cfg = load_config(str(ROOT / "flows.yaml"))

    def fingerprints() -> dict[str, str]:
        return {s: stages.stage_fingerprint(cfg, s, upstream={}) for s in STAGES}

    monkeypatch.setattr(stages, "CODE_VERSIONS", {})
    base = fingerprints()
    monkeypatch.setattr(stages, "CODE_VERSIONS", {"ingest": 1})  # version 1 is the unversioned fingerprint
    assert fingerprints() == base
    monkeypatch.setattr(stages, "CODE_VERSIONS", {"evaluate": 2})
    bumped = fingerprints()
    assert [s for s in STAGES if bumped[s] != base[s]] == ["evaluate"]
