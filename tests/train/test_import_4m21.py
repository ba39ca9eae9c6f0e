"""`fm21 import 4m21`: a released 4M-21 state dict (names and shapes from the reference code,
tests/train/reference_4m_state.py) lands tensor by tensor in fm21's FourM, and runs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fm21.config import MODEL_SIZES
from fm21.train.checkpoint import load_checkpoint
from fm21.train.import_4m21 import (
    ImportError4M, _with_checkpoint_vocabs, import_4m21, model_config, reference_key,
)
from fm21.train.model import FourM
from tests.train.reference_4m_state import DOMAINS, hf_config, reference_shapes, reference_state

TINY = ["rgb@224", "tok_rgb@224", "caption", "t5_caption", "tok_dinov2_global", "tok_dinov2@224"]
SIZE = {"dim": 32, "enc": 1, "dec": 1}


def _release(tmp_path, state, config):
    folder = tmp_path / "release"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _batch(model: FourM) -> dict:
    """One sample per modality, everything an input, caption/tok_rgb targets."""
    torch.manual_seed(0)
    out = {}
    for name, spec in model.specs.items():
        if spec.kind == "pixels":
            t = torch.randn(1, 3, spec.resolution, spec.resolution)
            n = spec.num_tokens
        elif spec.kind == "embedding":
            t, n = torch.randn(1, spec.max_seq_len, spec.embedding_dim), spec.max_seq_len
        elif spec.is_sequence:
            n = spec.seq_tensor_len
            t = torch.zeros(1, n, dtype=torch.long)
            t[0, :5] = torch.tensor([4300, 4301, 5, 4302, 3])
        else:
            n = spec.num_tokens
            t = torch.randint(0, spec.vocab_size, (1, n))
        inp = torch.ones(1, n, dtype=torch.bool)
        inp[:, : min(n, 5)] = False
        tgt = torch.ones(1, n, dtype=torch.bool)
        dam = torch.zeros(1, n, dtype=torch.int32)
        if spec.can_be_target:
            tgt[:, 5:9] = False
            dam[:, 5] = 4 if spec.is_image_like else 1
        out[name] = {"tensor": t, "input_mask": inp, "target_mask": tgt, "decoder_attention_mask": dam}
    return out


def test_import_lands_every_tensor_and_runs(tmp_path) -> None:
    state = reference_state(TINY, **SIZE)  # random-init weights (tag: random)
    folder = _release(tmp_path, state, hf_config(TINY, dim=32, enc=1, dec=1))
    report = import_4m21(folder, tmp_path / "out")
    model, meta = load_checkpoint(tmp_path / "out")
    assert meta["extra"]["weights"] == "released" and report["tensors"] == len(model.state_dict())
    for key, value in model.state_dict().items():  # every tensor is the reference's, by value
        src = reference_key(key, model.specs)
        if src not in state:
            src = src.replace("encoder_embeddings.", "decoder_embeddings.", 1)
        assert torch.equal(value, state[src]), key
    # the reference's fixed tables are what the imported model computes
    rgb = model.encoder_embeddings["rgb"].positions.pos_emb
    assert torch.allclose(rgb, state["encoder_embeddings.rgb@224.pos_emb"], atol=1e-5)
    cap = model.encoder_embeddings["caption"].pos_table[:, :256]
    assert torch.allclose(cap, state["encoder_embeddings.caption.pos_emb"], atol=1e-3)
    # the untied heads, the gate and the context bias are the release's
    assert not model.config.tie_sequence_logits and model.decoder_proj_context.bias is not None
    model.eval()
    with torch.no_grad():
        loss, per_mod = model(_batch(model))
    assert torch.isfinite(loss) and set(per_mod) == {"tok_rgb", "caption", "tok_dinov2_global", "tok_dinov2"}


def test_leftover_missing_and_misshapen_tensors_are_errors(tmp_path) -> None:
    state = reference_state(TINY, **SIZE)
    state["encoder.0.attn.q_norm.weight"] = torch.ones(16)  # a qk-norm model's extra tensor
    del state["decoder.0.mlp.fc3.weight"]
    state["mask_token"] = torch.zeros(1, 1, 16)
    with pytest.raises(ImportError4M) as err:
        import_4m21(_release(tmp_path, state, hf_config(TINY, **{"dim": 32, "enc": 1, "dec": 1})), tmp_path / "o")
    msg = str(err.value)
    assert "encoder.0.attn.q_norm.weight" in msg and "decoder.0.mlp.gate.weight" in msg and "mask_token" in msg
    assert not (tmp_path / "o" / "config.json").exists()


def test_base_size_name_and_shape_table_matches_fm21_base() -> None:
    """Every tensor of fm21's 4M-21 B model has its reference tensor, same shape, and every
    other reference tensor is one the import drops by rule; built on the meta device."""
    domains = list(DOMAINS)
    b = MODEL_SIZES["base"]
    table = reference_shapes(domains, dim=b["dim"], enc=b["encoder_depth"], dec=b["decoder_depth"])
    specs, cfg = model_config(hf_config(domains, dim=768, enc=12, dec=12) | {"num_heads": 12})
    specs = _with_checkpoint_vocabs(specs, {k: torch.empty(v, device="meta") for k, v in table.items()})
    with torch.device("meta"):
        model = FourM(specs, cfg, tie_sequence_logits=False)
    used = set()
    for key, value in model.state_dict().items():
        src = reference_key(key, specs)
        assert src in table and table[src] == tuple(value.shape), (key, src)
        used.add(src)
    droppable = (r"\.pos_emb$", r"norm\w*\.bias$", r"decoder_embeddings\.tok_[\w@]+\.token_emb\.weight$",
                 r"decoder_embeddings\.[\w@]+\.mod_emb$")
    import re
    left = [k for k in table if k not in used and not any(re.search(p, k) for p in droppable)]
    assert left == []
    assert 195e6 < model.num_parameters(trunk_only=True) < 201e6  # 4M-B: 198M
