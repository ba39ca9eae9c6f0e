"""The train stage as a Ray job on an existing cluster (the Ray Jobs API, port 8265).

``submit`` resolves and validates the run here, then sends the cluster:

- the code: this installation's ``fm21`` package (``py_modules``; never ``work/`` or a venv),
- the configuration: the resolved one, as ``flows.yaml`` in the job's working directory,
  with ``ray.address: auto`` (the job's driver joins the cluster it runs on) and a local
  workdir made absolute (it must be on a filesystem the cluster shares, or an ``s3://`` URI),
- the entrypoint ``python -m fm21.cli --config flows.yaml stage train``, and
- the environment: the cluster's own Python by default (its image must hold fm21's
  dependencies, e.g. ``pip install -c constraints.txt ...``); with ``pinned=True`` Ray builds
  a virtualenv on each node from this checkout's ``constraints.txt`` (``runtime_env.pip``;
  the nodes then need a package index).

Object-store credentials are never put in the job (the dashboard shows a job's
runtime_env): only the endpoint and region are; the nodes hold their own credentials.

``follow`` prints the job's log as it grows by polling the REST API (no websocket client
needed) and returns its final status; ``status`` and ``stop`` act on a job id.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import fm21
from fm21.config import FlowConfig, dump_config
from fm21.store import fs

log = logging.getLogger("fm21")

ENTRYPOINT = "python -m fm21.cli --config flows.yaml stage train"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SHARED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP")  # no secrets


def auth_headers() -> dict[str, str]:
    """The bearer token of a cluster run with Ray's token authentication, from where Ray
    keeps it: ``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``
    (https://docs.ray.io/en/latest/ray-security/token-auth.html). None found: no header."""
    import os

    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers() or None)


def job_config(cfg: FlowConfig) -> FlowConfig:
    """The configuration the job runs: the cluster's Ray, and an absolute workdir."""
    workdir = cfg.workdir if fs.is_uri(cfg.workdir) else str(Path(cfg.workdir).resolve())
    return cfg.model_copy(update={"workdir": workdir, "ray": cfg.ray.model_copy(update={"address": "auto"})})


def runtime_env(working_dir: str, *, pinned: bool = False) -> dict[str, Any]:
    """The job's runtime_env (see the module docstring)."""
    import os

    env: dict[str, Any] = {
        "working_dir": working_dir,
        "py_modules": [str(Path(fm21.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": {k: v for k, v in os.environ.items() if k in SHARED_ENV} | {"PYTHONUNBUFFERED": "1"},
    }
    if pinned:
        constraints = Path(fm21.__file__).resolve().parents[1] / "constraints.txt"
        if not constraints.exists():
            raise FileNotFoundError(f"pinned environment: no {constraints} (a checkout of fm21 has it)")
        pins = [line.strip() for line in constraints.read_text().splitlines()
                if line.strip() and not line.startswith(("#", "-"))]
        env["pip"] = {"packages": pins, "pip_check": False}
    return env


def submit(address: str, cfg: FlowConfig, *, force: bool = False, pinned: bool = False, jobs=None) -> str:
    """Submit the train stage of ``cfg`` to the cluster at ``address``; -> the job id."""
    jobs = jobs or client(address)
    with tempfile.TemporaryDirectory(prefix="fm21-job-") as tmp:
        (Path(tmp) / "flows.yaml").write_text(dump_config(job_config(cfg)))
        job_id = jobs.submit_job(entrypoint=ENTRYPOINT + (" --force" if force else ""),
                                 runtime_env=runtime_env(tmp, pinned=pinned),
                                 metadata={"fm21": fm21.__version__, "stage": "train", "workdir": str(cfg.workdir)})
    log.info("submitted %s to %s", job_id, address)
    return job_id


def follow(jobs, job_id: str, *, echo: Callable[[str], None] = lambda s: print(s, end="", file=sys.stdout),
           poll: float = 2.0, timeout: float | None = None) -> str:
    """Print the job's log as it grows until the job ends; -> its final status."""
    printed, start = 0, time.time()
    while True:
        status = str(jobs.get_job_status(job_id).value)
        logs = jobs.get_job_logs(job_id)
        if len(logs) > printed:
            echo(logs[printed:])
            printed = len(logs)
        if status in TERMINAL:
            return status
        if timeout is not None and time.time() - start > timeout:
            raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f}s")
        time.sleep(poll)


def status(jobs, job_id: str) -> dict[str, Any]:
    """The job's status, message, entrypoint and times."""
    info = jobs.get_job_info(job_id)
    return {"job_id": job_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time}


def stop(jobs, job_id: str) -> bool:
    """Ask the cluster to stop the job; -> whether it was still running."""
    return bool(jobs.stop_job(job_id))
