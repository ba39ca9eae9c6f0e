"""Generation from any conditions of a token-store row: the mod_dicts the evaluate tasks
feed :func:`fm21.evaluate.sampler.generate` (called with its plain signature).

Conditions are full inputs (apple/ml-4m `fourm/models/generate.py`, ``init_full_input_modality``):
RGB pixels, token grids, or sequences (the stored ids closed by EOS, padded).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fm21.evaluate.sampler import generate, init_empty_target, init_full_input
from fm21.modalities import ModalitySpec
from fm21.tokenize.serialize import split_palettes
from fm21.train.loader import row_to_sample
from fm21.train.masking import EOS_ID, closed_sequence

BATCH = 16


def condition_tensor(rows: list[dict], name: str, spec: ModalitySpec) -> torch.Tensor:
    """The (B, ...) tensor of condition ``name`` for ``rows``: pixels as the trainer
    normalises them, grid ids, or sequence ids + EOS padded to the model's length (a
    missing sequence is empty: EOS only)."""
    if spec.kind == "pixels":
        return torch.from_numpy(np.stack([row_to_sample(r, {name: spec})[name] for r in rows]))
    if spec.is_image_like:
        return torch.from_numpy(np.stack([np.asarray(r[name], dtype=np.int64) for r in rows]))
    if spec.kind != "sequence":
        raise ValueError(f"{name}: conditioning on {spec.kind} is not supported here")
    out = torch.zeros(len(rows), spec.seq_tensor_len, dtype=torch.long)
    for i, r in enumerate(rows):
        ids = [int(t) for t in (r.get(name) or [])]
        if spec.label_kind == "palette":  # tokens.lance holds the palettes of every k: the largest
            ids = split_palettes(ids)[-1]
        ids = closed_sequence(ids, spec)  # EOS counted in max_seq_len, as in training
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def generate_ids(model, rows: list[dict], conditions: Sequence[str], target: str, cfg) -> list:
    """``target`` generated from ``conditions`` of each row: a (B, N) int64 array for a
    grid target, a list of id lists (up to EOS) for a sequence."""
    specs = model.specs
    gen = torch.Generator().manual_seed(cfg.seed)
    grids, seqs = [], []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        md: dict = {}
        for name in conditions:
            md[name] = {"tensor": condition_tensor(chunk, name, specs[name])}
            md = init_full_input(md, name, specs)
        md = init_empty_target(md, target, specs)
        md = generate(model, md, target=target, scheme=cfg.scheme, num_steps=cfg.num_steps,
                      temperature=cfg.temperature, generator=gen)
        out = md[target]["tensor"].numpy()
        if specs[target].is_sequence:
            seqs += [until_eos(r) for r in out]
        else:
            grids.append(out)
    return seqs if specs[target].is_sequence else np.concatenate(grids)


def until_eos(ids: Sequence[int]) -> list[int]:
    """Ids before the first EOS (all of them when there is none)."""
    ids = [int(t) for t in ids]
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
