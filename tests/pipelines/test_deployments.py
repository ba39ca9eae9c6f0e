"""`fm21 serve` against a real Prefect server on loopback: start runs as the UI would, and
drive the real Prefect UI in headless Chromium (a finished fm21 run and its artifacts are
shown; a run started from the deployment's form with an override completes). One module,
so the server and the served deployment are started once (pytest-xdist hands out files).

Chromium is Debian's package (`make test` installs it when it can); Playwright drives it
(its own browser download is not used). Screenshots go to $FM21_SCREENSHOTS or tmp.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


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


# ------------------------------------------------------------------ the UI in Chromium
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("FM21_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _ui(api: str) -> str:
    return api.removesuffix("/api")


@needs_chromium
def test_ui_shows_the_finished_run_and_its_artifacts(served, completed_run, browser, shots):
    api, work, logs = served
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{_ui(api)}/runs/flow-run/{completed_run.id}")
    page.get_by_text(completed_run.name).first.wait_for(timeout=60_000)
    page.get_by_text("Completed").first.wait_for(timeout=60_000)
    page.get_by_text("end_to_end").first.wait_for(timeout=60_000)  # the flow
    page.screenshot(path=str(shots / "flow-run.png"))
    # artifacts belong to the stage task runs; the Artifacts page lists the latest per key
    page.goto(f"{_ui(api)}/artifacts")
    page.get_by_text("fm21-report").first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "artifacts.png"))
    page.get_by_text("fm21-report", exact=True).first.click()
    page.wait_for_url("**/artifacts/**/fm21-report**", timeout=60_000)  # its versions
    page.locator("a[href*='/artifacts/artifact/']").first.click()  # the latest one
    page.get_by_text("by generation (").first.wait_for(timeout=60_000)  # the report's body
    page.wait_for_timeout(1000)  # let the embedded images decode
    page.screenshot(path=str(shots / "artifact-report.png"), full_page=True)
    print(f"screenshots in {shots}: flow-run.png, artifacts.png, artifact-report.png")


@needs_chromium
def test_ui_run_from_the_deployment_form_with_an_override_completes(served, completed_run, browser, shots):
    from prefect.client.orchestration import get_client

    api, work, logs = served
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pretrain/fm21")
        before = {r.id for r in client.read_flow_runs()}
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{_ui(api)}/deployments/deployment/{deployment.id}/run")
    page.get_by_text("overrides (Optional)").wait_for(timeout=60_000)
    page.get_by_role("button", name="Add item").first.click()
    page.locator("textarea").last.fill("train.steps=4")
    page.screenshot(path=str(shots / "deployment-form.png"), full_page=True)
    page.get_by_role("button", name="Submit").click()

    deadline, run = time.time() + 600, None
    while time.time() < deadline:
        with get_client(sync_client=True) as client:
            runs = [r for r in client.read_flow_runs() if r.id not in before and r.deployment_id == deployment.id]
        run = runs[0] if runs else None
        if run is not None and run.state is not None and run.state.is_final():
            break
        time.sleep(2)
    assert run is not None, "the form started no flow run"
    assert run.state.is_completed(), (run.state, (logs / "serve.log").read_text()[-3000:])
    assert "train.steps=4" in run.parameters["overrides"]
    assert run.parameters["recipe"] == "tiny"  # the deployment's default kept
    page.goto(f"{_ui(api)}/runs/flow-run/{run.id}")
    page.get_by_text("Completed").first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "form-run-completed.png"))
    history = [line for line in (work / "train" / "history.jsonl").read_text().splitlines() if line]
    assert '"step": 3' in history[-1]  # the override reached the stage: 4 steps
