"""`fm21 serve` against a real Prefect server on loopback: start runs as the UI would."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_run_started_through_the_api_completes_with_artifacts(served, completed_run):
    from prefect.client.orchestration import get_client

    api, work, logs = served
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_latest_artifacts()}
    assert {"fm21-ingest", "fm21-token-stats", "fm21-tokenizer-recon", "fm21-report"} <= keys, keys
    assert (work / "evaluate" / "report.md").exists()


def test_a_bad_parameter_fails_the_run_with_the_key_named(served):
    from prefect.deployments import run_deployment

    api, work, logs = served
    run = run_deployment("pretrain/fm21", parameters={"overrides": [f"workdir={work}", "train.bogus=1"]},
                         timeout=300)
    assert run.state.is_failed()
    assert "unknown key 'train.bogus'" in (run.state.message or ""), run.state.message
