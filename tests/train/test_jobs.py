"""`fm21 train --address`: the train stage as a Ray job (the Jobs API).

What is sent (code, resolved config, environment) and the CLI's submit/follow/status/stop
are tested against a recording client; a live head on loopback, when this Python has the
dashboard's packages (``ray[default]``), receives the tiny run and runs it to SUCCEEDED.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import yaml

import fm21
from fm21.cli import main_cli
from fm21.config import load_config
from fm21.train import jobs

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """A JobSubmissionClient stand-in: records the submission, plays back a status sequence
    and a log that grows by one line per poll."""

    def __init__(self, statuses=("PENDING", "RUNNING", "RUNNING", "SUCCEEDED")) -> None:
        self.statuses, self.polls, self.submitted, self.stopped = list(statuses), 0, None, []

    def submit_job(self, *, entrypoint, runtime_env, metadata):
        flows = Path(runtime_env["working_dir"]) / "flows.yaml"
        self.submitted = {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": metadata,
                          "flows": yaml.safe_load(flows.read_text())}
        return "raysubmit_test"

    def get_job_status(self, job_id):
        status = self.statuses[min(self.polls, len(self.statuses) - 1)]
        self.polls += 1
        return SimpleNamespace(value=status)

    def get_job_logs(self, job_id):
        return "".join(f"line {i}\n" for i in range(self.polls))

    def get_job_info(self, job_id):
        return SimpleNamespace(status=SimpleNamespace(value="RUNNING"), message="training", entrypoint=jobs.ENTRYPOINT,
                               start_time=1, end_time=None)

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


def _tiny(tmp_path, *sets):
    return load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                       overrides=[f"workdir={tmp_path / 'work'}", *sets])


def test_the_job_carries_the_code_the_resolved_config_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://store:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hush")
    rec = Recorder()
    cfg = _tiny(tmp_path, "train.steps=7", "train.ray.num_workers=2")
    assert jobs.submit("http://head:8265", cfg, jobs=rec) == "raysubmit_test"
    sent = rec.submitted
    assert sent["entrypoint"] == "python -m fm21.cli --config flows.yaml stage train"
    env = sent["runtime_env"]
    assert env["py_modules"] == [str(Path(fm21.__file__).parent)] and "pip" not in env
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://store:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]
    # the config the job runs is the one resolved here, joined to the cluster's Ray
    flows = sent["flows"]
    assert flows["train"]["steps"] == 7 and flows["train"]["ray"]["num_workers"] == 2
    assert flows["ray"]["address"] == "auto" and flows["workdir"] == str((tmp_path / "work").resolve())
    assert not Path(env["working_dir"]).exists()  # a temporary directory, uploaded and removed


def test_pinned_environment_is_the_lock_file(tmp_path):
    env = jobs.runtime_env(str(tmp_path), pinned=True)
    pins = env["pip"]["packages"]
    assert "ray==2.60.0" in pins and all("==" in p for p in pins)


def test_follow_prints_the_growing_log_once_and_returns_the_final_status():
    out: list[str] = []
    assert jobs.follow(Recorder(), "j", echo=out.append, poll=0) == "SUCCEEDED"
    assert "".join(out) == "".join(f"line {i}\n" for i in range(4))
    with pytest.raises(TimeoutError):
        jobs.follow(Recorder(statuses=("RUNNING",)), "j", echo=out.append, poll=0.01, timeout=0.05)


def test_cli_submits_follows_and_reports(tmp_path, monkeypatch, capsys):
    rec = Recorder(statuses=("RUNNING", "FAILED"))
    monkeypatch.setattr(jobs, "client", lambda address: rec)
    args = ["--config", str(ROOT / "flows.yaml"), "--recipe", str(ROOT / "configs" / "tiny.yaml"),
            "--set", f"workdir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_:
        main_cli(["train", "--address", "http://head:8265", *args])
    assert exit_.value.code == 1  # the job failed: so does the command
    out = capsys.readouterr()
    assert "line 0" in out.out and "raysubmit_test: FAILED" in out.out and "submitted raysubmit_test" in out.err
    with pytest.raises(SystemExit) as exit_:
        main_cli(["train", "status", "raysubmit_test", "--address", "http://head:8265", *args])
    assert exit_.value.code == 0 and "RUNNING" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main_cli(["train", "stop", "raysubmit_test", "--address", "http://head:8265", *args])
    assert rec.stopped == ["raysubmit_test"] and "stop requested" in capsys.readouterr().out


# ---------------------------------------------------------------------- a live head
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _kill_session(sid: int, sig: int = signal.SIGTERM) -> None:
    """Signal every process of the head's session (never `ray stop`: it stops every Ray
    on the machine)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                os.kill(int(entry.name), sig)
        except (OSError, ValueError, IndexError):
            continue


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head --block` on loopback in a session of its own, with the dashboard."""
    pytest.importorskip("ray.dashboard.optional_deps", reason="the Jobs API needs ray[default] (aiohttp, grpcio, ...)")
    import urllib.error
    import urllib.request

    tmp = tmp_path_factory.mktemp("head")
    # Ray's sockets live under --temp-dir, and AF_UNIX paths stop at 107 bytes: pytest's
    # (and xdist's) tmp paths are too long for them.
    short = Path(tempfile.mkdtemp(prefix="fm21-ray-", dir="/tmp"))
    gcs, dash, agent = _free_ports(3)
    ray_bin = Path(sys.executable).parent / "ray"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FM21_"))}
    # Ray's token authentication, as a secured cluster runs it: the head and the client
    # (fm21 train --address) share the token through RAY_AUTH_TOKEN.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    # the cluster's Python has fm21's dependencies (the default runtime_env): this venv's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                             "--dashboard-agent-listen-port", str(agent), "--num-cpus", "2",
                             "--include-dashboard", "true", "--temp-dir", str(short)],
                            env=env, cwd=tmp, start_new_session=True,
                            stdout=open(tmp / "head.log", "wb"), stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(address + "/api/version", timeout=1)
                break
            except urllib.error.HTTPError:  # it answers (401 without the token): up
                break
            except OSError:
                assert proc.poll() is None, (tmp / "head.log").read_text()[-3000:]
                time.sleep(1)
        yield address, {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    finally:
        _kill_session(proc.pid)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        shutil.rmtree(short, ignore_errors=True)


def test_a_loopback_head_runs_the_tiny_train_stage(head, tmp_path, monkeypatch):
    import lance

    from fm21.store.layout import Workdir
    from fm21.store.tokens import tokens_schema

    # the job trains in its driver process (Ray Train inside a job is the same stage code,
    # tested in test_distributed.py; its start-up would double this test's time)
    cfg = _tiny(tmp_path, "modalities.enabled=[rgb,tok_depth]", "train.steps=4", "train.checkpoint_every=2")
    specs, wd, rng = cfg.specs(), Workdir(cfg.workdir), np.random.default_rng(0)
    schema = tokens_schema(specs, tokenizers={}, labels_fp="test")
    rows = 16
    lance.write_dataset(pa.table({
        "key": [f"k{i}" for i in range(rows)], "crop": pa.array([0] * rows, pa.int16()), "split": ["train"] * rows,
        "rgb": [r.tolist() for r in rng.integers(0, 256, (rows, 32 * 32 * 3), dtype=np.uint8)],
        "tok_depth": [r.tolist() for r in rng.integers(0, 64, (rows, specs["tok_depth"].num_tokens))],
    }, schema=schema), str(wd.tokens_uri), schema=schema)
    wd.manifest("tokens").write_text(json.dumps({"status": "complete", "fingerprint": "t"}))
    address, auth = head
    for name, value in auth.items():
        monkeypatch.setenv(name, value)
    client = jobs.client(address)
    job_id = jobs.submit(address, cfg, jobs=client)
    assert jobs.follow(client, job_id, echo=lambda s: None, poll=1, timeout=300) == "SUCCEEDED", \
        client.get_job_logs(job_id)[-3000:]
    manifest = json.loads(wd.manifest("train").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["steps"] == 4


def test_prefect_pretrain_with_an_address_takes_the_same_path(tmp_path, monkeypatch):
    from fm21.pipelines import flows

    _train_job = flows._train_job
    published = []
    monkeypatch.setattr(flows, "publish_stage", lambda cfg, name, result: published.append(name))  # no Prefect API
    rec = Recorder()
    monkeypatch.setattr(jobs, "client", lambda address: rec)
    cfg = _tiny(tmp_path)
    result = _train_job.fn(cfg.model_dump(mode="json"), "http://head:8265", force=True)
    assert rec.submitted["entrypoint"].endswith("stage train --force")
    assert result["stage"] == "train" and result["job_id"] == "raysubmit_test" and published == ["train"]
    rec = Recorder(statuses=("STOPPED",))
    monkeypatch.setattr(jobs, "client", lambda address: rec)
    with pytest.raises(RuntimeError, match="ended STOPPED"):
        _train_job.fn(cfg.model_dump(mode="json"), "http://head:8265")
