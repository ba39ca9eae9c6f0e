"""Detection network: COCO-80 object boxes from a real detector, the ``det`` column.

4M-21 labels ``det`` with ViTDet ViT-H + Cascade Mask R-CNN (apple/ml-4m
`fourm/data/modality_info.py`); that model lives in detectron2, which is not a dependency
here. Two maintained COCO detectors stand in for it (``options.backend``):

- ``yolo`` (default): ultralytics YOLO, ``model_id`` ``yolo26n.pt`` (the package's current
  default model; ``yolo26x.pt`` is its most accurate size). ``pretrained`` fetches the
  release asset into ``<cache>/ultralytics/``; ``path`` is ``YOLO(<local .pt>)`` (a file
  ``YOLO.save`` wrote); ``random`` is the architecture of the model id's yaml
  (``yolo26n.pt`` -> ``yolo26n.yaml``) with no weights.
- ``detr``: a transformers DETR-family detector (``AutoModelForObjectDetection``,
  ``facebook/detr-resnet-50`` by default; any hub id of that auto class, e.g. a
  Deformable DETR or RT-DETR checkpoint). ``random`` builds ``DetrConfig`` with
  ``options.detr_config`` overrides (tests: a tiny ResNet backbone, never pretrained).

Output: the same column as the detection oracle (``fm21.pseudolabel.specialists.detection``):
``det``, ``list<struct{box: [x0, y0, x1, y1] normalised to [0, 1], class_name, score}>``,
best score first. Every box scoring at least ``min_score`` is kept: the ``score >= 0.6``
filter belongs to the det serializer, not to the store. Class names are those of
``fm21.tokenize.text.COCO_CLASSES`` (the names the det tokenizer knows); model labels are
mapped to them by :func:`coco_label_table`, and a label outside COCO-80 (DETR's ``N/A``
slots) drops its box.

Preprocessing is in ``options.preprocess`` (default per backend): YOLO a plain resize to
640 (square crops need no letterbox) scaled to [0, 1]; DETR the image processor's 800-px
resize and ImageNet mean/std. Workers never reach the network: ultralytics is imported
with ``YOLO_OFFLINE=1`` unless pretrained weights still have to be fetched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fm21.config import SpecialistConfig
from fm21.pseudolabel.specialists.base import num_samples, sample_image
from fm21.pseudolabel.specialists.detection import BOX_STRUCT
from fm21.pseudolabel.specialists.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NetworkSpecialist,
    Preprocess,
    cache_dir,
)
from fm21.tokenize.text import COCO_CLASSES

DEFAULT_MODEL_IDS = {"yolo": "yolo26n.pt", "detr": "facebook/detr-resnet-50"}
DEFAULT_PREPROCESS = {
    "yolo": Preprocess(input_size=640, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear"),
    "detr": Preprocess(input_size=800, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"),
}
# COCO category ids of the 80 classes, in COCO_CLASSES order: the label ids of detectors
# trained on the 91-id COCO annotation files (DETR's config: id2label 0..90 with "N/A" gaps).
COCO_CATEGORY_IDS = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91),
)
# Other spellings of COCO names (Pascal VOC style, other label files) -> the tokenizer's names.
ALIASES = {
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
    "diningtable": "dining table", "tvmonitor": "tv", "tv monitor": "tv", "cellphone": "cell phone",
    "hair dryer": "hair drier", "hairdrier": "hair drier", "teddybear": "teddy bear", "doughnut": "donut",
    "sportsball": "sports ball", "wineglass": "wine glass",
}


def coco_label_table(names: dict[int, str]) -> dict[int, str | None]:
    """A model's ``{label id: label}`` -> ``{label id: COCO_CLASSES name or None}``.

    Names are matched case-insensitively (``_`` as space, plus :data:`ALIASES`). A model whose
    labels are bare ids (an architecture built from yaml or a config, with no label file)
    is read as COCO: 80 labels in COCO_CLASSES order, or the 91 COCO category ids."""
    known = set(COCO_CLASSES)
    table: dict[int, str | None] = {}
    for idx, label in names.items():
        name = str(label).strip().lower().replace("_", " ")
        name = ALIASES.get(name, name)
        table[int(idx)] = name if name in known else None
    placeholders = all(str(v).strip().isdigit() or str(v).startswith("LABEL_") for v in names.values())
    if placeholders and not any(table.values()):
        if len(names) == len(COCO_CLASSES):
            table = {int(i): COCO_CLASSES[k] for k, i in enumerate(sorted(names))}
        elif len(names) == max(COCO_CATEGORY_IDS) + 1:
            table = {int(i): None for i in names}
            table.update({cid: COCO_CLASSES[k] for k, cid in enumerate(COCO_CATEGORY_IDS)})
    return table


def detr_coco_id2label() -> dict[int, str]:
    """DETR's COCO label map: 91 ids, the 80 classes at their COCO category ids, ``N/A`` elsewhere."""
    out = {i: "N/A" for i in range(max(COCO_CATEGORY_IDS) + 1)}
    out.update({cid: name for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES)})
    return out


class DetectionNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["yolo", "detr"] = "yolo"
    min_score: float = Field(0.05, ge=0, le=1)  # storage floor; the det serializer keeps >= 0.6
    max_det: int = Field(100, ge=1)  # boxes per image at most (the best scores)
    preprocess: Preprocess | None = None  # None: the backend's default (DEFAULT_PREPROCESS)
    detr_config: dict[str, Any] = Field(default_factory=dict)  # DetrConfig overrides, weights: random only

    @model_validator(mode="after")
    def _yolo_stride(self) -> DetectionNetOptions:
        if self.backend == "yolo" and self.preprocess is not None and self.preprocess.input_size % 32:
            raise ValueError("preprocess.input_size must be a multiple of 32 (YOLO's largest stride)")
        return self

    @property
    def pixels(self) -> Preprocess:
        return self.preprocess or DEFAULT_PREPROCESS[self.backend]


class DetectionNet(NetworkSpecialist):
    name: ClassVar[str] = "detection"
    Options: ClassVar[type[BaseModel]] = DetectionNetOptions
    default_model_id: ClassVar[str] = DEFAULT_MODEL_IDS["yolo"]

    def __init__(self, cfg: SpecialistConfig, *, image_size: int) -> None:
        super().__init__(cfg, image_size=image_size)
        self.labels: dict[int, str | None] = {}  # model label id -> COCO name (None: not COCO-80), set by load

    @property
    def source(self) -> Literal["hf", "ultralytics"]:  # where pretrained weights are cached (is_cached)
        return "ultralytics" if self.options.backend == "yolo" else "hf"

    @property
    def model_id(self) -> str:
        return self.cfg.model_id or DEFAULT_MODEL_IDS[self.options.backend]

    # ------------------------------------------------------------------ weights
    def build(self, location: str | None):
        return self._build_yolo(location) if self.options.backend == "yolo" else self._build_detr(location)

    def _build_yolo(self, location: str | None):
        fetch = self.cfg.weights == "pretrained" and not self.is_cached()
        if not fetch:
            os.environ.setdefault("YOLO_OFFLINE", "1")  # read at import: no DNS probe, no events
        from ultralytics import YOLO

        if location is None:  # the architecture only, from the model id's yaml (yolo26n.pt -> yolo26n.yaml)
            return YOLO(Path(self.model_id).with_suffix(".yaml").name)
        if self.cfg.weights == "pretrained":
            from ultralytics.utils.downloads import attempt_download_asset

            target = cache_dir() / "ultralytics" / Path(location).name
            target.parent.mkdir(parents=True, exist_ok=True)
            location = attempt_download_asset(str(target))  # a release asset, fetched once into the cache
        return YOLO(location)

    def _build_detr(self, location: str | None):
        from transformers import AutoModelForObjectDetection, DetrConfig

        if location is None:
            id2label = detr_coco_id2label()
            label2id = {v: k for k, v in id2label.items() if v != "N/A"}
            config = DetrConfig(**{"id2label": id2label, "label2id": label2id, **self.options.detr_config})
            return AutoModelForObjectDetection.from_config(config)
        kw = {}
        if self.cfg.weights == "pretrained":  # cached weights load offline; else fetched into the cache
            kw = {"cache_dir": str(cache_dir() / "hf"), "local_files_only": self.is_cached()}
        return AutoModelForObjectDetection.from_pretrained(location, **kw)

    def load(self) -> None:
        super().load()
        names = self.model.names if self.options.backend == "yolo" else self.model.config.id2label
        self.labels = coco_label_table(dict(names))

    # ------------------------------------------------------------------ labels
    def columns(self) -> list[pa.Field]:
        return [self.field("det", pa.list_(BOX_STRUCT))]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.model is None:
            self.load()
        s = self.image_size
        rgb = np.stack([sample_image(batch, i, s) for i in range(num_samples(batch))])  # (B, S, S, 3)
        x = self.options.pixels(rgb, self.device)  # (B, 3, R, R)
        with self.inference():
            raw = self._yolo(x) if self.options.backend == "yolo" else self._detr(x)
        return {"det": [self._records(*r) for r in raw]}

    def _yolo(self, x) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(B, 3, R, R) in [0, 1] -> per image (boxes (N, 4) normalised xyxy, scores (N,), labels (N,))."""
        device = "cpu" if self.device.type == "cpu" else "0"  # ultralytics' names; Ray sets the visible GPU
        results = self.model.predict(x, imgsz=x.shape[-1], conf=self.options.min_score,
                                     max_det=self.options.max_det, device=device, verbose=False)
        return [(r.boxes.xyxyn.float().cpu().numpy(), r.boxes.conf.float().cpu().numpy(),
                 r.boxes.cls.cpu().numpy().astype(int)) for r in results]

    def _detr(self, x) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """DETR's set prediction -> per image boxes / scores / labels (transformers'
        ``post_process_object_detection``: softmax without the no-object class, cxcywh -> xyxy)."""
        import torch

        out = self.model(pixel_values=x)
        probs = out.logits.float().softmax(-1)[..., :-1]  # (B, Q, num_labels): the last class is "no object"
        scores, labels = probs.max(-1)  # (B, Q)
        cx, cy, w, h = out.pred_boxes.float().unbind(-1)  # (B, Q) each, normalised
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)  # (B, Q, 4)
        return [(b.cpu().numpy(), sc.cpu().numpy(), lb.cpu().numpy()) for b, sc, lb in zip(boxes, scores, labels)]

    def _records(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
        """One image's raw detections -> det records: COCO names only, score >= min_score,
        boxes clipped to [0, 1] with x0 <= x1, y0 <= y1, best score first, at most max_det."""
        out = []
        for box, score, label in zip(boxes, scores, labels):
            name = self.labels.get(int(label))
            if name is None or not np.isfinite(score) or score < self.options.min_score:
                continue
            x0, y0, x1, y1 = np.clip(box.astype(np.float32), 0.0, 1.0)
            box01 = np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], dtype=np.float32)
            out.append({"box": box01, "class_name": name, "score": float(score)})
        out.sort(key=lambda r: -r["score"])
        return out[: self.options.max_det]
