"""Config rules: unknown keys are errors naming path and file; overrides and recipes apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fm21.config import ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_loads_and_is_frozen():
    cfg = load_config()
    assert cfg.ingest.source == "synthetic"
    with pytest.raises(Exception):
        cfg.train.steps = 5  # frozen


def test_unknown_key_names_path_and_file(tmp_path):
    bad = tmp_path / "flows.yaml"
    data = yaml.safe_load((ROOT / "flows.yaml").read_text())
    data["train"]["batch_sise"] = 32  # a misspelt key
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "train.batch_sise" in str(err.value)
    assert str(bad) in str(err.value)


def test_unknown_nested_key_from_override():
    with pytest.raises(ConfigError, match=r"unknown key 'tokenizers\.image\.tok_rgb\.stepz'"):
        load_config(overrides=["tokenizers.image.tok_rgb.stepz=3"])


def test_bad_value_and_unknown_modality():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(overrides=["train.steps=many"])
    with pytest.raises(ConfigError, match="unknown modalities"):
        load_config(overrides=["modalities.enabled=[rgb,tok_lidar]"])


def test_overrides_and_recipe_layering():
    cfg = load_config(recipe="tiny", overrides=["train.steps=7", "ingest.synthetic.num_samples=10", "workdir=/tmp/x"])
    assert cfg.train.steps == 7
    assert cfg.ingest.synthetic.num_samples == 10
    assert cfg.workdir == "/tmp/x"
    assert cfg.modalities.resolution == 32  # from the recipe
    assert cfg.train.lr == load_config().train.lr  # untouched keys come from flows.yaml
    assert parse_overrides(["a.b=1", "a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


def test_real_scale_recipe_follows_reference():
    cfg = load_config(recipe="4m21-b")
    specs = cfg.specs()
    assert specs["tok_rgb"].num_tokens == 196 and specs["tok_rgb"].vocab_size == 16384
    assert specs["caption"].vocab_size == 30_000
    assert (cfg.train.model.dim, cfg.train.model.encoder_depth, cfg.train.model.num_heads) == (768, 12, 12)
    assert cfg.train.num_input_tokens == cfg.train.num_target_tokens == 256
    assert cfg.train.batch_size == 4096 and cfg.train.lr == pytest.approx(1e-4 * 4096 / 256)


def test_cli_config_show_and_error_writes_nothing(tmp_path):
    fm21 = [sys.executable, "-m", "fm21.cli"]
    ok = subprocess.run([*fm21, "--set", "train.steps=3", "config", "show"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "steps: 3" in ok.stdout
    work = tmp_path / "w"
    bad = subprocess.run([*fm21, "--set", f"workdir={work}", "--set", "ingest.sorce=x", "stage", "ingest"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "unknown key 'ingest.sorce'" in bad.stderr
    assert not work.exists()


def test_stdlib_tokenize_not_shadowed():
    """Stage folders live inside fm21/, so the stdlib wins from the repo root."""
    out = subprocess.run([sys.executable, "-c", "import tokenize, inspect, sys; print(tokenize.__file__)"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "fm21" not in out.stdout and out.stdout.strip().endswith("tokenize.py")


def test_a_recipe_switching_tokenizer_family_replaces_the_entry(tmp_path):
    base = load_config()
    assert base.tokenizers.image["tok_sam_edge"].family == "divae"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tokenizers: {image: {tok_sam_edge: {family: vqvae, steps: 7},"
                      " tok_rgb: {steps: 9}}}\n")
    cfg = load_config(recipe=recipe)
    # another family: the DiVAE-only keys (unet_channels, decode_steps) are gone, not merged
    sam_edge = cfg.tokenizers.image["tok_sam_edge"].model_dump(exclude_unset=True)
    assert sam_edge == {"family": "vqvae", "steps": 7}
    # the same family: merged key by key as before
    rgb, base_rgb = (c.tokenizers.image["tok_rgb"].model_dump(exclude_unset=True) for c in (cfg, base))
    assert rgb == {**base_rgb, "steps": 9}


def test_train_modalities_is_a_subset_of_the_enabled_ones():
    cfg = load_config(overrides=["train.modalities=[rgb, tok_depth]"])
    chosen = cfg.train.select(cfg.specs())
    assert list(chosen) == ["rgb", "tok_depth"] and len(cfg.specs()) == 19
    with pytest.raises(ConfigError, match=r"train.modalities \['tok_nope'\]"):
        load_config(overrides=["train.modalities=[rgb, tok_nope]"])
    with pytest.raises(ConfigError, match="no modality that can be a target"):
        load_config(overrides=["train.modalities=[rgb]"])


def test_divae_recipes_can_set_the_reference_decoder_layout():
    """The ADM layout and diffusion options an imported DiVAE carries are recipe keys too,
    checked by value."""
    cfg = load_config(overrides=["tokenizers.image.tok_sam_edge.unet_layout=adm",
                                 "tokenizers.image.tok_sam_edge.prediction_type=v_prediction"])
    opts = cfg.tokenizers.image["tok_sam_edge"]
    assert (opts.unet_layout, opts.prediction_type) == ("adm", "v_prediction")
    with pytest.raises(ConfigError, match="prediction_type"):
        load_config(overrides=["tokenizers.image.tok_sam_edge.prediction_type=noise"])


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_every_shipped_recipe_loads(recipe):
    assert load_config(recipe=recipe).workdir


def test_demo_long_changes_only_the_training_of_the_demo():
    """demo-long is the embedded default with longer 4M training and a whole-caption component
    (and, as measured, without the demo's det weighting): every other section is the demo's."""
    demo, long = load_config(), load_config(recipe="demo-long")
    for section in ("modalities", "ingest", "pseudolabel", "tokenizers", "tokens", "evaluate"):
        assert getattr(long, section) == getattr(demo, section), section
    assert long.train.steps > demo.train.steps
    assert long.train.loss_weights == {**demo.train.loss_weights, "det": 1.0}
    assert long.train.mixture[-1].target_alphas == {"caption": 1000.0}
    assert long.train.model_copy(update={"steps": demo.train.steps, "mixture": demo.train.mixture,
                                         "checkpoint_every": demo.train.checkpoint_every,
                                         "loss_weights": demo.train.loss_weights}) == demo.train
