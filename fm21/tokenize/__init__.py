"""Tokenizers of fm21: VQ-VAE image tokenizers, Memcodes tokenizers of global embeddings and
SMPL body poses, the WordPiece text tokenizer and the 4M sequence serialisations (det, colour
palette, metadata).

Kept import-light on purpose: import the submodule you need
(``fm21.tokenize.checkpoint``, ``fm21.tokenize.train_vq``, ``fm21.tokenize.memcodes``,
``fm21.tokenize.text``, ``fm21.tokenize.serialize``, ...); nothing heavy (torch, HF
tokenizers) loads here.
"""
