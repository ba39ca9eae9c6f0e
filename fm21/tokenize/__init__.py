"""Tokenizers of fm21. ``fm21.tokenize.families`` maps the registry's
``ModalitySpec.tokenizer`` to its family module: the conv VQ-VAE (``vqvae``), the diffusion
decoder (``divae``), Memcodes MLP tokenizers of global embeddings and SMPL body poses
(``memcodes``) and the SAM instance-mask tokenizer (``sam_mask``). Beside them: the WordPiece
text tokenizer and the 4M sequence serialisations (caption, det, colour palette, metadata,
human poses, SAM instances).

Kept import-light on purpose: import the submodule you need
(``fm21.tokenize.checkpoint``, ``fm21.tokenize.train_vq``, ``fm21.tokenize.memcodes``,
``fm21.tokenize.text``, ``fm21.tokenize.serialize``, ...); nothing heavy (torch, HF
tokenizers) loads here.
"""
