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


def test_gpu_stages_share_a_tag_concurrency_limit(served):
    from prefect.client.orchestration import get_client

    from fm21.pipelines.flows import GPU_TAG, STAGE_TASKS
    from fm21.stages import GPU_STAGES

    with get_client(sync_client=True) as client:
        limit = client.read_concurrency_limit_by_tag(GPU_TAG)
    assert limit.concurrency_limit == 1  # `fm21 serve --gpu-slots 1`
    assert {n for n, t in STAGE_TASKS.items() if GPU_TAG in t.tags} == set(GPU_STAGES)


def test_only_transient_errors_are_retried():
    from fm21.pipelines.flows import _is_transient
    from fm21.stages import StageError

    class State:
        def __init__(self, err):
            self.err = err

        def result(self, raise_on_failure=False):
            return self.err

    def failed(cause):
        try:
            raise StageError("pseudolabel", cause) from cause
        except StageError as err:
            return State(err)

    assert _is_transient(None, None, failed(ConnectionError("node lost")))
    assert _is_transient(None, None, failed(TimeoutError("slow")))
    assert not _is_transient(None, None, failed(ValueError("bad data")))
    assert not _is_transient(None, None, State(KeyError("x")))
