"""WordPiece training gives the same tokenizer in every process. HF's trainer numbers the
continuation pieces in per-process hash order and breaks merge ties by those numbers
(huggingface/tokenizers#1794): fm21 registers them up front in sorted order, and renumbers
the learned pieces. Before, about one process in twelve learned other pieces."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from fm21.tokenize.text import train_text_tokenizer
corpus = [f"a {c} {s} left of the {c2} {s2} near the table" for c in ["red", "green", "blue", "cyan", "yellow"]
          for s in ["cube", "sphere", "cone", "cylinder"] for c2 in ["pink", "grey", "brown"]
          for s2 in ["cube", "cones", "torus"]] * 3
train_text_tokenizer(corpus, vocab_size=int(sys.argv[2])).save(sys.argv[1])
"""


@pytest.mark.parametrize("vocab_size", [5000, 4330])  # every merge learned; the limit binds
def test_same_corpus_same_tokenizer_file_across_processes(tmp_path, vocab_size):
    digests = set()
    for i in range(6):
        out = tmp_path / f"tok{i}"
        subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(vocab_size)], check=True)
        digests.add(hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest())
    assert len(digests) == 1
