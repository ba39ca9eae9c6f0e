"""Activation checkpointing and torch.compile, applied to a built model from outside
(torchtitan ``parallelize.py``): the model code knows nothing of them.

Both work per transformer block (each entry of ``model.encoder`` and ``model.decoder``),
the unit torchtitan uses: a block's activations are recomputed in backward, and each
block is compiled on its own (one small graph reused by every layer, instead of a whole
model graph that breaks at the per-modality, data-dependent embedding code).

Order: checkpointing first, then compile, then data parallelism (DDP/FSDP) by the caller.
Neither changes ``state_dict()`` keys: checkpoints written with and without them load
into each other.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def transformer_blocks(model: nn.Module) -> list[nn.ModuleList]:
    """The block lists of a FourM trunk (encoder, decoder)."""
    return [model.encoder, model.decoder]


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Wrap every block so its activations are recomputed in backward (non-reentrant
    ``torch.utils.checkpoint``; keyword arguments such as the decoder's masks pass through).
    The wrapper's state-dict hooks strip its prefix, so weights keep their names."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks in transformer_blocks(model):
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)
    return model


def apply_compile(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` every block in place (``nn.Module.compile``: parameter names and
    state-dict keys stay as they are). Token counts vary per batch (valid-first
    truncation), so shapes are left to dynamo's automatic dynamic shapes."""
    for blocks in transformer_blocks(model):
        for block in blocks:
            block.compile(**compile_kwargs)
    return model


def apply_parallelisms(model: nn.Module, cfg: Any) -> nn.Module:
    """The train config's knobs (``activation_checkpointing``, ``compile``), in torchtitan's order."""
    if getattr(cfg, "activation_checkpointing", False):
        apply_activation_checkpointing(model)
    if getattr(cfg, "compile", False):
        apply_compile(model)
    return model
