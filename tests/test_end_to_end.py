"""The whole pipeline on the tiny recipe, through the Prefect end_to_end flow."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import pytest

from fm21.config import load_config
from fm21.pipelines.flows import run_flow
from fm21.store.layout import STAGES, Workdir
from fm21.train.checkpoint import resolve_latest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_local):
    work = tmp_path_factory.mktemp("e2e") / "work"
    inputs = dict(config_file=str(ROOT / "flows.yaml"), recipe=str(ROOT / "configs" / "tiny.yaml"),
                  overrides=[f"workdir={work}"])
    cfg = load_config(inputs["config_file"], recipe=inputs["recipe"], overrides=inputs["overrides"])
    first = run_flow("end_to_end", **inputs)
    return cfg, Workdir(work), first


def test_every_stage_ran_and_wrote_its_store(pipeline):
    cfg, wd, first = pipeline
    assert list(first) == list(STAGES)
    assert all(state.startswith("ran") for state in first.values())
    for stage in STAGES:
        assert json.loads(wd.manifest(stage).read_text())["status"] == "complete"
    ingest = json.loads(wd.manifest("ingest").read_text())["counts"]
    assert ingest["inputs"] == ingest["accepted"] + ingest["rejected"] == cfg.ingest.synthetic.num_samples
    assert len(wd.shard_paths()) == 2
    assert lance.dataset(str(wd.labels_uri)).count_rows() == ingest["accepted"]
    tokens = lance.dataset(str(wd.tokens_uri))
    assert tokens.count_rows() == ingest["accepted"] * cfg.tokens.num_crops
    for name in ("tok_rgb", "tok_depth", "tok_normal", "tok_semseg"):
        folder = wd.tokenizers_dir / name
        assert (folder / "model.safetensors").exists() and (folder / "recon.png").exists()
        assert "codebook_usage" in json.loads((folder / "metrics.json").read_text())
    assert (wd.tokenizers_dir / "text" / "tokenizer.json").exists()
    assert (resolve_latest(wd.checkpoints_dir) / "model.safetensors").exists()
    assert (wd.stage_dir("train") / "loss.png").exists()
    history = [json.loads(line) for line in (wd.stage_dir("train") / "history.jsonl").read_text().splitlines()]
    validated = [h for h in history if "val_loss" in h]
    assert validated[0]["step"] == 0 and validated[-1]["step"] == cfg.train.steps - 1
    assert {f"val_loss/{m}" for m in ("tok_depth", "tok_semseg")} <= set(validated[-1])


def test_token_store_schema_and_stats(pipeline):
    cfg, wd, _ = pipeline
    from fm21.store.stats import format_stats, token_store_stats

    schema = lance.dataset(str(wd.tokens_uri)).schema
    assert str(schema.field("tok_depth").type) == "fixed_size_list<item: int16>[16]"
    assert str(schema.field("caption").type) == "list<item: int32>"
    stats = token_store_stats(wd.tokens_uri)
    assert stats["modalities"]["tok_depth"]["coverage"] == 1.0
    assert 0 < stats["modalities"]["tok_depth"]["usage"] <= 1
    assert set(stats["splits"]) == {"train", "val"}
    assert "tok_semseg" in format_stats(stats)


def test_report_scores_generation_against_truth(pipeline):
    cfg, wd, _ = pipeline
    metrics = json.loads((wd.reports_dir / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"depth", "normal", "semseg"}
    for task in metrics["tasks"].values():
        for scope in ("all", "objects"):
            assert {"4m", "tokenizer_bound", *task["baselines"]} <= set(task["scores"][scope])
            assert task["strongest_baseline"][scope] in [*task["baselines"], "chance"]  # chance: image-blind too
            assert scope in task["gap_closed"]
    depth = metrics["tasks"]["depth"]["scores"]
    assert 0 <= depth["all"]["4m"]["delta1"] <= 1 and depth["all"]["per-pixel mean depth"]["abs_rel"] > 0
    report = (wd.reports_dir / "report.md").read_text()
    assert "| depth | all pixels | delta1" in report and "| depth | object pixels | delta1" in report
    assert (wd.reports_dir / "samples.png").exists()


def test_second_run_skips_everything_and_changes_nothing(pipeline):
    cfg, wd, _ = pipeline
    versions = (lance.dataset(str(wd.labels_uri)).version, lance.dataset(str(wd.tokens_uri)).version)
    manifests = {s: wd.manifest(s).read_text() for s in STAGES}
    second = run_flow("end_to_end", config_file=str(ROOT / "flows.yaml"), recipe="tiny",
                      overrides=[f"workdir={wd.root}"])
    assert all(state.startswith("skipped") for state in second.values()), second
    assert versions == (lance.dataset(str(wd.labels_uri)).version, lance.dataset(str(wd.tokens_uri)).version)
    assert manifests == {s: wd.manifest(s).read_text() for s in STAGES}


def test_changed_training_config_reruns_only_downstream(pipeline):
    cfg, wd, _ = pipeline
    result = run_flow("end_to_end", recipe="tiny", overrides=[f"workdir={wd.root}", "train.steps=12"])
    assert [s for s, state in result.items() if state.startswith("ran")] == ["train", "evaluate"]


def test_killed_tokens_run_resumes_without_duplicates(pipeline):
    cfg, wd, _ = pipeline
    from fm21.stages import run_stage

    ds = lance.dataset(str(wd.tokens_uri))
    before = {r["key"]: r["tok_depth"] for r in ds.to_table(columns=["key", "tok_depth"]).to_pylist()}
    lance.dataset(str(wd.tokens_uri), version=1).restore()  # as if killed before the first commit
    manifest = run_stage(cfg, "tokens", force=True)
    assert manifest["counts"]["new_samples"] == len(before)
    after = lance.dataset(str(wd.tokens_uri)).to_table(columns=["key", "crop", "tok_depth"]).to_pylist()
    assert len(after) == len(before) and len({(r["key"], r["crop"]) for r in after}) == len(after)
    assert all(r["tok_depth"] == before[r["key"]] for r in after)  # same tokenizers, same crops: same ids


def test_each_stage_published_its_artifacts(pipeline):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_latest_artifacts() if a.key}
    expected = {f"fm21-{s}" for s in STAGES} | {
        "fm21-ingest-rejected-by-reason", "fm21-labels-stats", "fm21-token-stats", "fm21-tokenizer-recon",
        "fm21-report", "fm21-train-progress", "fm21-evaluate-progress",
        # the Ray stages: one tick per shard, unit (shard or fragment) or tokenizer
        "fm21-ingest-progress", "fm21-pseudolabel-progress", "fm21-tokenizers-progress", "fm21-tokens-progress"}
    assert expected <= set(artifacts), sorted(set(artifacts))
    assert "data:image/png;base64," in artifacts["fm21-report"].data  # the sample grid shows in the UI
    assert "tok_depth" in artifacts["fm21-tokenizer-recon"].data


def test_bad_flow_parameter_fails_with_the_key_named():
    from fm21.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'train.bogus'"):
        run_flow("pretrain", recipe="tiny", overrides=["train.bogus=1"])
    with pytest.raises(ConfigError, match="force: unknown stage"):
        run_flow("pretrain", recipe="tiny", force=["trian"])


def test_flow_killed_mid_stage_resumes_to_the_same_stores(pipeline, tmp_path):
    """`fm21 run build_dataset` killed (SIGKILL of its process group) right after the
    first pseudolabel unit is written, then rerun: the flow completes and labels.lance
    and tokens.lance equal the uninterrupted run's."""
    import os
    import subprocess
    import sys

    cfg, wd, _ = pipeline
    work = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fm21.cli", "run", "build_dataset", "--recipe", "tiny", "--set", f"workdir={work}"]
    env = {**os.environ, "FM21_CRASH_AT": "pseudolabel.after_write:1", "FM21_CRASH_DIR": str(tmp_path)}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, start_new_session=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (work / "pseudolabel" / "manifest.json").exists()
    env.pop("FM21_CRASH_AT")
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    def rows(uri, order):
        table = lance.dataset(str(uri)).to_table()
        return sorted(table.to_pylist(), key=lambda r: tuple(r[k] for k in order))

    assert rows(work / "pseudolabel" / "labels.lance", ["key"]) == rows(wd.labels_uri, ["key"])
    # every column, the WordPiece ids too: the text tokenizer trains to the same file in any process
    assert rows(work / "tokens" / "tokens.lance", ["key", "crop"]) == rows(wd.tokens_uri, ["key", "crop"])
