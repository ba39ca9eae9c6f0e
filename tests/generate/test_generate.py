"""`fm21 generate` on a tiny random-init run: conditions read by label kind, chained
targets decoded to files and a grid, batch modes, one-line errors. Plumbing only: every
output here is tagged random."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fm21.cli import app 
from fm21.generate.driver import Settings, generate_sample, given_conditions 
from fm21.generate.inputs import read_condition 
from fm21.generate.run import GenerateError, open_run 
from fm21.tokenize.serialize import parse_metadata 


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_workdir):
    root = tmp_path_factory.mktemp("gen")
    files = root / "in"
    (files / "photos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):  # not square, not at the run's resolution
        Image.fromarray(rng.integers(0, 256, (40, 52, 3)).astype(np.uint8)).save(files / "photos" / name)
    (files / "photos" / "notes.txt").write_text("not an image")
    (files / "boxes.json").write_text(json.dumps([{"box": [0.1, 0.2, 0.5, 0.7], "class_name": "dog"}]))
    (files / "palette.json").write_text(json.dumps([[255, 0, 0], [0, 0, 255]]))
    (files / "broken.png").write_text("no image here")
    return tiny_workdir, files, open_run(tiny_workdir)


def _cli(work: Path, *args: str):
    return CliRunner().invoke(app, ["--set", f"workdir={work}", "generate", *args])


def test_chained_generation_writes_decoded_outputs_and_one_grid(tiny, tmp_path):
    work, files, run = tiny
    conds = given_conditions(run, [
        ("rgb", str(files / "photos" / "a.png")), ("caption", "a red cube"), ("det", str(files / "boxes.json")),
        ("metadata", "brightness=120 contrast=30"), ("color_palette", str(files / "palette.json")),
    ])
    out = tmp_path / "first"
    summary = generate_sample(run, conds, ["tok_depth", "tok_semseg"], Settings(num_steps=2), out)
    assert summary["random"] and "4m" in summary["random_parts"]  # random-init weights: tagged
    depth = np.load(out / "tok_depth.npy")
    assert depth.shape == (32, 32) and np.isfinite(depth).all()
    semseg_png = Image.open(out / "tok_semseg.png")
    assert semseg_png.mode == "P"  # coloured, and its indices are the decoded class ids
    np.testing.assert_array_equal(np.asarray(semseg_png), np.load(out / "tok_semseg.npy"))
    grid = Image.open(out / "grid.png")
    assert grid.width > 7 * 128 and grid.height > 128  # 5 inputs + 2 outputs, labelled
    # chained from files: the generated maps read back as conditions, then sequences are generated
    conds = given_conditions(run, [("tok_depth", str(out / "tok_depth.npy")),
                                   ("tok_semseg", str(out / "tok_semseg.png"))])
    np.testing.assert_array_equal(conds[1].labels, np.load(out / "tok_semseg.npy"))
    second = generate_sample(run, conds, ["metadata", "det"], Settings(), tmp_path / "second")
    assert set(second["outputs"]) == {"metadata", "det"}
    assert isinstance(json.loads((tmp_path / "second" / "det.json").read_text()), list)
    assert (tmp_path / "second" / "metadata.txt").read_text().endswith("\n")


def test_sequences_are_serialised_by_label_kind(tiny):
    _, files, run = tiny
    meta = read_condition(run, "metadata", "brightness=120 contrast=30")
    assert parse_metadata(meta.text) == pytest.approx({"brightness": 117.3, "contrast": 29.21}, abs=3)
    det = read_condition(run, "det", str(files / "boxes.json"))
    assert det.text.endswith("dog") and det.text.startswith("v0=100 v1=200")
    ids = det.tensor[0].tolist()
    assert ids[len(run.text.encode(det.text))] == 3  # closed by EOS as training closes it
    assert read_condition(run, "color_palette", str(files / "palette.json")).text.startswith("v1=2 v0=255 v0=0")


def test_batch_dir_and_from_store_write_one_folder_per_sample_and_an_index(tiny, tmp_path):
    work, files, _ = tiny
    result = _cli(work, "--batch-dir", str(files / "photos"), "--cond", "caption=a cat", "--target", "tok_depth",
                  "--steps", "2", "--out", str(tmp_path / "batch"))
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "batch" / "index.json").read_text())
    assert index["num_samples"] == 2 and index["random"]  # the .txt is skipped
    assert [s["sample"] for s in index["samples"]] == ["a", "b"]
    assert all((tmp_path / "batch" / s["folder"] / "tok_depth.png").is_file() for s in index["samples"])
    result = _cli(work, "--from-store", "--where", "split = 'val'", "--limit", "2", "--cond", "rgb",
                  "--target", "tok_semseg", "--steps", "2", "--out", str(tmp_path / "store"))
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert [s["sample"] for s in index["samples"]] == ["s001-crop0", "s003-crop0"]  # val rows only, limited
    assert index["samples"][0]["conditions"] == {"rgb": "tokens:s001/0"}


@pytest.mark.parametrize("args, message", [
    (["--cond", "rgb=missing.png"], "no such file"),
    (["--cond", "rgb={broken}"], "cannot decode image"),
    (["--cond", "foo=x"], "unknown modality 'foo'"),
    (["--cond", "tok_normal=x.png"], "not trained on 'tok_normal'"),
    (["--cond", "metadata=brightness"], "bad key=value 'brightness'"),
    (["--cond", "caption"], "expected MODALITY=VALUE"),
])
def test_bad_input_is_one_clear_line(tiny, tmp_path, args, message):
    work, files, _ = tiny
    args = [a.format(broken=files / "broken.png") for a in args]
    result = _cli(work, *args, "--target", "tok_depth", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_a_target_must_be_generable_and_new(tiny, tmp_path):
    _, _, run = tiny
    conds = given_conditions(run, [("caption", "a cube")])
    with pytest.raises(GenerateError, match="input-only"):
        generate_sample(run, conds, ["rgb"], Settings(), tmp_path)
    with pytest.raises(GenerateError, match="both a condition and a target"):
        generate_sample(run, conds, ["caption"], Settings(), tmp_path)


def test_a_stored_token_grid_condition_shows_its_decoded_map(tiny, tmp_path):
    """A condition read from tokens.lance is drawn as the map its ids decode to (not as
    the row's name), in the grid as in a file-given condition."""
    from fm21.generate.driver import store_rows
    from fm21.generate.inputs import stored_condition

    work, _, run = tiny
    row = next(store_rows(run, ["tok_depth"], where=None, limit=1))
    cond = stored_condition(run, "tok_depth", row["tok_depth"], source="tokens:x/0")
    expected = run.tokenizer("tok_depth").decode_labels(np.asarray(row["tok_depth"], dtype=np.int64)[None])[0]
    np.testing.assert_array_equal(cond.labels, expected)
    from fm21.generate.outputs import map_tile, tile_of

    tile = tile_of("depth", labels=cond.labels, text=cond.source, parsed=None, background=None)
    np.testing.assert_array_equal(tile, map_tile("depth", expected))  # drawn as a depth map


def test_a_preset_decodes_each_target_its_way_in_its_chain_order(tiny, tmp_path):
    """--preset rgb2x: with no --target, every target of the reference's chain the model
    has, in the chain's order; the summary names the preset. Decoding flags clash with it."""
    from fm21.evaluate.presets import PRESETS

    work, files, run = tiny
    result = _cli(work, "--cond", f"rgb={files / 'photos' / 'a.png'}", "--preset", "rgb2x", "--out", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p" / "generation.json").read_text())
    chain = [s.target for s in PRESETS["rgb2x"].steps]
    assert summary["targets"] == [t for t in chain if t in ("tok_depth", "tok_semseg", "caption", "det",
                                                            "color_palette", "metadata")]
    assert summary["settings"]["preset"] == "rgb2x"
    assert (tmp_path / "p" / "tok_depth.png").is_file() and (tmp_path / "p" / "caption.txt").is_file()
    # given targets are checked as without a preset, then put in the chain's order
    result = _cli(work, "--cond", "caption=a red cube", "--preset", "x2rgb", "--target", "caption", "--target",
                  "tok_semseg", "--out", str(tmp_path / "q"))
    assert result.exit_code == 2 and "both a condition and a target" in result.output
    result = _cli(work, "--cond", "caption=a red cube", "--preset", "x2rgb", "--target", "det", "--target",
                  "tok_semseg", "--out", str(tmp_path / "q"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "q" / "generation.json").read_text())["targets"] == ["tok_semseg", "det"]
    for args, message in ((["--preset", "rgb2x", "--steps", "3"], "drop --steps"),
                          (["--preset", "t2cr", "--target", "tok_depth"], "has no step for ['tok_depth']"),
                          (["--preset", "nope"], "unknown preset 'nope'")):
        result = _cli(work, "--cond", "caption=a cube", *args, "--out", str(tmp_path / "x"))
        assert result.exit_code == 2 and message in result.output, result.output
