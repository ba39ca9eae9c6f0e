"""SAM instances: Segment Anything's automatic masks, one list of instances per image.

4M-21 pseudo-labels ``sam_instance`` (and derives ``tok_sam_edge``) with SAM ViT-H
(Kirillov et al. 2023, "Segment Anything"; facebookresearch/segment-anything). This
specialist runs the package's own ``SamAutomaticMaskGenerator`` (a grid of point prompts,
IoU / stability filters, box NMS) on the stored ``S x S`` image. Preprocessing is SAM's
own and belongs to the weights: ``SamPredictor.set_image`` resizes the long side to the
image encoder's ``img_size`` (``ResizeLongestSide``, 1024 for the released models),
normalises by ``Sam.pixel_mean``/``pixel_std`` and pads; masks come back at ``S x S``.

Weights (``pseudolabel.specialists.sam``): ``model_type`` vit_h (default) | vit_l | vit_b
builds through ``segment_anything.sam_model_registry[model_type](checkpoint=...)``;
``pretrained`` downloads the official checkpoint URL into the weights cache
(``<cache>/url/<file>``), ``path`` loads a local ``.pth`` state dict through the same
builder. ``model_type: tiny`` is a small SAM of the same modules (sizes in ``tiny``) for
tests, built like ``segment_anything/build_sam.py``'s ``_build_sam``.

Column ``sam_instances``: per sample a list of instances, ordered by score (descending)::

    {"rle": {"size": [S, S], "counts": [int, ...]},  # COCO *uncompressed* RLE, column-major
     "box": [x0, y0, x1, y1],                         # normalised to [0, 1], pixel edges
     "score": float,                                  # SAM's predicted IoU (a regression
                                                      # output, not clipped to [0, 1])
     "stability_score": float,
     "area": int}                                     # mask pixels at S x S

The RLE is the uncompressed COCO form (``pycocotools.mask.frPyObjects`` reads it; this
environment has no pycocotools, and the compressed string form would need it), encoded
and decoded by segment-anything's own ``mask_to_rle_pytorch`` / ``rle_to_mask``
(:func:`encode_rle`, :func:`decode_rle`). ``box`` covers the mask's pixels: a mask over
columns ``a..b`` gives ``x0 = a / S``, ``x1 = (b + 1) / S``, as the detection boxes do.
Empty masks (area 0) are dropped.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.config import ConfigError, SpecialistConfig
from fm21.pseudolabel.specialists.base import num_samples, sample_image
from fm21.pseudolabel.specialists.weights import NetworkSpecialist, cache_dir

# The released checkpoints (facebookresearch/segment-anything README, "Model Checkpoints").
CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}

RLE_STRUCT = pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.list_(pa.int32()))])
INSTANCE_STRUCT = pa.struct(
    [
        ("rle", RLE_STRUCT),
        ("box", pa.list_(pa.float32(), 4)),
        ("score", pa.float32()),
        ("stability_score", pa.float32()),
        ("area", pa.int32()),
    ]
)


class TinySam(BaseModel):
    """Sizes of ``model_type: tiny`` (tests): SAM's modules at toy widths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    img_size: int = Field(64, ge=16)  # image encoder input (ResizeLongestSide target)
    patch_size: int = Field(16, ge=1)
    encoder_embed_dim: int = Field(32, ge=8)
    encoder_depth: int = Field(1, ge=1)
    encoder_num_heads: int = Field(2, ge=1)
    prompt_embed_dim: int = Field(32, ge=8)  # must divide by 8 (the decoder's upscaling)


class SamOptions(BaseModel):
    """``SamAutomaticMaskGenerator``'s knobs (its defaults are tuned for ViT-H) and the model size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"
    points_per_side: int = Field(32, ge=1)  # a points_per_side^2 grid of point prompts
    points_per_batch: int = Field(64, ge=1)
    pred_iou_thresh: float = Field(0.88, ge=0, le=1)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    box_nms_thresh: float = Field(0.7, ge=0, le=1)
    min_mask_region_area: int = Field(0, ge=0)  # > 0: remove small islands / holes (OpenCV)
    crop_n_layers: int = Field(0, ge=0)  # > 0: run again on 2^i x 2^i crops, layer i
    tiny: TinySam = TinySam()


# ------------------------------------------------------------------ model
def build_tiny_sam(arch: TinySam):
    """A small ``Sam`` of the released architecture's modules, following
    segment-anything ``build_sam.py`` ``_build_sam`` with every width scaled down."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if arch.img_size % arch.patch_size or arch.prompt_embed_dim % 8:
        raise ConfigError("sam.options.tiny: img_size must divide by patch_size, prompt_embed_dim by 8")
    grid = arch.img_size // arch.patch_size  # image embedding is (prompt_embed_dim, grid, grid)
    dim = arch.prompt_embed_dim
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth, embed_dim=arch.encoder_embed_dim, img_size=arch.img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=[arch.encoder_depth - 1], window_size=max(1, min(14, grid)), out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=2 * dim, num_heads=2),
            transformer_dim=dim, iou_head_depth=1, iou_head_hidden_dim=dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(model_type: str, checkpoint: str | None, *, tiny: TinySam = TinySam()):
    """A ``Sam`` of ``model_type`` with the state dict at ``checkpoint`` (None: random init).
    Released sizes go through ``sam_model_registry``; ``tiny`` loads its state dict the same way."""
    import torch
    from segment_anything import sam_model_registry

    if model_type != "tiny":
        return sam_model_registry[model_type](checkpoint=checkpoint)
    sam = build_tiny_sam(tiny)
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    return sam


def download_checkpoint(url: str) -> Path:
    """The checkpoint at ``url`` in the weights cache (``<cache>/url/<file name>``),
    downloaded once (``fm21 weights fetch`` on a machine with network)."""
    import torch

    target = cache_dir() / "url" / Path(url).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)  # writes a temp file, then moves
    return target


# ------------------------------------------------------------------ masks -> instances
def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO uncompressed RLE ``{"size": [H, W], "counts": [...]}`` (column-major)."""
    import torch
    from segment_anything.utils.amg import mask_to_rle_pytorch

    return mask_to_rle_pytorch(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None])[0]


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO uncompressed RLE -> (H, W) bool mask."""
    from segment_anything.utils.amg import rle_to_mask

    return rle_to_mask({"size": list(rle["size"]), "counts": list(rle["counts"])})


def mask_instance(mask: np.ndarray, *, score: float, stability_score: float) -> dict[str, Any] | None:
    """One (S, S) bool mask -> an instance record (None when the mask is empty)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    box = [xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]  # pixel edges, in [0, 1]
    return {
        "rle": encode_rle(mask),
        "box": [float(c) for c in box],
        "score": float(score),
        "stability_score": float(stability_score),
        "area": int(ys.size),
    }


def instances_from_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``SamAutomaticMaskGenerator.generate`` records (``output_mode="binary_mask"``) ->
    instance records, best predicted IoU first, empty masks dropped."""
    out = []
    for rec in records:
        inst = mask_instance(np.asarray(rec["segmentation"], dtype=bool), score=rec["predicted_iou"],
                             stability_score=rec["stability_score"])
        if inst is not None:
            out.append(inst)
    return sorted(out, key=lambda r: -r["score"])


# ------------------------------------------------------------------ specialist
class SamInstances(NetworkSpecialist):
    name: ClassVar[str] = "sam"
    Options: ClassVar[type[BaseModel]] = SamOptions
    source: ClassVar[Literal["hf", "url", "open_clip", "ultralytics"]] = "url"
    default_model_id: ClassVar[str] = CHECKPOINT_URLS["vit_h"]

    generator: Any = None

    def __init__(self, cfg: SpecialistConfig, *, image_size: int) -> None:
        super().__init__(cfg, image_size=image_size)
        if cfg.weights == "pretrained" and not cfg.model_id and self.options.model_type == "tiny":
            raise ConfigError("'pseudolabel.specialists.sam': model_type tiny has no released checkpoint; "
                              "use weights: path or random, or set model_id")

    @property
    def model_id(self) -> str:
        return self.cfg.model_id or CHECKPOINT_URLS.get(self.options.model_type, self.default_model_id)

    def build(self, location: str | None):
        if location is not None and location.startswith(("http://", "https://")):
            location = str(download_checkpoint(location))
        return load_sam(self.options.model_type, location, tiny=self.options.tiny)

    def load(self) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        super().load()
        o = self.options
        self.generator = SamAutomaticMaskGenerator(
            self.model, points_per_side=o.points_per_side, points_per_batch=o.points_per_batch,
            pred_iou_thresh=o.pred_iou_thresh, stability_score_thresh=o.stability_score_thresh,
            box_nms_thresh=o.box_nms_thresh, crop_n_layers=o.crop_n_layers,
            min_mask_region_area=o.min_mask_region_area, output_mode="binary_mask",
        )

    def columns(self) -> list[pa.Field]:
        return [self.field("sam_instances", pa.list_(INSTANCE_STRUCT))]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.generator is None:
            self.load()
        out = []
        for i in range(num_samples(batch)):
            rgb = sample_image(batch, i, self.image_size)  # (S, S, 3) uint8; SAM resizes it itself
            with self.inference():
                records = self.generator.generate(rgb)  # masks at (S, S)
            out.append(instances_from_records(records))
        return {"sam_instances": out}
