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


# `make test` runs the suite on two pytest-xdist workers with `--dist loadfile`: a test
# module stays on one worker, so its module-scoped fixtures (a whole pipeline run, a Prefect
# server) are built once. (xdist 3.8's `loadgroup` cannot group under pytest 9: it renames
# `item._nodeid`, which pytest 9's node ids no longer read.) The longest modules go out
# first (`make test` prints the slowest tests), so the workers finish together.
LONGEST_FIRST = ["test_real_photos.py", "test_end_to_end.py", "pipelines/test_deployments.py",
                 "store/test_units.py", "store/test_s3_workdir.py", "train/test_distributed.py", "test_all19.py",
                 "tokenize/test_tokens_incremental.py", "train/test_jobs.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    module = {item: str(Path(str(item.fspath)).relative_to(ROOT / "tests")) for item in items}
    items.sort(key=lambda item: rank.get(module[item], len(rank)))  # stable: file order kept


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
    # moto keeps its buckets in process-global state: a module that ran earlier in this
    # pytest worker would leave its objects behind. Start every module empty.
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=10)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                            "AWS_ALLOW_HTTP": "true"}.items():
            mp.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()
