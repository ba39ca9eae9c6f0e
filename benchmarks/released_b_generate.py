"""A released-format 4M-21 B checkpoint through the user's commands, up to `fm21 generate`.

    PYTHONPATH=. python benchmarks/released_b_generate.py [--out /tmp/released-b] [--steps 8]

What a user does with ``EPFL-VILAB/4M-21_B`` and the released tokenizers
(docs/reference-conventions.md), with every file made locally from random weights (no
network; every output is tagged ``random``):

1. a release folder at B size (768 wide, 12 + 12 layers; ``model.safetensors`` with the
   reference's names and shapes from tests/train/reference_4m_state.py + ``config.json``)
   for rgb@224, tok_rgb@224, tok_depth@224, caption, tok_dinov2_global;
2. ``fm21 import 4m21 --size B`` (a subprocess, timed);
3. released-format DiVAE tokenizers for tok_rgb and tok_depth (the helpers of
   tests/tokenize/test_import_released.py: a 16-wide ViT encoder, ``enc_type: vit_s_enc``)
   through ``fm21 import tokenizer``, as encoder-only copies (their diffusion decoders stay fm21's
   random ones; a full release imports its decoder, docs/tokenizers.md);
4. a text tokenizer JSON laid out as the released one (the special ids of
   tests/tokenize/test_reference_conventions.py, then word pieces up to 30,000 ids);
5. ``fm21 import run`` (links them into a workdir);
6. ``fm21 generate --cond caption="a red cube" --target tok_depth`` and
   ``fm21 generate --cond rgb=IMG --target tok_depth --target caption`` (subprocesses, timed).

Prints a table (times, parameters, output files), then one JSON line with the same figures.
Peak memory 5.6 GB (building and saving the random state dict; each later step is its own
process). Measured on the 2-core CPU with nothing else running, 2026-11-22: release 7.1 s,
import 4m21 11.3 s (318.9M parameters, 250 tensors, 88 dropped by rule), import tokenizer
6.7 / 5.4 s, import run 2.0 s, generate caption->tok_depth 16.4 s, rgb->tok_depth,caption
20.4 s (the caption stops at its max_seq_len; no EOS is drawn at random). An earlier run on a
loaded machine (nice 19, 7 sessions) took 73 s to import and 157 / 247 s to generate, the
caption then running 256 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' release-format helpers

DOMAINS = ["rgb@224", "tok_rgb@224", "tok_depth@224", "caption", "tok_dinov2_global"]
TEXT_VOCAB = 30000  # the released WordPiece vocabulary, as the model's sequence tables


def fm21(*args: str) -> tuple[float, str]:
    """Run ``python -m fm21.cli ARGS``; (wall seconds, stdout). Fails loudly."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fm21.cli", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"fm21 {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout.strip()


def write_model_release(folder: Path) -> int:
    """The B-size release folder (random weights, ``random_init: true`` in config.json)."""
    from safetensors.torch import save_file

    from tests.train.reference_4m_state import hf_config, reference_state

    folder.mkdir(parents=True, exist_ok=True)
    state = reference_state(DOMAINS, dim=768, enc=12, dec=12)
    save_file(state, str(folder / "model.safetensors"))
    count = sum(t.numel() for t in state.values())
    del state
    config = hf_config(DOMAINS, dim=768, enc=12, dec=12) | {"random_init": True}
    (folder / "config.json").write_text(json.dumps(config))
    return count


def write_tokenizer_release(folder: Path, modality: str, channels: int) -> None:
    """A released-format DiVAE folder: ViT encoder and codebook, no UNet decoder (fm21's random one)."""
    from fm21.modalities import MODALITIES
    from tests.tokenize.test_import_released import _released, _vqvae_state

    sd = {k: v for k, v in _vqvae_state(channels, channels, 16, MODALITIES[modality].vocab_size).items()
          if not k.startswith(("decoder.", "post_quant_proj."))}
    config = {"enc_type": "vit_s_enc", "dec_type": "unet_patched", "post_mlp": True, "patch_size": 16,
              "beta_schedule": "linear", "random_init": True}
    folder.mkdir(parents=True, exist_ok=True)
    _released(folder, config, sd)  # -> folder / "released"


def write_text_tokenizer(path: Path) -> None:
    """The released layout (4,284 special ids, then pieces), filled to 30,000 ids."""
    from tests.tokenize.test_reference_conventions import _released_like

    _released_like(path)
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    for i in range(TEXT_VOCAB - len(vocab)):
        vocab[f"w{i:05d}"] = len(vocab)
    path.write_text(json.dumps(data))


def write_image(path: Path) -> None:
    from PIL import Image

    img = np.full((224, 224, 3), 128, dtype=np.uint8)
    img[60:170, 70:160] = (200, 30, 30)  # a red square on grey
    Image.fromarray(img).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/fm21-released-b")
    parser.add_argument("--steps", type=int, default=8, help="decoding steps per grid target")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; give another --out")
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    release_params = write_model_release(out / "release-4m21-b")
    build_s = time.perf_counter() - t
    import_s, import_out = fm21("import", "4m21", "--size", "B", "--from", str(out / "release-4m21-b"),
                                "--out", str(out / "4m21-b"))
    imported = json.loads(import_out.splitlines()[-1])
    tok_s = {}
    for modality, channels in (("tok_rgb", 3), ("tok_depth", 1)):
        write_tokenizer_release(out / f"release-{modality}", modality, channels)
        tok_s[modality], _ = fm21("import", "tokenizer", "--path", str(out / f"release-{modality}" / "released"),
                                  "--modality", modality, "--out", str(out / modality))
    write_text_tokenizer(out / "text_tokenizer_4m_wordpiece_30k.json")
    run_s, run_out = fm21("import", "run", "--model", str(out / "4m21-b"),
                          "--tokenizer", f"tok_rgb={out / 'tok_rgb'}", "--tokenizer", f"tok_depth={out / 'tok_depth'}",
                          "--text-tokenizer", str(out / "text_tokenizer_4m_wordpiece_30k.json"),
                          "--workdir", str(out / "work"))
    write_image(out / "red_square.png")
    work = ["--set", f"workdir={out / 'work'}", "generate", "--steps", str(args.steps)]
    runs = {
        "caption->tok_depth": ["--cond", "caption=a red cube", "--target", "tok_depth"],
        "rgb->tok_depth,caption": ["--cond", f"rgb={out / 'red_square.png'}", "--target", "tok_depth",
                                   "--target", "caption"],
    }
    gens = {}
    for i, (name, cli) in enumerate(runs.items()):
        folder = out / f"gen-{i}"
        seconds, _ = fm21(*work, *cli, "--out", str(folder))
        summary = json.loads((folder / "generation.json").read_text())
        gens[name] = {"seconds": round(seconds, 1), "folder": str(folder), "weights": summary["weights"],
                      "random": summary["random"], "random_parts": summary["random_parts"],
                      "files": sorted([summary["grid"], "generation.json",
                                       *(f for o in summary["outputs"].values() for f in o["files"])]),
                      # the first words only (a random caption runs to 256 tokens; generation.json has it all)
                      "texts": {n: o["text"][:80] for n, o in summary["outputs"].items() if "text" in o}}

    rows = [("release state dict (random)", f"{build_s:.1f} s", f"{release_params / 1e6:.1f}M tensors' elements"),
            ("fm21 import 4m21 --size B", f"{import_s:.1f} s",
             f"{imported['num_parameters'] / 1e6:.1f}M parameters, {imported['tensors']} tensors, "
             f"{imported['dropped']} dropped"),
            *((f"fm21 import tokenizer {m}", f"{s:.1f} s", "DiVAE, 16-wide ViT encoder") for m, s in tok_s.items()),
            ("fm21 import run", f"{run_s:.1f} s", run_out.splitlines()[-1][:90]),
            *((f"fm21 generate {n}", f"{g['seconds']:.1f} s", ", ".join(g["files"])) for n, g in gens.items())]
    print(f"{'step':34s} {'wall':>8s}  detail   [weights: random]")
    for name, wall, detail in rows:
        print(f"{name:34s} {wall:>8s}  {detail}")
    for name, g in gens.items():
        print(f"  {name}: {g['folder']}/grid.png  texts: {g['texts']}")
    print(json.dumps({"bench": "released_b_generate", "weights": "random", "steps": args.steps,
                      "release_elements": release_params, "num_parameters": imported["num_parameters"],
                      "build_s": round(build_s, 1), "import_4m21_s": round(import_s, 1),
                      "import_tokenizer_s": {m: round(s, 1) for m, s in tok_s.items()},
                      "import_run_s": round(run_s, 1), "generate": gens}))


if __name__ == "__main__":
    main()
