"""Importing the released 4M tokenizers: state dicts with the reference's key names and
shapes (apple/ml-4m `fourm/vq/vqvae.py`, `fourm/vq/models/vit_models.py`,
`fourm/vq/models/mlp_models.py`, `fourm/vq/quantizers/`, `fourm/vq/models/unet/unet.py`),
random values at small widths, written as a released folder -> import -> every tensor
compared -> encode_labels (and for DiVAEs decode_labels) runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fm21.modalities import MODALITIES
from fm21.tokenize.checkpoint import load_tokenizer, read_tokenizer_config
from fm21.tokenize.import_released import import_tokenizer

D, LATENT, HEADS = 16, 8, 2  # small widths, the reference's naming


def _linear(sd: dict, name: str, out: int, inp: int, gen: torch.Generator) -> None:
    sd[f"{name}.weight"] = torch.randn(out, inp, generator=gen)
    sd[f"{name}.bias"] = torch.randn(out, generator=gen)


def _vit(sd: dict, prefix: str, depth: int, pos_grid: int, gen: torch.Generator) -> None:
    """The keys of a reference ViTEncoder/ViTDecoder with post_mlp (no proj/out_proj)."""
    sd[f"{prefix}.pos_emb"] = torch.randn(1, D, pos_grid, pos_grid, generator=gen)
    for i in range(depth):
        b = f"{prefix}.blocks.{i}"
        for norm in ("norm1", "norm2"):
            _linear(sd, f"{b}.{norm}", D, 1, gen)
            sd[f"{b}.{norm}.weight"] = sd[f"{b}.{norm}.weight"][:, 0]
        _linear(sd, f"{b}.attn.qkv", 3 * D, D, gen)
        _linear(sd, f"{b}.attn.proj", D, D, gen)
        _linear(sd, f"{b}.mlp.fc1", 4 * D, D, gen)
        _linear(sd, f"{b}.mlp.fc2", D, 4 * D, gen)
    sd[f"{prefix}.norm_mlp.weight"], sd[f"{prefix}.norm_mlp.bias"] = torch.randn(D, generator=gen), torch.randn(D)
    _linear(sd, f"{prefix}.post_mlp.fc1", 4 * D, D, gen)
    _linear(sd, f"{prefix}.post_mlp.fc2", D, 4 * D, gen)


def _vq(sd: dict, codes: int, gen: torch.Generator) -> None:
    sd["quant_proj.weight"], sd["quant_proj.bias"] = torch.randn(LATENT, D, 1, 1, generator=gen), torch.randn(LATENT)
    sd["quantize._codebook.embed"] = torch.randn(codes, LATENT, generator=gen)
    sd["quantize._codebook.cluster_size"] = torch.rand(codes, generator=gen)
    sd["quantize._codebook.initted"] = torch.ones(1)


def _conv(sd: dict, name: str, out: int, inp: int, k: int, gen: torch.Generator, *, dims: int = 2) -> None:
    sd[f"{name}.weight"] = torch.randn(out, inp, *([k] * dims), generator=gen) / (inp * k**dims) ** 0.5
    sd[f"{name}.bias"] = torch.randn(out, generator=gen) * 0.1


def _norm(sd: dict, name: str, ch: int, gen: torch.Generator) -> None:
    sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(ch, generator=gen)
    sd[f"{name}.bias"] = 0.1 * torch.randn(ch, generator=gen)


def _adm_resblock(sd: dict, name: str, inp: int, out: int, emb: int, gen: torch.Generator) -> None:
    """Keys of a reference ResBlock (no scale-shift norm, 1x1 skip when the width changes)."""
    _norm(sd, f"{name}.in_layers.0", inp, gen)
    _conv(sd, f"{name}.in_layers.2", out, inp, 3, gen)
    _linear(sd, f"{name}.emb_layers.1", out, emb, gen)
    _norm(sd, f"{name}.out_layers.0", out, gen)
    _conv(sd, f"{name}.out_layers.3", out, out, 3, gen)
    if inp != out:
        _conv(sd, f"{name}.skip_connection", out, inp, 1, gen)


def _adm_attention(sd: dict, name: str, ch: int, gen: torch.Generator) -> None:
    _norm(sd, f"{name}.norm", ch, gen)
    _conv(sd, f"{name}.qkv", 3 * ch, ch, 1, gen, dims=1)  # 1x1 Conv1d
    _conv(sd, f"{name}.proj_out", ch, ch, 1, gen, dims=1)


def _adm_unet(sd: dict, in_ch: int, out_ch: int, *, width: int, mult: tuple[int, ...], res: int,
              attention_ds: tuple[int, ...], gen: torch.Generator) -> None:
    """The keys of a reference ``UNetModel`` under ``decoder.`` (the block walk of its __init__)."""
    emb, ch, ds, chans, idx = 4 * width, width, 1, [width], 1
    _linear(sd, "decoder.time_embed.0", emb, width, gen)
    _linear(sd, "decoder.time_embed.2", emb, emb, gen)
    _conv(sd, "decoder.input_blocks.0.0", width, in_ch, 3, gen)
    for level, m in enumerate(mult):
        for _ in range(res):
            _adm_resblock(sd, f"decoder.input_blocks.{idx}.0", ch, m * width, emb, gen)
            ch = m * width
            if ds in attention_ds:
                _adm_attention(sd, f"decoder.input_blocks.{idx}.1", ch, gen)
            chans, idx = chans + [ch], idx + 1
        if level != len(mult) - 1:
            _conv(sd, f"decoder.input_blocks.{idx}.0.op", ch, ch, 3, gen)  # Downsample, stride 2
            chans, idx, ds = chans + [ch], idx + 1, ds * 2
    _adm_resblock(sd, "decoder.middle_block.0", ch, ch, emb, gen)
    _adm_attention(sd, "decoder.middle_block.1", ch, gen)
    _adm_resblock(sd, "decoder.middle_block.2", ch, ch, emb, gen)
    idx = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(res + 1):
            _adm_resblock(sd, f"decoder.output_blocks.{idx}.0", ch + chans.pop(), m * width, emb, gen)
            ch, k = m * width, 1
            if ds in attention_ds:
                _adm_attention(sd, f"decoder.output_blocks.{idx}.1", ch, gen)
                k = 2
            if level and i == res:
                _conv(sd, f"decoder.output_blocks.{idx}.{k}.conv", ch, ch, 3, gen)  # Upsample
                ds //= 2
            idx += 1
    _norm(sd, "decoder.out.0", ch, gen)
    _conv(sd, "decoder.out.2", out_ch, width, 3, gen)


def _released(tmp_path, config: dict, sd: dict):
    folder = tmp_path / "released"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


def _vqvae_state(in_ch: int, out_ch: int, patch: int, codes: int, *, n_labels: int | None = None) -> dict:
    gen = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    if n_labels:
        sd["cls_emb.weight"] = torch.randn(n_labels, in_ch, generator=gen)
    sd["encoder.proj.weight"] = torch.randn(D, in_ch, patch, patch, generator=gen)
    sd["encoder.proj.bias"] = torch.randn(D, generator=gen)
    _vit(sd, "encoder", 1, 4, gen)  # position grid 4: trained at another size than read (2x2)
    _vq(sd, codes, gen)
    sd["post_quant_proj.weight"], sd["post_quant_proj.bias"] = torch.randn(D, LATENT, 1, 1), torch.randn(D)
    _vit(sd, "decoder", 1, 4, gen)
    _linear(sd, "decoder.out_proj", out_ch * patch * patch, D, gen)
    return sd


# fm21 key prefix -> reference key prefix (everything else has the reference's name)
RENAMES = {"to_latent.": "quant_proj.", "from_latent.": "post_quant_proj.", "class_embed.": "cls_emb.",
           "quantizer.codebook": "quantize._codebook.embed", "quantizer.cluster_size": "quantize._codebook.cluster_size"}


def _reference_name(key: str) -> str:
    return next((r + key[len(f):] for f, r in RENAMES.items() if key.startswith(f)), key)


def _assert_all_imported(tok, sd: dict, *, skip: str | None = None) -> None:
    for key, value in tok.state_dict().items():
        if skip and key.startswith(skip):
            continue
        ref = sd[_reference_name(key)]
        if key == "quantizer.codebook":  # stored unit-norm: the reference normalises at every lookup
            ref = F.normalize(ref, dim=-1)
        torch.testing.assert_close(value, ref.reshape(value.shape), rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("modality", ["tok_semseg", "tok_clip"])
def test_vit_vqvae_imports_every_tensor(tmp_path, modality) -> None:
    spec = MODALITIES[modality]
    semseg = spec.label_kind == "classes"
    in_ch = 6 if semseg else spec.num_channels  # semseg: the class embedding width
    patch = 16 if semseg else 1  # feature maps: the 1x1 input projection (patch_proj False)
    out_ch = spec.num_channels
    sd = _vqvae_state(in_ch, out_ch, patch, spec.vocab_size, n_labels=spec.num_channels if semseg else None)
    config = {"enc_type": "vit_b_enc", "dec_type": "vit_b_dec", "post_mlp": True, "patch_size": 16,
              "codebook_size": spec.vocab_size, "latent_dim": LATENT, "quant_type": "lucid"}
    folder = _released(tmp_path, config, sd)
    # 2x2 tokens either way: semseg at 32 px, patch 16; a feature map at twice its patch
    report = import_tokenizer(tmp_path / "out", path=folder, modality=modality, num_heads=HEADS,
                              resolution=32 if semseg else spec.patch_size * 2)
    assert report["family"] == "vqvae" and report["random"] == [] and report["dropped"] == [
        "quantize._codebook.initted"]
    tok = load_tokenizer(tmp_path / "out")
    assert tok.config.trunk == "vit" and tok.config.pos_grid == 4 and tok.config.grid_size == 2
    _assert_all_imported(tok, sd)
    rng = np.random.default_rng(0)
    if semseg:
        labels = rng.integers(0, 134, size=(3, 32, 32)).astype(np.uint8)
    else:
        labels = rng.normal(size=(3, 2, 2, spec.num_channels)).astype(np.float16)
    ids = tok.encode_labels(labels)
    assert ids.shape == (3, 4) and 0 <= ids.min() and ids.max() < spec.vocab_size
    assert read_tokenizer_config(tmp_path / "out")["training"]["random_parts"] == []


def _divae_state(in_ch: int, codes: int) -> dict:
    """A released DiVAE's encoder and quantizer (no decoder yet)."""
    return {k: v for k, v in _vqvae_state(in_ch, in_ch, 16, codes).items()
            if not k.startswith(("decoder.", "post_quant_proj."))}


DIVAE_CONFIG = {"enc_type": "vit_b_enc", "dec_type": "unet_patched", "post_mlp": True, "patch_size": 16,
                "beta_schedule": "linear", "prediction_type": "sample"}  # as the shipped divae configs
UNET = {"width": 32, "mult": (1, 2), "res": 1, "attention_ds": (2,)}  # GroupNorm(32) needs widths of 32


def test_divae_without_decoder_tensors_keeps_a_random_decoder(tmp_path) -> None:
    spec = MODALITIES["tok_depth"]
    sd = _divae_state(1, spec.vocab_size)  # an encoder-only copy of a release
    folder = _released(tmp_path, {**DIVAE_CONFIG, "codebook_size": spec.vocab_size}, sd)
    report = import_tokenizer(tmp_path / "out", path=folder, modality="tok_depth", num_heads=HEADS, resolution=32,
                              decoder_options={"unet_channels": [8, 16], "layers_per_block": 1})
    assert report["family"] == "divae" and report["random"] == ["decoder"] and report["skipped"] == []
    tok = load_tokenizer(tmp_path / "out")
    assert tok.config.unet_layout == "fm21"
    _assert_all_imported(tok, sd, skip="decoder.")
    assert read_tokenizer_config(tmp_path / "out")["training"]["random_parts"] == ["decoder"]
    depth = np.random.default_rng(0).uniform(1, 10, size=(2, 32, 32)).astype(np.float16)
    assert tok.encode_labels(depth).shape == (2, 4)


def _tensor_index(tensors: dict[str, torch.Tensor]) -> dict[bytes, list[str]]:
    index: dict[bytes, list[str]] = {}
    for key, value in tensors.items():
        index.setdefault(value.detach().float().contiguous().numpy().tobytes(), []).append(key)
    return index


@pytest.mark.parametrize(("modality", "in_ch", "heads"), [("tok_depth", 1, 2), ("tok_sam_edge", 3, 1)])
def test_divae_imports_the_adm_decoder(tmp_path, modality, in_ch, heads) -> None:
    """Every reference decoder tensor lands in fm21's UNet2DModel (found by value: random
    values are unique), each qkv as the legacy-order q/k/v rows; the decoder then decodes."""
    spec, gen = MODALITIES[modality], torch.Generator().manual_seed(1)
    sd = _divae_state(in_ch, spec.vocab_size)
    _adm_unet(sd, in_ch * 16 + LATENT, in_ch * 16, gen=gen, **UNET)  # decoder patch 4: C * 4 * 4
    folder = _released(tmp_path, {**DIVAE_CONFIG, "codebook_size": spec.vocab_size}, sd)
    report = import_tokenizer(tmp_path / "out", path=folder, modality=modality, num_heads=HEADS, resolution=32,
                              decoder_options={"unet_num_heads": heads})
    assert report["random"] == [] and report["skipped"] == []
    assert read_tokenizer_config(tmp_path / "out")["training"]["random_parts"] == []
    tok = load_tokenizer(tmp_path / "out")
    cfg = tok.config
    assert (cfg.unet_layout, cfg.unet_channels, cfg.layers_per_block, cfg.unet_attention_levels) == (
        "adm", (32, 64), 1, (1,))
    assert (cfg.decoder_patch, cfg.prediction_type, cfg.zero_terminal_snr, cfg.thresholding) == (
        4, "sample", True, True)  # zero SNR and thresholding: the reference DiVAE's defaults
    assert (cfg.decoder_channels, cfg.decode_steps) == ((3, 10) if in_ch == 3 else (0, 25))  # plotting_utils' steps
    assert float(tok.noise_schedule.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-9)  # zero terminal SNR
    # (the edge encoder's patch conv: summed over its 3 equal input channels)
    _assert_all_imported(tok, {**sd, "encoder.proj.weight": sd["encoder.proj.weight"].sum(1)}, skip="decoder.")

    ours = {k: v for k, v in tok.state_dict().items() if k.startswith("decoder.")}
    theirs = {k: v for k, v in sd.items() if k.startswith("decoder.")}
    index = _tensor_index({k: v.reshape(v.shape[0], -1).squeeze(-1) if v.ndim == 3 else v for k, v in ours.items()})
    qkv = {k for k in theirs if ".qkv." in k}
    for key in sorted(set(theirs) - qkv):  # one fm21 tensor per reference tensor (a 1x1 conv1d as a linear)
        value = theirs[key][..., 0] if theirs[key].ndim == 3 else theirs[key]
        assert len(index.get(value.float().contiguous().numpy().tobytes(), [])) == 1, key
    assert len(ours) == len(theirs) - len(qkv) + 3 * len(qkv)  # each qkv tensor became three
    # the legacy split, spelled out for the middle attention: channels are (heads, q|k|v, head_dim)
    ref_w, ch = sd["decoder.middle_block.1.qkv.weight"][..., 0], 64 // heads  # (3C, C)
    for part, name in enumerate(("to_q", "to_k", "to_v")):
        rows = torch.cat([ref_w[h * 3 * ch + part * ch : h * 3 * ch + (part + 1) * ch] for h in range(heads)])
        torch.testing.assert_close(ours[f"decoder.mid_block.attentions.0.{name}.weight"], rows, rtol=0, atol=0)

    labels = (np.random.default_rng(0).uniform(1, 10, size=(2, 32, 32)).astype(np.float16) if in_ch == 1
              else (np.random.default_rng(0).random((2, 32, 32)) > 0.9).astype(np.uint8))
    ids = tok.encode_labels(labels)
    decoded = tok.decode_labels(ids, steps=2)
    assert decoded.shape == (2, 32, 32) and np.isfinite(decoded.astype(np.float32)).all()
    np.testing.assert_array_equal(decoded, tok.decode_labels(ids, steps=2))  # seeded: a pure function of ids


def test_adm_blocks_match_the_reference_math(tmp_path) -> None:
    """Independent check of the conversion: the converted attention, ResBlock and timestep
    embedding against their definitions in `fourm/vq/models/unet/` computed here from the
    source tensors (QKVAttentionLegacy: heads split before q/k/v)."""
    spec, gen, heads = MODALITIES["tok_depth"], torch.Generator().manual_seed(2), 2
    sd = _divae_state(1, spec.vocab_size)
    _adm_unet(sd, 16 + LATENT, 16, gen=gen, **UNET)
    folder = _released(tmp_path, {**DIVAE_CONFIG, "codebook_size": spec.vocab_size}, sd)
    import_tokenizer(tmp_path / "out", path=folder, modality="tok_depth", num_heads=HEADS, resolution=32,
                     decoder_options={"unet_num_heads": heads})
    unet = load_tokenizer(tmp_path / "out").decoder
    ref = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    x = torch.randn(2, 64, 4, 4, generator=gen)

    # AttentionBlock: x + proj_out(attention(qkv(norm(x)))) on (B, C, T)
    a = "middle_block.1"
    h = F.group_norm(x, 32, ref[f"{a}.norm.weight"], ref[f"{a}.norm.bias"]).reshape(2, 64, 16)
    qkv = F.conv1d(h, ref[f"{a}.qkv.weight"], ref[f"{a}.qkv.bias"])  # (B, 3C, T)
    q, k, v = qkv.reshape(2 * heads, 3 * 64 // heads, 16).split(64 // heads, dim=1)  # legacy order
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / (64 // heads) ** 0.5, dim=-1)
    out = F.conv1d(torch.einsum("bts,bcs->bct", w, v).reshape(2, 64, 16), ref[f"{a}.proj_out.weight"],
                   ref[f"{a}.proj_out.bias"])
    torch.testing.assert_close(unet.mid_block.attentions[0](x), x + out.reshape(x.shape), rtol=1e-4, atol=1e-4)

    # ResBlock 32 -> 64 with its 1x1 skip (the first block of level 1), emb added after conv1
    r, xin, emb = "input_blocks.3.0", torch.randn(2, 32, 4, 4, generator=gen), torch.randn(2, 128, generator=gen)
    h = F.conv2d(F.silu(F.group_norm(xin, 32, ref[f"{r}.in_layers.0.weight"], ref[f"{r}.in_layers.0.bias"])),
                 ref[f"{r}.in_layers.2.weight"], ref[f"{r}.in_layers.2.bias"], padding=1)
    h = h + F.linear(F.silu(emb), ref[f"{r}.emb_layers.1.weight"], ref[f"{r}.emb_layers.1.bias"])[..., None, None]
    h = F.conv2d(F.silu(F.group_norm(h, 32, ref[f"{r}.out_layers.0.weight"], ref[f"{r}.out_layers.0.bias"])),
                 ref[f"{r}.out_layers.3.weight"], ref[f"{r}.out_layers.3.bias"], padding=1)
    expected = F.conv2d(xin, ref[f"{r}.skip_connection.weight"], ref[f"{r}.skip_connection.bias"]) + h
    torch.testing.assert_close(unet.down_blocks[1].resnets[0](xin, emb), expected, rtol=1e-4, atol=1e-4)

    # timestep_embedding: [cos, sin] of t * exp(-ln(10000) * i / half)
    t, half = torch.tensor([0, 17, 999]), 16
    args = t[:, None].float() * torch.exp(-np.log(10000) * torch.arange(half) / half)[None]
    torch.testing.assert_close(unet.time_proj(t), torch.cat([torch.cos(args), torch.sin(args)], -1))


def test_edge_divae_sums_its_three_input_channels(tmp_path) -> None:
    """The released edge tokenizer reads edges as 3 equal channels; fm21's one-channel patch
    conv with the summed weights gives the same encoder output."""
    sd = {k: v for k, v in _vqvae_state(3, 3, 16, MODALITIES["tok_sam_edge"].vocab_size).items()
          if not k.startswith(("decoder.", "post_quant_proj."))}
    folder = _released(tmp_path, {"enc_type": "vit_b_enc", "dec_type": "unet_patched", "post_mlp": True}, sd)
    import_tokenizer(tmp_path / "out", path=folder, modality="tok_sam_edge", num_heads=HEADS, resolution=32,
                     decoder_options={"unet_channels": [8, 16], "layers_per_block": 1})
    tok = load_tokenizer(tmp_path / "out")
    torch.testing.assert_close(tok.encoder.proj.weight, sd["encoder.proj.weight"].sum(1, keepdim=True))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(F.conv2d(x.expand(-1, 3, -1, -1), sd["encoder.proj.weight"], stride=16),
                               F.conv2d(x, tok.encoder.proj.weight, stride=16), rtol=1e-4, atol=1e-4)


def _mlp(sd: dict, prefix: str, dim_in: int, width: int, dim_out: int, blocks: int, gen) -> None:
    """A reference BottleneckMLP (expansion 4)."""
    _linear(sd, f"{prefix}.linear_in", width, dim_in, gen)
    for i in range(blocks):
        _linear(sd, f"{prefix}.blocks.{i}.block.0", 4 * width, width, gen)
        _linear(sd, f"{prefix}.blocks.{i}.block.2", width, 4 * width, gen)
        sd[f"{prefix}.layernorms.{i}.weight"] = torch.randn(width, generator=gen)
        sd[f"{prefix}.layernorms.{i}.bias"] = torch.randn(width, generator=gen)
    _linear(sd, f"{prefix}.linear_out", dim_out, width, gen)


def test_memcodes_global_imports_every_tensor(tmp_path) -> None:
    spec = MODALITIES["tok_dinov2_global"]
    gen = torch.Generator().manual_seed(0)
    width, tokens = 16, spec.num_global_tokens
    sd: dict[str, torch.Tensor] = {}
    _mlp(sd, "encoder", spec.num_channels, width, width, 2, gen)
    _linear(sd, "quant_proj", width, width, gen)
    sd["quant_proj.weight"] = sd["quant_proj.weight"][..., None, None]  # a 1x1 Conv2d
    sd["quantize.codes"] = torch.randn(tokens, spec.vocab_size, width // tokens, generator=gen)
    sd["quantize.to_k.weight"] = torch.randn(tokens, width // tokens, width // tokens, generator=gen)
    sd["quantize.to_v.weight"] = torch.randn(tokens, width // tokens, width // tokens, generator=gen)
    _linear(sd, "post_quant_proj", width, width, gen)
    sd["post_quant_proj.weight"] = sd["post_quant_proj.weight"][..., None, None]
    _mlp(sd, "decoder", width, width, spec.num_channels, 2, gen)
    folder = _released(tmp_path, {"enc_type": "BottleneckMLP/B_2-Wi_16", "quant_type": "memcodes",
                                  "num_codebooks": tokens, "codebook_size": spec.vocab_size}, sd)
    report = import_tokenizer(tmp_path / "out", path=folder, modality="tok_dinov2_global")
    assert report["family"] == "memcodes" and report["fixed"] == ["scale", "shift"]
    tok = load_tokenizer(tmp_path / "out")
    block_ref = {"0": "layernorms.{i}", "1": "blocks.{i}.block.0", "3": "blocks.{i}.block.2"}
    for key, value in tok.state_dict().items():
        parts = key.split(".")
        if key in ("shift", "scale"):
            torch.testing.assert_close(value, torch.full_like(value, float(key == "scale")))
            continue
        if key.startswith("quantizer."):
            ref = sd[f"quantize.{parts[1]}" + ("" if parts[1] == "codes" else ".weight")]
        elif parts[1] == "blocks":
            ref = sd[f"{parts[0]}." + block_ref[parts[3]].format(i=parts[2]) + f".{parts[4]}"]
        else:
            ref = sd[key]
        torch.testing.assert_close(value, ref.reshape(value.shape), rtol=0, atol=0, msg=key)
    vectors = np.random.default_rng(0).normal(size=(3, spec.num_channels)).astype(np.float32)
    ids = tok.encode_labels(vectors)
    assert ids.shape == (3, tokens) and ids.max() < spec.vocab_size
    # the CLI writes the same checkpoint
    from typer.testing import CliRunner

    from fm21.cli import app

    result = CliRunner().invoke(app, ["import", "tokenizer", "--path", str(folder), "--modality",
                                      "tok_dinov2_global", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert report["fingerprint"] in result.output
    assert read_tokenizer_config(tmp_path / "cli")["fingerprint"] == report["fingerprint"]


def test_unmapped_and_leftover_keys_are_listed(tmp_path) -> None:
    spec = MODALITIES["tok_semseg"]
    sd = _vqvae_state(6, spec.num_channels, 16, spec.vocab_size, n_labels=spec.num_channels)
    sd["encoder.extra_norm.weight"] = torch.ones(D)  # a key fm21 has no place for
    del sd["decoder.out_proj.bias"]  # and an fm21 key with no source
    folder = _released(tmp_path, {"enc_type": "vit_b_enc", "post_mlp": True}, sd)
    with pytest.raises(ValueError, match=r"decoder.out_proj.bias.*left over \['encoder.extra_norm.weight'\]"):
        import_tokenizer(tmp_path / "out", path=folder, modality="tok_semseg", num_heads=HEADS, resolution=32)
    with pytest.raises(ValueError, match="pass --modality"):
        import_tokenizer(tmp_path / "out", path=folder)


def _convnext(sd: dict, prefix: str, dim: int, gen: torch.Generator) -> None:
    """A reference ConvNeXtBlock (`fourm/vq/models/vit_models.py`), as in the decoder's out_conv."""
    sd[f"{prefix}.dwconv.weight"] = torch.randn(dim, 1, 7, 7, generator=gen)
    sd[f"{prefix}.dwconv.bias"] = torch.randn(dim, generator=gen)
    sd[f"{prefix}.norm.weight"] = torch.randn(dim, generator=gen)
    sd[f"{prefix}.norm.bias"] = torch.randn(dim, generator=gen)
    _linear(sd, f"{prefix}.pwconv1", 4 * dim, dim, gen)
    _linear(sd, f"{prefix}.pwconv2", dim, 4 * dim, gen)
    sd[f"{prefix}.gamma"] = torch.randn(dim, generator=gen)


def test_sam_instance_imports_every_tensor(tmp_path) -> None:
    """The released SAM-instance VQVAE (ViT encoder/decoder with out_conv, patch 16 on 64 px
    masks, 1024 codes) -> fm21's sam_mask with trunk: vit."""
    gen = torch.Generator().manual_seed(1)
    sd = _vqvae_state(1, 1, 16, 1024)  # 64 px / patch 16: the 4x4 position grid of the builder
    for i in range(2):
        _convnext(sd, f"decoder.out_conv.{i}", 1, gen)
    config = {"enc_type": "vit_b_enc", "dec_type": "vit_b_dec", "out_conv": True, "post_mlp": True,
              "patch_size": 16, "image_size": 64, "n_channels": 1, "codebook_size": 1024, "latent_dim": LATENT,
              "quant_type": "lucid", "norm_codes": True}
    folder = _released(tmp_path, config, sd)
    report = import_tokenizer(tmp_path / "out", path=folder, modality="sam_instance", num_heads=HEADS)
    assert report["family"] == "sam_mask" and report["random"] == [] and report["dropped"] == [
        "quantize._codebook.initted"]
    tok = load_tokenizer(tmp_path / "out")
    cfg = tok.config
    assert (cfg.trunk, cfg.pos_grid, cfg.num_tokens, cfg.vocab_size, cfg.hidden_dim) == ("vit", 4, 16, 1024, D)
    # every tensor landed; the patch projection rewritten from {0, 1} to {-1, 1} inputs
    weight, bias = sd["encoder.proj.weight"], sd["encoder.proj.bias"]
    torch.testing.assert_close(tok.encoder.proj.weight, weight / 2, rtol=0, atol=0)
    torch.testing.assert_close(tok.encoder.proj.bias, bias + weight.sum((1, 2, 3)) / 2)
    _assert_all_imported(tok, sd, skip="encoder.proj.")
    assert "decoder.out_conv.1.gamma" in tok.state_dict()
    # masks of boxes, as box crops look: the fold is exact (the reference's patchify of {0, 1})
    yy, xx = np.mgrid[:64, :64]
    masks = np.stack([(xx >= 8 * k) & (yy < 64 - 12 * k) for k in range(3)]).astype(np.uint8)
    x01 = torch.from_numpy(masks).float()[:, None]
    torch.testing.assert_close(tok.encoder.proj(tok.to_model(masks)), F.conv2d(x01, weight, bias, stride=16),
                               rtol=1e-5, atol=1e-4)
    ids = tok.encode_labels(masks)
    assert ids.shape == (3, 16) and 0 <= ids.min() and ids.max() < 1024
    np.testing.assert_array_equal(tok.encode_labels(masks), ids)
    probs = tok.decode_probs(ids)
    assert probs.shape == (3, 64, 64) and np.array_equal(probs, tok.decode_probs(ids))  # decode deterministic
    assert set(np.unique(tok.decode_labels(ids))) <= {0, 1}
    # out_conv as the reference computes it: a LayerNorm over the single logit channel gives its
    # bias, so each ConvNeXt block adds gamma * pwconv2(GELU(pwconv1(norm.bias))) everywhere
    with torch.no_grad():
        q = tok.from_latent(tok.quantizer.lookup(torch.from_numpy(ids.astype(np.int64)).reshape(3, 4, 4)))
        before = super(type(tok.decoder), tok.decoder).forward(q)  # the ViT decoder without out_conv
        shift = sum(sd[f"decoder.out_conv.{i}.gamma"] * F.linear(F.gelu(F.linear(
            sd[f"decoder.out_conv.{i}.norm.bias"], sd[f"decoder.out_conv.{i}.pwconv1.weight"],
            sd[f"decoder.out_conv.{i}.pwconv1.bias"])), sd[f"decoder.out_conv.{i}.pwconv2.weight"],
            sd[f"decoder.out_conv.{i}.pwconv2.bias"]) for i in range(2))
    torch.testing.assert_close(torch.sigmoid(before + shift)[:, 0].numpy(), probs, rtol=1e-5, atol=1e-5)
    assert read_tokenizer_config(tmp_path / "out")["training"]["random_parts"] == []


def test_sam_instance_without_out_conv_is_refused(tmp_path) -> None:
    sd = _vqvae_state(1, 1, 16, 1024)
    folder = _released(tmp_path, {"enc_type": "vit_b_enc", "post_mlp": True}, sd)
    with pytest.raises(ValueError, match="out_conv"):
        import_tokenizer(tmp_path / "out", path=folder, modality="sam_instance", num_heads=HEADS)
