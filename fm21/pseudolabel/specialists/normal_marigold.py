"""Surface normals from Marigold (diffusers' ``MarigoldNormalsPipeline``): the ``backend:
marigold`` choice of the ``normal`` network (``options.backend``; the default, ``dpt``, is
Omnidata's DPT, :mod:`fm21.pseudolabel.specialists.normal_dpt`, which constructs this class
in its place when the option asks for it).

Marigold (Ke et al., "Repurposing Diffusion-Based Image Generators for Monocular Depth
Estimation", CVPR 2024; normals in "Marigold: Affordable Adaptation of Diffusion-Based Image
Generators for Image Analysis", 2025) fine-tunes Stable Diffusion 2: the VAE encodes the image,
a UNet with 8 input channels (image latent + noisy normals latent) denoises the normals latent
conditioned on the empty prompt's CLIP embedding, and the VAE decodes it to 3 channels in
[-1, 1], renormalised to unit length.

Weights (``weights``):

- ``pretrained``: ``model_id`` (default ``prs-eth/marigold-normals-v1-1``, the checkpoint
  diffusers' own example loads) through ``MarigoldNormalsPipeline.from_pretrained`` into the
  weights cache (``<cache>/hf``); ``options.variant: fp16`` fetches the half-size files.
- ``path``: a folder written by the pipeline's ``save_pretrained`` (``model_index.json``,
  ``unet/``, ``vae/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``), same loader.
- ``random``: the pipeline assembled from random-init components of ``options.architecture``
  (Stable Diffusion 2 sizes by default; tests shrink them), built offline (see
  :func:`random_pipeline`).

Sampling is stochastic (the normals latent starts from Gaussian noise), so every sample gets
its own CPU ``torch.Generator`` seeded from ``options.seed``, its key and its ensemble member:
a sample's label does not depend on the batch it is in, the worker or the device, and a rerun
reproduces it. Defaults follow Marigold-normals v1.1 (prs-eth/Marigold
``config/train_marigold_normals.yaml``: ``default_denoising_steps: 4``,
``default_processing_resolution: 768``; DDIM with trailing timesteps and zero-SNR betas; README:
``ensemble_size`` 1 for practical use, 10 for the paper's numbers).

Output: the ``normal`` column of the oracle and of the DPT path: float16 unit vectors flattened
from ``(S, S, 3)`` (kind ``unit_vector``). Axis convention (``options.frame``):

- ``opencv`` (default, the synthetic oracle's frame): x right, y down, z forward (away from the
  camera); a surface facing the camera has z < 0.
- ``marigold``: the pipeline's own frame, x right, y up, z towards the viewer (diffusers
  ``MarigoldImageProcessor.visualize_normals``: "Default direction is right / top / facing the
  observer"; the training normals are Hypersim camera-space normals flipped to face the camera,
  prs-eth/Marigold ``script/normals/dataset_preprocess/hypersim``). OpenCV is Marigold with y
  and z negated.

A pixel whose vector has no length gets the vector facing the camera.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.config import ConfigError
from fm21.pseudolabel.specialists.base import num_samples, sample_image
from fm21.pseudolabel.specialists.weights import NetworkSpecialist, cache_dir

MARIGOLD_NORMALS_V1_1 = "prs-eth/marigold-normals-v1-1"
# Sign of each axis of a frame relative to OpenCV (x right, y down, z forward).
FRAME_SIGNS = {"opencv": (1.0, 1.0, 1.0), "marigold": (1.0, -1.0, -1.0)}
START, END = "<|startoftext|>", "<|endoftext|>"  # CLIP's special tokens


class MarigoldArchitecture(BaseModel):
    """The pipeline built at random init (a hub id or folder brings its own configs).
    Defaults: Stable Diffusion 2, which Marigold fine-tunes (UNet input widened to 8 channels:
    image latent and normals latent, Marigold paper Sec. 3); tests shrink it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unet_block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    unet_attention_head_dim: tuple[int, ...] = (5, 10, 20, 20)
    unet_layers_per_block: int = Field(2, ge=1)
    cross_attention_dim: int = Field(1024, ge=1)  # also the text encoder's width
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # latent = image / 2**(n-1)
    vae_layers_per_block: int = Field(2, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(32, ge=1)  # GroupNorm in the UNet and the VAE
    # the text tower of OpenCLIP ViT-H/14 as Stable Diffusion 2 uses it (23 of its 24 layers)
    text_num_hidden_layers: int = Field(23, ge=1)
    text_num_attention_heads: int = Field(16, ge=1)
    text_intermediate_size: int = Field(4096, ge=1)
    text_vocab_size: int = Field(49408, ge=2)
    text_max_position_embeddings: int = Field(77, ge=2)


class NormalMarigoldOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["marigold"] = "marigold"
    num_inference_steps: int = Field(4, ge=1)
    ensemble_size: int = Field(1, ge=1)  # predictions per image, merged by the pipeline ("closest")
    processing_resolution: int = Field(768, ge=0)  # longer side the network sees; 0: the run's size
    match_input_resolution: bool = True  # False: resized to S here, with antialias (see predict)
    seed: int = 0  # with the sample key, seeds each sample's diffusion noise
    variant: str | None = None  # e.g. "fp16": the checkpoint's half-size files
    frame: Literal["opencv", "marigold"] = "opencv"
    architecture: MarigoldArchitecture = MarigoldArchitecture()


# ------------------------------------------------------------------------ pure helpers
def to_frame(normals: np.ndarray, *, frame: str) -> np.ndarray:
    """``(..., 3)`` Marigold-frame normals -> float32 unit vectors in ``frame``; vectors without
    length become the one facing the camera."""
    v = np.asarray(normals, np.float32) * (np.array(FRAME_SIGNS["marigold"]) * FRAME_SIGNS[frame])
    norm = np.linalg.norm(v, axis=-1, keepdims=True)  # (..., 1)
    facing = np.array([0.0, 0.0, -1.0], np.float32) * FRAME_SIGNS[frame]  # OpenCV: -z faces the camera
    return np.where(norm > 1e-6, v / np.maximum(norm, 1e-6), facing).astype(np.float32)


def sample_generators(keys: Sequence[str], *, seed: int, ensemble_size: int) -> list:
    """One CPU generator per (sample, ensemble member), image-major as the pipeline orders its
    latents (``repeat_interleave``), seeded from ``seed``, the sample key and the member."""
    import torch

    out = []
    for key in keys:
        for member in range(ensemble_size):
            digest = hashlib.sha256(f"fm21-marigold:{seed}:{key}:{member}".encode()).digest()
            out.append(torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little")))
    return out


def empty_prompt_tokenizer():
    """A CLIP tokenizer that knows only the start and end tokens, built offline: Marigold only
    ever encodes the empty prompt, which CLIP tokenises to ``[start, end]``."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab={START: 0, END: 1}, merges=[], model_max_length=77)


def random_pipeline(arch: MarigoldArchitecture):
    """``MarigoldNormalsPipeline`` from random-init components of ``arch`` (the caller seeds
    torch). The scheduler is Marigold v1.1's: DDIM, v-prediction, trailing timesteps, zero-SNR
    betas on Stable Diffusion's scaled-linear schedule."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldNormalsPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(arch.unet_block_out_channels)
    unet = UNet2DConditionModel(
        in_channels=2 * arch.latent_channels, out_channels=arch.latent_channels,
        block_out_channels=arch.unet_block_out_channels, layers_per_block=arch.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        attention_head_dim=arch.unet_attention_head_dim, cross_attention_dim=arch.cross_attention_dim,
        norm_num_groups=arch.norm_num_groups, use_linear_projection=True)
    n_vae = len(arch.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=arch.latent_channels,
        block_out_channels=arch.vae_block_out_channels, layers_per_block=arch.vae_layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * n_vae, up_block_types=("UpDecoderBlock2D",) * n_vae,
        norm_num_groups=arch.norm_num_groups, scaling_factor=0.18215)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
        timestep_spacing="trailing", rescale_betas_zero_snr=True)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=arch.text_vocab_size, hidden_size=arch.cross_attention_dim,
        intermediate_size=arch.text_intermediate_size, num_hidden_layers=arch.text_num_hidden_layers,
        num_attention_heads=arch.text_num_attention_heads, hidden_act="gelu",
        max_position_embeddings=arch.text_max_position_embeddings, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    return MarigoldNormalsPipeline(
        unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=empty_prompt_tokenizer(),
        prediction_type="normals", use_full_z_range=True, default_denoising_steps=4,
        default_processing_resolution=768)


# ------------------------------------------------------------------------ the specialist
class NormalMarigold(NetworkSpecialist):
    name: ClassVar[str] = "normal"
    Options: ClassVar[type[BaseModel]] = NormalMarigoldOptions
    default_model_id: ClassVar[str] = MARIGOLD_NORMALS_V1_1
    source: ClassVar[Literal["hf"]] = "hf"

    def is_cached(self) -> bool:
        """A diffusers pipeline's root file is ``model_index.json`` (not ``config.json``)."""
        if self.cfg.weights != "pretrained":
            return super().is_cached()
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(self.model_id, "model_index.json", cache_dir=str(cache_dir() / "hf"))
        return isinstance(hit, str)

    def build(self, location: str | None):
        """The pipeline from a hub id or saved folder, or at random init (None), in float32
        on :attr:`device` (GPU precision comes from :meth:`autocast`), in eval mode."""
        import torch
        from diffusers import MarigoldNormalsPipeline

        if location is None:
            pipe = random_pipeline(self.options.architecture)
        else:
            if self.cfg.weights == "path" and not (Path(location) / "model_index.json").is_file():
                raise ConfigError(
                    f"'pseudolabel.specialists.{self.name}.path': {location} is not a saved Marigold pipeline "
                    f"(no model_index.json; write one with MarigoldNormalsPipeline.save_pretrained)")
            kw: dict[str, Any] = {} if self.cfg.weights == "path" else {"cache_dir": str(cache_dir() / "hf")}
            pipe = MarigoldNormalsPipeline.from_pretrained(
                location, dtype=torch.float32, variant=self.options.variant, **kw)
        resolution = self.options.processing_resolution
        if resolution % pipe.vae_scale_factor:
            raise ConfigError(
                f"'pseudolabel.specialists.{self.name}.options.processing_resolution' is {resolution}, "
                f"but the pipeline needs a multiple of its VAE's scale factor {pipe.vae_scale_factor} (or 0)")
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            part.eval()
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def columns(self) -> list[pa.Field]:
        return [self.map_field("normal", "float16", kind="unit_vector", channels=3)]

    def predict(self, batch: dict[str, Any]) -> np.ndarray:
        """Marigold-frame unit normals at the run's image size: ``(B, S, S, 3)`` float32."""
        import torch.nn.functional as F

        s, o = self.image_size, self.options
        rgb = np.stack([sample_image(batch, i, s) for i in range(num_samples(batch))])  # (B, S, S, 3) uint8
        self.load()
        generators = sample_generators(batch["key"], seed=o.seed, ensemble_size=o.ensemble_size)
        with self.inference():
            out = self.model(  # uint8 NHWC in; the pipeline scales to [-1, 1] and resizes
                rgb, num_inference_steps=o.num_inference_steps, ensemble_size=o.ensemble_size,
                processing_resolution=o.processing_resolution, match_input_resolution=o.match_input_resolution,
                batch_size=len(rgb) * o.ensemble_size, generator=generators, output_type="pt")
        normals = out.prediction.float()  # (B, 3, H, W)
        if normals.shape[-2:] != (s, s):  # match_input_resolution False: antialiased, then unit length
            normals = F.interpolate(normals, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            normals = normals / normals.norm(dim=1, keepdim=True).clamp(min=1e-6)
        return normals.permute(0, 2, 3, 1).cpu().numpy()  # (B, S, S, 3)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        normal = to_frame(self.predict(batch), frame=self.options.frame)  # (B, S, S, 3)
        return {"normal": [n.astype(np.float16).reshape(-1) for n in normal]}  # each (S*S*3,)
