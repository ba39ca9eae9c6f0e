"""The pseudolabel Ray Data job: one row per key, resumable, idempotent, provenance kept."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import numpy as np
import pytest

from fm21.config import SpecialistConfig
from fm21.pseudolabel.job import plan_specialists
from fm21.stages import run_stage
from fm21.store import labels as store
from fm21.store.layout import Workdir
from fm21.store.units import read_records

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, ray_local):
    from fm21.config import load_config

    work = tmp_path_factory.mktemp("pl") / "work"
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                      overrides=[f"workdir={work}", "ingest.synthetic.num_samples=40", "ingest.samples_per_shard=16",
                                 "pseudolabel.units_per_commit=2"])
    run_stage(cfg, "ingest")
    manifest = run_stage(cfg, "pseudolabel")
    return cfg, Workdir(work), manifest


def test_one_row_per_key_with_every_column(labelled):
    cfg, wd, manifest = labelled
    ds = lance.dataset(str(wd.labels_uri))
    keys = ds.to_table(columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 40 == manifest["counts"]["samples"]
    assert manifest["counts"]["bytes_per_sample"]["depth"] > 0  # fm21 stats --labels, in the manifest
    for column in ("rgb", "depth", "normal", "semseg", "instance", "det", "caption", "canny_edge",
                   "sam_edge", "color_palette", "metadata"):
        assert column in ds.schema.names
    maps = store.read_maps(wd.labels_uri, ["depth", "semseg", "rgb"], keys=keys[:3])
    assert maps["depth"].shape == (3, 32, 32) and maps["depth"].dtype == np.float16
    assert maps["rgb"].shape == (3, 32, 32, 3) and maps["semseg"].dtype == np.uint8
    assert np.isfinite(maps["depth"].astype(np.float32)).all() and (maps["depth"] > 0).all()


def test_provenance_and_oracle_tags(labelled):
    cfg, wd, manifest = labelled
    meta = store.store_metadata(wd.labels_uri)
    assert meta["ingest_fingerprint"] == json.loads(wd.manifest("ingest").read_text())["fingerprint"]
    assert meta["specialists"]["depth"]["oracle"] is True
    assert meta["specialists"]["canny_edge"]["oracle"] is False
    field = lance.dataset(str(wd.labels_uri)).schema.field("depth")
    assert field.metadata[b"specialist"] == b"depth" and field.metadata[b"random"] == b"false"
    assert manifest["counts"]["random_specialists"] == []  # the tiny recipe: oracles and algorithms only


def test_rerun_adds_nothing_and_resume_redoes_only_uncommitted_units(labelled):
    cfg, wd, manifest = labelled
    version = lance.dataset(str(wd.labels_uri)).version
    again = run_stage(cfg, "pseudolabel", force=True)
    assert again["counts"]["new_samples"] == 0 and again["counts"]["new_units"] == 0
    assert lance.dataset(str(wd.labels_uri)).version == version  # nothing written
    keys = sorted(lance.dataset(str(wd.labels_uri)).to_table(columns=["key"]).column("key").to_pylist())
    # Back to the first Append (as if the run had died right after it): the records go back too.
    first = lance.dataset(str(wd.labels_uri), version=2)
    first_units = set(read_records(wd.labels_uri).units) - set(json.loads(
        lance.dataset(str(wd.labels_uri)).read_transaction(3).transaction_properties["fm21.units"]))
    first.restore()
    assert set(read_records(wd.labels_uri).units) == first_units
    resumed = run_stage(cfg, "pseudolabel", force=True)
    assert resumed["counts"]["new_units"] == manifest["counts"]["units"] - len(first_units) > 0
    after = lance.dataset(str(wd.labels_uri)).to_table(columns=["key"]).column("key").to_pylist()
    assert sorted(after) == keys


def _data_files(uri) -> dict[int, list[str]]:
    return {f.fragment_id: [d.path for d in f.data_files()] for f in lance.dataset(str(uri)).get_fragments()}


def test_newly_enabled_specialist_adds_columns_without_rewriting(labelled):
    cfg, wd, _ = labelled
    from fm21.config import load_config

    base = [f"workdir={wd.root}", "ingest.synthetic.num_samples=40", "ingest.samples_per_shard=16",
            "pseudolabel.units_per_commit=2"]
    without = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                          overrides=[*base, "modalities.enabled=[rgb,tok_rgb,tok_depth]",
                                     "pseudolabel.specialists.canny_edge.enabled=false"])
    from_scratch = store.read_maps(wd.labels_uri, ["canny_edge"])
    # Rebuild a store without canny edges, then enable them again: only the column is added.
    import shutil

    shutil.rmtree(wd.labels_uri)
    run_stage(without, "pseudolabel", force=True)
    assert "canny_edge" not in lance.dataset(str(wd.labels_uri)).schema.names
    depth_before = store.read_maps(wd.labels_uri, ["depth"])
    files_before = _data_files(wd.labels_uri)
    result = run_stage(cfg, "pseudolabel", force=True)
    assert "canny_edge" in result["counts"]["added_columns"]
    ds = lance.dataset(str(wd.labels_uri))
    assert ds.count_rows() == 40 and "canny_edge" in ds.schema.names
    # Every fragment keeps its data files untouched and gains exactly one (the new column).
    files_after = _data_files(wd.labels_uri)
    assert files_after.keys() == files_before.keys()
    for fragment, files in files_before.items():
        assert files_after[fragment][:len(files)] == files and len(files_after[fragment]) == len(files) + 1
    depth_after = store.read_maps(wd.labels_uri, ["depth"])
    order = {k: i for i, k in enumerate(depth_after["key"])}
    idx = [order[k] for k in depth_before["key"]]
    np.testing.assert_array_equal(depth_after["depth"][idx], depth_before["depth"])
    canny = store.read_maps(wd.labels_uri, ["canny_edge"])  # equal to the from-scratch build
    order = {k: i for i, k in enumerate(canny["key"])}
    np.testing.assert_array_equal(canny["canny_edge"][[order[k] for k in from_scratch["key"]]],
                                  from_scratch["canny_edge"])


def _sorted_maps(uri, column):
    maps = store.read_maps(uri, [column])
    order = np.argsort(maps["key"])
    return maps[column][order]


def test_changed_specialist_recomputes_only_its_columns(labelled):
    """New Canny thresholds: only canny_edge is recomputed (a new data file per fragment,
    the others untouched); back to the old ones gives the old values again."""
    cfg, wd, _ = labelled
    from fm21.config import load_config

    base = [f"workdir={wd.root}", "ingest.synthetic.num_samples=40", "ingest.samples_per_shard=16",
            "pseudolabel.units_per_commit=2"]
    changed = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=[
        *base, "pseudolabel.specialists.canny_edge.options.low_threshold=10",
        "pseudolabel.specialists.canny_edge.options.high_threshold=30"])
    canny_before, depth_before = _sorted_maps(wd.labels_uri, "canny_edge"), _sorted_maps(wd.labels_uri, "depth")
    files_before = _data_files(wd.labels_uri)
    result = run_stage(changed, "pseudolabel")
    assert result["counts"]["recomputed_columns"] == ["canny_edge"] and result["counts"]["new_units"] == 0
    assert (_sorted_maps(wd.labels_uri, "canny_edge") > 0).sum() > (canny_before > 0).sum()  # lower thresholds
    np.testing.assert_array_equal(_sorted_maps(wd.labels_uri, "depth"), depth_before)
    files_after = _data_files(wd.labels_uri)
    for fragment, files in files_before.items():  # one new file each; only a file holding nothing
        new, gone = set(files_after[fragment]) - set(files), set(files) - set(files_after[fragment])
        assert len(new) == 1 and len(gone) <= 1  # but the old canny column leaves the fragment
    again = run_stage(changed, "pseudolabel", force=True)
    assert again["counts"]["recomputed_columns"] == []  # the fingerprint is stored with the column
    back = run_stage(cfg, "pseudolabel")
    assert back["counts"]["recomputed_columns"] == ["canny_edge"]
    np.testing.assert_array_equal(_sorted_maps(wd.labels_uri, "canny_edge"), canny_before)


def test_labels_fingerprint_follows_the_inputs(tiny_config):
    """SAM edges read the instance map: enabling or changing its producer changes them."""
    from fm21.pseudolabel.job import labels_fingerprints
    from fm21.pseudolabel.worker import build_specialist

    def fps(names, **options):
        return labels_fingerprints({n: build_specialist(n, SpecialistConfig(options=options.get(n, {})),
                                                        image_size=16) for n in names})

    with_instances, without = fps(["semseg", "sam_edge"]), fps(["sam_edge"])
    assert with_instances["sam_edge"] != without["sam_edge"]
    thicker = fps(["semseg", "sam_edge"], sam_edge={"thickness": 2})
    assert thicker["sam_edge"] != with_instances["sam_edge"] and thicker["semseg"] == with_instances["semseg"]


def test_plan_orders_requirements_first(tiny_config):
    cfg = tiny_config()
    order = plan_specialists(cfg.pseudolabel, cfg.specs())
    assert order.index("semseg") < order.index("sam_edge")
    assert order.index("caption") < order.index("metadata") and order[0] != "metadata"


def test_plan_rejects_missing_specialist(tiny_config):
    cfg = tiny_config("pseudolabel.specialists.depth.enabled=false")
    with pytest.raises(ValueError, match="depth"):
        plan_specialists(cfg.pseudolabel, cfg.specs())
