"""The tokenizers embedded in two sequences (human_poses: body-pose Memcodes, sam_instance:
mask tokenizer) when labels.lance holds no person and no instance: nothing is trained, the
folder records why, a rerun reuses that, and the tokens stage serialises ``none`` without a
tokenizer; a row that would need ids fails naming the modality. No Ray: with nothing to
train the stage starts no task."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from fm21.config import load_config
from fm21.pseudolabel.specialists.human_pose import POSE_STRUCT
from fm21.pseudolabel.specialists.sam import INSTANCE_STRUCT
from fm21.stages import RunContext
from fm21.store.tokens import tokens_schema
from fm21.tokenize.apply import TokenizeActor, _fingerprints
from fm21.tokenize.serialize_instances import parse_sam_instance
from fm21.tokenize.stage import INPUTS_FILE, run_tokenizers

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
NAMES = ["rgb", "human_poses", "sam_instance"]


def _labels(uri: Path, num: int = 6) -> None:
    rgb = pa.field("rgb", pa.list_(pa.uint8(), SIZE * SIZE * 3), metadata={"shape": json.dumps([SIZE, SIZE, 3])})
    schema = pa.schema([pa.field("key", pa.string()), rgb, pa.field("human_poses", pa.list_(POSE_STRUCT)),
                        pa.field("sam_instances", pa.list_(INSTANCE_STRUCT))])
    pixels = np.random.default_rng(0).integers(0, 256, (num, SIZE * SIZE * 3), dtype=np.uint8)
    table = pa.table({"key": [f"{i:04d}" for i in range(num)], "rgb": list(pixels),
                      "human_poses": [[] for _ in range(num)], "sam_instances": [[] for _ in range(num)]},
                     schema=schema)
    lance.write_dataset(table, str(uri))


@pytest.fixture(autouse=True)
def _grad_mode():
    """TokenizeActor turns autograd off for its (actor) process; restore it for the next tests."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture()
def ctx(tmp_path):
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "all19.yaml",
                      overrides=[f"workdir={tmp_path / 'work'}", f"modalities.enabled=[{','.join(NAMES)}]"])
    context = RunContext.from_config(cfg)
    context.workdir.labels_uri.parent.mkdir(parents=True)
    _labels(context.workdir.labels_uri)
    return cfg, context


def test_no_person_and_no_instance_train_nothing_and_serialise_none(ctx):
    cfg, context = ctx
    out = run_tokenizers(cfg.tokenizers, context)
    assert sorted(out["skipped"]) == ["human_poses", "sam_instance"] and out["trained"] == ["text"]
    assert out["tokenizers"]["human_poses"] is None
    root = context.workdir.tokenizers_dir
    for name in ("human_poses", "sam_instance"):
        record = json.loads((root / name / INPUTS_FILE).read_text())["report"]
        assert "nothing to train on" in record["skipped"] and not (root / name / "config.json").exists()
    again = run_tokenizers(cfg.tokenizers, context)  # inputs unchanged: the skip is reused
    assert sorted(again["skipped"]) == ["human_poses", "sam_instance"] and again["trained"] == []

    specs = {n: context.specs[n] for n in NAMES}
    fps = _fingerprints(root, specs)
    assert fps["human_poses"].endswith("+none") and fps["sam_instance"].endswith("+none")
    schema = tokens_schema(specs, tokenizers=fps, labels_fp="")
    actor = TokenizeActor({n: dataclasses.asdict(s) for n, s in specs.items()}, str(root), cfg.tokens.model_dump(), schema)
    table = lance.dataset(str(context.workdir.labels_uri)).to_table()
    tokens = actor(table)
    assert tokens.num_rows == 6 * cfg.tokens.num_crops
    for ids in tokens.column("human_poses").to_pylist():
        assert actor.text.decode(ids).strip() == "none"
    for ids in tokens.column("sam_instance").to_pylist():
        points = parse_sam_instance(actor.text.decode(ids))
        assert points and all(p["instances"] == [] for p in points)  # every query point: none

    # a row with a person now needs the pose tokenizer the stage did not train
    person = {"box": [0.1, 0.1, 0.6, 0.9], "score": 1.0, "global_orient": np.eye(3).ravel().tolist(),
              "body_pose": np.tile(np.eye(3).ravel(), 23).tolist(), "betas": [0.0] * 10, "cam": [1.0, 0.0, 0.0],
              "keypoints": None}
    rows = table.slice(0, 1).to_pylist()
    rows[0]["human_poses"] = [person]
    with pytest.raises(ValueError, match="human_poses: a row has poses to serialise, but the tokenizers stage"):
        actor(pa.Table.from_pylist(rows, schema=table.schema))
