"""A tiny train-stage run on a random token store, for the kill-and-resume tests.

Imported by ``test_resume.py`` and run as a script (``python resume_run.py <workdir>``) in
the processes those tests kill with ``FM21_CRASH_AT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tiny_store import store_specs, write_store

from fm21.config import ModelConfig, RayConfig, TrainConfig
from fm21.stages import RunContext
from fm21.store.layout import Workdir

TRAIN = TrainConfig(
    model=ModelConfig(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2),
    num_input_tokens=8, num_target_tokens=8, batch_size=4, steps=12, warmup_steps=3,
    log_every=1, checkpoint_every=4, val_every=6, val_samples=4, seed=0,
)


def context(workdir: Path) -> RunContext:
    return RunContext(workdir=Workdir(workdir), seed=0, specs=store_specs(), ray=RayConfig())


def make_workdir(workdir: Path) -> None:
    """A workdir holding only tokens.lance (32 keys in 4 fragments, a fifth of them val)."""
    write_store(Workdir(workdir).tokens_uri, store_specs(), num_keys=32, keys_per_fragment=8, num_crops=2,
                val_every=5)


def run(workdir: Path) -> dict:
    """The train stage on one torch thread (results are bit-exact only at a fixed thread count)."""
    from fm21.train.loop import run_train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_train(TRAIN, context(workdir))
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    run(Path(sys.argv[1]))
