"""train.init_from: a fresh run starts from another checkpoint's weights (fine-tuning, e.g.
from `fm21 import 4m21`, which writes this same checkpoint format)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # resume_run / tiny_store, as test_resume does
from resume_run import TRAIN, context, make_workdir  # noqa: E402
from tiny_store import store_specs  # noqa: E402

from fm21.config import ModelConfig  # noqa: E402
from fm21.store.layout import Workdir  # noqa: E402
from fm21.train.checkpoint import init_weights, load_latest  # noqa: E402
from fm21.train.loop import run_train  # noqa: E402
from fm21.train.model import FourM  # noqa: E402


def _train(workdir: Path, cfg) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_train(cfg, context(workdir))
    finally:
        torch.set_num_threads(threads)


def test_a_fresh_run_starts_from_the_given_weights(tmp_path):
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    for w in (source, tuned):
        make_workdir(w)
    _train(source, TRAIN.model_copy(update={"steps": 4, "checkpoint_every": 4}))
    trained, _ = load_latest(Workdir(source).checkpoints_dir)
    # lr 0: the fine-tuning run must end with exactly the weights it started from
    _train(tuned, TRAIN.model_copy(update={"steps": 2, "checkpoint_every": 2, "lr": 0.0, "min_lr": 0.0,
                                           "weight_decay": 0.0, "init_from": str(Workdir(source).checkpoints_dir)}))
    after, meta = load_latest(Workdir(tuned).checkpoints_dir)
    assert meta["step"] == 2
    for key, value in trained.state_dict().items():
        assert torch.equal(after.state_dict()[key], value), key


def test_a_subset_of_modalities_loads_and_a_mismatch_is_named(tmp_path):
    make_workdir(tmp_path)
    _train(tmp_path, TRAIN.model_copy(update={"steps": 4, "checkpoint_every": 4}))
    ckpts = Workdir(tmp_path).checkpoints_dir
    trained, _ = load_latest(ckpts)
    specs = store_specs()
    subset = FourM({n: s for n, s in specs.items() if n != "caption"}, TRAIN.model,
                   num_input_tokens=TRAIN.num_input_tokens, num_target_tokens=TRAIN.num_target_tokens)
    init_weights(subset, ckpts)  # caption's embeddings and head are left out
    for key, value in subset.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key
    wider = FourM(specs, ModelConfig(dim=48, encoder_depth=1, decoder_depth=1, num_heads=2),
                  num_input_tokens=TRAIN.num_input_tokens, num_target_tokens=TRAIN.num_target_tokens)
    with pytest.raises(ValueError, match=r"does not fit train.model.*mis-shaped \['decoder.0"):
        init_weights(wider, ckpts)
    with pytest.raises(FileNotFoundError, match="train.init_from: no checkpoint"):
        init_weights(subset, tmp_path / "nowhere")
