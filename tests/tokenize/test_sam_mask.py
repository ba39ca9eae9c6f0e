"""The sam_mask tokenizer family: contract, determinism, checkpoint round trip, labels
extraction and pasting back (tiny configs: plumbing; quality is benchmarks/bench_sam_mask.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from fm21.modalities import MODALITIES
from fm21.tokenize import sam_mask
from fm21.tokenize.instances import box_crops, decode_rle, mask_iou, paste_masks
from fm21.tokenize.sam_mask import SamMaskConfig, decode_masks, instance_masks

SPEC = MODALITIES["sam_instance"].at(vocab_size=4500)  # the spec's vocab is the text one
TINY = {"hidden_dim": 16, "num_layers": 1, "latent_dim": 8, "vocab_size": 32, "steps": 3, "batch_size": 8}


def _rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major, zeros first), as the sam specialist writes it."""
    flat = mask.T.ravel()
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def _row(rng: np.random.Generator, size: int = 32, n: int = 4) -> list[dict]:
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        x0, y0 = rng.integers(0, size - 6, 2)
        x1, y1 = x0 + rng.integers(3, size - x0), y0 + rng.integers(3, size - y0)
        mask = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1) & ((xx + yy) % 7 != 0)
        out.append({"rle": _rle(mask), "box": [0, 0, 1, 1], "score": 1.0, "stability_score": 1.0,
                    "area": int(mask.sum())})
    tiny = np.zeros((size, size), bool)
    tiny[3, 3] = True  # a one-pixel box: dropped
    return out + [{"rle": _rle(tiny), "box": [0, 0, 1, 1], "score": 1.0, "stability_score": 1.0, "area": 1}]


@pytest.fixture(scope="module")
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    masks, boxes = instance_masks([_row(rng), None, [], _row(rng)], 32)
    return masks, boxes


def test_config_from_spec_options_and_dict_round_trip() -> None:
    cfg = SamMaskConfig.from_spec(SPEC, TINY)
    assert (cfg.family, cfg.modality, cfg.num_tokens, cfg.vocab_size) == ("sam_mask", "sam_instance", 16, 32)
    assert SamMaskConfig.from_dict({**cfg.to_dict(), "fingerprint": "x", "random_init": False}) == cfg
    with pytest.raises(ValueError, match="'hidden'"):
        SamMaskConfig.from_spec(SPEC, {"hidden": 8})
    with pytest.raises(ValueError, match="16 tokens"):
        SamMaskConfig.from_spec(SPEC, {"patch_size": 8})
    with pytest.raises(ValueError, match="vocab_size"):
        SamMaskConfig.from_spec(SPEC, {"vocab_size": 2048})
    assert sam_mask.FAMILY == "sam_mask"


def test_instance_masks_extracts_box_crops(labels) -> None:
    masks, boxes = labels
    assert masks.shape == (8, 64, 64) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    assert boxes.shape == (8, 4) and (boxes[:, 2:] >= boxes[:, :2] + 2).all()  # the 1-px instance is gone
    # cutting to the box and pasting back loses little (geometry alone, no tokenizer)
    rng = np.random.default_rng(0)
    full = np.stack([decode_rle(i["rle"]) for i in _row(rng)[:4]])
    again = paste_masks(box_crops(full, boxes[:4]), boxes[:4], size=32)
    assert mask_iou(again, full).min() > 0.9


def test_train_is_deterministic_and_meets_the_contract(labels, tmp_path) -> None:
    masks, boxes = labels
    tok, metrics = sam_mask.train(SPEC, TINY, masks, masks[:4], seed=0)
    again, metrics2 = sam_mask.train(SPEC, TINY, masks, masks[:4], seed=0)
    for (k, a), b in zip(tok.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert metrics["mask_iou"] == metrics2["mask_iou"] and 0.0 <= metrics["mask_iou"] <= 1.0
    assert {"mask_iou", "recon_loss", "codebook_usage", "perplexity", "train"} <= set(metrics)
    assert tok.training_summary["steps"] == 3 and tok.fingerprint is None
    codebook = tok.quantizer.codebook.clone()
    ids = tok.encode_labels(masks, batch_size=3)
    assert ids.shape == (8, 16) and ids.dtype == np.int16 and 0 <= ids.min() and ids.max() < 32
    assert torch.equal(codebook, tok.quantizer.codebook)  # encoding never updates the codebook
    recon = tok.decode_labels(ids)
    assert recon.shape == (8, 64, 64) and set(np.unique(recon)) <= {0, 1}
    pasted = decode_masks(tok, ids, boxes, 32)
    assert pasted.shape == (8, 32, 32) and pasted.dtype == bool
    for m, (x0, y0, x1, y1) in zip(pasted, boxes):  # nothing outside its box
        outside = m.copy()
        outside[y0:y1 + 1, x0:x1 + 1] = False
        assert not outside.any()
    # save/load through build + safetensors: identical weights and ids
    blob = save({k: v.contiguous() for k, v in tok.state_dict().items()})
    loaded = sam_mask.build(SamMaskConfig.from_dict(tok.config.to_dict()))
    loaded.load_state_dict(load(blob), strict=True)
    np.testing.assert_array_equal(loaded.encode_labels(masks), ids)
    np.testing.assert_array_equal(loaded.decode_labels(ids), recon)
    sam_mask.save_recon_png(tok, masks, tmp_path / "recon.png")
    assert (tmp_path / "recon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no instance masks"):
        sam_mask.train(SPEC, TINY, masks[:0], masks[:0], seed=0)


def test_vit_trunk_is_opt_in_and_the_conv_dump_is_unchanged(labels) -> None:
    masks, _ = labels
    conv = SamMaskConfig.from_spec(SPEC, TINY)
    assert not {"trunk", "num_heads", "pos_grid"} & set(conv.to_dict())  # old checkpoints keep their fingerprint
    assert "decoder.out_conv.0.gamma" not in sam_mask.build(conv).state_dict()
    options = {**TINY, "trunk": "vit", "num_heads": 2}
    vit = SamMaskConfig.from_spec(SPEC, options)
    assert vit.to_dict()["trunk"] == "vit" and SamMaskConfig.from_dict(vit.to_dict()) == vit
    tok, metrics = sam_mask.train(SPEC, options, masks, masks[:4], seed=0)
    keys = set(tok.state_dict())
    # the reference's layout: ViT blocks, plain 1x1 quant projection, the decoder's ConvNeXt out_conv
    assert {"encoder.blocks.0.attn.qkv.weight", "to_latent.weight", "decoder.out_proj.weight",
            "decoder.out_conv.1.pwconv2.weight"} <= keys
    ids = tok.encode_labels(masks)
    assert ids.shape == (8, 16) and 0 <= ids.min() and ids.max() < 32 and 0.0 <= metrics["mask_iou"] <= 1.0
    assert tok.decode_labels(ids).shape == (8, 64, 64)
    with pytest.raises(ValueError, match="trunk"):
        SamMaskConfig.from_spec(SPEC, {"trunk": "unet"})
