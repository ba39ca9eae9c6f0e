"""Exact resume of the unit-based stages: kill -9 of the whole process group at several
points of pseudolabel and tokens, then a rerun, gives the store of an uninterrupted run;
failed samples are recorded and retried alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from killing import killed_cli_run

from fm21.config import load_config
from fm21.stages import run_stage
from fm21.store.layout import Workdir
from fm21.store.units import orphan_files, read_records

ROOT = Path(__file__).resolve().parents[2]
# 6 shards of 8 samples = 6 pseudolabel units and 6 labels fragments (tokens units);
# two units per commit, so crashes land before, between and after commits.
SETS = ["ingest.synthetic.num_samples=48", "ingest.samples_per_shard=8",
        "pseudolabel.units_per_commit=2", "tokens.units_per_commit=2"]


def _config(work: Path, *extra: str):
    return load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                       overrides=[f"workdir={work}", *SETS, *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_local) -> Workdir:
    """One uninterrupted build: ingest -> pseudolabel -> tokenizers -> tokens."""
    work = tmp_path_factory.mktemp("ref") / "work"
    cfg = _config(work)
    for stage in ("ingest", "pseudolabel", "tokenizers", "tokens"):
        run_stage(cfg, stage)
    return Workdir(work)


def _table(uri: Path, by: list[str]) -> pa.Table:
    table = lance.dataset(str(uri)).to_table()
    return table.sort_by([(c, "ascending") for c in by])


def _assert_same_store(uri: Path, ref: Path, by: list[str]) -> None:
    got, want = _table(uri, by), _table(ref, by)
    keys = got.select(by).to_pylist()
    assert len(keys) == len({tuple(k.values()) for k in keys}), "duplicate rows"
    assert got.num_rows == want.num_rows and got.column_names == want.column_names
    assert got.equals(want)


def _copy_stages(ref: Workdir, work: Path, stages: list[str]) -> Workdir:
    for stage in stages:
        shutil.copytree(ref.stage_dir(stage), work / stage)
    return Workdir(work)


def _killed_run(work: Path, stage: str, crash_at: str, tmp: Path) -> None:
    """The stage in a fresh process (its own Ray) that kills its own process group."""
    killed_cli_run(work, ["stage", stage], crash_at, tmp, SETS)


@pytest.mark.parametrize("crash_at", ["ingest.in_shard:20", "ingest.after_shard:3"])
def test_killed_ingest_resumes_per_shard(reference, tmp_path, crash_at):
    work = tmp_path / "work"
    _killed_run(work, "ingest", crash_at, tmp_path)
    finished = list((work / "ingest").glob(".staging-*/shards/shard-*.tar"))
    assert len(finished) < 6 and not Workdir(work).shard_paths()  # nothing published
    manifest = run_stage(_config(work), "ingest")
    assert manifest["counts"]["new_shards"] == 6 - len(finished)
    ref = [p.read_bytes() for p in reference.shard_paths()]
    assert [p.read_bytes() for p in Workdir(work).shard_paths()] == ref  # byte-identical
    assert not list((work / "ingest").glob(".staging-*"))


@pytest.mark.parametrize("crash_at", [
    "pseudolabel.in_unit:25",  # inside the 3rd unit, after the first commit
    "pseudolabel.after_write:3",  # 3rd fragment written, not committed
    "pseudolabel.commit:2",  # second batch about to be committed
    "pseudolabel.after_commit:1",  # first batch committed, nothing after it
])
def test_killed_pseudolabel_resumes_to_the_same_store(reference, tmp_path, crash_at):
    wd = _copy_stages(reference, tmp_path / "work", ["ingest"])
    _killed_run(wd.root, "pseudolabel", crash_at, tmp_path)
    committed = set(read_records(wd.labels_uri).units)
    assert len(committed) < 6
    orphans = orphan_files(wd.labels_uri)
    if crash_at.split(":")[0] in ("pseudolabel.after_write", "pseudolabel.commit"):
        assert orphans  # written, never committed: on disk but in no version
    manifest = run_stage(_config(wd.root), "pseudolabel")
    assert manifest["counts"]["new_units"] == 6 - len(committed)
    _assert_same_store(wd.labels_uri, reference.labels_uri, ["key"])


@pytest.mark.parametrize("crash_at", ["tokens.in_unit:3", "tokens.commit:2"])
def test_killed_tokens_resumes_to_the_same_store(reference, tmp_path, crash_at):
    wd = _copy_stages(reference, tmp_path / "work", ["ingest", "pseudolabel", "tokenizers"])
    _killed_run(wd.root, "tokens", crash_at, tmp_path)
    assert len(read_records(wd.tokens_uri).units) < 6
    run_stage(_config(wd.root), "tokens")
    _assert_same_store(wd.tokens_uri, reference.tokens_uri, ["key", "crop"])


def test_a_store_without_unit_records_is_rebuilt_not_appended_to(reference, tmp_path):
    """A labels.lance written before work units existed: no records, so no blind appends."""
    wd = _copy_stages(reference, tmp_path / "work", ["ingest"])
    old = lance.dataset(str(reference.labels_uri))
    lance.write_dataset(old.to_table(), str(wd.labels_uri), schema=old.schema)
    manifest = run_stage(_config(wd.root), "pseudolabel")
    assert manifest["counts"]["new_units"] == 6 and manifest["counts"]["samples"] == 48
    _assert_same_store(wd.labels_uri, reference.labels_uri, ["key"])


def test_failed_samples_are_recorded_and_retried_alone(reference, tmp_path, monkeypatch):
    wd = _copy_stages(reference, tmp_path / "work", ["ingest"])
    keys = sorted(lance.dataset(str(reference.labels_uri)).to_table(columns=["key"]).column("key").to_pylist())
    bad = [keys[3], keys[20]]
    monkeypatch.setenv("FM21_FAIL_AT", f"depth:{','.join(bad)}")
    first = run_stage(_config(wd.root), "pseudolabel")
    assert first["counts"]["samples"] == 46 and first["counts"]["failed_samples"] == 2
    failed = read_records(wd.labels_uri).failed
    assert sorted(failed) == bad and all("injected failure" in f["error"] for f in failed.values())
    monkeypatch.delenv("FM21_FAIL_AT")
    again = run_stage(_config(wd.root), "pseudolabel", force=True)  # without the flag: nothing to do
    assert again["counts"]["new_samples"] == 0 and again["counts"]["failed_samples"] == 2
    retried = run_stage(_config(wd.root, "pseudolabel.retry_failed=true"), "pseudolabel")
    assert retried["counts"]["new_samples"] == 2 and retried["counts"]["failed_samples"] == 0
    _assert_same_store(wd.labels_uri, reference.labels_uri, ["key"])


def test_specialists_in_their_own_pools_build_the_same_store(reference, tmp_path, monkeypatch):
    """Depth and Canny each in an actor pool of their own (depth: 2 actors, small batches,
    so a unit's batches spread over both): same store, and a sample the pooled specialist
    fails on is recorded alone and retried alone."""
    wd = _copy_stages(reference, tmp_path / "work", ["ingest"])
    pools = ["pseudolabel.specialists.depth.own_pool=true", "pseudolabel.specialists.depth.concurrency=2",
             "pseudolabel.specialists.depth.batch_size=4", "pseudolabel.specialists.canny_edge.own_pool=true"]
    keys = sorted(lance.dataset(str(reference.labels_uri)).to_table(columns=["key"]).column("key").to_pylist())
    monkeypatch.setenv("FM21_FAIL_AT", f"depth:{keys[5]}")
    first = run_stage(_config(wd.root, *pools), "pseudolabel")
    assert first["counts"]["samples"] == 47 and list(read_records(wd.labels_uri).failed) == [keys[5]]
    monkeypatch.delenv("FM21_FAIL_AT")
    run_stage(_config(wd.root, *pools, "pseudolabel.retry_failed=true"), "pseudolabel")
    _assert_same_store(wd.labels_uri, reference.labels_uri, ["key"])


TWO_NODES = """
import shutil, sys
import ray
from ray.cluster_utils import Cluster
sys.path.insert(0, {tests!r})
from store.test_units import _config
from fm21.stages import run_stage

cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
cfg = _config({work!r}, "pseudolabel.concurrency=2", "tokens.concurrency=2")
for stage in ("ingest", "pseudolabel", "tokens"):
    if stage == "tokens":  # tokenizer training is not a Ray job (and WordPiece training is
        # not reproducible across processes): tokenize with the reference's tokenizers
        shutil.copytree({tokenizers!r}, {work!r} + "/tokenizers")
    print(stage, run_stage(cfg, stage)["counts"].get("nodes"), flush=True)
ray.shutdown()
cluster.shutdown()
"""


def test_two_node_cluster_builds_the_same_stores(reference, tmp_path):
    """A simulated 2-node Ray cluster on loopback: one worker actor per node, same stores."""
    work = tmp_path / "work"
    script = TWO_NODES.format(tests=str(ROOT / "tests"), work=str(work),
                              tokenizers=str(reference.tokenizers_dir))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FM21_"))}
    # Ray's single-machine mode: every node and the GCS bind 127.0.0.1, nothing leaves loopback.
    env.update(OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, start_new_session=True,
                          capture_output=True, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    nodes = dict(line.split() for line in proc.stdout.decode().splitlines() if len(line.split()) == 2)
    # units were written on both nodes
    assert nodes["ingest"] == nodes["pseudolabel"] == nodes["tokens"] == "2", nodes
    wd = Workdir(work)
    assert [p.read_bytes() for p in wd.shard_paths()] == [p.read_bytes() for p in reference.shard_paths()]
    _assert_same_store(wd.labels_uri, reference.labels_uri, ["key"])
    _assert_same_store(wd.tokens_uri, reference.tokens_uri, ["key", "crop"])
