"""WordPiece training gives the same ids in every process (the trainer's ties are broken
in per-process hash order; fm21 renumbers the learned pieces)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

SCRIPT = """
import sys
from fm21.tokenize.text import train_text_tokenizer
corpus = [f"a {c} {s} left of the {c2} {s2}" for c in ["red", "green", "blue", "cyan"]
          for s in ["cube", "sphere", "cone", "cylinder"] for c2 in ["pink", "grey"] for s2 in ["cube", "cones"]] * 3
train_text_tokenizer(corpus, vocab_size=5000).save(sys.argv[1])
"""


def test_same_corpus_same_tokenizer_file_across_processes(tmp_path):
    digests = set()
    for i in range(3):
        out = tmp_path / f"tok{i}"
        subprocess.run([sys.executable, "-c", SCRIPT, str(out)], check=True)
        digests.add(hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest())
    assert len(digests) == 1
