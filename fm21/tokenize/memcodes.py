"""Memcodes tokenizers: BottleneckMLP encoder -> Memcodes quantizer -> BottleneckMLP decoder.

4M-21 tokenizes vectors with this family (apple/ml-4m `fourm/vq/quantizers/quantize_memcodes.py`,
`fourm/vq/models/mlp_models.py`, `cfgs/default/tokenization/vqvae/*-global/`, `.../human_poses/`):

- ``global``: one global embedding per sample (``global_tokens`` specs: the DINOv2 / ImageBind
  class tokens) -> ``spec.num_global_tokens`` tokens; loss ``cosine_1d`` = 1 - cos.
- ``body_pose``: the SMPL body pose of one person (23 rotation matrices, 207 floats, the
  ``body_pose`` field of each person in the ``human_poses`` column) -> 8 tokens of 1024 codes
  (reference defaults; options ``num_tokens`` / ``vocab_size``); loss smooth-L1.

The use is read from the spec (its kind, or a label column in ``POSE_FIELDS``), never from a
modality name. Memcodes splits the latent into ``num_tokens`` heads, one codebook and one token
per head. A head's query attends over its learned codes (keys and values are per-head linear
maps of the codes); training takes a straight-through hard Gumbel-softmax sample (tau 1), eval
the argmax. No commitment loss, no EMA codebook, no dead codes: every code gets gradients
through the soft attention.

Inputs are standardised per channel with the training set's mean/std (buffers saved with the
weights); losses and metrics are computed in label space (the labels.lance values).
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fm21.modalities import ModalitySpec
from fm21.schedules import warmup_cosine
from fm21.store import fs
from fm21.tokenize.quantizer import codebook_stats

FAMILY = "memcodes"
POSE_FIELDS = {"human_poses": "body_pose"}  # label column -> struct field holding the SMPL body pose
NUM_BODY_JOINTS = 23  # SMPL body joints without the root (HMR2.0's ``body_pose``)
POSE_DIM = NUM_BODY_JOINTS * 9
POSE_VOCAB_SIZE, POSE_NUM_TOKENS = 1024, 8  # cfgs/default/tokenization/vqvae/human_poses/BMLP1024-BMLP1024_1k_224.yaml
MODEL_OPTIONS = ("hidden_dim", "num_blocks", "expansion", "latent_dim", "temperature")
TRAIN_OPTIONS = ("steps", "batch_size", "lr", "weight_decay")
POSE_OPTIONS = ("vocab_size", "num_tokens")  # the pose spec is a text sequence: its codes are options


@dataclass(frozen=True)
class MemcodesConfig:
    """Everything needed to rebuild (and retrain) a Memcodes tokenizer; reference sizes by default."""

    family: str = FAMILY
    modality: str = ""
    use: str = "global"  # "global" | "body_pose"
    label_column: str = ""
    input_dim: int = 768  # floats per input vector
    vocab_size: int = 8192  # codes per codebook
    num_tokens: int = 16  # codebooks = heads = tokens per vector
    hidden_dim: int = 1024  # BottleneckMLP width ("Wi_1024")
    num_blocks: int = 6  # BottleneckMLP blocks ("B_6")
    expansion: int = 4  # block width = expansion * hidden_dim
    latent_dim: int = 1024  # quantizer width, split into num_tokens heads
    temperature: float = 1.0  # Gumbel-softmax tau
    loss: str = "cosine_1d"  # "cosine_1d" | "smooth_l1"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4

    @classmethod
    def from_spec(cls, spec: ModalitySpec, options: dict[str, Any]) -> MemcodesConfig:
        """The config of ``spec`` with the recipe ``options`` (unknown keys raise ValueError)."""
        options = dict(options)
        if options.pop("family", FAMILY) != FAMILY:
            raise ValueError(f"{spec.name}: options name another tokenizer family than {FAMILY!r}")
        if spec.kind == "global_tokens":
            use, column, input_dim = "global", spec.label_columns[0], int(spec.num_channels)
            sizes = {"vocab_size": int(spec.vocab_size), "num_tokens": int(spec.num_global_tokens)}
            allowed = (*MODEL_OPTIONS, *TRAIN_OPTIONS)
        elif spec.label_columns and spec.label_columns[0] in POSE_FIELDS:
            use, column, input_dim = "body_pose", spec.label_columns[0], POSE_DIM
            sizes = {"vocab_size": POSE_VOCAB_SIZE, "num_tokens": POSE_NUM_TOKENS}
            allowed = (*MODEL_OPTIONS, *TRAIN_OPTIONS, *POSE_OPTIONS)
        else:
            raise ValueError(f"{spec.name}: {FAMILY} tokenizes global_tokens specs or the label columns "
                             f"{sorted(POSE_FIELDS)}; got kind {spec.kind!r}, columns {spec.label_columns}")
        for key in options:
            if key in POSE_OPTIONS and key not in allowed:
                raise ValueError(f"{spec.name}: option {key!r} comes from the registry spec for a global_tokens spec")
            if key not in allowed:
                raise ValueError(f"{spec.name}: unknown {FAMILY} option {key!r}; known: {', '.join(allowed)}")
        hidden = int(options.get("hidden_dim", cls.hidden_dim))
        cfg = cls(modality=spec.name, use=use, label_column=column, input_dim=input_dim,
                  loss="cosine_1d" if use == "global" else "smooth_l1",
                  **{**sizes, "latent_dim": hidden, **options})  # the latent is as wide as the MLP by default
        if cfg.latent_dim % cfg.num_tokens:
            raise ValueError(f"{spec.name}: latent_dim {cfg.latent_dim} must split into {cfg.num_tokens} heads")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemcodesConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class BottleneckMLP(nn.Module):
    """``linear_in`` -> ``num_blocks`` x (x + Linear(GELU(Linear(LayerNorm(x))))) -> ``linear_out``."""

    def __init__(self, dim_in: int, dim_out: int, *, width: int, num_blocks: int, expansion: int) -> None:
        super().__init__()
        self.linear_in = nn.Linear(dim_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, expansion * width), nn.GELU(),
                          nn.Linear(expansion * width, width))
            for _ in range(num_blocks)
        )
        self.linear_out = nn.Linear(width, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_in(x)  # (B, W)
        for block in self.blocks:
            x = x + block(x)
        return self.linear_out(x)


class MemcodesQuantizer(nn.Module):
    """Latents ``(B, H * d)`` -> quantized ``(B, H * d)`` and ids ``(B, H)``: one token per head."""

    def __init__(self, dim: int, codebook_size: int, *, num_codebooks: int, temperature: float = 1.0) -> None:
        super().__init__()
        head_dim = dim // num_codebooks
        self.num_codebooks, self.head_dim, self.temperature = num_codebooks, head_dim, temperature
        self.codes = nn.Parameter(torch.randn(num_codebooks, codebook_size, head_dim))  # (H, K, d)
        bound = head_dim**-0.5  # nn.Linear's init range for the per-head key/value maps
        self.to_k = nn.Parameter(torch.empty(num_codebooks, head_dim, head_dim).uniform_(-bound, bound))
        self.to_v = nn.Parameter(torch.empty(num_codebooks, head_dim, head_dim).uniform_(-bound, bound))

    def values(self) -> torch.Tensor:
        return torch.einsum("hkd,hdc->hkc", self.codes, self.to_v)  # (H, K, d)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled query-key scores of every head over its codes: ``(B, H * d)`` -> ``(B, H, K)``."""
        q = z.reshape(z.shape[0], self.num_codebooks, self.head_dim) * self.head_dim**-0.5  # (B, H, d)
        keys = torch.einsum("hkd,hdc->hkc", self.codes, self.to_k)  # (H, K, d)
        return torch.einsum("bhd,hkd->bhk", q, keys)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(z)  # (B, H, K)
        if not self.training:
            ids = logits.argmax(dim=-1)  # (B, H)
            return self.lookup(ids), ids
        attn = F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)  # one-hot, soft gradient
        out = torch.einsum("bhk,hkd->bhd", attn, self.values())  # (B, H, d)
        return out.reshape(z.shape[0], -1), attn.argmax(dim=-1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, H)`` -> the chosen code values, heads merged ``(B, H * d)``."""
        heads = torch.arange(self.num_codebooks, device=ids.device)
        return self.values()[heads, ids].reshape(ids.shape[0], -1)  # (B, H, d) -> (B, H*d)


class MemcodesTokenizer(nn.Module):
    family = FAMILY

    def __init__(self, config: MemcodesConfig) -> None:
        super().__init__()
        c = self.config = config
        self.fingerprint: str | None = None  # set by save/load (fm21.tokenize.checkpoint)
        self.training_summary: dict[str, Any] | None = None  # None: random init
        # per-channel standardisation of the inputs, fitted on the training set (identity at init)
        self.register_buffer("shift", torch.zeros(c.input_dim))
        self.register_buffer("scale", torch.ones(c.input_dim))
        mlp = {"width": c.hidden_dim, "num_blocks": c.num_blocks, "expansion": c.expansion}
        self.encoder = BottleneckMLP(c.input_dim, c.hidden_dim, **mlp)
        self.quant_proj = nn.Linear(c.hidden_dim, c.latent_dim)
        self.quantizer = MemcodesQuantizer(c.latent_dim, c.vocab_size, num_codebooks=c.num_tokens,
                                           temperature=c.temperature)
        self.post_quant_proj = nn.Linear(c.latent_dim, c.hidden_dim)
        self.decoder = BottleneckMLP(c.hidden_dim, c.input_dim, **mlp)

    @property
    def device(self) -> torch.device:
        return self.shift.device

    def check_labels(self, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Label vectors ``(B, input_dim)`` (any float dtype) -> float32 tensor on the device."""
        if not isinstance(labels, torch.Tensor):
            labels = np.asarray(labels, np.float32)
        if labels.ndim != 2 or labels.shape[1] != self.config.input_dim:
            raise ValueError(f"{self.config.modality}: expected labels of shape (B, {self.config.input_dim}), "
                             f"got {tuple(labels.shape)}")
        x = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(labels)
        return x.to(self.device, torch.float32)

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Per-channel mean/std of the training vectors ``(B, C)``; a (near) constant channel
        gets a floor of 1% of the overall std, so it is not blown up on new data."""
        self.shift.copy_(x.mean(0))
        std = x.std(0, correction=0)
        self.scale.copy_(std.clamp(min=1e-2 * float(x.std(correction=0)) + 1e-6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label vectors ``(B, C)`` -> (reconstruction in label space ``(B, C)``, ids ``(B, N)``)."""
        z = self.quant_proj(self.encoder((x - self.shift) / self.scale))  # (B, latent)
        q, ids = self.quantizer(z)
        return self._decode_latent(q), ids

    def _decode_latent(self, q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_proj(q)) * self.scale + self.shift  # (B, C)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.quant_proj(self.encoder((x - self.shift) / self.scale))  # (B, latent)
        return self.quantizer.logits(z).argmax(dim=-1)  # (B, N): eval's choice, no values needed

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self._decode_latent(self.quantizer.lookup(ids))

    def loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "cosine_1d":
            return (1.0 - F.cosine_similarity(recon, x, dim=-1)).mean()
        return F.smooth_l1_loss(recon, x)

    @torch.no_grad()
    def encode_labels(self, labels: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Label vectors ``(B, C)`` -> ids ``(B, N)`` int16; eval mode (the argmax code)."""
        x = self.check_labels(labels)
        was_training = self.training
        self.eval()
        out = [self.encode(x[s : s + batch_size]).cpu().numpy() for s in range(0, len(x), batch_size)]
        self.train(was_training)
        return np.concatenate(out).astype(np.int16) if out else np.zeros((0, self.config.num_tokens), np.int16)

    @torch.no_grad()
    def decode_labels(self, ids: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Ids ``(B, N)`` -> label vectors ``(B, C)`` float32; poses as proper rotation matrices."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] != self.config.num_tokens:
            raise ValueError(f"{self.config.modality}: expected ids of shape (B, {self.config.num_tokens}), "
                             f"got {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"{self.config.modality}: ids must lie in [0, {self.config.vocab_size})")
        was_training = self.training
        self.eval()
        t = torch.from_numpy(ids.astype(np.int64)).to(self.device)
        out = [self.decode(t[s : s + batch_size]).cpu() for s in range(0, len(t), batch_size)]
        self.train(was_training)
        recon = torch.cat(out) if out else torch.zeros(0, self.config.input_dim)
        if self.config.use == "body_pose":
            recon = nearest_rotations(recon.reshape(-1, 3, 3)).reshape(len(recon), -1)
        return recon.numpy().astype(np.float32)


def build(config: MemcodesConfig) -> MemcodesTokenizer:
    return MemcodesTokenizer(config)


# ------------------------------------------------------------------------------ poses
def nearest_rotations(m: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` -> the nearest rotation matrices (SVD projection, det +1)."""
    u, _, vh = torch.linalg.svd(m.double())
    d = torch.det(u @ vh).sign()  # -1: a reflection; flip the last singular direction
    u = torch.cat([u[..., :2], u[..., 2:] * d[..., None, None]], dim=-1)
    return (u @ vh).to(m.dtype)


def rotation_angles_deg(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotation matrices; ``(P, 207)`` -> ``(P, 23)``."""
    a = np.asarray(pred, np.float64).reshape(len(pred), -1, 3, 3)
    b = np.asarray(true, np.float64).reshape(len(true), -1, 3, 3)
    trace = np.einsum("pjik,pjik->pj", a, b)  # trace(a^T b)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def encode_body_poses(tok: MemcodesTokenizer, poses: np.ndarray) -> np.ndarray:
    """SMPL body poses ``(P, 207)`` -> pose ids ``(P, num_tokens)`` int64 (the 8 ``pose`` tokens)."""
    if tok.config.use != "body_pose":
        raise ValueError(f"{tok.config.modality}: not a body-pose tokenizer (use {tok.config.use!r})")
    return tok.encode_labels(np.asarray(poses, np.float32).reshape(-1, POSE_DIM)).astype(np.int64)


def decode_body_poses(tok: MemcodesTokenizer, ids: np.ndarray) -> np.ndarray:
    """Pose ids ``(P, num_tokens)`` -> body poses ``(P, 207)``: 23 row-major rotation matrices."""
    if tok.config.use != "body_pose":
        raise ValueError(f"{tok.config.modality}: not a body-pose tokenizer (use {tok.config.use!r})")
    return tok.decode_labels(np.asarray(ids).reshape(-1, tok.config.num_tokens))


def label_vectors(spec: ModalitySpec, values: Sequence[Any]) -> np.ndarray:
    """The training vectors in a label column's values (one per row): ``(B, C)`` float32.

    Global embeddings: one vector per non-null row. Poses: every person's ``body_pose`` (rows
    are lists of person structs; persons without SMPL fields, e.g. YOLO-pose, are skipped)."""
    if spec.kind == "global_tokens":
        rows = [np.asarray(v, np.float32) for v in values if v is not None]
        return np.stack(rows) if rows else np.zeros((0, int(spec.num_channels)), np.float32)
    field = POSE_FIELDS[spec.label_columns[0]]
    poses = [np.asarray(p[field], np.float32) for people in values for p in (people or [])
             if p.get(field) is not None]
    return np.stack(poses) if poses else np.zeros((0, POSE_DIM), np.float32)


# ------------------------------------------------------------------------------ training
def evaluate(tok: MemcodesTokenizer, labels: np.ndarray) -> dict[str, float]:
    """Held-out metrics in label space: ``cosine`` (global) or ``angle_error_deg`` + ``smooth_l1`` (poses)."""
    ids = tok.encode_labels(labels)  # (B, N)
    recon = tok.decode_labels(ids)  # (B, C)
    x = tok.check_labels(labels).cpu()
    per_head = [codebook_stats(ids[:, h], tok.config.vocab_size) for h in range(ids.shape[1])]
    out = {"num_samples": int(len(labels)),
           "codebook_usage": float(np.mean([s["codebook_usage"] for s in per_head])),
           "perplexity": float(np.mean([s["perplexity"] for s in per_head]))}
    r = torch.from_numpy(recon)
    if tok.config.use == "global":
        out["cosine"] = float(F.cosine_similarity(r, x, dim=-1).mean())
        # what the training mean alone scores: a cosine near it means the tokens carry little
        out["cosine_of_mean"] = float(F.cosine_similarity(tok.shift.cpu()[None], x, dim=-1).mean())
    else:
        out["angle_error_deg"] = float(rotation_angles_deg(recon, labels).mean())
        mean_pose = nearest_rotations(tok.shift.cpu().reshape(-1, 3, 3)).reshape(1, -1).numpy()
        out["angle_error_of_mean_deg"] = float(rotation_angles_deg(np.repeat(mean_pose, len(x), 0), labels).mean())
        out["smooth_l1"] = float(F.smooth_l1_loss(r, x))
    return out


def _train_loop(tok: MemcodesTokenizer, x: torch.Tensor, *, seed: int) -> list[float]:
    """``config.steps`` AdamW steps (betas 0.9/0.99, warmup + cosine LR, grad clip 1) in place."""
    c = tok.config
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(tok.parameters(), lr=c.lr, betas=(0.9, 0.99), weight_decay=c.weight_decay)
    warmup, batch = max(1, c.steps // 10), min(c.batch_size, len(x))
    history = []
    tok.train()
    for step in range(c.steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, steps=c.steps, peak=c.lr, warmup=warmup)
        xb = x[torch.randperm(len(x), generator=gen)[:batch].to(x.device)]  # (b, C)
        recon, _ = tok(xb)
        loss = tok.loss(recon, xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        history.append(loss.item())
    tok.eval()
    return history


def train(spec: ModalitySpec, options: dict[str, Any], train_labels: np.ndarray, val_labels: np.ndarray,
          *, seed: int, device: str = "cpu") -> tuple[MemcodesTokenizer, dict[str, Any]]:
    """Train the Memcodes tokenizer of ``spec`` on label vectors ``(B, C)``; metrics on ``val_labels``."""
    config = MemcodesConfig.from_spec(spec, options)
    torch.manual_seed(seed)  # weight init and the Gumbel noise draw from the global RNG
    tok = build(config).to(device)
    x = tok.check_labels(train_labels)
    if len(x) == 0:
        raise ValueError(f"{spec.name}: no training vectors")
    tok.fit_normalization(x)
    start = time.perf_counter()
    history = _train_loop(tok, x, seed=seed)
    tail = history[-max(1, len(history) // 10) :]
    tok.training_summary = {
        "steps": config.steps, "batch_size": config.batch_size, "lr": config.lr, "seed": seed,
        "num_train_samples": int(len(x)), "wall_time_s": round(time.perf_counter() - start, 2),
        "loss": config.loss, "first_loss": history[0] if history else None,
        "final_loss": float(np.mean(tail)) if history else None,
    }
    return tok, {**evaluate(tok, val_labels), "train": dict(tok.training_summary)}


# ------------------------------------------------------------------------------ recon.png
def save_recon_png(tok: MemcodesTokenizer, val_labels: np.ndarray, path: Any, *, num_vectors: int = 3) -> None:
    """Global: histogram of input-vs-reconstruction cosines + a few vectors, input over
    reconstruction. Poses: histogram of joint angle errors + mean error per joint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recon = tok.decode_labels(tok.encode_labels(val_labels))
    x = np.asarray(val_labels, np.float32)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    if tok.config.use == "global":
        cos = (recon * x).sum(1) / (np.linalg.norm(recon, axis=1) * np.linalg.norm(x, axis=1) + 1e-12)
        left.hist(cos, bins=30, range=(min(0.0, float(cos.min())), 1.0), color="tab:blue")
        left.set(title=f"cosine(input, reconstruction): mean {cos.mean():.3f}", xlabel="cosine", ylabel="vectors")
        dims = min(64, x.shape[1])
        for i in range(min(num_vectors, len(x))):
            offset = 3.0 * i * float(np.abs(x[:, :dims]).max() + 1e-6)
            line = right.plot(x[i, :dims] + offset, lw=1.5, label=f"input {i}")[0]
            right.plot(recon[i, :dims] + offset, lw=1, ls="--", color=line.get_color(), label=f"recon {i}")
        right.set(title=f"first {dims} channels (offset per vector)", xlabel="channel")
        if len(x):
            right.legend(fontsize=7)
    else:
        err = rotation_angles_deg(recon, x)  # (P, 23)
        left.hist(err.ravel(), bins=30, color="tab:orange")
        left.set(title=f"joint rotation error: mean {err.mean():.1f} deg", xlabel="degrees", ylabel="joints")
        right.bar(np.arange(err.shape[1]), err.mean(0), color="tab:orange")
        right.set(title="mean error per SMPL body joint", xlabel="joint", ylabel="degrees")
    fig.suptitle(f"{tok.config.modality}: {FAMILY} {tok.config.num_tokens} tokens x {tok.config.vocab_size} codes")
    fig.tight_layout()
    buf = io.BytesIO()  # bytes, so that ``path`` may be on an object store
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    fs.write_atomic(path, buf.getvalue())
