"""Names and shapes of a released 4M ``FM`` state dict, written from the reference code
(apple/ml-4m `fourm/models/fm.py` FourM/FM, `fm_utils.py` Block/DecoderBlock/GatedMlp/LayerNorm,
`encoder_embeddings.py`, `decoder_embeddings.py`, `fourm/data/modality_info.py`), independently
of fm21's import map, so the import tests check the map against the reference, not itself.
"""

from __future__ import annotations

import re

import torch

# domain -> (kind, vocab or channels, grid side / global tokens / sequence max_length)
# from `fourm/data/modality_info.py` (4M-21 entries)
DOMAINS: dict[str, tuple[str, int, int]] = {
    "rgb@224": ("pixels", 3, 14),
    "tok_rgb@224": ("image_tokens", 16384, 14),
    "tok_depth@224": ("image_tokens", 8192, 14),
    "tok_normal@224": ("image_tokens", 8192, 14),
    "tok_semseg@224": ("image_tokens", 4096, 14),
    "tok_clip@224": ("image_tokens", 8192, 14),
    "tok_dinov2@224": ("image_tokens", 8192, 16),  # patch 14
    "tok_imagebind@224": ("image_tokens", 8192, 16),
    "tok_canny_edge@224": ("image_tokens", 8192, 14),
    "tok_sam_edge@224": ("image_tokens", 8192, 14),
    "tok_dinov2_global": ("global", 8192, 16),  # sincos_pos_emb=False: learned (1, 16, D)
    "tok_imagebind_global": ("global", 8192, 16),
    "caption": ("seq", 30000, 256),
    "det": ("seq", 30000, 256),
    "metadata": ("seq", 30000, 40),
    "human_poses": ("seq", 30000, 263),
    "color_palette": ("seq", 30000, 23),
    "sam_instance": ("seq", 30000, 290),
    "t5_caption": ("t5", 4096, 77),
}
INPUT_ONLY = {"rgb@224", "t5_caption"}


def sincos_1d(n: int, d: int) -> torch.Tensor:
    """`fm_utils.build_1d_sincos_posemb`, float32 as there."""
    omega = 1.0 / (10000.0 ** (torch.arange(d // 2, dtype=torch.float32) / (d // 2)))
    out = torch.einsum("n,d->nd", torch.arange(n, dtype=torch.float32), omega)
    return torch.cat([out.sin(), out.cos()], dim=1)[None]


def sincos_2d(h: int, w: int, d: int) -> torch.Tensor:
    """`fm_utils.build_2d_sincos_posemb`, float32 as there."""
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    omega = 1.0 / (10000.0 ** (torch.arange(d // 4, dtype=torch.float32) / (d // 4)))
    out_w = torch.einsum("n,d->nd", grid_w.reshape(-1), omega)
    out_h = torch.einsum("n,d->nd", grid_h.reshape(-1), omega)
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


def domain_size(d: str, *, image_size: int = 224, vocab: dict[str, int] | None = None) -> tuple[str, int, int]:
    """``DOMAINS[d]`` for a model of ``image_size`` (the grid side scales with it: the
    domain keeps its ``@224`` name, `fm.py` FM sizes its tables from ``image_size``) and a
    vocabulary of ``vocab[d]`` where given (a small store's codebook or text vocabulary)."""
    kind, n, side = DOMAINS[d]
    if kind in ("pixels", "image_tokens"):
        side = side * image_size // 224
    return kind, (vocab or {}).get(d, n), side


def reference_shapes(domains: list[str], *, dim: int, enc: int, dec: int, mlp_ratio: float = 4.0,
                     image_size: int = 224, vocab: dict[str, int] | None = None) -> dict:
    """name -> shape of ``FM(config).state_dict()`` for a swiglu_nobias model (every domain in
    domains_in; the non-input-only ones in domains_out). Tied ``mod_emb`` appears under both names."""
    hidden = int(2 * int(dim * mlp_ratio) / 3)  # GatedMlp
    s: dict[str, tuple] = {}
    for side, depth in (("encoder", enc), ("decoder", dec)):
        for i in range(depth):
            p = f"{side}.{i}."
            attn = ["self_attn"] if side == "decoder" else ["attn"]
            s[p + "norm1.weight"] = s[p + "norm1.bias"] = (dim,)  # LayerNorm(bias=False): zero buffer
            s[p + f"{attn[0]}.qkv.weight"] = (3 * dim, dim)
            s[p + f"{attn[0]}.proj.weight"] = (dim, dim)
            if side == "decoder":
                for n in ("query_norm", "context_norm"):
                    s[p + f"{n}.weight"] = s[p + f"{n}.bias"] = (dim,)
                s[p + "cross_attn.q.weight"] = (dim, dim)
                s[p + "cross_attn.kv.weight"] = (2 * dim, dim)
                s[p + "cross_attn.proj.weight"] = (dim, dim)
            s[p + "norm2.weight"] = s[p + "norm2.bias"] = (dim,)
            s[p + "mlp.fc1.weight"] = s[p + "mlp.fc3.weight"] = (hidden, dim)
            s[p + "mlp.fc2.weight"] = (dim, hidden)
    s["encoder_norm.weight"] = s["encoder_norm.bias"] = (dim,)
    s["decoder_norm.weight"] = s["decoder_norm.bias"] = (dim,)
    s["decoder_proj_context.weight"], s["decoder_proj_context.bias"] = (dim, dim), (dim,)
    s["mask_token"] = (1, 1, dim)
    for d in domains:
        kind, n, side = domain_size(d, image_size=image_size, vocab=vocab)
        grid = (1, side * side, dim)
        e = f"encoder_embeddings.{d}."
        s[e + "mod_emb"] = (1, 1, dim)
        if kind == "pixels":
            s[e + "proj.weight"], s[e + "pos_emb"] = (dim, n * 16 * 16), grid
        elif kind in ("image_tokens", "global"):
            s[e + "token_emb.weight"] = (n, dim)
            s[e + "pos_emb"] = (1, side, dim) if kind == "global" else grid
        elif kind == "seq":
            s[e + "token_emb.weight"], s[e + "pos_emb"] = (n, dim), (1, side, dim)
        else:  # t5
            s[e + "emb_proj.weight"], s[e + "emb_proj.bias"], s[e + "pos_emb"] = (dim, n), (dim,), (1, side, dim)
        if d in INPUT_ONLY:
            continue
        o = f"decoder_embeddings.{d}."
        s[o + "mod_emb"] = (1, 1, dim)
        s[o + "token_emb.weight"], s[o + "to_logits.weight"] = (n, dim), (n, dim)
        s[o + "pos_emb"] = (1, side, dim) if kind in ("global", "seq") else grid
    return s


def reference_state(domains: list[str], *, dim: int, enc: int, dec: int, seed: int = 0, image_size: int = 224,
                    vocab: dict[str, int] | None = None) -> dict:
    """A random-init (``random``) state dict with the reference's names and shapes, and its
    buffers as the reference computes them (sin-cos tables, zero norm biases, tied mod_emb)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in reference_shapes(domains, dim=dim, enc=enc, dec=dec, image_size=image_size,
                                       vocab=vocab).items():
        out[key] = torch.randn(shape, generator=g) * 0.02
        if re.search(r"norm\w*\.bias$", key):
            out[key] = torch.zeros(shape)
    for d in domains:
        kind, _, side = domain_size(d, image_size=image_size)
        for prefix in ("encoder_embeddings", "decoder_embeddings"):
            key = f"{prefix}.{d}.pos_emb"
            if key in out and kind in ("pixels", "image_tokens"):
                out[key] = sincos_2d(side, side, dim)
            elif key in out and kind in ("seq", "t5"):
                out[key] = sincos_1d(512, dim)[:, :side]
        if f"decoder_embeddings.{d}.mod_emb" in out:
            out[f"decoder_embeddings.{d}.mod_emb"] = out[f"encoder_embeddings.{d}.mod_emb"].clone()
    return out


def hf_config(domains: list[str], *, dim: int, enc: int, dec: int, image_size: int = 224) -> dict:
    """``config.json`` of an ``FM`` (fm.py FM.__init__ reads these keys)."""
    return {"domains_in": domains, "domains_out": [d for d in domains if d not in INPUT_ONLY],
            "image_size": image_size, "patch_size": 16, "dim": dim, "encoder_depth": enc, "decoder_depth": dec,
            "num_heads": max(1, dim // 64) if dim >= 64 else 2, "mlp_ratio": 4.0, "qkv_bias": False,
            "proj_bias": False, "mlp_bias": False, "norm_bias": False, "act_layer": "SiLU", "gated_mlp": True,
            "qk_norm": False, "decoder_causal_mask": False, "decoder_sep_mask": True, "num_register_tokens": 0,
            "use_act_checkpoint": False, "share_modality_embeddings": True}
