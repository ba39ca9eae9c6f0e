"""Semantic and instance maps from Mask2Former (COCO panoptic), the network behind the
``semseg`` name (the oracle stays the ``weights: none`` choice).

4M-21 labels ``semseg`` with Mask2Former Swin-B trained on COCO panoptic: 133 classes, stored
shifted by +1 so that 0 is "no class" (apple/ml-4m ``fourm/data/modality_info.py``, 134
tokenizer classes). Default ``model_id``: ``facebook/mask2former-swin-base-coco-panoptic``,
through transformers' ``Mask2FormerForUniversalSegmentation`` modules (:func:`mask2former_class`);
random init builds that architecture (Swin-B, 200 queries, 133 classes) from :class:`Mask2FormerArchitecture`.

Columns, the oracle's (``semseg.py``): uint8 ``(S, S)`` class maps (kind ``class_map``).

- ``semseg``: ``1 + label id`` of the COCO panoptic class (1..133, the model config's
  ``id2label`` order: 80 things, then 53 stuff classes), 0 = no class. With ``semseg_from:
  panoptic`` (default) it is read from the panoptic segmentation
  (``Mask2FormerImageProcessor.post_process_panoptic_segmentation``), which leaves pixels no
  confident segment covers unlabelled (0), like the void pixels of the reference's labels;
  ``semantic`` takes the per-pixel argmax of ``post_process_semantic_segmentation`` (every
  pixel gets a class).
- ``instance``: 1..255 numbering the panoptic "thing" segments (label id < ``num_thing_classes``)
  in the order the post-processor emits them, 0 for stuff and unlabelled pixels (the oracle's
  convention: objects are instances, the ground is not). Segments past the 255th get 0.

Preprocessing (options): the image resized to 384 px, ImageNet mean/std, as the checkpoint's
``Mask2FormerImageProcessor``; post-processing resizes the masks to the run's S x S.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.pseudolabel.specialists.base import num_samples, sample_image
from fm21.pseudolabel.specialists.weights import (
    IMAGENET_MEAN, IMAGENET_STD, NetworkSpecialist, Preprocess, cache_dir,
)

MAX_INSTANCES = 255  # uint8 instance ids


class Mask2FormerArchitecture(BaseModel):
    """The Mask2Former built at random init (a hub id or folder brings its own config).
    Defaults: Swin-B COCO panoptic; tests shrink it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    swin_embed_dim: int = Field(128, ge=1)
    swin_depths: tuple[int, int, int, int] = (2, 2, 18, 2)
    swin_num_heads: tuple[int, int, int, int] = (4, 8, 16, 32)
    swin_window_size: int = Field(12, ge=1)
    feature_size: int = Field(256, ge=1)  # pixel decoder width
    mask_feature_size: int = Field(256, ge=1)
    hidden_dim: int = Field(256, ge=1)  # transformer decoder width
    encoder_layers: int = Field(6, ge=1)
    encoder_feedforward_dim: int = Field(1024, ge=1)
    decoder_layers: int = Field(10, ge=2)
    dim_feedforward: int = Field(2048, ge=1)
    num_attention_heads: int = Field(8, ge=1)
    num_queries: int = Field(200, ge=1)
    num_labels: int = Field(133, ge=1, le=254)  # +1 shift must fit uint8


class SemsegMask2FormerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocess: Preprocess = Preprocess(input_size=384, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                        interpolation="bilinear")
    architecture: Mask2FormerArchitecture = Mask2FormerArchitecture()
    semseg_from: Literal["panoptic", "semantic"] = "panoptic"
    num_thing_classes: int = Field(80, ge=0)  # COCO panoptic: label ids 0..79 are things
    threshold: float = Field(0.8, ge=0, le=1)  # query score to keep a segment (Mask2Former's test default)
    mask_threshold: float = Field(0.5, ge=0, le=1)
    overlap_mask_area_threshold: float = Field(0.8, ge=0, le=1)


def mask2former_config(arch: Mask2FormerArchitecture):
    from transformers import Mask2FormerConfig, SwinConfig

    swin = SwinConfig(embed_dim=arch.swin_embed_dim, depths=list(arch.swin_depths),
                      num_heads=list(arch.swin_num_heads), window_size=arch.swin_window_size, image_size=384,
                      drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    return Mask2FormerConfig(
        backbone_config=swin, feature_size=arch.feature_size, mask_feature_size=arch.mask_feature_size,
        hidden_dim=arch.hidden_dim, encoder_layers=arch.encoder_layers,
        encoder_feedforward_dim=arch.encoder_feedforward_dim, decoder_layers=arch.decoder_layers,
        dim_feedforward=arch.dim_feedforward, num_attention_heads=arch.num_attention_heads,
        num_queries=arch.num_queries, num_labels=arch.num_labels)


def mask2former_class():
    """transformers' ``Mask2FormerForUniversalSegmentation`` (its training loss's Hungarian
    matcher needs scipy, pinned). Imported lazily so importing fm21 does not import transformers."""
    from transformers import Mask2FormerForUniversalSegmentation

    return Mask2FormerForUniversalSegmentation


class SemsegMask2Former(NetworkSpecialist):
    name: ClassVar[str] = "semseg"
    Options: ClassVar[type[BaseModel]] = SemsegMask2FormerOptions
    default_model_id: ClassVar[str] = "facebook/mask2former-swin-base-coco-panoptic"

    processor: Any = None

    def columns(self) -> list[pa.Field]:
        return [self.map_field("semseg", "uint8", kind="class_map"),
                self.map_field("instance", "uint8", kind="class_map")]

    def build(self, location: str | None):
        if location is None:
            return mask2former_class()(mask2former_config(self.options.architecture))
        kw = {} if self.cfg.weights == "path" else {"cache_dir": str(cache_dir() / "hf")}
        return mask2former_class().from_pretrained(location, **kw)

    def load(self) -> None:
        from transformers import Mask2FormerImageProcessor

        super().load()
        if self.processor is not None:
            return
        if self.model.config.num_labels > 254:
            raise ValueError(f"semseg: {self.model.config.num_labels} classes do not fit uint8 ids "
                             "with the +1 shift")
        # only its post-processing is used (pixels are prepared by options.preprocess); it needs no files
        self.processor = Mask2FormerImageProcessor()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.load()
        s, opts = self.image_size, self.options
        rgb = np.stack([sample_image(batch, i, s) for i in range(num_samples(batch))])  # (B, S, S, 3)
        x = opts.preprocess(rgb, self.device)  # (B, 3, R, R)
        with self.inference():
            out = self.model(pixel_values=x)
        out.class_queries_logits = out.class_queries_logits.float()  # (B, Q, K + 1)
        out.masks_queries_logits = out.masks_queries_logits.float()  # (B, Q, R/4, R/4)
        sizes = [(s, s)] * len(rgb)
        stuff = set(range(opts.num_thing_classes, self.model.config.num_labels))
        panoptic = self.processor.post_process_panoptic_segmentation(
            out, threshold=opts.threshold, mask_threshold=opts.mask_threshold,
            overlap_mask_area_threshold=opts.overlap_mask_area_threshold, label_ids_to_fuse=stuff,
            target_sizes=sizes)
        semseg, instance = [], []
        for result in panoptic:
            classes, things = panoptic_maps(result, num_thing_classes=opts.num_thing_classes)
            semseg.append(classes)
            instance.append(things)
        if opts.semseg_from == "semantic":
            semantic = self.processor.post_process_semantic_segmentation(out, target_sizes=sizes)
            semseg = [(m.cpu().numpy() + 1).astype(np.uint8) for m in semantic]  # (S, S), 1..K
        return {"semseg": [m.reshape(-1) for m in semseg], "instance": [m.reshape(-1) for m in instance]}


def panoptic_maps(result: dict[str, Any], *, num_thing_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One panoptic result (segment-id map, 0 unassigned / -1 nothing found, and its segments)
    -> ``(S, S)`` uint8 class map (label id + 1, 0 = none) and instance map (things 1..255)."""
    seg = np.asarray(result["segmentation"].cpu().numpy(), dtype=np.int64)  # (S, S) segment ids
    infos = result["segments_info"]
    size = max([0, *(info["id"] for info in infos)]) + 1
    to_class = np.zeros(size, np.uint8)  # segment id -> stored class id
    to_instance = np.zeros(size, np.uint8)  # segment id -> instance id
    num_things = 0
    for info in infos:
        to_class[info["id"]] = info["label_id"] + 1
        if info["label_id"] < num_thing_classes and num_things < MAX_INSTANCES:
            num_things += 1
            to_instance[info["id"]] = num_things
    seg = np.clip(seg, 0, size - 1)  # -1 (no segment at all) -> 0, "none"
    return to_class[seg], to_instance[seg]
