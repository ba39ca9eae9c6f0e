"""Folder and webdataset ingest as units: one Ray task per output shard, resumable per shard,
byte-identical to a one-process run; rejects recorded per unit (inputs = accepted + rejected)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fm21.config import IngestConfig, RayConfig, load_config
from fm21.ingest.sources import iter_folder_paths, list_folder
from fm21.ingest.stage import run_ingest
from fm21.stages import run_stage
from fm21.store.layout import Workdir

ROOT = Path(__file__).resolve().parents[2]
PER_SHARD = 3  # inputs per unit: the mixed folder (20-odd files) makes 7-8 units


def _cfg(root: Path, **kw) -> IngestConfig:
    return IngestConfig(**{"source": "folder", "path": str(root), "image_size": 32, "samples_per_shard": PER_SHARD,
                           "min_side": 16, "max_pixels": 200 * 200, **kw})


def _shards(wd: Workdir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in wd.shard_paths()}


def test_streamed_listing_is_the_sorted_listing(mixed_folder):
    root, expected = mixed_folder
    (root / "a.b").write_bytes(b"x")  # sorts before "a/..." ('.' < '/')
    (root / "a").mkdir()
    (root / "a" / "z").write_bytes(b"x")
    (root / "a-c").write_bytes(b"x")  # '-' < '/' too
    want = [p.relative_to(root).as_posix() for p in list_folder(root)]
    assert list(iter_folder_paths(root)) == want
    assert len(want) == len(expected) + 3


def test_folder_units_with_ray_equal_one_process_and_count_every_input(mixed_folder, tmp_path, ray_local):
    root, expected = mixed_folder
    local, remote = Workdir(tmp_path / "local"), Workdir(tmp_path / "ray")
    one = run_ingest(_cfg(root), workdir=local, seed=0)
    two = run_ingest(_cfg(root), workdir=remote, seed=0, ray=RayConfig(num_cpus=2))
    assert _shards(local) == _shards(remote) and local.rejects.read_bytes() == remote.rejects.read_bytes()
    units = -(-len(expected) // PER_SHARD)
    assert one["units"] == two["units"] == units and one["new_units"] == units
    assert one["inputs"] == len(expected) == one["accepted"] + one["rejected"]
    assert one["rejected"] == sum(c is not None for c in expected.values())
    rejects = [json.loads(line) for line in local.rejects.read_text().splitlines()]
    assert len(rejects) == one["rejected"] and all(r["reason"] and r["stage"] == "ingest" for r in rejects)
    # unit i = inputs [3i, 3i+3) of the sorted listing; a shard holds its accepted ones
    assert len(_shards(local)) == one["shards"] <= units
    assert sorted(p.name for p in local.stage_dir("ingest").iterdir()) == ["rejects.jsonl", "shards"]


def test_rerun_with_a_changed_input_redoes_only_its_unit(mixed_folder, tmp_path):
    root, _ = mixed_folder
    wd = Workdir(tmp_path / "run")
    staging_kept = wd.stage_dir("ingest")
    cfg = _cfg(root)
    # simulate a killed run: build into the staging folder, then keep it (no publish)
    from fm21.ingest.units import build_inputs
    from fm21.store.manifest import fingerprint_of

    staging = staging_kept / f".staging-{fingerprint_of({'ingest': cfg.model_dump(mode='json')})}"
    staging.mkdir(parents=True)
    first = build_inputs(cfg, staging=staging, ray=None)
    (root / "good.jpg").write_bytes((root / "good.jpg").read_bytes() + b"\0")  # same image, new size
    summary = run_ingest(cfg, workdir=wd, seed=0)
    assert first["new_units"] == first["units"] and summary["new_units"] == 1


def test_bad_folder_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        run_ingest(_cfg(tmp_path / "missing"), workdir=Workdir(tmp_path / "run"), seed=0)


def test_webdataset_units_one_per_tar_dedupe_across_tars(img2dataset_dir, tmp_path, ray_local):
    pattern = str(img2dataset_dir / "part-{00000..00001}.tar")
    local, remote = Workdir(tmp_path / "local"), Workdir(tmp_path / "ray")
    cfg = _cfg(img2dataset_dir, source="webdataset", path=pattern)
    one = run_ingest(cfg, workdir=local, seed=0)
    two = run_ingest(cfg, workdir=remote, seed=0, ray=RayConfig(num_cpus=2))
    assert _shards(local) == _shards(remote) and sorted(_shards(local)) == ["shard-000000.tar", "shard-000001.tar"]
    assert one["units"] == 2 and one["renamed_keys"] == two["renamed_keys"] == 1
    assert one["inputs"] == 13 == one["accepted"] + one["rejected"]


# ------------------------------------------------------------------------------ kill -9 and rerun
def _killed_ingest(root: Path, work: Path, crash_at: str, tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FM21_"))}
    env.update(FM21_CRASH_AT=crash_at, FM21_CRASH_DIR=str(tmp / "hits"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fm21.cli", "--config", str(ROOT / "flows.yaml"),
           "--recipe", str(ROOT / "configs" / "tiny.yaml"), *(a for s in _sets(root, work) for a in ("--set", s)),
           "stage", "ingest"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, start_new_session=True, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]


def _sets(root: Path, work: Path) -> list[str]:
    return [f"workdir={work}", "ingest.source=folder", f"ingest.path={root}", f"ingest.samples_per_shard={PER_SHARD}",
            "ingest.image_size=32", "ingest.min_side=16", f"ingest.max_pixels={200 * 200}", "ray.num_cpus=2"]


@pytest.mark.parametrize("crash_at", ["ingest.in_shard:5", "ingest.after_shard:3"])
def test_killed_folder_ingest_resumes_per_shard(mixed_folder, tmp_path, crash_at, ray_local):
    root, _ = mixed_folder
    ref = Workdir(tmp_path / "ref")
    want = run_ingest(_cfg(root), workdir=ref, seed=0)  # one process, uninterrupted
    work = tmp_path / "work"
    _killed_ingest(root, work, crash_at, tmp_path)
    (staging,) = (work / "ingest").glob(".staging-*")
    done = len(list((staging / "units").glob("unit-*.json")))
    assert 0 < done < want["units"] and not Workdir(work).shard_paths()  # nothing published
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=_sets(root, work))
    counts = run_stage(cfg, "ingest")["counts"]
    assert counts["new_units"] == want["units"] - done
    assert _shards(Workdir(work)) == _shards(ref)  # byte-identical to the one-process run
    assert Workdir(work).rejects.read_bytes() == ref.rejects.read_bytes()
    assert {k: counts[k] for k in ("inputs", "accepted", "rejected")} == {
        k: want[k] for k in ("inputs", "accepted", "rejected")}
    assert not list((work / "ingest").glob(".staging-*"))
