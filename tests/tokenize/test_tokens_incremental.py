"""Enabling a modality on an existing build: only its tokenizer is trained and only its
column is added to tokens.lance (one new data file per fragment, one Merge), equal to a
from-scratch build; a kill -9 during the add, then a rerun, gives the same store."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from killing import killed_cli_run

from fm21.config import load_config
from fm21.stages import run_stage
from fm21.store.layout import Workdir
from fm21.store.tokens import read_store_metadata
from fm21.store.units import orphan_files

ROOT = Path(__file__).resolve().parents[2]
# 4 shards of 8 samples = 4 labels fragments = 4 tokens units, 2 crops per sample.
SETS = ["ingest.synthetic.num_samples=32", "ingest.samples_per_shard=8", "tokens.units_per_commit=2",
        "tokens.num_crops=2"]
ALL = ["rgb", "tok_rgb", "caption", "tok_depth", "tok_canny_edge"]  # a few, to keep the test short
NEW = "tok_canny_edge"  # its specialist is enabled either way: labels.lance already has the column
WITHOUT = [f"modalities.enabled=[{','.join(n for n in ALL if n != NEW)}]"]
WITH = [f"modalities.enabled=[{','.join(ALL)}]"]


def _config(work: Path, *extra: str):
    return load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                       overrides=[f"workdir={work}", *SETS, *extra])


def _data_files(uri) -> dict[int, list[str]]:
    return {f.fragment_id: [d.path for d in f.data_files()] for f in lance.dataset(str(uri)).get_fragments()}


def _sorted(uri) -> pa.Table:
    return lance.dataset(str(uri)).to_table().sort_by([("key", "ascending"), ("crop", "ascending")])


def _copy(src: Workdir, work: Path, stages: list[str], *, tokenizers_from: Workdir | None = None) -> Workdir:
    for stage in stages:
        shutil.copytree(src.stage_dir(stage), work / stage)
    if tokenizers_from is not None:
        shutil.copytree(tokenizers_from.stage_dir("tokenizers"), work / "tokenizers")
    return Workdir(work)


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_local) -> Workdir:
    """A whole build without tok_canny_edge."""
    work = tmp_path_factory.mktemp("base") / "work"
    for stage in ("ingest", "pseudolabel", "tokenizers", "tokens"):
        run_stage(_config(work, *WITHOUT), stage)
    return Workdir(work)


@pytest.fixture(scope="module")
def added(base, tmp_path_factory) -> tuple[Workdir, dict, dict, dict]:
    """The base build with tok_canny_edge enabled: pseudolabel, tokenizers, tokens rerun."""
    wd = _copy(base, tmp_path_factory.mktemp("added") / "work", ["ingest", "pseudolabel", "tokenizers", "tokens"])
    before = {"files": _data_files(wd.tokens_uri), "table": _sorted(wd.tokens_uri),
              "weights": {p.parent.name: p.stat().st_mtime_ns for p in wd.tokenizers_dir.glob("*/*.safetensors")}}
    run_stage(_config(wd.root, *WITH), "pseudolabel")
    tokenizers = run_stage(_config(wd.root, *WITH), "tokenizers")
    tokens = run_stage(_config(wd.root, *WITH), "tokens")
    return wd, before, tokenizers["counts"], tokens["counts"]


@pytest.fixture(scope="module")
def scratch(added, tmp_path_factory) -> Workdir:
    """tokens.lance built from scratch with the same labels and tokenizers."""
    wd = _copy(added[0], tmp_path_factory.mktemp("scratch") / "work", ["ingest", "pseudolabel", "tokenizers"])
    run_stage(_config(wd.root, *WITH), "tokens")
    return wd


def test_only_the_new_modality_tokenizer_is_trained(added):
    wd, before, tokenizers, _ = added
    assert tokenizers["trained"] == [NEW]
    assert sorted(tokenizers["reused"]) == sorted([n for n in ALL if n.startswith("tok_") and n != NEW] + ["text"])
    after = {p.parent.name: p.stat().st_mtime_ns for p in wd.tokenizers_dir.glob("*/*.safetensors")}
    assert {n: after[n] for n in before["weights"]} == before["weights"]  # checkpoints not rewritten


def test_the_new_column_is_added_without_rewriting_the_others(added, scratch):
    wd, before, _, tokens = added
    assert tokens["added_modalities"] == [NEW] and tokens["rebuilt"] is None and tokens["new_units"] == 0
    files = _data_files(wd.tokens_uri)
    assert files.keys() == before["files"].keys() and len(files) == 4
    for fragment, old in before["files"].items():  # same paths, one more file each
        assert files[fragment][:len(old)] == old and len(files[fragment]) == len(old) + 1
    got = _sorted(wd.tokens_uri)
    assert got.select(before["table"].column_names).equals(before["table"])  # other columns unchanged
    want = _sorted(scratch.tokens_uri)
    assert sorted(got.column_names) == sorted(want.column_names) and got.num_rows == want.num_rows == 64
    assert got.select(want.column_names).equals(want)  # every column equals the from-scratch build
    assert read_store_metadata(wd.tokens_uri) == read_store_metadata(scratch.tokens_uri)  # specs, fingerprints
    assert not orphan_files(wd.tokens_uri)


def _killed_tokens_run(work: Path, crash_at: str, tmp: Path) -> None:
    killed_cli_run(work, ["stage", "tokens"], crash_at, tmp, [*SETS, *WITH])


@pytest.mark.parametrize("crash_at", [
    "tokens.in_add:3",  # inside the add, after two fragments tokenized (one batch each)
    "tokens.add_commit:1",  # every fragment's column written, the Merge not committed
])
def test_killed_column_add_resumes_to_the_same_store(base, added, tmp_path, crash_at):
    wd = _copy(base, tmp_path / "work", ["ingest", "pseudolabel", "tokens"], tokenizers_from=added[0])
    files = _data_files(wd.tokens_uri)
    _killed_tokens_run(wd.root, crash_at, tmp_path)
    assert _data_files(wd.tokens_uri) == files and NEW not in lance.dataset(str(wd.tokens_uri)).schema.names
    if crash_at.startswith("tokens.add_commit"):
        assert len(orphan_files(wd.tokens_uri)) == 4  # written, never committed, never counted
    counts = run_stage(_config(wd.root, *WITH), "tokens")["counts"]
    assert counts["added_modalities"] == [NEW] and counts["new_units"] == 0
    got, want = _sorted(wd.tokens_uri), _sorted(added[0].tokens_uri)
    assert got.select(want.column_names).equals(want)
    assert read_store_metadata(wd.tokens_uri) == read_store_metadata(added[0].tokens_uri)


def test_removing_a_modality_rebuilds(added, tmp_path):
    wd = _copy(added[0], tmp_path / "work", ["ingest", "pseudolabel", "tokenizers", "tokens"])
    counts = run_stage(_config(wd.root, *WITHOUT), "tokens")["counts"]
    assert "modalities removed" in counts["rebuilt"] and counts["new_units"] == 4
    assert NEW not in lance.dataset(str(wd.tokens_uri)).schema.names


# Changing one tokenizer's config: only it is retrained, only its column is re-tokenized.
CHANGED = "tok_depth"
RETRAIN = [*WITHOUT, f"tokenizers.image.{CHANGED}.steps=10"]  # configs/tiny.yaml: 20


def _digests(uri, files: dict[int, list[str]]) -> dict[str, str]:
    return {p: hashlib.sha256((Path(uri) / "data" / p).read_bytes()).hexdigest() for ps in files.values() for p in ps}


@pytest.fixture(scope="module")
def retokenized(base, tmp_path_factory) -> tuple[Workdir, dict, dict, dict]:
    """The base build with tok_depth trained for fewer steps: tokenizers and tokens rerun."""
    wd = _copy(base, tmp_path_factory.mktemp("retok") / "work", ["ingest", "pseudolabel", "tokenizers", "tokens"])
    files = _data_files(wd.tokens_uri)
    before = {"files": files, "digests": _digests(wd.tokens_uri, files), "table": _sorted(wd.tokens_uri)}
    tokenizers = run_stage(_config(wd.root, *RETRAIN), "tokenizers")
    tokens = run_stage(_config(wd.root, *RETRAIN), "tokens")
    return wd, before, tokenizers["counts"], tokens["counts"]


def test_a_changed_tokenizer_retokenizes_only_its_column(retokenized, tmp_path):
    wd, before, tokenizers, tokens = retokenized
    assert tokenizers["trained"] == [CHANGED]
    assert CHANGED not in tokenizers["reused"] and "tok_rgb" in tokenizers["reused"]
    assert tokens["retokenized_modalities"] == [CHANGED] and tokens["added_modalities"] == []
    assert tokens["rebuilt"] is None and tokens["new_units"] == 0
    files = _data_files(wd.tokens_uri)
    assert files.keys() == before["files"].keys()
    for fragment, old in before["files"].items():  # same paths, one more file each
        assert files[fragment][:len(old)] == old and len(files[fragment]) == len(old) + 1
    assert _digests(wd.tokens_uri, before["files"]) == before["digests"]  # and the same bytes
    got = _sorted(wd.tokens_uri)
    others = [c for c in got.column_names if c != CHANGED]
    assert got.select(others).equals(before["table"].select(others))
    assert not got.column(CHANGED).equals(before["table"].column(CHANGED))  # the new tokenizer's ids
    # A from-scratch build with the same labels and tokenizers: every column and the metadata.
    scratch = _copy(wd, tmp_path / "work", ["ingest", "pseudolabel", "tokenizers"])
    run_stage(_config(scratch.root, *RETRAIN), "tokens")
    assert got.equals(_sorted(scratch.tokens_uri))
    assert read_store_metadata(wd.tokens_uri) == read_store_metadata(scratch.tokens_uri)
    assert not orphan_files(wd.tokens_uri)


def test_killed_retokenize_resumes_to_the_same_store(base, retokenized, tmp_path):
    wd = _copy(base, tmp_path / "work", ["ingest", "pseudolabel", "tokens"], tokenizers_from=retokenized[0])
    files, table = _data_files(wd.tokens_uri), _sorted(wd.tokens_uri)
    # Killed once two fragments' new tok_depth files are written, before the Merge.
    killed_cli_run(wd.root, ["stage", "tokens"], "tokens.after_replace:2", tmp_path, [*SETS, *RETRAIN])
    # The store is as it was: old column data under the old fingerprints; the files are orphans.
    assert _data_files(wd.tokens_uri) == files and _sorted(wd.tokens_uri).equals(table)
    assert read_store_metadata(wd.tokens_uri) == read_store_metadata(base.tokens_uri)
    assert len(orphan_files(wd.tokens_uri)) >= 2
    counts = run_stage(_config(wd.root, *RETRAIN), "tokens")["counts"]
    assert counts["retokenized_modalities"] == [CHANGED] and counts["new_units"] == 0
    assert _sorted(wd.tokens_uri).equals(_sorted(retokenized[0].tokens_uri))
    assert read_store_metadata(wd.tokens_uri) == read_store_metadata(retokenized[0].tokens_uri)
