"""Issue 12's end-to-end path at a tiny width: a released-format 4M folder and released-format
tokenizers (random weights, tagged ``random``) -> the imports -> `fm21 import run` -> `fm21
generate`, with the output grid and a generation.json that says released and random.

The release folders are written by the helpers the import tests already use (names and
shapes from the reference code); B size runs in benchmarks/released_b_generate.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fm21.cli import app
from fm21.modalities import MODALITIES
from fm21.tokenize.import_released import import_tokenizer
from fm21.train.import_4m21 import import_4m21
from fm21.train.released_run import ReleasedRunError, assemble_run
from tests.tokenize.test_import_released import HEADS, _released, _vqvae_state
from tests.tokenize.test_reference_conventions import _released_like
from tests.train.reference_4m_state import hf_config, reference_state

DOMAINS = ["rgb@224", "tok_rgb@224", "tok_depth@224", "caption"]
# the fm21 decoder of an encoder-only release (random): small and 2 DDIM steps, so decoding costs little
UNET = {"unet_channels": [8, 16], "layers_per_block": 1, "decoder_patch": 8, "decode_steps": 2}


def _release_tokenizer(tmp_path, modality: str, channels: int):
    """A released-format DiVAE folder without its UNet decoder (the import keeps fm21's, random),
    random weights. (A full ADM decoder imports too: tests/tokenize/test_import_released.py.)"""
    sd = {k: v for k, v in _vqvae_state(channels, channels, 16, MODALITIES[modality].vocab_size).items()
          if not k.startswith(("decoder.", "post_quant_proj."))}
    config = {"enc_type": "vit_b_enc", "dec_type": "unet_patched", "post_mlp": True, "patch_size": 16,
              "beta_schedule": "linear", "random_init": True}
    (tmp_path / modality).mkdir()
    return _released(tmp_path / modality, config, sd)


@pytest.fixture(scope="module")
def released_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("released")
    folder = tmp / "4m-release"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(reference_state(DOMAINS, dim=32, enc=1, dec=1), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(DOMAINS, dim=32, enc=1, dec=1) | {"random_init": True}))
    import_4m21(folder, tmp / "4m")
    for modality, channels in (("tok_rgb", 3), ("tok_depth", 1)):
        import_tokenizer(tmp / f"tok-{modality}", path=_release_tokenizer(tmp, modality, channels),
                         modality=modality, num_heads=HEADS, decoder_options=UNET)
    _released_like(tmp / "text_tokenizer_4m_wordpiece_30k.json")
    result = CliRunner().invoke(app, [
        "import", "run", "--model", str(tmp / "4m"), "--tokenizer", f"tok_rgb={tmp / 'tok-tok_rgb'}",
        "--tokenizer", str(tmp / "tok-tok_depth"),  # a bare folder: its config names the modality
        "--text-tokenizer", str(tmp), "--workdir", str(tmp / "work")])
    assert result.exit_code == 0, result.output
    assert "released [random]" in result.output
    return tmp


def _generate(tmp, out: str, *args: str):
    result = CliRunner().invoke(app, ["--set", f"workdir={tmp / 'work'}", "generate", *args, "--steps", "2",
                                      "--out", str(tmp / out)])
    assert result.exit_code == 0, result.output
    return json.loads((tmp / out / "generation.json").read_text())


def test_layout_links_the_imported_parts(released_run) -> None:
    tmp, work = released_run, released_run / "work"
    assert (work / "train/checkpoints/LATEST").read_text().strip() == "released"
    assert os.readlink(work / "train/checkpoints/released") == str((tmp / "4m").resolve())
    assert os.readlink(work / "tokenizers/tok_depth") == str((tmp / "tok-tok_depth").resolve())
    assert os.readlink(work / "tokenizers/text/tokenizer.json") == str(
        (tmp / "text_tokenizer_4m_wordpiece_30k.json").resolve())
    record = json.loads((work / "released_run.json").read_text())
    assert record["weights"] == "released" and record["random"]
    assert record["tokenizers"]["tok_rgb"]["random"] == ["all"] and record["without_tokenizer"] == []
    assert record["text_vocab_short_by"] == 30000 - record["text_tokenizer"]["vocab_size"]


def test_generate_from_a_caption_and_an_image(released_run) -> None:
    """One call reads both condition kinds (the released text tokenizer, the pixels) and
    decodes the target through the imported DiVAE; a caption target (256 autoregressive
    steps at random) runs in the benchmark only."""
    tmp = released_run
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(tmp / "img.png")
    summary = _generate(tmp, "gen", "--cond", "caption=a red cube", "--cond", f"rgb={tmp / 'img.png'}",
                        "--target", "tok_depth")
    assert summary["weights"] == "released" and summary["random"]
    assert summary["random_parts"] == ["4m", "tokenizer:tok_depth (all)"]
    assert summary["conditions"]["caption"] == "a red cube" and summary["checkpoint"].endswith("released")
    depth = np.load(tmp / "gen" / "tok_depth.npy")
    assert depth.shape[:2] == (224, 224) and np.isfinite(depth).all()
    grid = Image.open(tmp / "gen" / "grid.png")
    assert grid.size[0] >= 3 * 128  # two input tiles and one output tile


def test_mismatched_parts_are_refused_before_anything_is_written(released_run, tmp_path) -> None:
    tmp = released_run
    with pytest.raises(ReleasedRunError) as err:  # tok_rgb's folder given as tok_depth, and a missing one
        assemble_run(tmp_path / "w", model=tmp / "4m", text_tokenizer=tmp,
                     tokenizers={"tok_depth": tmp / "tok-tok_rgb", "tok_normal": tmp / "nowhere"})
    msg = str(err.value)
    assert "the tokenizer folder is for tok_rgb" in msg and "codebook 16384" in msg and "tok_normal: no tokenizer" in msg
    assert not (tmp_path / "w").exists()
    with pytest.raises(ReleasedRunError, match="exists; --force"):  # a second run does not overwrite silently
        assemble_run(tmp / "work", model=tmp / "4m", text_tokenizer=tmp, tokenizers={})


def test_sequence_tokenizers_are_accepted_for_their_sequences_only() -> None:
    """An imported SAM-instance (or pose) tokenizer serves its sequence, whose codes are text
    tokens: no codebook or token-count check against the sequence's text vocabulary; a pixels
    modality has no tokenizer folder at all."""
    from fm21.train.released_run import _tokenizer_problems

    specs = {n: MODALITIES[n] for n in ("sam_instance", "rgb", "caption")}
    sam = {"modality": "sam_instance", "vocab_size": 1024, "num_tokens": 16}
    assert _tokenizer_problems("sam_instance", sam, specs) == []
    assert _tokenizer_problems("caption", {"modality": "caption"}, specs) == \
        ["caption: a sequence modality has no tokenizer folder"]
    assert "a pixels modality has no tokenizer folder" in _tokenizer_problems("rgb", {"modality": "rgb"}, specs)[0]
