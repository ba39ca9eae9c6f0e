"""Every stage on real photos (those shipped inside installed packages, plus a 1x1 image,
an 8000x200 strip and a greyscale one), with random-init networks behind every modality:
configs/photos.yaml. No oracle runs, every sample is accounted for, every label column is
filled, and everything random is tagged so."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import numpy as np
import pytest

from fm21.config import load_config
from fm21.ingest.sample_photos import copy_bundled_photos
from fm21.modalities import MODALITIES
from fm21.stages import run_stage
from fm21.store.layout import STAGES, Workdir

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory, ray_local):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos") / "photos"
    copies = copy_bundled_photos(folder)
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(folder / "odd-1x1.png")
    Image.fromarray(rng.integers(0, 256, (200, 8000, 3), dtype=np.uint8)).save(folder / "odd-8000x200.png")
    Image.fromarray(rng.integers(0, 256, (120, 90), dtype=np.uint8)).save(folder / "odd-grey.png")  # mode L
    work = folder.parent / "work"
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "photos.yaml",
                      overrides=[f"workdir={work}", f"ingest.path={folder}"])
    manifests = {stage: run_stage(cfg, stage) for stage in STAGES}
    return cfg, Workdir(work), manifests, len(copies) + 3


def test_every_input_is_accepted_or_rejected_with_a_reason(photos_run):
    cfg, wd, manifests, num_inputs = photos_run
    counts = manifests["ingest"]["counts"]
    assert num_inputs >= 30 and counts["inputs"] == num_inputs == counts["accepted"] + counts["rejected"]
    rejects = {r["source_path"]: r["reason"] for r in map(json.loads, wd.rejects.read_text().splitlines())}
    assert rejects["odd-1x1.png"].startswith("too small")
    assert "odd-8000x200.png" not in rejects and "odd-grey.png" not in rejects  # squared / made RGB
    assert manifests["pseudolabel"]["counts"]["samples"] == counts["accepted"]
    assert manifests["pseudolabel"]["counts"]["failed_samples"] == 0


def test_no_oracle_and_every_modality_labelled_by_a_tagged_network(photos_run):
    cfg, wd, manifests, _ = photos_run
    pl = manifests["pseudolabel"]["counts"]
    assert pl["oracle_specialists"] == []
    networks = {"depth", "normal", "semseg", "detection", "caption", "clip", "dinov2", "imagebind", "t5", "sam",
                "human_pose"}
    assert networks <= set(pl["random_specialists"])
    table = lance.dataset(str(wd.labels_uri)).to_table()
    for spec in MODALITIES.values():  # all 19 modalities have their labels, no nulls
        for column in spec.label_columns:
            assert column in table.column_names and table.column(column).null_count == 0, column
            field = table.schema.field(column)
            if spec.specialist in networks:
                assert field.metadata[b"random"] == b"true" and field.metadata[b"oracle"] == b"false"
    poses = [len(p) for p in table.column("human_poses").to_pylist()]
    assert sum(poses) > 0  # HMR2 ran on the random detector's "person" boxes


def test_the_pipeline_ran_to_a_tagged_report(photos_run):
    cfg, wd, manifests, _ = photos_run
    assert manifests["tokens"]["counts"]["samples"] == manifests["pseudolabel"]["counts"]["samples"]
    assert manifests["train"]["counts"]["steps"] == cfg.train.steps
    report = (wd.reports_dir / "report.md").read_text()
    assert "**random**" in report and "depth" in report.split("**random**")[1].splitlines()[0]
