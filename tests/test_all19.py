"""All 19 modalities of 4M-21 through ingest -> pseudolabel -> tokenizers -> tokens
(configs/all19.yaml: the tiny recipe's sizes, every modality enabled, two crops), on 16
synthetic scenes: every modality has a token column filled where its labels exist, every
trained tokenizer records its family, the global embeddings are tokenized from the stored
vector (crop 0) and from the feature network on the crop (crop 1), and the sequences that
embed pose and mask ids parse back to ids of their tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import numpy as np
import pytest
import yaml

from fm21.config import load_config
from fm21.modalities import MODALITIES
from fm21.stages import run_stage
from fm21.store.layout import Workdir
from fm21.tokenize.checkpoint import load_tokenizer, read_tokenizer_config
from fm21.tokenize.families import family_of, recipe_options, trains_tokenizer
from fm21.tokenize.serialize_instances import parse_human_poses, parse_sam_instance, pose_inputs
from fm21.tokenize.text import TextTokenizer

ROOT = Path(__file__).resolve().parents[1]
SETS = ["ingest.synthetic.num_samples=16", "ingest.samples_per_shard=8"]
STAGES = ("ingest", "pseudolabel", "tokenizers", "tokens")


def _config(work: Path):
    return load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "all19.yaml",
                       overrides=[f"workdir={work}", *SETS])


@pytest.fixture(scope="module")
def build(tmp_path_factory, ray_local):
    work = tmp_path_factory.mktemp("all19") / "work"
    cfg = _config(work)
    manifests = {stage: run_stage(cfg, stage) for stage in STAGES}
    wd = Workdir(work)
    labels = lance.dataset(str(wd.labels_uri)).to_table().to_pylist()
    tokens = lance.dataset(str(wd.tokens_uri)).to_table().to_pylist()
    return cfg, wd, manifests, {r["key"]: r for r in labels}, tokens


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(_leaves(value, path + ".") if isinstance(value, dict) else {path: value})
    return out


def test_the_recipe_enables_all_19_at_the_tiny_sizes():
    tiny = _leaves(yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text()))
    all19 = _leaves(yaml.safe_load((ROOT / "configs" / "all19.yaml").read_text()))
    # every size shared with tiny.yaml is tiny's; the families differ on purpose (all19 runs
    # the registry's DiVAE where tiny.yaml keeps the faster conv VQ-VAE)
    shared = [k for k in tiny if k in all19 and k not in ("workdir", "modalities.enabled", "evaluate.tasks", "tokens.num_crops")
              and not k.endswith(".family")]
    assert len(shared) > 30 and {k: all19[k] for k in shared} == {k: tiny[k] for k in shared}
    assert sorted(_config(Path("/tmp/unused")).modalities.enabled) == sorted(MODALITIES)


def test_every_modality_has_tokens_where_it_has_labels(build):
    cfg, _, manifests, labels, tokens = build
    specs = cfg.specs()
    assert len(tokens) == len(labels) * 2 == 32 and {r["crop"] for r in tokens} == {0, 1}
    for name, spec in specs.items():
        column = spec.label_columns[0]
        has_labels = [r for r in tokens if labels[r["key"]][column] is not None]
        assert has_labels, f"{name}: no row of labels.lance has {column!r}"
        assert all(r[name] is not None and len(r[name]) for r in has_labels), name
        if spec.is_image_like and spec.kind != "pixels":
            ids = np.array([r[name] for r in has_labels])  # (rows, N)
            assert ids.shape[1] == spec.num_tokens and 0 <= ids.min() and ids.max() < spec.vocab_size, name
    assert manifests["tokens"]["counts"]["coverage"].keys() == set(MODALITIES)


def test_stats_json_lists_all_19_and_the_vector_indices(build):
    from typer.testing import CliRunner

    from fm21.cli import app

    wd, manifests = build[1], build[2]
    out = CliRunner().invoke(app, ["--set", f"workdir={wd.root}", "stats", "--json"])
    assert out.exit_code == 0, out.output
    assert set(json.loads(out.stdout)["modalities"]) == set(MODALITIES)
    # the pseudolabel stage indexed both global embedding columns (16 vectors: 4-bit PQ)
    indices = manifests["pseudolabel"]["counts"]["vector_indices"]
    assert {c: (i["action"], i["indexed_rows"]) for c, i in indices.items()} == {
        "dinov2_global": ("built", 16), "imagebind_global": ("built", 16)}
    listed = {i["name"]: i["indexed_rows"] for i in json.loads(out.stdout)["labels"]["lance"]["indices"]}
    assert listed == {"dinov2_global_ivf": 16, "imagebind_global_ivf": 16}


def test_each_trained_tokenizer_records_its_family(build):
    cfg, wd, manifests, _, _ = build
    counts = manifests["tokenizers"]["counts"]
    trained = [n for n, s in cfg.specs().items() if trains_tokenizer(s)]
    assert sorted([*counts["trained"], *counts["reused"]]) == sorted([*trained, "text"]) and not counts["skipped"]
    for name in trained:
        family = family_of(cfg.specs()[name], recipe_options(cfg.tokenizers.image.get(name)))
        config = read_tokenizer_config(wd.tokenizers_dir / name)
        assert config["family"] == family and config["modality"] == name and not config["random_init"]
    assert read_tokenizer_config(wd.tokenizers_dir / "human_poses")["use"] == "body_pose"


def test_global_tokens_from_the_stored_vector_and_the_crop(build):
    """Crop 0 encodes the stored embedding; crop 1 the feature network's on the crop window."""
    from fm21.stages import RunContext
    from fm21.store.labels import read_maps
    from fm21.tokenize.apply import _load_feature_specialists, feature_specialists
    from fm21.tokenize.crops import apply_crop, crop_window

    cfg, wd, _, labels, tokens = build
    spec = cfg.specs()["tok_dinov2_global"]
    tok = load_tokenizer(wd.tokenizers_dir / spec.name)
    rows = sorted(tokens, key=lambda r: (r["crop"], r["key"]))
    crop0 = [r for r in rows if r["crop"] == 0]
    stored = np.stack([np.asarray(labels[r["key"]]["dinov2_global"], np.float16) for r in crop0])
    assert np.array_equal(tok.encode_labels(stored), np.array([r[spec.name] for r in crop0]))
    specialist = _load_feature_specialists(feature_specialists({spec.name: spec}, RunContext.from_config(cfg)))
    crop1 = [r for r in rows if r["crop"] == 1]
    size = cfg.ingest.image_size
    images = read_maps(wd.labels_uri, ["rgb"], keys=[r["key"] for r in crop1])  # (B, S, S, 3) decoded
    image = dict(zip(images["key"], images["rgb"]))
    rgb = np.stack([apply_crop(image[r["key"]], crop_window(size, key=r["key"], index=1, seed=cfg.tokens.seed,
                                                           min_scale=cfg.tokens.min_crop_scale),
                               kind="rgb", out_size=spec.resolution) for r in crop1])
    vectors = specialist["dinov2"].run(rgb, ("dinov2_global",))["dinov2_global"]  # (B, C) of each crop window
    assert np.array_equal(tok.encode_labels(vectors), np.array([r[spec.name] for r in crop1]))
    assert not np.array_equal(vectors, stored)  # crop 1 is not the stored full-image embedding


def test_pose_and_mask_sequences_parse_back_to_their_ids(build):
    cfg, wd, _, labels, tokens = build
    text = TextTokenizer.load(wd.tokenizers_dir / "text")
    pose_tok = load_tokenizer(wd.tokenizers_dir / "human_poses")
    mask_vocab = read_tokenizer_config(wd.tokenizers_dir / "sam_instance")["vocab_size"]
    humans = instances = 0
    for row in tokens:
        people = parse_human_poses(text.decode(row["human_poses"]))
        stored = labels[row["key"]]["human_poses"]
        if row["crop"] == 0 and stored:  # the full image: every person, in order, ids of their pose
            assert len(people) == len(stored)
            want = pose_tok.encode_labels(pose_inputs(stored, _full(cfg.ingest.image_size)))
            assert [p["pose_ids"] for p in people] == want.tolist()
        humans += len(people)
        points = parse_sam_instance(text.decode(row["sam_instance"]))
        assert points  # query points, each followed by its instances or none
        for point in points:
            for inst in point["instances"]:
                assert len(inst["mask_ids"]) == 16 and all(0 <= i < mask_vocab for i in inst["mask_ids"])
                instances += 1
    assert humans and instances  # the run exercised both embedded tokenizers


def _full(size: int):
    from fm21.tokenize.crops import Crop

    return Crop(0, 0, size, size, False)


def test_evaluation_covers_every_trained_task_kind(build):
    """evaluate.tasks: null scores every evaluable target 4M trained on: the dense maps,
    det, caption, X->RGB and retrieval, each with its baseline, bound and chance (a few
    training steps on all 19: plumbing, the numbers mean nothing)."""
    cfg, wd, manifests, _, _ = build
    manifests = {**manifests, **{stage: run_stage(cfg, stage) for stage in ("train", "evaluate")}}
    metrics = json.loads((wd.reports_dir / "metrics.json").read_text())
    report = (wd.reports_dir / "report.md").read_text()
    for row in ("| depth |", "| normal |", "| semseg |", "| det |", "| caption |", "| rgb from depth |",
                "| dinov2_global |", "| imagebind_global |"):
        assert row in report, row
    assert "## Retrieval" in report and "true embedding" in report
    assert 0 < manifests["evaluate"]["counts"]["num_samples"] <= cfg.evaluate.num_samples  # the held-out rows
    caption = metrics["tasks"]["caption"]["scores"]["all"]
    assert 0 <= caption["4m, words of 2 samples"]["object_auc"] <= 1  # the caption posterior rows
    assert caption["most frequent words"]["colour_auc"] == 0.5  # image-blind: 0.5 by construction
