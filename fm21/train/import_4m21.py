"""Import the released 4M-21 models (``EPFL-VILAB/4M-21_B`` / ``_L`` / ``_XL``) into fm21's FourM.

A release is a Hub repo (or a local folder) with ``model.safetensors`` (the state dict of
apple/ml-4m `fourm/models/fm.py` ``FM``) and ``config.json`` (``FM``'s constructor config:
``domains_in``, ``domains_out``, ``dim``, depths, ``num_heads``, ``mlp_ratio``, the bias
flags, ``norm_bias``, ``act_layer``, ``gated_mlp``, ``qk_norm``, ``num_register_tokens``,
``image_size``, ``patch_size``). Every fm21 tensor is taken from one reference tensor
through an explicit name map with a shape assert (:func:`reference_key`); the reference
tensors fm21 has no place for are dropped only by the explicit rules of
:func:`_dropped`, each checked (fixed sin-cos tables equal fm21's, absent norm biases
all zero, shared modality embeddings equal); any other leftover, and any fm21 tensor
without a source, is an error listing them all.

What differs, and how it is converted (reference names from `fourm/models/fm.py`,
`fm_utils.py`, `encoder_embeddings.py`, `decoder_embeddings.py`):

- SwiGLU's gate is ``mlp.fc3`` there, ``mlp.gate`` here.
- ``mod_emb`` lives in each encoder and decoder embedding there (shared, one tensor),
  in ``mod_emb.<modality>`` here.
- ``decoder_proj_context`` always has a bias there: ``context_bias: true``.
- 2D sin-cos tables put the row index first there: ``sincos_2d_order: yx``.
- ``FM`` builds output heads untied from the decoder token tables
  (``share_embedding=False``): ``tie_sequence_logits: false``. Image-token decoder
  embeddings also hold a ``token_emb`` that the reference's forward never reads (their
  queries are mask tokens): dropped.
- Fixed sin-cos tables and bias-less norms' zero biases are persistent buffers there,
  recomputed here (compared, then dropped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from fm21.modalities import MODALITIES, ModalitySpec, resolve_specs
from fm21.train.model import FourM, FourMConfig

SIZES = {"B": "base", "L": "large", "XL": "xlarge"}
HUB_IDS = {"B": "EPFL-VILAB/4M-21_B", "L": "EPFL-VILAB/4M-21_L", "XL": "EPFL-VILAB/4M-21_XL"}
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ImportError4M(ValueError):
    """A release that does not map onto fm21's model; the message lists every problem."""


# ------------------------------------------------------------------------------ names
def reference_name(name: str) -> str:
    """fm21 modality -> the reference's domain name (apple/ml-4m `fourm/data/modality_info.py`):
    grid modalities carry their resolution (``tok_rgb@224``), global tokens and sequences not."""
    spec = MODALITIES[name]
    if spec.kind in ("pixels", "image_tokens", "feature_tokens"):
        return f"{name}@{spec.resolution}"
    return name


def fm21_name(domain: str) -> str:
    name = domain.split("@", 1)[0]
    if name not in MODALITIES:
        raise ImportError4M(f"reference domain {domain!r} is no fm21 modality")
    return name


# fm21 block-internal names -> the reference's (fourm/models/fm_utils.py Block, DecoderBlock, GatedMlp)
_BLOCK_RENAMES = ((r"\.mlp\.gate\.", ".mlp.fc3."),)


def reference_key(key: str, specs: Mapping[str, ModalitySpec]) -> str:
    """The reference state-dict name of the fm21 tensor ``key``."""
    if m := re.fullmatch(r"mod_emb\.(\w+)", key):
        return f"encoder_embeddings.{reference_name(m[1])}.mod_emb"  # (decoder's: the same tensor)
    if m := re.fullmatch(r"(encoder|decoder)_embeddings\.(\w+)\.(.+)", key):
        side, name, rest = m[1], m[2], m[3]
        rest = {"positions.pos_emb": "pos_emb"}.get(rest, rest)
        if side == "encoder" and specs[name].kind == "embedding":
            rest = rest.replace("proj.", "emb_proj.")  # SequenceEmbEncoderEmbedding
        return f"{side}_embeddings.{reference_name(name)}.{rest}"
    for pattern, repl in _BLOCK_RENAMES:
        key = re.sub(pattern, repl, key)
    return key  # trunk: encoder.i.*, decoder.i.*, encoder_norm, decoder_proj_context, decoder_norm, mask_token


# ------------------------------------------------------------------------------ config
def model_config(ref: Mapping[str, Any]) -> tuple[dict[str, ModalitySpec], FourMConfig]:
    """The fm21 specs and model config of a release's ``config.json``."""
    problems = []
    if ref.get("qk_norm"):
        problems.append("qk_norm: true (fm21 has no qk-norm attention)")
    if ref.get("num_register_tokens", 0):
        problems.append(f"num_register_tokens: {ref['num_register_tokens']} (fm21 has no register tokens)")
    gated, act = ref.get("gated_mlp", False), ref.get("act_layer", "GELU")
    if (gated, act) not in ((True, "SiLU"), (False, "GELU")):
        problems.append(f"gated_mlp {gated} with act_layer {act} (fm21: SwiGLU or GELU MLP)")
    biases = {ref.get(k, True) for k in ("qkv_bias", "proj_bias", "mlp_bias", "norm_bias")}
    if len(biases) != 1:
        problems.append("qkv/proj/mlp/norm biases differ (fm21 has one ``bias`` flag)")
    din, dout = list(ref["domains_in"]), list(ref["domains_out"])
    names = [fm21_name(d) for d in dict.fromkeys(din + dout)]
    for d in din + dout:
        spec = MODALITIES[fm21_name(d)]
        if (d in dout) != spec.can_be_target or (d not in din):
            problems.append(f"{d}: in domains_in {d in din}, domains_out {d in dout}; fm21 encodes every "
                            f"modality and decodes exactly the non-input-only ones")
    if problems:
        raise ImportError4M("release config does not map onto fm21: " + "; ".join(problems))
    specs = resolve_specs(names, resolution=int(ref.get("image_size", 224)))
    cfg = FourMConfig(
        dim=int(ref["dim"]), encoder_depth=int(ref["encoder_depth"]), decoder_depth=int(ref["decoder_depth"]),
        num_heads=int(ref["num_heads"]), mlp_ratio=float(ref.get("mlp_ratio", 4.0)),
        mlp="swiglu" if gated else "gelu", bias=biases.pop(), tie_sequence_logits=False,
        context_bias=True, sincos_2d_order="yx", modalities=tuple(specs),
    )
    return specs, cfg


def _with_checkpoint_vocabs(specs: dict[str, ModalitySpec], state: Mapping[str, torch.Tensor]) -> dict:
    """Each spec at the vocabulary its input table in the release has (image codebooks and
    the text vocab are the release's; the shape asserts still check every other tensor)."""
    out = {}
    for name, spec in specs.items():
        key = f"encoder_embeddings.{reference_name(name)}.token_emb.weight"
        out[name] = spec.at(vocab_size=int(state[key].shape[0])) if key in state and spec.vocab_size else spec
    return out


# ------------------------------------------------------------------------------ mapping
def _dropped(key: str, tensor: torch.Tensor, model: FourM, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why a reference tensor without an fm21 place may be dropped, after checking it; None if it may not."""
    if m := re.fullmatch(r"decoder_embeddings\.([\w@]+)\.mod_emb", key):
        enc = state.get(f"encoder_embeddings.{m[1]}.mod_emb")
        if enc is not None and torch.equal(enc, tensor):
            return "shared with the encoder's mod_emb"
        return None
    if key.endswith(".bias") and not model.config.bias and not key.startswith("decoder_proj_context"):
        return "bias-less LayerNorm's zero buffer" if not bool(tensor.any()) else None
    if m := re.fullmatch(r"decoder_embeddings\.([\w@]+)\.token_emb\.weight", key):
        spec = model.specs.get(fm21_name(m[1]))
        if spec is not None and spec.is_image_like:
            return "image-token decoder table the reference's forward never reads (queries are mask tokens)"
        return None
    if m := re.fullmatch(r"(encoder|decoder)_embeddings\.([\w@]+)\.pos_emb", key):
        emb = getattr(model, f"{m[1]}_embeddings")[fm21_name(m[2])]
        ours = emb.positions.pos_emb if hasattr(emb, "positions") else emb.pos_table
        ours = ours[:, : tensor.shape[1]]  # sequences: the reference keeps max_length rows of 512
        if ours.shape == tensor.shape and torch.allclose(ours.float(), tensor.float(), atol=1e-3):
            return "fixed sin-cos table, equal to fm21's"
        return None
    return None


def convert_state(state: Mapping[str, torch.Tensor], model: FourM) -> tuple[dict[str, torch.Tensor], dict]:
    """Reference state dict -> fm21 state dict for ``model``; every fm21 tensor mapped and
    shape-checked, every reference tensor used or dropped by a checked rule."""
    ours = model.state_dict()
    out, used, missing, bad_shape = {}, set(), [], []
    for key, target in ours.items():
        src = reference_key(key, model.specs)
        if src not in state and src.endswith(".mod_emb"):
            src = src.replace("encoder_embeddings.", "decoder_embeddings.", 1)  # saved once, under either name
        if src not in state:
            missing.append(f"{key} <- {src}")
            continue
        tensor = state[src]
        if tuple(tensor.shape) != tuple(target.shape):
            bad_shape.append(f"{key} {tuple(target.shape)} <- {src} {tuple(tensor.shape)}")
            continue
        out[key] = tensor.to(target.dtype)
        used.add(src)
    dropped, leftover = {}, []
    for key in sorted(set(state) - used):
        reason = _dropped(key, state[key], model, state)
        if reason is None:
            leftover.append(f"{key} {tuple(state[key].shape)}")
        else:
            dropped[key] = reason
    if missing or bad_shape or leftover:
        parts = [f"{title} ({len(items)}): " + ", ".join(items)
                 for title, items in (("fm21 tensors without a source", missing),
                                      ("shape mismatches", bad_shape),
                                      ("reference tensors left over", leftover)) if items]
        raise ImportError4M("cannot import the release: " + "; ".join(parts))
    return out, dropped


# ------------------------------------------------------------------------------ files
def resolve_release(source: str | Path) -> Path:
    """A local folder with ``model.safetensors`` + ``config.json``, or a Hub id downloaded into the HF cache."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ImportError4M(f"{source}: give the folder holding {WEIGHTS_FILE} and {CONFIG_FILE}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=str(source), allow_patterns=[WEIGHTS_FILE, CONFIG_FILE]))


def import_4m21(source: str | Path, out: str | Path, *, size: str | None = None) -> dict[str, Any]:
    """Convert a release into an fm21 checkpoint folder (``fm21.train.checkpoint`` layout,
    config.json written last) that ``load_checkpoint`` / ``load_latest`` read."""
    from safetensors.torch import load_file

    from fm21.train.checkpoint import save_checkpoint

    folder = resolve_release(source)
    ref = json.loads((folder / CONFIG_FILE).read_text())
    ref = ref.get("config", ref)  # PyTorchModelHubMixin may nest the constructor config
    state = load_file(str(folder / WEIGHTS_FILE))
    specs, cfg = model_config(ref)
    specs = _with_checkpoint_vocabs(specs, state)
    if size is not None:
        from fm21.config import MODEL_SIZES

        want = MODEL_SIZES[SIZES[size]]
        got = {k: getattr(cfg, k) for k in want}
        if got != want:
            raise ImportError4M(f"--size {size} is {want}, the release's config has {got}")
    model = FourM(specs, cfg, num_input_tokens=cfg.num_input_tokens, num_target_tokens=cfg.num_target_tokens,
                  tie_sequence_logits=False)
    converted, dropped = convert_state(state, model)
    model.load_state_dict(converted, strict=True)
    extra = {"imported_from": str(source), "release_config": ref, "dropped": dropped, "weights": "released"}
    if ref.get("random_init"):  # a release-format folder made from random weights (fm21's tests, benchmarks)
        extra["random_init"] = True
    save_checkpoint(out, model=model, step=0, extra=extra)
    return {"out": str(out), "num_parameters": model.num_parameters(), "modalities": list(specs),
            "tensors": len(converted), "dropped": len(dropped)}
