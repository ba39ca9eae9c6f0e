"""Importing the released 4M tokenizers: state dicts with the reference's key names and
shapes (apple/ml-4m `fourm/vq/vqvae.py`, `fourm/vq/models/vit_models.py`,
`fourm/vq/models/mlp_models.py`, `fourm/vq/quantizers/`), random values at small widths,
written as a released folder -> import -> every tensor compared -> encode_labels runs."""

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


def test_divae_imports_encoder_and_tags_the_decoder_random(tmp_path) -> None:
    spec = MODALITIES["tok_depth"]
    sd = {k: v for k, v in _vqvae_state(1, 1, 16, spec.vocab_size).items()
          if not k.startswith(("decoder.", "post_quant_proj."))}
    # a few keys of the reference's ADM UNet decoder: not mapped, skipped as a whole
    sd["decoder.input_blocks.0.0.weight"] = torch.randn(8, 1 * 16 + LATENT, 3, 3)
    sd["decoder.time_embed.0.weight"] = torch.randn(32, 8)
    config = {"enc_type": "vit_b_enc", "dec_type": "unet_patched", "post_mlp": True, "patch_size": 16,
              "beta_schedule": "linear", "prediction_type": "sample", "codebook_size": spec.vocab_size}
    folder = _released(tmp_path, config, sd)
    report = import_tokenizer(tmp_path / "out", path=folder, modality="tok_depth", num_heads=HEADS, resolution=32,
                              decoder_options={"unet_channels": [8, 16], "layers_per_block": 1})
    assert report["family"] == "divae" and report["random"] == ["decoder"] and report["skipped"] == ["decoder"]
    tok = load_tokenizer(tmp_path / "out")
    _assert_all_imported(tok, sd, skip="decoder.")
    saved = read_tokenizer_config(tmp_path / "out")
    assert saved["training"]["random_parts"] == ["decoder"]
    depth = np.random.default_rng(0).uniform(1, 10, size=(2, 32, 32)).astype(np.float16)
    assert tok.encode_labels(depth).shape == (2, 4)


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
