"""A real Prefect server on loopback with `fm21 serve` registered, shared by the UI tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A Prefect server on 127.0.0.1 and `fm21 serve --recipe tiny` registered with it."""
    home = tmp_path_factory.mktemp("prefect-home")
    work = tmp_path_factory.mktemp("deploy") / "work"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api}
    logs = home / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def healthy():
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    serve = settings = None
    try:
        _wait(healthy, 120, "the Prefect server")
        serve = subprocess.Popen(
            [sys.executable, "-m", "fm21.cli", "serve", "--recipe", "tiny", "--set", f"workdir={work}",
             "--gpu-slots", "1"],
            cwd=ROOT, env=env, stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        # This process talks to the same server. Prefect may have loaded its settings
        # already (an earlier test ran a flow), so set them in a settings context too.
        os.environ["PREFECT_API_URL"] = api
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        settings = temporary_settings(updates={PREFECT_API_URL: api})
        settings.__enter__()

        def deployed():
            with get_client(sync_client=True) as client:
                return sum(d.name == "fm21" for d in client.read_deployments()) == 4

        try:
            _wait(deployed, 120, "the fm21 deployments")
        except TimeoutError as err:
            raise TimeoutError(f"{err}; fm21 serve said: {(logs / 'serve.log').read_text()[-2000:]}") from None
        yield api, work, logs
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        if settings is not None:
            settings.__exit__(None, None, None)
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)



@pytest.fixture(scope="session")
def completed_run(served):
    """One tiny end_to_end run started through the API as the UI would; -> the flow run."""
    from prefect.deployments import run_deployment

    api, work, logs = served
    run = run_deployment("end_to_end/fm21", parameters={"overrides": [f"workdir={work}", "train.steps=6"]},
                         timeout=900)
    assert run.state.is_completed(), (run.state, (logs / "serve.log").read_text()[-3000:])
    return run
