"""Ingest into an ``s3://`` workdir (moto's server on 127.0.0.1, tests/conftest.py): the
folder and webdataset sources write, through ``fm21.store.fs``, the same shards and
rejects as into a local workdir, keep their unit records on the store for a resume, and a
re-ingest replaces the published shards. In-process units (no Ray): the store paths are
what is tested here; tests/store/test_s3_workdir.py runs the Ray stages on S3."""

from __future__ import annotations

import json

import pytest

from fm21.config import IngestConfig
from fm21.ingest.stage import run_ingest
from fm21.store import fs
from fm21.store.layout import Workdir


def _cfg(**overrides) -> IngestConfig:
    base = {"image_size": 32, "samples_per_shard": 4, "min_side": 16, "max_pixels": 200 * 200}
    return IngestConfig(**{**base, **overrides})


def _same_outputs(remote: Workdir, local: Workdir) -> None:
    assert [p.name for p in remote.shard_paths()] == [p.name for p in local.shard_paths()]
    assert [p.read_bytes() for p in remote.shard_paths()] == [p.read_bytes() for p in local.shard_paths()]
    assert remote.rejects.read_bytes() == local.rejects.read_bytes()
    assert fs.list_names(remote.stage_dir("ingest")) == ["rejects.jsonl", "shards"]  # no staging left


@pytest.mark.parametrize("source", ["folder", "webdataset"])
def test_ingest_into_s3_equals_local(source, s3, tmp_path, mixed_folder, img2dataset_dir):
    path = str(mixed_folder[0]) if source == "folder" else str(img2dataset_dir / "part-{00000..00001}.tar")
    cfg = _cfg(source=source, path=path)
    remote, local = Workdir(f"{s3}/{source}"), Workdir(tmp_path / "local")
    summary = run_ingest(cfg, workdir=remote, seed=0)
    assert summary == run_ingest(cfg, workdir=local, seed=0)
    assert summary["rejected"] > 0 and summary["shards"] > 0
    if source == "webdataset":
        assert summary["renamed_keys"] == 1  # a0000 in both tars: the key files were merged from S3
    _same_outputs(remote, local)
    assert all(json.loads(line)["reason"] for line in remote.rejects.read_text().splitlines())

    smaller = cfg.model_copy(update={"samples_per_shard": 100}) if source == "folder" else cfg
    again = run_ingest(smaller, workdir=remote, seed=0)  # re-ingest: the old shards are replaced
    assert again["accepted"] == summary["accepted"]
    run_ingest(smaller, workdir=local, seed=0)
    _same_outputs(remote, local)


def test_object_writes_are_all_or_nothing(s3):
    target = fs.as_location(f"{s3}/atomic/file.bin")
    with pytest.raises(RuntimeError), fs.open_atomic(target) as out:
        out.write(b"partial")
        raise RuntimeError("writer failed")
    assert not target.exists()
    with pytest.raises(FileNotFoundError):
        target.read_bytes()
    fs.write_atomic(target, b"whole")
    fs.append_text(target.with_name("log.txt"), "a\n")
    fs.append_text(target.with_name("log.txt"), "b\n")
    assert target.read_bytes() == b"whole" and target.with_name("log.txt").read_text() == "a\nb\n"
    assert [p.name for p in target.parent.glob("*.txt")] == ["log.txt"]
