"""Memcodes tokenizers (global embeddings and SMPL body poses) at tiny sizes: shapes, eval
determinism, a loss that falls, checkpoint round trips and input validation. Quality at the
recipe's size is measured by ``benchmarks/bench_memcodes.py``, not here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load

from fm21.modalities import get_spec
from fm21.tokenize import memcodes
from fm21.tokenize.checkpoint import save_tokenizer

TINY = {"hidden_dim": 16, "num_blocks": 2, "steps": 4, "batch_size": 16}
GLOBAL = get_spec("tok_dinov2_global").at(vocab_size=32)
POSE = get_spec("human_poses")


def global_vectors(num: int, *, seed: int = 0) -> np.ndarray:
    """float16 ``(num, 768)`` vectors of a rank-4 mixture (as the labels.lance column stores them)."""
    basis = np.random.default_rng(99).normal(size=(4, 768))
    z = np.random.default_rng(seed).normal(size=(num, 4))
    return (z @ basis).astype(np.float16)


def random_poses(num: int, *, seed: int = 0) -> np.ndarray:
    """``(num, 207)``: 23 random rotation matrices per person (QR of Gaussians, det +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(num * 23, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    q[np.linalg.det(q) < 0] *= -1
    return q.reshape(num, 207).astype(np.float32)


def tiny(spec, **options) -> memcodes.MemcodesTokenizer:
    torch.manual_seed(0)
    return memcodes.build(memcodes.MemcodesConfig.from_spec(spec, {**TINY, **options}))


def test_global_config_comes_from_the_spec() -> None:
    cfg = memcodes.MemcodesConfig.from_spec(GLOBAL, TINY)
    assert (cfg.use, cfg.loss, cfg.input_dim) == ("global", "cosine_1d", 768)
    assert (cfg.num_tokens, cfg.vocab_size, cfg.latent_dim) == (16, 32, 16)
    pose = memcodes.MemcodesConfig.from_spec(POSE, {})
    assert (pose.use, pose.loss, pose.input_dim, pose.num_tokens, pose.vocab_size) == \
        ("body_pose", "smooth_l1", 207, 8, 1024)  # the reference's pose tokenizer
    assert (pose.hidden_dim, pose.num_blocks, pose.expansion) == (1024, 6, 4)


def test_global_shapes_dtypes_and_id_ranges() -> None:
    tok = tiny(GLOBAL)
    ids = tok.encode_labels(global_vectors(5))
    assert ids.dtype == np.int16 and ids.shape == (5, 16)
    assert ids.min() >= 0 and ids.max() < 32
    recon = tok.decode_labels(ids)
    assert recon.dtype == np.float32 and recon.shape == (5, 768)
    assert tok.encode_labels(np.zeros((0, 768), np.float16)).shape == (0, 16)


def test_pose_helpers_shapes_and_rotations() -> None:
    tok = tiny(POSE, vocab_size=64)
    ids = memcodes.encode_body_poses(tok, random_poses(3))
    assert ids.shape == (3, 8) and ids.min() >= 0 and ids.max() < 64
    poses = memcodes.decode_body_poses(tok, ids)
    assert poses.shape == (3, 207)
    rot = poses.reshape(-1, 3, 3).astype(np.float64)  # decoded poses are proper rotations
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="not a body-pose tokenizer"):
        memcodes.encode_body_poses(tiny(GLOBAL), random_poses(1))


def test_eval_is_deterministic_and_never_changes_weights() -> None:
    tok = tiny(GLOBAL).train()
    x = global_vectors(16)
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    ids = tok.encode_labels(x)
    np.testing.assert_array_equal(ids, tok.encode_labels(x))
    assert tok.training  # the caller's mode is restored
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    # training mode samples codes (Gumbel noise): the two forward passes disagree somewhere
    xt = tok.check_labels(x)
    assert not torch.equal(tok(xt)[1], tok(xt)[1])


def test_training_lowers_the_loss_and_is_deterministic(tmp_path) -> None:
    opts = {**TINY, "steps": 40, "lr": 3e-3}
    train, val = global_vectors(128, seed=1), global_vectors(32, seed=2)
    tok, metrics = memcodes.train(GLOBAL, opts, train, val, seed=0)
    summary = metrics["train"]
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    assert 0.0 < metrics["cosine"] <= 1.0 and tok.training_summary == summary
    assert not tok.training
    again, _ = memcodes.train(GLOBAL, opts, train, val, seed=0)
    np.testing.assert_array_equal(tok.encode_labels(val), again.encode_labels(val))
    memcodes.save_recon_png(tok, val, tmp_path / "recon.png")
    assert (tmp_path / "recon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pose_training_reports_angle_metrics(tmp_path) -> None:
    poses = random_poses(48)
    tok, metrics = memcodes.train(POSE, {**TINY, "vocab_size": 16}, poses[:32], poses[32:], seed=0)
    assert {"angle_error_deg", "smooth_l1", "codebook_usage"} <= metrics.keys()
    assert 0.0 <= metrics["angle_error_deg"] <= 180.0
    memcodes.save_recon_png(tok, poses[32:], tmp_path / "pose.png")
    assert (tmp_path / "pose.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_round_trip_gives_identical_ids(tmp_path) -> None:
    tok = tiny(POSE, vocab_size=64)
    tok.fit_normalization(tok.check_labels(random_poses(8, seed=3)))  # buffers travel with the weights
    save_tokenizer(tok, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())  # + fingerprint, training, ...
    loaded = memcodes.build(memcodes.MemcodesConfig.from_dict(config))
    loaded.load_state_dict(load((tmp_path / "ckpt" / "model.safetensors").read_bytes()), strict=True)
    assert loaded.config == tok.config
    poses = random_poses(10, seed=4)
    ids = tok.encode_labels(poses)
    np.testing.assert_array_equal(loaded.encode_labels(poses), ids)
    np.testing.assert_array_equal(loaded.decode_labels(ids), tok.decode_labels(ids))


def test_bad_shapes_raise_naming_the_expected_shape() -> None:
    tok = tiny(GLOBAL)
    with pytest.raises(ValueError, match=r"\(B, 768\)"):
        tok.encode_labels(np.zeros((2, 767), np.float32))
    with pytest.raises(ValueError, match=r"\(B, 768\)"):
        tok.encode_labels(np.zeros((2, 24, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        tok.decode_labels(np.zeros((2, 8), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        tok.decode_labels(np.full((1, 16), 32))


def test_unknown_or_misplaced_options_raise() -> None:
    with pytest.raises(ValueError, match="'hidden'"):
        memcodes.MemcodesConfig.from_spec(GLOBAL, {"hidden": 8})
    with pytest.raises(ValueError, match="'vocab_size'"):  # a global spec takes its codes from the registry
        memcodes.MemcodesConfig.from_spec(GLOBAL, {"vocab_size": 8})
    with pytest.raises(ValueError, match="heads"):
        memcodes.MemcodesConfig.from_spec(GLOBAL, {"latent_dim": 20})
    with pytest.raises(ValueError, match="global_tokens"):
        memcodes.MemcodesConfig.from_spec(get_spec("tok_rgb"), {})
    with pytest.raises(ValueError, match="family"):
        memcodes.MemcodesConfig.from_spec(GLOBAL, {"family": "vqvae"})


def test_label_vectors_read_the_label_columns() -> None:
    vecs = memcodes.label_vectors(GLOBAL, [np.ones(768, np.float16).tolist(), None, np.zeros(768).tolist()])
    assert vecs.shape == (2, 768) and vecs.dtype == np.float32
    pose = random_poses(3)
    people = [[{"body_pose": pose[0].tolist()}, {"body_pose": None}], [], None, [{"body_pose": pose[1].tolist()}]]
    np.testing.assert_array_equal(memcodes.label_vectors(POSE, people), pose[:2])
