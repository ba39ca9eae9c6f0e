"""Issue 12 beyond generation: an imported released-format 4M (random weights, tagged
``random``) runs the evaluate stage unchanged and fine-tunes through the train stage.

The workdir is a small run of its own: labels.lance from the synthetic oracles at 32 px,
a random-init tok_depth tokenizer, a text tokenizer and tokens.lance (the writers of
tests/generate/tiny_run.py), at 16 px patches so the release's pixel projection fits.
The release folder is written from the reference's names and shapes
(tests/train/reference_4m_state.py) at that size, then goes through `fm21 import 4m21`'s
function, `fm21 import checkpoint`, `fm21 stage evaluate` and `fm21 stage train`.
No Ray: every store is written in this process."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from fm21.cli import app
from fm21.config import load_config
from fm21.ingest.shards import synthetic_sample
from fm21.ingest.synthetic import render_scene
from fm21.pseudolabel.job import labels_schema
from fm21.pseudolabel.worker import RAW_SCHEMA, build_specialist, label_table
from fm21.store.layout import Workdir
from fm21.tokenize.checkpoint import save_tokenizer
from fm21.tokenize.families import family_config, family_module
from fm21.tokenize.text import train_text_tokenizer
from fm21.train.checkpoint import load_checkpoint, load_latest
from fm21.train.import_4m21 import import_4m21
from tests.generate.tiny_run import CORPUS, TEXT_VOCAB, TOKENIZER_OPTIONS, _write_tokens
from tests.train.reference_4m_state import hf_config, reference_state

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ["rgb@224", "tok_depth@224", "caption"]
RES, IMAGE_VOCAB, NUM_ROWS = 32, 16, 8
MODEL = {"dim": 32, "enc": 1, "dec": 1}
SETS = ["modalities.enabled=[rgb,tok_depth,caption]", f"modalities.resolution={RES}", "modalities.patch_size=16",
        f"modalities.image_vocab_size={IMAGE_VOCAB}", f"modalities.text_vocab_size={TEXT_VOCAB}",
        "evaluate.tasks=[depth]", "evaluate.num_samples=4", "evaluate.num_steps=2", "evaluate.num_grid_samples=2",
        # train.model: the release's architecture, as docs/reference-conventions.md says
        "train.model.dim=32", "train.model.encoder_depth=1", "train.model.decoder_depth=1", "train.model.num_heads=2",
        "train.model.tie_sequence_logits=false", "train.model.context_bias=true", "train.model.sincos_2d_order=yx",
        "train.num_input_tokens=6", "train.num_target_tokens=6", "train.batch_size=2", "train.warmup_steps=1",
        "train.log_every=1", "train.val_every=100", "train.val_samples=2"]


def _labels(wd: Workdir, size: int) -> None:
    """labels.lance of ``NUM_ROWS`` synthetic scenes (keys as tiny_run's tokens), labelled
    by the oracle specialists the modalities and evaluate read (rgb, depth, instance, caption)."""
    raw = []
    for i in range(NUM_ROWS):
        sample = synthetic_sample(render_scene(i, size, min_objects=2, max_objects=3), key=f"s{i:03d}", index=i)
        wds = sample.as_wds()
        raw.append({"key": sample.key, "png": wds["png"], "json": wds["json"], "gt.npz": wds["gt.npz"]})
    specialists = {n: build_specialist(n, None, image_size=size) for n in ("image", "depth", "semseg", "caption")}
    table, failed = label_table(pa.Table.from_pylist(raw, schema=RAW_SCHEMA), specialists)
    assert not failed, failed
    schema = labels_schema(specialists, ingest_fp="evalimport-test")
    lance.write_dataset(pa.table({f.name: table.column(f.name) for f in schema}, schema=schema), str(wd.labels_uri))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(the run's --set list, the imported checkpoint folder, the Workdir)."""
    tmp = tmp_path_factory.mktemp("evalimport")
    sets = [f"workdir={tmp / 'work'}", *SETS]
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=sets)
    wd, specs = Workdir(cfg.workdir), cfg.specs()
    torch.manual_seed(0)
    _labels(wd, RES)
    config = family_config(specs["tok_depth"], TOKENIZER_OPTIONS, path="tokenizers.image.tok_depth")
    save_tokenizer(family_module(config.family).build(config), wd.tokenizers_dir / "tok_depth")  # random
    text = train_text_tokenizer(CORPUS, vocab_size=TEXT_VOCAB)
    text.save(wd.tokenizers_dir / "text")
    _write_tokens(wd, specs, text, NUM_ROWS)
    for stage in ("tokenizers", "tokens"):  # the stores are complete (written here, not by their stages)
        wd.manifest(stage).write_text(json.dumps({"status": "complete", "fingerprint": f"{stage}-evalimport"}))

    release = tmp / "release"
    release.mkdir()
    vocab = {"tok_depth@224": IMAGE_VOCAB, "caption": TEXT_VOCAB}  # the store's codebook and text vocabulary
    save_file(reference_state(DOMAINS, **MODEL, image_size=RES, vocab=vocab), str(release / "model.safetensors"))
    ref_config = hf_config(DOMAINS, **MODEL, image_size=RES) | {"random_init": True}  # random weights: tagged
    (release / "config.json").write_text(json.dumps(ref_config))
    import_4m21(release, tmp / "imported")
    return sets, tmp / "imported", wd


def _invoke(sets: list[str], *args: str):
    """``fm21 --recipe tiny --set ... <args>`` in this process."""
    return CliRunner().invoke(app, ["--config", str(ROOT / "flows.yaml"), "--recipe", str(ROOT / "configs" / "tiny.yaml"),
                                    *(a for s in sets for a in ("--set", s)), *args])


def _cli(sets: list[str], *args: str) -> str:
    result = _invoke(sets, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_the_evaluate_stage_scores_the_import_and_says_it_is_random(run) -> None:
    sets, imported, wd = run
    out = CliRunner().invoke(app, ["import", "checkpoint", "--model", str(imported), "--workdir", str(wd.root)])
    assert out.exit_code == 0 and "4M released [random]" in out.output, out.output
    assert (wd.checkpoints_dir / "LATEST").read_text().strip() == "released"
    manifest = json.loads(wd.manifest("train").read_text())
    assert manifest["counts"]["weights"] == "released" and manifest["counts"]["random"]

    _cli(sets, "stage", "evaluate")
    metrics = json.loads((wd.reports_dir / "metrics.json").read_text())
    # the imported model and the random-init tok_depth tokenizer of the fixture are both named
    assert metrics["random_parts"] == ["4m", "tokenizer tok_depth"] and metrics["checkpoint_step"] == 0
    depth = metrics["tasks"]["depth"]["scores"]["all"]
    assert {"4m", "tokenizer_bound", "chance"} <= set(depth) and 0 <= depth["4m"]["delta1"] <= 1
    report = (wd.reports_dir / "report.md").read_text()
    assert "> **random**: 4m, tokenizer tok_depth ran with random weights" in report

    # the same import again: the same link, no --force needed
    again = CliRunner().invoke(app, ["import", "checkpoint", "--model", str(imported), "--workdir", str(wd.root)])
    assert again.exit_code == 0, again.output


def test_fine_tuning_starts_from_the_import_and_resumes_its_own_checkpoint(run, monkeypatch) -> None:
    """`fm21 stage train --set train.init_from=<import>`: the weights before the first step
    are the imported tensors; interrupted after a checkpoint, the rerun continues from it."""
    import fm21.train.loop as loop

    sets, imported, wd = run
    sets = [*sets, f"train.init_from={imported}", "train.steps=4", "train.checkpoint_every=2"]
    before_first_step = {}
    init = loop.init_weights

    def recording_init(model, source):
        config = init(model, source)
        before_first_step.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return config

    calls = []

    def interrupt(point: str) -> None:
        calls.append(point)
        if calls.count("train.after_step") == 3:  # the third step, after step-2 was written
            raise RuntimeError("interrupted by the test")

    monkeypatch.setattr(loop, "init_weights", recording_init)
    monkeypatch.setattr(loop, "crash_point", interrupt)
    result = _invoke(sets, "stage", "train")
    assert result.exit_code != 0 and "interrupted by the test" in result.output + str(result.exception), result.output
    reference, meta = load_checkpoint(imported)
    assert meta["extra"]["weights"] == "released" and set(before_first_step) == set(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(before_first_step[key], value), key
    assert (wd.checkpoints_dir / "LATEST").read_text().strip() == "step-0000002"

    before_first_step.clear()
    monkeypatch.setattr(loop, "crash_point", lambda point: None)
    output = _cli(sets, "stage", "train")
    counts = json.loads(wd.manifest("train").read_text())["counts"]
    assert counts["resumed_from"] == 2 and counts["steps"] == 4, output
    assert not before_first_step  # a resumed run takes its own checkpoint, not init_from again
    tuned, meta = load_latest(wd.checkpoints_dir)
    assert meta["step"] == 4 and not meta["extra"].get("random_init")
    moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, reference.state_dict()[k])]
    assert moved  # four steps of AdamW moved the imported weights

    _cli(sets, "stage", "evaluate")  # the fine-tuned model: trained, no longer tagged random
    metrics = json.loads((wd.reports_dir / "metrics.json").read_text())
    assert metrics["checkpoint_step"] == 4 and metrics["random_parts"] == ["tokenizer tok_depth"]

    # the run's own checkpoint is not replaced by an import without --force
    refused = CliRunner().invoke(app, ["import", "checkpoint", "--model", str(imported), "--workdir", str(wd.root)])
    assert refused.exit_code != 0 and "LATEST names the run's own checkpoint step-0000004" in refused.output


def test_an_import_that_does_not_fit_the_stores_is_refused(run, tmp_path) -> None:
    """Another codebook than the store's tokens and tokenizer: refused, every problem named,
    nothing moved."""
    from fm21.train.released_run import ReleasedRunError, adopt_checkpoint

    _, _, wd = run
    latest = (wd.checkpoints_dir / "LATEST").read_text() if (wd.checkpoints_dir / "LATEST").exists() else None
    release = tmp_path / "release"
    release.mkdir()
    save_file(reference_state(DOMAINS, **MODEL, image_size=RES, vocab={"tok_depth@224": 32, "caption": TEXT_VOCAB}),
              str(release / "model.safetensors"))
    (release / "config.json").write_text(json.dumps(hf_config(DOMAINS, **MODEL, image_size=RES)))
    import_4m21(release, tmp_path / "imported")
    with pytest.raises(ReleasedRunError) as err:
        adopt_checkpoint(wd.root, model=tmp_path / "imported", force=True)
    msg = str(err.value)
    assert "stored codebook 16, the model's 32" in msg and "tokenizer codebook 16, the model's vocabulary 32" in msg
    now = (wd.checkpoints_dir / "LATEST").read_text() if (wd.checkpoints_dir / "LATEST").exists() else None
    assert now == latest
