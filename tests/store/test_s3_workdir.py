"""``workdir: s3://...`` end to end: every stage of the tiny recipe (ingest -> pseudolabel ->
tokenizers -> tokens -> train -> evaluate) writes only to the object store (moto's server
on 127.0.0.1, tests/conftest.py), gives the same stores as a local workdir, and a
second run skips every stage.

Ray is started before the endpoint and credentials are in the environment (``ray_local``
comes first), so the workers reach the store only through the runtime_env the stages pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lance
import pyarrow.compute as pc
import pytest

from fm21.config import load_config
from fm21.stages import run_stage
from fm21.store import fs
from fm21.store.fs import UriPath
from fm21.store.layout import STAGES, Workdir
from fm21.train.checkpoint import resolve_latest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["ingest.synthetic.num_samples=24", "ingest.samples_per_shard=12", "tokenizers.train_samples=16",
         *[f"tokenizers.image.{t}.steps=2" for t in ("tok_rgb", "tok_depth", "tok_normal", "tok_semseg",
                                                     "tok_canny_edge", "tok_sam_edge")],
         "tokens.val_fraction=0.3", "train.steps=4", "train.checkpoint_every=2", "train.log_every=2",
         "train.val_every=2", "evaluate.num_samples=4", "evaluate.num_steps=2", "evaluate.num_grid_samples=2"]


def _run_all(workdir: str) -> dict[str, dict]:
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                      overrides=[f"workdir={workdir}", *SMALL])
    return {stage: run_stage(cfg, stage) for stage in STAGES}


def _files(root) -> dict[str, int]:
    """Relative path -> size of every file outside the Lance stores (whose data file names
    are random)."""
    import pyarrow.fs as pafs

    filesystem, base = fs.filesystem(root)
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    rel = {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}
    return {p: s for p, s in rel.items() if ".lance/" not in p}


def _table(uri, sort: list[str]):
    table = lance.dataset(str(uri)).to_table()
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in sort]))


@pytest.fixture(scope="module")
def runs(ray_local, s3, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    local = tmp_path_factory.mktemp("local") / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # relative writes would land here
        first = _run_all(f"{s3}/run")
        second = _run_all(f"{s3}/run")
    return {"first": first, "second": second, "local": _run_all(str(local)), "cwd": cwd,
            "remote": Workdir(f"{s3}/run"), "local_wd": Workdir(local)}


def test_every_stage_writes_to_the_object_store(runs):
    wd = runs["remote"]
    assert isinstance(wd.root, UriPath) and isinstance(wd.labels_uri, UriPath)
    assert all(not r["skipped"] for r in runs["first"].values())
    for stage in STAGES:
        assert json.loads(wd.manifest(stage).read_text())["status"] == "complete"
    assert [p.name for p in wd.shard_paths()] == ["shard-000000.tar", "shard-000001.tar"]
    assert (resolve_latest(wd.checkpoints_dir) / "config.json").is_file()
    assert (wd.reports_dir / "samples.png").is_file() and (wd.reports_dir / "report.md").is_file()
    assert list(runs["cwd"].iterdir()) == []  # nothing local


def test_second_run_skips_every_stage(runs):
    assert all(r["skipped"] for r in runs["second"].values())
    assert {s: r["fingerprint"] for s, r in runs["second"].items()} == \
        {s: r["fingerprint"] for s, r in runs["first"].items()}


def test_stores_equal_a_local_workdir(runs):
    remote, local = runs["remote"], runs["local_wd"]
    # the same stage fingerprints (the workdir is not part of them) and the same files
    assert {s: r["fingerprint"] for s, r in runs["local"].items()} == \
        {s: r["fingerprint"] for s, r in runs["first"].items()}
    assert set(_files(remote.root)) == set(_files(local.root))
    for a, b in zip(remote.shard_paths(), local.shard_paths()):
        assert a.read_bytes() == b.read_bytes()
    assert remote.rejects.read_bytes() == local.rejects.read_bytes()
    for name in ("tok_rgb", "tok_depth", "tok_semseg"):  # config.json also holds wall times
        assert (remote.tokenizers_dir / name / "model.safetensors").read_bytes() == \
            (local.tokenizers_dir / name / "model.safetensors").read_bytes()
        assert json.loads((remote.tokenizers_dir / name / "config.json").read_text())["fingerprint"] == \
            json.loads((local.tokenizers_dir / name / "config.json").read_text())["fingerprint"]
    assert _table(remote.labels_uri, ["key"]).equals(_table(local.labels_uri, ["key"]))
    # every column exactly, the WordPiece ids of the sequences too (training is deterministic)
    assert _table(remote.tokens_uri, ["key", "crop"]).equals(_table(local.tokens_uri, ["key", "crop"]))
    assert (remote.tokenizers_dir / "text" / "tokenizer.json").read_bytes() == \
        (local.tokenizers_dir / "text" / "tokenizer.json").read_bytes()
    step = json.loads((resolve_latest(remote.checkpoints_dir) / "config.json").read_text())["step"]
    assert step == json.loads((resolve_latest(local.checkpoints_dir) / "config.json").read_text())["step"] == 4


def test_stats_reads_the_object_store(runs):
    """`fm21 stats` on an s3:// workdir: the endpoint comes from the environment only."""
    remote = str(runs["remote"].root)
    out = subprocess.run([sys.executable, "-m", "fm21.cli", "--set", f"workdir={remote}", "stats", "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["uri"] == f"{remote}/tokens/tokens.lance"
    assert stats["rows"] == lance.dataset(str(runs["local_wd"].tokens_uri)).count_rows()
