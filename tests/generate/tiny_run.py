"""A tiny trained-run workdir for the generation tests, built in about a second.

Random-init tokenizers and a random-init 4M written through the real save functions
(``save_tokenizer``, ``TextTokenizer.save``, ``save_checkpoint`` + ``publish_latest``),
plus a six-row tokens.lance: the plumbing of ``fm21 generate`` is tested on it; its
outputs are tagged random and say nothing of quality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from fm21.config import ModelConfig
from fm21.modalities import resolve_specs
from fm21.store.layout import Workdir
from fm21.tokenize.families import family_config, family_module
from fm21.tokenize.checkpoint import save_tokenizer
from fm21.tokenize.text import NUM_SPECIAL_TOKENS, train_text_tokenizer
from fm21.train.checkpoint import publish_latest, save_checkpoint
from fm21.train.model import FourM

NAMES = ["rgb", "tok_depth", "tok_semseg", "caption", "det", "color_palette", "metadata"]
TEXT_VOCAB = NUM_SPECIAL_TOKENS + 48  # the specials and a few learned pieces
SEQ_LENS = {"caption": 10, "det": 12, "color_palette": 7, "metadata": 8}
CORPUS = ["a red cube on a table", "a blue ball near the wall", "two cats and a dog"]
TOKENIZER_OPTIONS = {"family": "vqvae", "hidden_dim": 16, "num_layers": 1}
RESOLUTION = 32


def tiny_specs() -> dict:
    specs = resolve_specs(NAMES, resolution=RESOLUTION, patch_size=8, image_vocab_size=32, text_vocab_size=TEXT_VOCAB)
    return {n: dataclasses.replace(s, max_seq_len=SEQ_LENS[n]) if n in SEQ_LENS else s for n, s in specs.items()}


def build_run(root: Path, *, num_rows: int = 6) -> Workdir:
    torch.manual_seed(0)
    wd = Workdir(root)
    specs = tiny_specs()
    for name, spec in specs.items():
        if spec.kind == "image_tokens":
            options = {**TOKENIZER_OPTIONS, **({"family": "vqvae"} if spec.label_kind != "classes" else {})}
            config = family_config(spec, options, path=f"tokenizers.image.{name}")
            save_tokenizer(family_module(config.family).build(config), wd.tokenizers_dir / name)
    text = train_text_tokenizer(CORPUS, vocab_size=TEXT_VOCAB)
    text.save(wd.tokenizers_dir / "text")
    model = FourM(specs, ModelConfig(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2),
                  num_input_tokens=64, num_target_tokens=64)
    step_dir = wd.checkpoints_dir / "step-00000000"
    save_checkpoint(step_dir, model=model, step=0, extra={"random_init": True})
    publish_latest(step_dir)
    _write_tokens(wd, specs, text, num_rows)
    return wd


def _write_tokens(wd: Workdir, specs: dict, text, num_rows: int) -> None:
    import lance
    import pyarrow as pa

    from fm21.store.tokens import tokens_schema

    schema = tokens_schema(specs, tokenizers={}, labels_fp="tiny")
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {f.name: [] for f in schema}
    for i in range(num_rows):
        rows["key"].append(f"s{i:03d}")
        rows["crop"].append(0)
        rows["split"].append("val" if i % 2 else "train")
        for name, spec in specs.items():
            if spec.kind == "pixels":
                rows[name].append(rng.integers(0, 256, RESOLUTION * RESOLUTION * 3).astype(np.uint8))
            elif spec.is_image_like:
                rows[name].append(rng.integers(0, spec.vocab_size, spec.num_tokens).astype(np.int16))
            else:
                rows[name].append(text.encode(CORPUS[i % len(CORPUS)])[: spec.max_seq_len])
    table = pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in schema}, schema=schema)
    lance.write_dataset(table, str(wd.tokens_uri))
