"""DiVAE image tokenizer: conv encoder -> lucid VQ -> a *diffusion* decoder (apple/ml-4m `fourm/vq/vqvae.py` DiVAE).

The encoder half is the VQ-VAE's (``ConvEncoder``, ``PostMLP``, 1x1 projection to
``latent_dim``, ``LucidQuantizer``: EMA cosine codes with dead-code restarts). The decoder
is a ``diffusers.UNet2DModel`` that denoises the image conditioned on the quantised
latents: the unit code vectors ``(B, D, g, g)`` are nearest-upsampled to the image and
concatenated with the noisy image as extra input channels (the reference's "concat"
conditioning, `fourm/vq/models/unet/unet.py`). As in the reference's patched UNet
(``unet_patched``, patch 4), the noisy image is first pixel-unshuffled by ``decoder_patch``
(default 4; 1 = the UNet runs at full resolution) and the latents are upsampled to that
grid, so the UNet runs at ``R / decoder_patch``: at 64 px on one CPU core, patch 4 trains
about 10x faster than patch 1 (``benchmarks/bench_divae.py``).

Diffusion as the shipped configs (`cfgs/default/tokenization/divae/*`): DDPM with 1000
training steps, linear betas, x0 prediction (``prediction_type="sample"``); MSE, or
smooth-L1 for the maps whose reference tokenizer uses it (depth, edges), chosen by the
label kind's preprocessor. Decoding runs DDIM (``timestep_spacing="trailing"``, as the
reference pipeline) for ``decode_steps`` steps from seeded noise: one ``(1, C, R, R)``
noise draw shared by the batch, so a decode is a pure function of the ids and the seed
(the same ids decode to the same map whatever batch they sit in).

Model space is the preprocessor's ``to_model`` space; for edges (whose ``from_model`` reads
logits) the x0 prediction in [-1, 1] maps to the logit of ``(x0 + 1) / 2`` before
``from_model``, so "edge" means x0 > 0.

Released layout (opt-in, set by ``fm21 import tokenizer`` for the released DiVAEs; every
option below is left out of the config dump at its default, so fm21's own DiVAEs keep their
fingerprints): ``unet_layout="adm"`` builds the UNet with the block layout of the reference's
ADM UNet (``fm21.tokenize.adm_unet``: attention in the down/up blocks of
``unet_attention_levels`` and in the middle, ``unet_num_heads``, GroupNorm(32),
``unet_scale_shift``); ``decoder_channels`` lets the decoder diffuse more channels than the
label has (the released edge DiVAE diffuses 3 equal channels: a 1-channel edge map is
repeated as the target and the decoded channels are averaged); ``prediction_type``
(sample | epsilon | v_prediction), ``beta_schedule``, ``zero_terminal_snr`` (betas rescaled
to zero terminal SNR, `fourm/vq/scheduling/scheduling_utils.py`) and ``thresholding``
(Imagen dynamic thresholding of x0, at decode) go to the diffusers schedulers as the
reference's DiVAE passes them to its own.

Option names: ``ema_decay`` here is the *model* EMA of the decoder (the reference uses
0.9999 for DiVAEs; with a warmup ``min(decay, (1 + step) / (10 + step))`` so short runs
work); the quantizer's codebook EMA is ``codebook_ema_decay``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fm21.modalities import ModalitySpec
from fm21.schedules import warmup_cosine
from fm21.tokenize.adm_unet import build_unet
from fm21.tokenize.image_tokenizer import OPTIONAL_FIELDS, ImageTokenizer, SquareTokenGrid, omit_default_fields
from fm21.tokenize.preprocess import PREPROCESSORS, DepthPreprocessor, EdgePreprocessor, Preprocessor
from fm21.tokenize.quantizer import LucidQuantizer, codebook_stats
from fm21.tokenize.train_vq import _augment, save_recon_grid
from fm21.tokenize.vqvae import TRUNKS, _groups, latent_head

FAMILY = "divae"

# Training options (not part of the model config): defaults for the tiny/demo recipes.
TRAIN_DEFAULTS: dict[str, Any] = {"steps": 300, "lr": 1e-3, "batch_size": 32, "ema_decay": 0.999}
MAX_ATTENTION_SIDE = 16  # the UNet mid block attends only when its grid is at most this side
LAYOUTS = ("fm21", "adm")
PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")


@dataclass(frozen=True)
class DiVAEConfig(SquareTokenGrid):
    """Everything needed to rebuild a DiVAE from its checkpoint folder."""

    family: str
    modality: str
    preprocess: str  # key of PREPROCESSORS (the spec's label kind)
    resolution: int
    patch_size: int
    vocab_size: int
    num_channels: int
    latent_dim: int = 32
    hidden_dim: int = 64  # encoder width at the token grid
    num_layers: int = 2  # encoder residual blocks per level
    trunk: str = "conv"  # "conv" | "vit" (the encoder trunks of fm21.tokenize.vqvae)
    num_heads: int = 0  # vit trunk: attention heads (0: hidden_dim / 64)
    pos_grid: int = 0  # vit trunk: side of the stored position embedding (0: grid_size)
    unet_channels: tuple[int, ...] = (32, 64)  # UNet block widths, one resolution level each
    layers_per_block: int = 1
    decoder_patch: int = 4  # pixel-unshuffle of the noisy image before the UNet (the reference's patch 4)
    num_train_timesteps: int = 1000
    decode_steps: int = 10  # DDIM steps of decode()
    decode_seed: int = 0  # seed of the initial decode noise
    codebook_ema_decay: float = 0.99
    commitment_weight: float = 1.0
    dead_code_coef: float = 32.0
    # the released layout (module docstring); left out of the dump at these defaults
    unet_layout: str = "fm21"  # "fm21" | "adm"
    unet_attention_levels: tuple[int, ...] = ()  # adm: levels whose down/up blocks attend
    unet_num_heads: int = 1  # adm: attention heads (unet_patched: 1)
    unet_scale_shift: bool = False  # adm: use_scale_shift_norm
    decoder_channels: int = 0  # channels the decoder diffuses (0: the label's)
    prediction_type: str = "sample"
    beta_schedule: str = "linear"
    zero_terminal_snr: bool = False
    thresholding: bool = False

    @classmethod
    def from_spec(cls, spec: ModalitySpec, options: dict[str, Any]) -> DiVAEConfig:
        """Config of ``spec`` (an image_tokens spec of a continuous label kind) with the
        model keys of ``options``; unknown keys raise ValueError naming the key."""
        model_opts, _ = split_options(options)
        preprocess = spec.label_kind
        prep = PREPROCESSORS.get(preprocess)
        if spec.kind != "image_tokens" or prep is None or prep.categorical or prep.channels == 0:
            raise ValueError(f"{spec.name}: DiVAE needs an image_tokens spec of a continuous label kind, "
                             f"got kind {spec.kind!r}, label columns {spec.label_columns}")
        for key in ("unet_channels", "unet_attention_levels"):
            if key in model_opts:
                model_opts[key] = tuple(int(c) for c in model_opts[key])
        cfg = cls(family=FAMILY, modality=spec.name, preprocess=preprocess, resolution=int(spec.resolution),
                  patch_size=int(spec.patch_size), vocab_size=int(spec.vocab_size),
                  num_channels=int(spec.num_channels), **model_opts)
        cfg.check()
        return cfg

    def check(self) -> None:
        p, side = self.decoder_patch, self.resolution // max(self.decoder_patch, 1)
        if p < 1 or self.resolution % p or self.patch_size % p:
            raise ValueError(f"decoder_patch {p} must divide resolution {self.resolution} and patch_size "
                             f"{self.patch_size}")
        if side % 2 ** (len(self.unet_channels) - 1):
            raise ValueError(f"unet_channels {self.unet_channels}: {len(self.unet_channels) - 1} halvings "
                             f"do not divide the UNet input side {side}")
        if self.unet_layout not in LAYOUTS or self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unet_layout {self.unet_layout!r} (have {LAYOUTS}), prediction_type "
                             f"{self.prediction_type!r} (have {PREDICTION_TYPES})")
        if self.unet_layout == "fm21" and (self.unet_attention_levels or self.unet_scale_shift):
            raise ValueError("unet_attention_levels / unet_scale_shift need unet_layout: adm")
        label_channels = PREPROCESSORS[self.preprocess].channels
        if self.decoder_channels not in (0, label_channels) and label_channels != 1:
            raise ValueError(f"decoder_channels {self.decoder_channels}: only a 1-channel label repeats")

    def to_dict(self) -> dict[str, Any]:
        return omit_default_fields(self, DIVAE_OPTIONAL_FIELDS)  # older checkpoints keep their fingerprint

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiVAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        for key in ("unet_channels", "unet_attention_levels"):  # JSON lists
            if key in kept:
                kept[key] = tuple(kept[key])
        return cls(**kept)


# fields written to config.json only away from their default (fingerprints of older checkpoints)
DIVAE_OPTIONAL_FIELDS = (*OPTIONAL_FIELDS, "unet_layout", "unet_attention_levels", "unet_num_heads",
                         "unet_scale_shift", "decoder_channels", "prediction_type", "beta_schedule",
                         "zero_terminal_snr", "thresholding")


_MODEL_KEYS = {f.name for f in dataclasses.fields(DiVAEConfig)} - {
    "family", "modality", "preprocess", "resolution", "patch_size", "vocab_size", "num_channels"}


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Recipe options -> (model config keys, training options with defaults filled)."""
    model, train = {}, dict(TRAIN_DEFAULTS)
    for key, value in (options or {}).items():
        if key == "family":
            if value != FAMILY:
                raise ValueError(f"family: DiVAE options with family {value!r}")
        elif key in _MODEL_KEYS:
            model[key] = value
        elif key in TRAIN_DEFAULTS:
            train[key] = value
        else:
            known = ", ".join(sorted(_MODEL_KEYS | set(TRAIN_DEFAULTS)))
            raise ValueError(f"unknown DiVAE option {key!r}; known: {known}")
    return model, train


def diffusion_loss_fn(prep: Preprocessor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The reference DiVAE losses: smooth-L1 for depth and edge maps, MSE otherwise. Edge
    pixels weigh ``prep.pos_weight`` times the background, as in the VQ-VAE's edge BCE: a
    1-px edge map (about 5 % positives) under an unweighted x0 loss decodes to "no edge"
    at demo budgets (F1 = 0 after 250 steps, measured)."""
    if isinstance(prep, EdgePreprocessor):
        def weighted_smooth_l1(pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            weight = torch.where(x > 0, prep.pos_weight, 1.0)  # x in [-1, 1]: edges at +1
            return (F.smooth_l1_loss(pred, x, reduction="none") * weight).sum() / weight.sum()
        return weighted_smooth_l1
    return F.smooth_l1_loss if isinstance(prep, DepthPreprocessor) else F.mse_loss


def x0_to_output(prep: Preprocessor, x0: torch.Tensor) -> torch.Tensor:
    """x0 in model space -> what ``prep.from_model`` reads (logits for edge maps)."""
    if isinstance(prep, EdgePreprocessor):
        return torch.logit(((x0 + 1.0) / 2.0).clamp(1e-4, 1.0 - 1e-4))
    return x0


class DiVAE(ImageTokenizer):
    family = FAMILY

    def __init__(self, config: DiVAEConfig) -> None:
        from diffusers import DDPMScheduler, UNet2DModel  # lazy: importing diffusers takes seconds

        super().__init__(config)
        cfg, c, p = config, self.preprocessor.channels, config.decoder_patch
        # The VQ-VAE's encoder half (conv or ViT trunk, then its latent head).
        if cfg.trunk not in TRUNKS:
            raise ValueError(f"{cfg.modality}: unknown trunk {cfg.trunk!r}; have {', '.join(TRUNKS)}")
        self.encoder = TRUNKS[cfg.trunk][0](c, cfg)
        self.post_mlp, self.to_latent = latent_head(cfg)
        self.quantizer = LucidQuantizer(cfg.latent_dim, cfg.vocab_size, ema_decay=cfg.codebook_ema_decay,
                                        commitment_weight=cfg.commitment_weight, dead_code_coef=cfg.dead_code_coef)
        levels = len(cfg.unet_channels)
        coarsest = cfg.resolution // p // 2 ** (levels - 1)  # UNet side at its mid block
        dc = self.decoder_channels = cfg.decoder_channels or c  # channels the decoder diffuses
        if cfg.unet_layout == "adm":  # the released decoders' layout (fm21.tokenize.adm_unet)
            self.decoder = build_unet(
                sample_size=cfg.resolution // p, in_channels=dc * p * p + cfg.latent_dim, out_channels=dc * p * p,
                channels=cfg.unet_channels, layers_per_block=cfg.layers_per_block,
                attention_levels=cfg.unet_attention_levels, num_heads=cfg.unet_num_heads,
                scale_shift=cfg.unet_scale_shift)
        else:
            self.decoder = UNet2DModel(
                sample_size=cfg.resolution // p, in_channels=dc * p * p + cfg.latent_dim, out_channels=dc * p * p,
                block_out_channels=cfg.unet_channels, layers_per_block=cfg.layers_per_block,
                down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                norm_num_groups=_groups(min(cfg.unet_channels)), attention_head_dim=min(8, cfg.unet_channels[-1]),
                # self-attention only in the mid block and only on a small grid: at 32x32 its
                # (B, heads, 1024, 1024) scores cost more than the rest of the UNet on CPU
                add_attention=coarsest <= MAX_ATTENTION_SIDE,
            )
        # The training noise schedule (not a module: no weights, not in the state dict).
        self.noise_schedule = DDPMScheduler(**self._schedule_kwargs())
        self.loss_fn = diffusion_loss_fn(self.preprocessor)

    # ------------------------------------------------------------------ encoder half
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space ``(B, C, R, R)`` -> pre-quantization latents ``(B, latent_dim, g, g)``."""
        return self.to_latent(self.post_mlp(self.encoder(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.latents(x))[1]  # (B, g, g)

    # ------------------------------------------------------------------ diffusion decoder
    def _schedule_kwargs(self) -> dict[str, Any]:
        """The diffusers scheduler options of this config (the reference DiVAE's, `fourm/vq/vqvae.py`)."""
        cfg = self.config
        kwargs: dict[str, Any] = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                      prediction_type=cfg.prediction_type, clip_sample=False)
        if cfg.zero_terminal_snr:  # same rescale as `fourm/vq/scheduling/scheduling_utils.py`
            kwargs["rescale_betas_zero_snr"] = True
        if cfg.thresholding:  # ratio 0.995, max 1.0: the reference's defaults, i.e. x0 clipped to [-1, 1]
            kwargs["thresholding"] = True
        return kwargs

    def diffusion_target(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts for clean ``x`` (label channels) noised with ``noise`` at ``t``."""
        x = self.to_decoder_channels(x)
        if self.config.prediction_type == "epsilon":
            return noise
        if self.config.prediction_type == "v_prediction":
            return self.noise_schedule.get_velocity(x, noise, t)
        return x

    def to_decoder_channels(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, R, R)`` -> ``(B, decoder_channels, R, R)``: a 1-channel label repeated."""
        return x if x.shape[1] == self.decoder_channels else x.expand(-1, self.decoder_channels, -1, -1)

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, quant: torch.Tensor) -> torch.Tensor:
        """Noisy ``(B, Cd, R, R)``, timesteps ``(B,)``, codes ``(B, D, g, g)`` -> the model output
        ``(B, Cd, R, R)``: x0 (``prediction_type`` sample), the noise or v."""
        p = self.config.decoder_patch
        cond = F.interpolate(quant, scale_factor=self.config.patch_size // p, mode="nearest")  # (B, D, R/p, R/p)
        inp = torch.cat([F.pixel_unshuffle(noisy, p), cond], dim=1)  # (B, C*p*p + D, R/p, R/p)
        return F.pixel_shuffle(self.decoder(inp, t).sample, p)  # (B, C, R, R)

    def forward(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training forward -> (prediction, ids (B, g, g), commitment loss); ``noise`` has
        ``decoder_channels``; the prediction is compared with ``diffusion_target``."""
        quant, ids, commit = self.quantizer(self.latents(x))
        noisy = self.noise_schedule.add_noise(self.to_decoder_channels(x), noise, t)
        return self.denoise(noisy, t, quant), ids, commit

    def sample_x0(self, ids: torch.Tensor, *, steps: int | None = None, seed: int | None = None) -> torch.Tensor:
        """DDIM from seeded noise: ids ``(B, g, g)`` -> x0 in model space ``(B, C, R, R)``
        (a decoder of more channels than the label: their mean)."""
        from diffusers import DDIMScheduler

        cfg = self.config
        scheduler = DDIMScheduler(**self._schedule_kwargs(), timestep_spacing="trailing")
        scheduler.set_timesteps(int(steps or cfg.decode_steps))
        quant = self.quantizer.lookup(ids)  # (B, D, g, g)
        gen = torch.Generator().manual_seed(cfg.decode_seed if seed is None else int(seed))
        c, r = self.decoder_channels, cfg.resolution
        x = torch.randn((1, c, r, r), generator=gen).to(quant.device)  # CPU draw: same noise on any device
        x = x.expand(len(ids), -1, -1, -1).contiguous()
        for t in scheduler.timesteps:
            out = self.denoise(x, t.expand(len(ids)).to(quant.device), quant)
            x = scheduler.step(out, t, x, eta=0.0).prev_sample  # deterministic (eta 0)
        if c != self.preprocessor.channels:  # (B, Cd, R, R) -> (B, 1, R, R)
            x = x.mean(dim=1, keepdim=True)
        return x

    def decode(self, ids: torch.Tensor, *, steps: int | None = None, seed: int | None = None) -> torch.Tensor:
        return x0_to_output(self.preprocessor, self.sample_x0(ids, steps=steps, seed=seed))

    @torch.no_grad()
    def decode_labels(self, ids: np.ndarray, *, batch_size: int = 64, steps: int | None = None,
                      seed: int | None = None) -> np.ndarray:
        """Ids ``(B, N)`` -> label maps; ``steps``/``seed`` default to the config's."""
        g, was_training = self.config.grid_size, self.training
        self.eval()
        out = []
        for start in range(0, len(ids), batch_size):
            chunk = torch.from_numpy(np.asarray(ids[start : start + batch_size], dtype=np.int64))
            out.append(self.preprocessor.from_model(self.decode(chunk.reshape(-1, g, g), steps=steps, seed=seed)))
        self.train(was_training)
        return np.concatenate(out)


def build(config: DiVAEConfig) -> DiVAE:
    """Random init from ``config`` (the checkpoint loader then loads the state dict)."""
    return DiVAE(config)


# ---------------------------------------------------------------------- training
@torch.no_grad()
def diffusion_loss(tok: DiVAE, labels: np.ndarray, *, seed: int = 0, batch_size: int = 64) -> float:
    """Mean diffusion loss (the x0 loss for x0 prediction) over ``labels`` at seeded noise and
    timesteps (comparable across models)."""
    was_training, gen = tok.training, torch.Generator().manual_seed(seed)
    tok.eval()
    total = 0.0
    for start in range(0, len(labels), batch_size):
        x = tok.preprocessor.to_model(labels[start : start + batch_size])
        noise = torch.randn((len(x), tok.decoder_channels, *x.shape[2:]), generator=gen)
        t = torch.randint(0, tok.config.num_train_timesteps, (len(x),), generator=gen)
        total += float(tok.loss_fn(tok(x, noise, t)[0], tok.diffusion_target(x, noise, t))) * len(x)
    tok.train(was_training)
    return total / max(len(labels), 1)


def _train_loop(tok: DiVAE, x_train: torch.Tensor, opts: dict[str, Any], *, seed: int) -> list[float]:
    """``opts["steps"]`` AdamW steps in place, decoder EMA copied in at the end; the x0 loss per step."""
    gen = torch.Generator().manual_seed(seed)  # on CPU: the same draws whatever the device
    device = next(tok.parameters()).device
    steps, base_lr, num_t = int(opts["steps"]), float(opts["lr"]), tok.config.num_train_timesteps
    opt = torch.optim.AdamW(tok.parameters(), lr=base_lr, betas=(0.9, 0.99), weight_decay=1e-4)
    ema = [p.detach().clone() for p in tok.decoder.parameters()]
    batch = min(int(opts["batch_size"]), len(x_train))
    history = []
    tok.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, steps=steps, peak=base_lr, warmup=max(1, steps // 20))
        idx = torch.randperm(len(x_train), generator=gen)[:batch]
        x = _augment(tok, x_train[idx], gen)  # (b, C, R, R), random hflip
        noise = torch.randn((len(x), tok.decoder_channels, *x.shape[2:]), generator=gen)  # = x.shape by default
        t = torch.randint(0, num_t, (batch,), generator=gen)  # (b,) uniform timesteps
        x, noise, t = x.to(device), noise.to(device), t.to(device)
        pred, _, commit = tok(x, noise, t)
        rec = tok.loss_fn(pred, tok.diffusion_target(x, noise, t))  # x itself for x0 prediction
        opt.zero_grad(set_to_none=True)
        (rec + commit).backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        decay = min(float(opts["ema_decay"]), (1 + step) / (10 + step))  # EMA warmup
        with torch.no_grad():
            for e, p in zip(ema, tok.decoder.parameters()):
                e.lerp_(p, 1.0 - decay)
        history.append(rec.item())
    with torch.no_grad():
        for e, p in zip(ema, tok.decoder.parameters()):
            p.copy_(e)
    tok.eval()
    return history


def evaluate(tok: DiVAE, labels: np.ndarray, *, steps: int | None = None) -> dict[str, float]:
    """Codebook usage/perplexity, held-out x0 loss and the label kind's own metrics of the
    DDIM reconstructions (PSNR, aligned AbsRel, mean angle, F1: ``Preprocessor.metrics``)."""
    ids = tok.encode_labels(labels)  # (B, N) int16
    recon = tok.decode_labels(ids, steps=steps)
    return {
        "num_samples": int(len(labels)),
        "diffusion_loss": diffusion_loss(tok, labels),
        "decode_steps": int(steps or tok.config.decode_steps),
        **codebook_stats(ids, tok.config.vocab_size),
        **tok.preprocessor.metrics(recon, labels),
    }


def train(spec: ModalitySpec, options: dict[str, Any], train_labels: np.ndarray, val_labels: np.ndarray,
          *, seed: int, device: str = "cpu") -> tuple[DiVAE, dict[str, Any]]:
    """Train the DiVAE of ``spec`` on label maps; metrics on ``val_labels``. Deterministic on CPU.
    ``device``: where the training steps run; the returned tokenizer is on the CPU."""
    cfg = DiVAEConfig.from_spec(spec, options)
    _, opts = split_options(options)
    torch.manual_seed(seed)  # weight init and dead-code restarts draw from the global RNG
    tok = build(cfg).to(device)
    x_train = tok.preprocessor.to_model(train_labels)  # normalise once, not per step
    start = time.perf_counter()
    history = _train_loop(tok, x_train, opts, seed=seed)
    tok.cpu()  # the label-space API (encode_labels/decode_labels) works on CPU tensors
    tail = history[-max(1, len(history) // 10):]
    tok.training_summary = {
        **opts, "seed": seed, "num_train_samples": int(len(train_labels)),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "first_diffusion_loss": history[0] if history else None,
        "final_diffusion_loss": float(np.mean(tail)) if history else None,
    }
    return tok, {**evaluate(tok, val_labels), "train": dict(tok.training_summary)}


def save_recon_png(tok: DiVAE, val_labels: np.ndarray, path: Path | str) -> None:
    """Originals over DDIM reconstructions (``decode_steps``), written atomically (local or URI)."""
    save_recon_grid(tok, val_labels, path)
