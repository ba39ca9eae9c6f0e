"""An S3-compatible object store for the store tests: moto's server on 127.0.0.1."""

from __future__ import annotations

import logging

import pytest

BUCKET = "fm21-test"


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on loopback, one per test module, with bucket ``BUCKET``; yields
    ``s3://BUCKET``. Credentials and endpoint are only in the environment (AWS_*)."""
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
