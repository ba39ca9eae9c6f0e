"""Activation checkpointing applied from outside: same loss, same gradients, same weights'
names. (torch.compile costs tens of seconds on CPU: benchmarks/bench_mfu.py runs it.)"""

from __future__ import annotations

import torch
from fourm_tiny import tiny_batch, tiny_model, tiny_specs

from fm21.config import TrainConfig
from fm21.train.parallelize import apply_activation_checkpointing, apply_parallelisms


def _loss_and_grads(model, batch):
    loss, _ = model(batch)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _plain_names(grads):
    return {n.replace("_checkpoint_wrapped_module.", ""): g for n, g in grads.items()}


def test_checkpointed_model_matches_the_plain_one():
    specs = tiny_specs()
    batch = tiny_batch(specs)
    plain = tiny_model(specs)
    checkpointed = apply_activation_checkpointing(tiny_model(specs))
    assert type(checkpointed.encoder[0]).__name__ == "CheckpointWrapper"
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(checkpointed, batch)
    assert torch.equal(loss_a, loss_b)
    grads_b = _plain_names(grads_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_keeps_state_dict_keys_both_ways():
    specs = tiny_specs()
    plain = tiny_model(specs)
    checkpointed = apply_activation_checkpointing(tiny_model(specs, seed=1))
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    checkpointed.load_state_dict(plain.state_dict())  # strict
    batch = tiny_batch(specs)
    assert torch.equal(checkpointed(batch)[0], plain(batch)[0])


def test_parallelisms_follow_the_train_config():
    specs = tiny_specs()
    untouched = apply_parallelisms(tiny_model(specs), TrainConfig())
    assert type(untouched.decoder[0]).__name__ == "DecoderBlock"
    wrapped = apply_parallelisms(tiny_model(specs), TrainConfig(activation_checkpointing=True))
    assert all(type(b).__name__ == "CheckpointWrapper" for b in [*wrapped.encoder, *wrapped.decoder])
