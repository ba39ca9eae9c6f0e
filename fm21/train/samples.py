"""Random samples in the masking data contract, for benchmarks, tests and smoke runs.

A sample is ``{modality: value}``: pixels (3, R, R) float32, grid ids (N,), sequence id
lists in ``[first_text_id, vocab)``, metadata as ``[id, id]`` chunks, embeddings (L, E).
"""

from __future__ import annotations

import numpy as np

from fm21.modalities import ModalitySpec
from fm21.train.loader import MASK_CHUNK


def random_sample(
    specs: dict[str, ModalitySpec],
    rng: np.random.Generator,
    *,
    first_text_id: int = 204,
    num_metadata_chunks: int = 4,
) -> dict:
    sample: dict = {}
    for name, spec in specs.items():
        if spec.kind == "pixels":
            sample[name] = rng.standard_normal((3, spec.resolution, spec.resolution)).astype(np.float32)
        elif spec.kind == "embedding":
            sample[name] = rng.standard_normal((5, spec.embedding_dim)).astype(np.float32)
        elif spec.is_image_like:
            sample[name] = rng.integers(0, spec.vocab_size, spec.num_tokens)
        elif spec.label_kind in MASK_CHUNK:
            sample[name] = [[int(rng.integers(first_text_id, spec.vocab_size - 1))
                             for _ in range(MASK_CHUNK[spec.label_kind])] for _ in range(num_metadata_chunks)]
        else:
            n = int(rng.integers(2, spec.max_seq_len))
            sample[name] = rng.integers(first_text_id, spec.vocab_size, n).tolist()
    return sample
