"""`fm21 serve`: the flows as Prefect deployments, started from the UI with parameters.

Prefect's ``serve`` registers one deployment per flow (``<flow>/fm21``) with the server
in PREFECT_API_URL and runs their flow runs in this process's machine. The deployments'
default parameters are the config inputs ``fm21 serve`` was given; the UI form may
change them (recipe, overrides, stages to force), and the flow validates them with the
same pydantic models as the CLI, failing the run with a one-line reason.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from fm21.config import load_config

log = logging.getLogger("fm21")

DEPLOYMENT = "fm21"  # deployments are named <flow>/fm21


def deployment_parameters(config_file: Optional[str], recipe: Optional[str],
                          overrides: Optional[list[str]]) -> dict:
    """Validated default parameters (a bad default fails here, not in the UI). Paths are
    made absolute: flow runs may start in another working directory."""
    load_config(config_file, recipe=recipe, overrides=overrides)
    if recipe and Path(recipe).exists():
        recipe = str(Path(recipe).resolve())
    return {"config_file": str(Path(config_file).resolve()) if config_file else None, "recipe": recipe,
            "overrides": list(overrides or []), "force": []}


def set_gpu_slots(slots: int) -> None:
    """A Prefect tag concurrency limit on the GPU stages' tag (at most ``slots`` at once)."""
    from prefect.client.orchestration import get_client

    from fm21.pipelines.flows import GPU_TAG

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)
    log.info("serve: at most %d task runs tagged %s at once", slots, GPU_TAG)


def serve_deployments(config_file: Optional[str] = None, recipe: Optional[str] = None,
                      overrides: Optional[list[str]] = None, gpu_slots: int = 0) -> None:
    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("fm21 serve needs a Prefect server: set PREFECT_API_URL "
                           "(e.g. http://127.0.0.1:4200/api; `make ui` starts one)")
    from prefect import serve
    from prefect.deployments.runner import EntrypointType

    from fm21.pipelines.flows import FLOWS

    params = deployment_parameters(config_file, recipe, overrides)
    if gpu_slots:
        set_gpu_slots(gpu_slots)
    deployments = [
        flow.to_deployment(name=DEPLOYMENT, parameters=params, description=flow.description, tags=["fm21"],
                           entrypoint_type=EntrypointType.MODULE_PATH)
        for flow in FLOWS.values()
    ]
    serve(*deployments)


def run_ui(port: int = 4200, *, config_file: Optional[str] = None, recipe: Optional[str] = None,
           overrides: Optional[list[str]] = None, gpu_slots: int = 0) -> None:
    """A local Prefect server on 127.0.0.1:``port`` (its UI at http://127.0.0.1:port) and the
    deployments served against it, until Ctrl-C stops both."""
    import subprocess
    import sys
    import time

    import httpx

    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false")}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the Prefect server did not start on 127.0.0.1:{port} (port in use?)")
            time.sleep(1)
        log.info("ui: Prefect UI at http://127.0.0.1:%d (deployments: Deployments > <flow>/fm21 > Run)", port)
        os.environ["PREFECT_API_URL"] = api
        serve_deployments(config_file, recipe, overrides, gpu_slots=gpu_slots)
    finally:
        server.terminate()
        server.wait(30)
