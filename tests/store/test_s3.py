"""The unit protocol on an S3-compatible object store: moto's server on 127.0.0.1 (tests/conftest.py).
A worker streams a shard from s3://, writes its labels fragment to s3://, the driver
commits it with its unit record; an uncommitted fragment is an orphan, never counted."""

from __future__ import annotations

from pathlib import Path

import lance
import pytest

from fm21.config import SpecialistConfig, load_config
from fm21.ingest.stage import run_ingest
from fm21.pseudolabel.job import _build, labels_schema, plan_specialists
from fm21.pseudolabel.worker import LabelWorker, read_shard
from fm21.store import fs
from fm21.store.layout import Workdir
from fm21.store.units import UnitResult, commit_units, ensure_store, orphan_files, read_records

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[object, list[Path]]:
    work = tmp_path_factory.mktemp("s3src") / "work"
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                      overrides=[f"workdir={work}", "ingest.synthetic.num_samples=16", "ingest.samples_per_shard=8"])
    run_ingest(cfg.ingest, workdir=Workdir(work), seed=cfg.seed)
    return cfg, Workdir(work).shard_paths()


def _upload(local: Path, uri: str) -> None:
    filesystem, path = fs.filesystem(uri)
    with filesystem.open_output_stream(path) as out:
        out.write(local.read_bytes())


def _label(cfg, shard: str, uri: str, unit: str) -> UnitResult:
    order = plan_specialists(cfg.pseudolabel, cfg.specs())
    schema = labels_schema({n: _build(n, cfg.pseudolabel.specialists.get(n), image_size=32) for n in order},
                           ingest_fp="fp")
    ensure_store(uri, schema)
    cfgs = {n: (cfg.pseudolabel.specialists.get(n) or SpecialistConfig()).model_dump() for n in order}
    worker = LabelWorker(order, cfgs, image_size=32, uri=uri, schema=lance.dataset(uri).schema)
    return UnitResult(**worker.label_unit({"id": unit, "path": shard}))


def test_worker_writes_and_driver_commits_on_s3(s3, shards, tmp_path):
    cfg, paths = shards
    remote = [f"{s3}/shards/{p.name}" for p in paths]
    for local, uri in zip(paths, remote):
        _upload(local, uri)
    assert read_shard(remote[0]).equals(read_shard(str(paths[0])))  # streamed from the object store

    uri = f"{s3}/work/pseudolabel/labels.lance"
    committed = _label(cfg, remote[0], uri, paths[0].name)
    assert commit_units(uri, [committed], stage="pseudolabel") == 2
    killed = _label(cfg, remote[1], uri, paths[1].name)  # written, never committed
    assert orphan_files(uri) == [Path(p).name for p in killed.data_files()]
    records = read_records(uri)
    assert list(records.units) == [paths[0].name] and records.units[paths[0].name] == committed.data_files()
    assert lance.dataset(uri).count_rows() == 8

    local = str(tmp_path / "labels.lance")  # the same unit on a local store: the same rows
    commit_units(local, [_label(cfg, str(paths[0]), local, paths[0].name)], stage="pseudolabel")
    assert lance.dataset(uri).to_table().equals(lance.dataset(local).to_table())
    assert fs.tree_bytes(uri) > 0 and fs.exists(uri) and not fs.exists(f"{s3}/work/missing.lance")
