"""Import the released 4M tokenizers (apple/ml-4m README, ``EPFL-VILAB/4M_tokenizers_*``) into
fm21 tokenizer checkpoint folders.

A released tokenizer is a Hugging Face repo with ``config.json`` (the keyword arguments of
apple/ml-4m `fourm/vq/vqvae.py` ``VQVAE``/``DiVAE``: ``enc_type``, ``dec_type``, ``patch_size``,
``image_size``, ``codebook_size``, ``latent_dim``, ``quant_type``, ``num_codebooks``, ...) and
``model.safetensors``. The sizes of the fm21 model are read from the tensors' shapes (widths,
depth, position grid, codebook), the head count from the ``enc_type`` preset. Every fm21
tensor is mapped from one named reference tensor with a shape assert; a reference key left
over, or an fm21 key with no source, is an error that lists them all.

What maps:

- ``vqvae`` with the ViT trunk (semseg, CLIP/DINOv2/ImageBind feature maps): everything.
  ``quant_proj`` -> ``to_latent``, ``post_quant_proj`` -> ``from_latent``, ``cls_emb`` ->
  ``class_embed``, ``encoder.*``/``decoder.*`` one to one (``fm21.tokenize.vit``), the cosine
  codebook ``quantize._codebook.embed`` -> ``quantizer.codebook`` with its rows L2-normalised
  (the reference normalises them at every lookup, fm21 stores them unit-norm: the token ids
  are the same), ``cluster_size`` as is, ``initted`` (a k-means flag) dropped.
- ``divae`` (rgb, depth, normals, edges): the encoder and quantizer as above, and the
  diffusion decoder (`fourm/vq/models/unet/unet.py` ``PatchedUNetCondCat`` around an
  ADM/guided-diffusion ``UNetModel``) into fm21's diffusers ``UNet2DModel`` built ADM-shaped
  (``unet_layout: adm``): its sizes read from the tensors, every tensor through the explicit
  key map of ``fm21.tokenize.adm_unet`` (each ``qkv`` split into ``to_q/to_k/to_v`` in the
  legacy head order). The diffusion options (``prediction_type``, ``beta_schedule``,
  ``zero_terminal_snr``, ``thresholding``) come from ``config.json``, falling back to the
  reference ``DiVAE``'s own defaults. A release without decoder tensors (an encoder-only
  copy) keeps a random decoder, tagged ``random``.
- ``memcodes`` (DINOv2/ImageBind global, human poses): everything (BottleneckMLP blocks and
  layer norms, the 1x1-conv projections as linears, the Memcodes codes and key/value maps);
  fm21's input standardisation buffers are set to the identity (the reference has none).
- ``sam_mask`` (the SAM instance-mask tokenizer of ``sam_instance``): everything, into the
  family's ``trunk: vit`` (:func:`import_sam_state`): the ViT keys and projections as for
  ``vqvae``, the decoder's ``out_conv`` ConvNeXt blocks one to one. The reference feeds masks
  in {0, 1}, fm21 in {-1, 1}: the patch projection is rewritten for fm21's range (exact).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fm21.modalities import MODALITIES
from fm21.tokenize import adm_unet, divae, memcodes, vqvae
from fm21.tokenize.checkpoint import save_tokenizer
from fm21.tokenize.image_tokenizer import TokenizerConfig

# released repo (apple/ml-4m README, "Tokenizers") -> fm21 modality
RELEASED: dict[str, str] = {
    "EPFL-VILAB/4M_tokenizers_rgb_16k_224-448": "tok_rgb",
    "EPFL-VILAB/4M_tokenizers_depth_8k_224-448": "tok_depth",
    "EPFL-VILAB/4M_tokenizers_normal_8k_224-448": "tok_normal",
    "EPFL-VILAB/4M_tokenizers_edge_8k_224-512": "tok_canny_edge",  # also tok_sam_edge (--modality)
    "EPFL-VILAB/4M_tokenizers_semseg_4k_224-448": "tok_semseg",
    "EPFL-VILAB/4M_tokenizers_CLIP-B16_8k_224-448": "tok_clip",
    "EPFL-VILAB/4M_tokenizers_DINOv2-B14_8k_224-448": "tok_dinov2",
    "EPFL-VILAB/4M_tokenizers_DINOv2-B14-global_8k_16_224": "tok_dinov2_global",
    "EPFL-VILAB/4M_tokenizers_ImageBind-H14_8k_224-448": "tok_imagebind",
    "EPFL-VILAB/4M_tokenizers_ImageBind-H14-global_8k_16_224": "tok_imagebind_global",
    "EPFL-VILAB/4M_tokenizers_human-poses_1k_8": "human_poses",
    "EPFL-VILAB/4M_tokenizers_sam-instance_1k_64": "sam_instance",  # sam_mask, trunk: vit (import_sam_state)
}
VIT_HEADS = {"vit_s": 8, "vit_b": 12, "vit_l": 16}  # `fourm/vq/models/vit_models.py` presets
# `fourm/vq/vqvae.py` DiVAE keyword defaults, for a config.json that leaves one out
DIVAE_DEFAULTS = {"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2",
                  "zero_terminal_snr": True, "thresholding": True, "num_train_timesteps": 1000}
# decode steps of `fourm/utils/plotting_utils.py` decode_tok_*: 10 for edges, 25 otherwise
DIVAE_DECODE_STEPS = {"edges": 10}  # label kind -> steps
# reference keys with no fm21 counterpart, and why
DROPPED = {"quantize._codebook.initted": "k-means-init flag of the lucid codebook (fm21 never k-means-inits)"}
# The reference's reference-only ``ignore_keys``/loss modules are not in released state dicts.

Transform = Callable[[torch.Tensor], torch.Tensor]
Mapping = dict[str, tuple[str, Transform]]  # fm21 key -> (reference key, transform)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _l2norm_rows(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t.float(), dim=-1)


def _sum_input_channels(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=1, keepdim=True)  # (D, 3, P, P) -> (D, 1, P, P)


def _conv1x1_to_linear(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1]) if t.ndim == 4 else t


# ---------------------------------------------------------------------- reading
def download_released(name: str, *, revision: str | None = None) -> Path:
    """The local folder of a released tokenizer repo (``config.json`` + ``model.safetensors``)."""
    from huggingface_hub import snapshot_download  # real user path; needs the network

    return Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=["config.json", "*.safetensors"]))


def read_released(path: Path | str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A released tokenizer folder -> (its config.json, its state dict)."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    return config, load_file(str(path / "model.safetensors"))


def released_kind(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """fm21 family of a released tokenizer: memcodes, divae (a diffusion decoder) or vqvae."""
    if config.get("quant_type", config.get("quantizer_type")) == "memcodes" or "quantize.codes" in state:
        return "memcodes"
    dec = str(config.get("dec_type", config.get("decoder_type", "")))
    if "unet" in dec or "uvit" in dec or "beta_schedule" in config:
        return "divae"
    return "vqvae"


# ---------------------------------------------------------------------- ViT encoders/decoders
def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _heads(config: dict[str, Any], key: str, dim: int, num_heads: int | None) -> int:
    if num_heads:
        return num_heads
    preset = str(config.get(key, "vit_b"))[:5]
    heads = VIT_HEADS.get(preset)
    if heads is None or dim % heads:
        raise ValueError(f"cannot tell the attention heads of {config.get(key)!r} at width {dim}; pass num_heads")
    return heads


def _vit_config(modality: str, config: dict[str, Any], state: dict[str, torch.Tensor], family: str,
                resolution: int | None, num_heads: int | None, decoder_options: dict[str, Any]) -> Any:
    spec = MODALITIES[modality]
    if resolution:
        spec = spec.at(resolution=resolution)
    proj = state["encoder.proj.weight"]  # (D, C_in, P, P)
    dim, patch = proj.shape[0], proj.shape[-1]
    codebook = state["quantize._codebook.embed"]
    codebook = codebook.reshape(-1, codebook.shape[-1])  # (K, latent): one head in every release
    if not config.get("post_mlp", True):
        raise ValueError("released ViT tokenizers end in the tanh post-MLP; this one has post_mlp false")
    if codebook.shape[0] != spec.vocab_size:
        raise ValueError(f"{modality}: codebook of {codebook.shape[0]} codes, the registry says {spec.vocab_size}")
    model = dict(
        latent_dim=codebook.shape[1], hidden_dim=dim, num_layers=_depth(state, "encoder."), trunk="vit",
        num_heads=_heads(config, "enc_type", dim, num_heads), pos_grid=state["encoder.pos_emb"].shape[-1],
        commitment_weight=float(config.get("commitment_weight", 1.0)),
    )
    if family == "divae":
        if "decoder.input_blocks.0.0.weight" in state:
            decoder_options = {**_divae_decoder_options(spec, config, state, latent=codebook.shape[1],
                                                        in_channels=proj.shape[1]), **decoder_options}
        base = divae.DiVAEConfig.from_spec(spec, decoder_options)
        cfg = dataclasses.replace(base, **model, codebook_ema_decay=float(config.get("ema_decay", 0.99)))
    else:
        if "cls_emb.weight" in state:
            model["class_embed_dim"] = state["cls_emb.weight"].shape[1]
        base = TokenizerConfig.from_spec(spec, {})
        cfg = dataclasses.replace(base, **model, ema_decay=float(config.get("ema_decay", 0.99)))
        if _depth(state, "decoder.") != cfg.num_layers or state["decoder.pos_emb"].shape[1] != dim:
            raise ValueError("the decoder's depth/width differ from the encoder's (fm21's ViT trunk shares them)")
    if cfg.patch_size != patch:
        raise ValueError(f"{modality}: released patch {patch}, fm21 reads {cfg.patch_size} (spec {spec.name})")
    return cfg


def _vit_mapping(fm21_keys: list[str], family: str) -> Mapping:
    """fm21 VQ-VAE/DiVAE key -> reference key. Trunk keys have the same names (fm21.tokenize.vit)."""
    renames = {"to_latent.": "quant_proj.", "from_latent.": "post_quant_proj.", "class_embed.": "cls_emb."}
    out: Mapping = {
        "quantizer.codebook": ("quantize._codebook.embed", _l2norm_rows),
        "quantizer.cluster_size": ("quantize._codebook.cluster_size", _same),
    }
    for key in fm21_keys:
        if key in out or (family == "divae" and key.startswith("decoder.")):
            continue  # the DiVAE decoder: mapped by fm21.tokenize.adm_unet
        ref = next((r + key[len(f):] for f, r in renames.items() if key.startswith(f)), key)
        out[key] = (ref, _same)
    return out


# ---------------------------------------------------------------------- DiVAE decoders
def _divae_decoder_options(spec: Any, config: dict[str, Any], state: dict[str, torch.Tensor], *, latent: int,
                           in_channels: int) -> dict[str, Any]:
    """DiVAE options that rebuild a released ADM decoder (``fm21.tokenize.adm_unet``): sizes from
    the tensors, the diffusion from ``config.json`` (or the reference DiVAE's defaults)."""
    layout = adm_unet.read_layout(state)
    image = layout.in_channels - latent  # image channels * patch**2 (the condition: the latent codes)
    patch = int(round((image / in_channels) ** 0.5))
    if image != layout.out_channels or patch * patch * in_channels != image:
        raise ValueError(f"decoder convs {layout.in_channels} in / {layout.out_channels} out do not read "
                         f"{in_channels}-channel images patched square plus {latent} condition channels")
    options: dict[str, Any] = {
        "unet_layout": "adm", "unet_channels": layout.channels, "layers_per_block": layout.num_res_blocks,
        "unet_attention_levels": layout.attention_levels, "unet_scale_shift": layout.scale_shift,
        "decoder_patch": patch, "decode_steps": DIVAE_DECODE_STEPS.get(spec.label_kind, 25),
        **{k: config.get(k, v) for k, v in DIVAE_DEFAULTS.items()},
    }
    if in_channels != spec.num_channels:  # the edge DiVAE diffuses 3 equal channels
        options["decoder_channels"] = in_channels
    return options


# ---------------------------------------------------------------------- Memcodes
def _memcodes_config(modality: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> memcodes.MemcodesConfig:
    spec = MODALITIES[modality]
    codes = state["quantize.codes"]  # (H, K, d)
    blocks = _depth(state, "encoder.")
    hidden = state["encoder.linear_in.weight"].shape[0]
    wide = state["encoder.blocks.0.block.0.weight"].shape[0]
    options = {"hidden_dim": hidden, "num_blocks": blocks, "expansion": wide // hidden,
               "latent_dim": state["quant_proj.weight"].shape[0]}
    if spec.kind != "global_tokens":  # the pose tokenizer: codebook sizes are options
        options |= {"vocab_size": codes.shape[1], "num_tokens": codes.shape[0]}
    cfg = memcodes.MemcodesConfig.from_spec(spec, options)
    if (cfg.num_tokens, cfg.vocab_size) != tuple(codes.shape[:2]):
        raise ValueError(f"{modality}: released codebooks {tuple(codes.shape[:2])} (tokens, codes), fm21 "
                         f"expects {(cfg.num_tokens, cfg.vocab_size)}")
    return cfg


def _memcodes_mapping(fm21_keys: list[str]) -> tuple[Mapping, dict[str, Transform]]:
    """(fm21 key -> reference key, fm21 keys set without a source: the identity standardisation)."""
    out: Mapping = {
        "quantizer.codes": ("quantize.codes", _same),
        "quantizer.to_k": ("quantize.to_k.weight", _same),  # EinMix 'h d c': the same (H, d, d)
        "quantizer.to_v": ("quantize.to_v.weight", _same),
    }
    fixed = {"shift": torch.zeros_like, "scale": torch.ones_like}
    for key in fm21_keys:
        if key in out or key in fixed:
            continue
        if m := re.match(r"(encoder|decoder)\.blocks\.(\d+)\.(\d)\.(weight|bias)$", key):
            part, i, layer, p = m.groups()  # fm21 Sequential(LN, Linear, GELU, Linear)
            ref = {"0": f"{part}.layernorms.{i}.{p}", "1": f"{part}.blocks.{i}.block.0.{p}",
                   "3": f"{part}.blocks.{i}.block.2.{p}"}[layer]
            out[key] = (ref, _same)
        elif key.startswith(("quant_proj.", "post_quant_proj.")):
            out[key] = (key, _conv1x1_to_linear)  # the reference's 1x1 Conv2d on (B, C, 1, 1)
        else:
            out[key] = (key, _same)
    return out, fixed


# ---------------------------------------------------------------------- SAM instance masks
def _sam_config(modality: str, config: dict[str, Any], state: dict[str, torch.Tensor],
                num_heads: int | None) -> Any:
    """The fm21 ``sam_mask`` config (``trunk: vit``) of a released SAM-instance VQVAE
    (apple/ml-4m `cfgs/default/tokenization/vqvae/sam_instance/ViTB-ViTB_1k_224_64.yaml`:
    ViT-B encoder and decoder, ``out_conv``, patch 16 on 64 px masks, 1024 cosine codes)."""
    from fm21.tokenize import sam_mask  # the family module, imported on use as the others' are

    proj = state["encoder.proj.weight"]  # (D, 1, P, P)
    dim, in_ch, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    codebook = state["quantize._codebook.embed"]
    codebook = codebook.reshape(-1, codebook.shape[-1])  # (K, latent)
    if in_ch != 1:
        raise ValueError(f"{modality}: the released mask encoder reads {in_ch} channels, a mask has 1")
    if not config.get("post_mlp", True):
        raise ValueError("the released SAM-instance tokenizer ends in the tanh post-MLP; this one has post_mlp false")
    if "decoder.out_conv.0.dwconv.weight" not in state or config.get("out_conv") is False:
        raise ValueError(f"{modality}: fm21's vit sam_mask decoder has the reference's out_conv head; "
                         "this release has none")
    depth = _depth(state, "encoder.")
    if _depth(state, "decoder.") != depth or state["decoder.pos_emb"].shape[1] != dim:
        raise ValueError("the decoder's depth/width differ from the encoder's (fm21's ViT trunk shares them)")
    options = {
        "trunk": "vit", "hidden_dim": dim, "num_layers": depth, "patch_size": patch,
        "num_heads": _heads(config, "enc_type", dim, num_heads), "pos_grid": state["encoder.pos_emb"].shape[-1],
        "latent_dim": codebook.shape[1], "vocab_size": codebook.shape[0],
        "ema_decay": float(config.get("ema_decay", 0.99)),
        "commitment_weight": float(config.get("commitment_weight", 1.0)),
    }
    return sam_mask.SamMaskConfig.from_spec(MODALITIES[modality], options)  # checks 16 tokens, <= 1024 codes


def _fold_unit_range_input(target: dict[str, torch.Tensor]) -> None:
    """Rewrite the (already imported) patch projection from the reference's {0, 1} masks
    (`fourm/data/modality_transforms.py` SAMInstanceTransform: ``mask / 255``) to fm21's
    {-1, 1} (``SamMaskTokenizer.to_model``). With x01 = (x + 1) / 2 and a patchify conv
    (no padding): W x01 + b = (W / 2) x + (b + sum(W) / 2), the sum over (C, P, P)."""
    weight = target["encoder.proj.weight"]
    target["encoder.proj.bias"] = target["encoder.proj.bias"] + weight.sum(dim=(1, 2, 3)) / 2
    target["encoder.proj.weight"] = weight / 2


def import_sam_state(config: dict[str, Any], state: dict[str, torch.Tensor], modality: str, *,
                     resolution: int | None = None, num_heads: int | None = None,
                     decoder_options: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A released SAM-instance tokenizer -> (fm21 ``sam_mask`` tokenizer with ``trunk: vit``, report).

    Every tensor is mapped (``_vit_mapping``: ``encoder.*``/``decoder.*`` incl.
    ``decoder.out_conv.*`` one to one, ``quant_proj`` -> ``to_latent``, ``post_quant_proj`` ->
    ``from_latent``, unit-norm codebook, EMA usage), then the patch projection is folded for
    fm21's input range (report ``input_fold``). ``resolution``/``decoder_options`` do not apply:
    the mask size is fixed (64) and the decoder is the released one.
    """
    from fm21.tokenize import sam_mask

    if decoder_options:
        raise ValueError(f"{modality}: decoder_options do not apply (the released ViT decoder is imported)")
    cfg = _sam_config(modality, config, state, num_heads)
    if resolution not in (None, cfg.mask_size):
        raise ValueError(f"{modality}: the mask tokenizer reads {cfg.mask_size} px box crops, not {resolution}")
    tok = sam_mask.build(cfg)
    target = dict(tok.state_dict())
    report = apply_mapping(target, state, _vit_mapping(list(target), "vqvae"))
    _fold_unit_range_input(target)
    tok.load_state_dict(target, strict=True)
    report |= {"family": sam_mask.FAMILY, "modality": modality, "random": [],
               "input_fold": "encoder.proj: reference masks in {0, 1} -> fm21's {-1, 1}"}
    if config.get("random_init"):  # a release-format folder made from random weights (fm21's tests)
        report["random"] = ["all"]
    tok.training_summary = {"imported_from": config.get("_source", "released"), "random_parts": report["random"]}
    return tok.eval(), report


# ---------------------------------------------------------------------- import
def apply_mapping(target: dict[str, torch.Tensor], state: dict[str, torch.Tensor], mapping: Mapping, *,
                  fixed: dict[str, Transform] | None = None, skip_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fill ``target`` (an fm21 state dict, in place) from the reference ``state`` through
    ``mapping``; shapes asserted. Raises ValueError naming every unmapped fm21 key and every
    reference key left over (not consumed, not in ``DROPPED``, not under ``skip_prefixes``)."""
    fixed = fixed or {}
    unmapped = sorted(k for k in target if k not in mapping and k not in fixed
                      and not k.startswith(skip_prefixes))
    missing = sorted(f"{k} <- {mapping[k][0]}" for k in mapping if mapping[k][0] not in state)
    used = {ref for ref, _ in mapping.values()}
    leftover = sorted(k for k in state if k not in used and k not in DROPPED and not k.startswith(skip_prefixes))
    if unmapped or missing or leftover:
        raise ValueError("released state dict does not map: "
                         f"fm21 keys without a source {unmapped + missing}; reference keys left over {leftover}")
    for key, (ref, transform) in mapping.items():
        value = transform(state[ref])
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(f"{ref} {tuple(state[ref].shape)} -> {key}: shape {tuple(value.shape)}, "
                             f"fm21 expects {tuple(target[key].shape)}")
        target[key] = value.to(target[key].dtype)
    for key, make in fixed.items():
        target[key] = make(target[key])
    return {"mapped": len(mapping), "fixed": sorted(fixed), "dropped": sorted(k for k in state if k in DROPPED),
            "skipped": sorted({k.split(".")[0] for k in state if k.startswith(skip_prefixes)})}


def import_state(config: dict[str, Any], state: dict[str, torch.Tensor], modality: str, *,
                 resolution: int | None = None, num_heads: int | None = None,
                 decoder_options: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A released tokenizer's config and state dict -> (fm21 tokenizer, import report).

    ``resolution``: the fm21 spec's resolution (default the registry's, 224).
    ``num_heads``: attention heads when ``enc_type`` names no preset of that width.
    ``decoder_options``: DiVAE config keys over those read from the release (e.g. ``decode_steps``,
    ``unet_num_heads``; the UNet sizes of a random decoder when the release has none).
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}")
    if MODALITIES[modality].embedded_tokenizer == "sam_mask":  # the instance-mask VQVAE: its own import
        return import_sam_state(config, state, modality, resolution=resolution, num_heads=num_heads,
                                decoder_options=decoder_options)
    kind = released_kind(config, state)
    skip: tuple[str, ...] = ()
    fixed: dict[str, Transform] = {}
    if kind == "memcodes":
        cfg = _memcodes_config(modality, config, state)
        tok = memcodes.build(cfg)
        mapping, fixed = _memcodes_mapping(list(tok.state_dict()))
    else:
        cfg = _vit_config(modality, config, state, kind, resolution, num_heads, dict(decoder_options or {}))
        tok = (divae if kind == "divae" else vqvae).build(cfg)
        mapping = _vit_mapping(list(tok.state_dict()), kind)
        if kind == "divae" and cfg.unet_layout == "adm":
            mapping |= adm_unet.adm_mapping(adm_unet.read_layout(state), cfg.unet_num_heads)
        elif kind == "divae":  # no decoder tensors in the release: fm21's random one
            skip = ("decoder.",)
        fm21_in = tok.state_dict()["encoder.proj.weight"].shape[1]
        if fm21_in == 1 and state["encoder.proj.weight"].shape[1] == 3:
            # The edge DiVAE reads edges as 3 equal channels (RGBTransform); fm21 reads 1. A
            # patch conv of [x, x, x] equals one of x with the channel weights summed: exact.
            mapping["encoder.proj.weight"] = ("encoder.proj.weight", _sum_input_channels)
    target = dict(tok.state_dict())
    report = apply_mapping(target, state, mapping, fixed=fixed, skip_prefixes=skip)
    tok.load_state_dict(target, strict=True)
    report |= {"family": kind, "modality": modality, "random": ["decoder"] if skip else []}
    if config.get("random_init"):  # a release-format folder made from random weights (fm21's tests, benchmarks)
        report["random"] = ["all"]
    tok.training_summary = {"imported_from": config.get("_source", "released"), "random_parts": report["random"]}
    return tok.eval(), report


def import_tokenizer(out: Path | str, *, name: str | None = None, path: Path | str | None = None,
                     modality: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Import a released tokenizer (hub ``name`` or local ``path``) into the fm21 checkpoint folder ``out``."""
    if (name is None) == (path is None):
        raise ValueError("give exactly one of name (a hub repo) or path (a local folder)")
    modality = modality or RELEASED.get(name or "")
    if modality is None:
        raise ValueError(f"which modality does {name or path} tokenize? pass --modality (known releases: "
                         f"{', '.join(RELEASED)})")
    folder = download_released(name) if name else Path(path)
    config, state = read_released(folder)
    config["_source"] = name or str(path)
    tok, report = import_state(config, state, modality, **kwargs)
    report["fingerprint"] = save_tokenizer(tok, out, metrics={"imported": report, "random": report["random"]})
    return report
