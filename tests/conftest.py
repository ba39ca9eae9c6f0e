"""Shared fixtures: one session-scoped local Ray, the tiny recipe, tmp workdirs."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch's 2-thread pool is pathological on 2 shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Prefect state (its SQLite database, artifacts) of a test session stays in the session.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="fm21-prefect-"))
# Prefect logs "Stopping temporary server" at interpreter exit, after pytest closed its
# capture streams; don't print a traceback for that.
logging.raiseExceptions = False


# `make test` runs the suite on two pytest-xdist workers with `--dist loadgroup`. Each test
# module is one group, so its module-scoped fixtures (a whole pipeline run, a Prefect
# server) are built once, on one worker; the two modules that share the session's Prefect
# server and served deployment (tests/pipelines/) form one group.
SHARED_GROUPS = {"pipelines": "prefect-server"}
# The longest groups go out first (measured: `make test` prints the slowest tests), so the
# two workers finish together instead of one waiting on a long group handed out last.
LONGEST_FIRST = ["test_end_to_end.py", "store/test_units.py", "train/test_distributed.py", "test_real_photos.py",
                 "prefect-server", "tokenize/test_tokens_incremental.py", "store/test_s3_workdir.py",
                 "test_all19.py", "train/test_jobs.py"]


def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        module = Path(str(item.fspath)).relative_to(ROOT / "tests")
        group = SHARED_GROUPS.get(module.parts[0], str(module)) if len(module.parts) > 1 else str(module)
        item.add_marker(pytest.mark.xdist_group(group))
        groups[item.nodeid] = group
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))  # stable: file order kept


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from fm21.config import RayConfig
    from fm21.ray_runtime import ensure_ray

    ensure_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture()
def tiny_config(tmp_path):
    """The tiny recipe with its workdir under tmp_path."""
    from fm21.config import load_config

    def make(*overrides: str):
        return load_config(
            ROOT / "flows.yaml",
            recipe=ROOT / "configs" / "tiny.yaml",
            overrides=[f"workdir={tmp_path / 'work'}", *overrides],
        )

    return make


BUCKET = "fm21-test"  # created by the s3 fixture


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible endpoint (moto's server on 127.0.0.1), one per test module, with
    bucket ``BUCKET``; yields ``s3://BUCKET``. Endpoint and credentials are only in the
    environment (AWS_*), as in production."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                            "AWS_ALLOW_HTTP": "true"}.items():
            mp.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()
