"""Tokenizers of fm21: image-like tokenizer families (``fm21.tokenize.families`` maps the
registry's ``ModalitySpec.tokenizer`` to its module: the conv VQ-VAE of ``vqvae``, ...),
the WordPiece text tokenizer and the 4M sequence serialisations (det, colour palette,
metadata).

Kept import-light on purpose: import the submodule you need
(``fm21.tokenize.checkpoint``, ``fm21.tokenize.train_vq``, ``fm21.tokenize.text``,
``fm21.tokenize.serialize``, ...); nothing heavy (torch, HF tokenizers) loads here.
"""
