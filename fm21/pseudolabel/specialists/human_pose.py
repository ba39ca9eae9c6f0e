"""Human poses: SMPL parameters of every detected person (HMR2.0), or COCO keypoints (YOLO-pose).

4M-21 pseudo-labels human poses with HMR2.0 (4D-Humans, Goel et al., ICCV 2023) on the
person boxes of its detector (arXiv 2406.09406, App.; the serialiser is apple/ml-4m
``fourm/data/modality_transforms.py``, HumanPoseTransform). Its serialiser reads, per human,
the box, the global-orientation rotation matrix, the 23 body-pose rotations (through the
pose tokenizer), the 10 SMPL betas and the weak-perspective camera: exactly the fields
stored here. No SMPL body model is needed; only its parameters are stored.

Column ``human_poses``: per sample a list (possibly empty) of structs, one per person:

- ``box``: ``[xmin, ymin, xmax, ymax]`` normalised to [0, 1] of the stored crop;
- ``score``: the detector's score of that box (hmr2) or YOLO's person confidence;
- ``global_orient``: 9 floats, the root's 3x3 rotation matrix, row-major;
- ``body_pose``: 23 x 9 floats, the SMPL body joints' rotation matrices, row-major;
- ``betas``: 10 SMPL shape coefficients (about [-3, 3] for real people);
- ``cam``: 3 floats ``[s, tx, ty]``, HMR's weak-perspective camera of the person crop;
- ``keypoints``: 17 x 3 floats ``[x, y, confidence]`` (COCO order, x/y normalised to [0, 1]).

``backend: hmr2`` fills all but ``keypoints`` (null); ``backend: yolo_pose`` (ultralytics
YOLO11-pose, a light option) fills ``box``, ``score`` and ``keypoints`` and leaves the SMPL
fields null, so its output does not feed the 4M-21 pose serialiser.

HMR2 person crops follow 4D-Humans' ``ViTDetDataset``: the box is grown to the 192:256
(w:h) aspect ratio about its centre, a square of that height is sampled (bilinear,
black outside the image) to ``input_size`` x ``input_size`` pixels, and the middle 3/4
of the columns are kept (``x[..., 32:-32]`` at 256): a 256x192 crop. 4D-Humans blurs the
image first when it shrinks it by more than 2.2x; fm21 stores 224-px images, so crops are
almost always enlarged and the blur is left out.

YOLO-pose is a one-stage person detector: it uses its own person boxes, not the ``det``
column (which the class still requires, as ``requires`` is one per class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.pseudolabel.specialists.base import num_samples, sample_image
from fm21.pseudolabel.specialists.hmr2_model import NUM_BETAS, NUM_BODY_JOINTS, build_hmr2
from fm21.pseudolabel.specialists.weights import NetworkSpecialist, Preprocess, cache_dir

# 4D-Humans' release tarball (its later code fetches the same file from
# https://people.eecs.berkeley.edu/~jathushan/projects/4dhumans/hmr2_data.tar.gz: set model_id to it
# if this host no longer serves it)
HMR2_URL = "https://www.cs.utexas.edu/~pavlakos/4dhumans/hmr2_data.tar.gz"
YOLO_POSE_ID = "yolo11n-pose.pt"
NUM_KEYPOINTS = 17  # COCO
ASPECT = 192 / 256  # HMR2's crop width / height

POSE_STRUCT = pa.struct([
    ("box", pa.list_(pa.float32(), 4)),
    ("score", pa.float32()),
    ("global_orient", pa.list_(pa.float32(), 9)),
    ("body_pose", pa.list_(pa.float32(), NUM_BODY_JOINTS * 9)),
    ("betas", pa.list_(pa.float32(), NUM_BETAS)),
    ("cam", pa.list_(pa.float32(), 3)),
    ("keypoints", pa.list_(pa.float32(), NUM_KEYPOINTS * 3)),
])


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["hmr2", "yolo_pose"] = "hmr2"
    size: Literal["vit_h", "tiny"] = "vit_h"  # HMR2 architecture (tiny: tests)
    person_class: str = "person"  # det class name of the boxes HMR2 reads
    min_score: float = Field(0.5, ge=0.0, le=1.0)  # person boxes kept (4D-Humans' demo: 0.5)
    crop_batch_size: int = Field(32, ge=1)  # person crops per HMR2 forward
    # HMR2: input_size is the square patch side (256), cut to 256x192; bilinear, as cv2.warpAffine
    preprocess: Preprocess = Preprocess(input_size=256, interpolation="bilinear")
    yolo_imgsz: int = Field(640, ge=32)  # YOLO-pose inference size (a multiple of 32)


def person_crops(rgb: np.ndarray, boxes: np.ndarray, pre: Preprocess):
    """``(S, S, 3)`` uint8 and ``(P, 4)`` normalised boxes -> ``(P, 3, R, 3R/4)`` normalised crops."""
    import torch
    import torch.nn.functional as F

    s, r = rgb.shape[0], pre.input_size
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, S, S)
    b = torch.as_tensor(boxes, dtype=torch.float32) * s  # pixels
    centre = (b[:, :2] + b[:, 2:]) / 2  # (P, 2) x, y
    w, h = (b[:, 2] - b[:, 0]).clamp(min=1.0), (b[:, 3] - b[:, 1]).clamp(min=1.0)
    side = torch.maximum(h, w / ASPECT)  # the grown box's height = the square patch's side
    steps = (torch.arange(r, dtype=torch.float32) + 0.5) / r - 0.5  # (R,) pixel centres in [-0.5, 0.5]
    xs = centre[:, :1] + side[:, None] * steps  # (P, R) source x in pixels
    ys = centre[:, 1:] + side[:, None] * steps
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # (P, R, R, 2)
    grid = grid / s * 2 - 1  # grid_sample's [-1, 1] (align_corners=False)
    patch = F.grid_sample(img.expand(len(b), -1, -1, -1), grid, mode=pre.interpolation, padding_mode="zeros",
                          align_corners=False)  # (P, 3, R, R)
    cut = round(r * (1 - ASPECT) / 2)
    patch = patch[..., cut:r - cut]  # (P, 3, R, 3R/4)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (patch - mean) / std


def _person_boxes(dets: Any, opts: Options, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``det`` entries of one sample that are persons above ``min_score``: boxes, scores."""
    boxes, scores = [], []
    for det in dets or []:
        score = 1.0 if det.get("score") is None else float(det["score"])  # unscored: kept
        if det["class_name"] != opts.person_class or score < opts.min_score:
            continue
        box = np.asarray(det["box"], dtype=np.float32).reshape(-1)
        if box.size != 4:
            raise ValueError(f"human_pose: sample {key!r}: a det box has {box.size} values, expected 4")
        boxes.append(np.clip(box, 0.0, 1.0))
        scores.append(score)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


def _record(box, score, **fields) -> dict[str, Any]:
    out = {"box": [float(v) for v in box], "score": float(score), "global_orient": None, "body_pose": None,
           "betas": None, "cam": None, "keypoints": None}
    out.update({k: np.asarray(v, np.float32).reshape(-1).tolist() for k, v in fields.items()})
    return out


class HumanPose(NetworkSpecialist):
    name: ClassVar[str] = "human_pose"
    requires: ClassVar[tuple[str, ...]] = ("det",)
    Options: ClassVar[type[BaseModel]] = Options
    default_model_id: ClassVar[str] = HMR2_URL

    # ------------------------------------------------------------------ weights
    @property
    def model_id(self) -> str:
        default = HMR2_URL if self.options.backend == "hmr2" else YOLO_POSE_ID
        return self.cfg.model_id or default

    @property
    def source(self) -> str:  # where ``pretrained`` weights live in the cache
        return "url" if self.options.backend == "hmr2" else "ultralytics"

    def build(self, location: str | None):
        if self.options.backend == "yolo_pose":
            return self._build_yolo(location)
        if location is not None and self.cfg.weights == "pretrained":
            location = str(self._download(location))
        return build_hmr2(self.options.size, location)

    def _download(self, url: str) -> Path:
        """The release tarball in the weights cache (``cache_dir()/url``), downloaded once."""
        target = cache_dir() / "url" / Path(url).name
        if not target.exists():
            from torch.hub import download_url_to_file

            target.parent.mkdir(parents=True, exist_ok=True)
            download_url_to_file(url, str(target))
        return target

    def _build_yolo(self, location: str | None):
        import os

        from ultralytics import YOLO

        if location is None:  # the architecture at random init, from ultralytics' bundled yaml
            return YOLO(Path(YOLO_POSE_ID).with_suffix(".yaml").name, task="pose")
        if self.cfg.weights == "pretrained" and not Path(location).exists():
            from ultralytics.utils.downloads import attempt_download_asset

            target = cache_dir() / "ultralytics" / Path(location).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if os.environ.get("YOLO_OFFLINE") and not target.exists():
                raise FileNotFoundError(f"{target} is not in the weights cache and YOLO_OFFLINE is set")
            location = attempt_download_asset(str(target))
        return YOLO(location, task="pose")

    # ------------------------------------------------------------------ labels
    def columns(self) -> list[pa.Field]:
        return [self.field("human_poses", pa.list_(POSE_STRUCT))]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.model is None:
            self.load()
        images = [sample_image(batch, i, self.image_size) for i in range(num_samples(batch))]
        if self.options.backend == "yolo_pose":
            return {"human_poses": self._yolo(images)}
        return {"human_poses": self._hmr2(batch, images)}

    def _hmr2(self, batch: dict[str, Any], images: list[np.ndarray]) -> list[list[dict]]:
        import torch

        if "det" not in batch:
            raise ValueError("human_pose: the batch has no 'det' column (enable the detection specialist)")
        persons = [_person_boxes(batch["det"][i], self.options, batch["key"][i]) for i in range(len(images))]
        crops = [person_crops(img, boxes, self.options.preprocess) for img, (boxes, _) in zip(images, persons)
                 if len(boxes)]
        out: list[list[dict]] = [[] for _ in images]
        if not crops:
            return out
        x = torch.cat(crops)  # (P, 3, R, 3R/4), every person of the batch
        preds: dict[str, list] = {}
        with self.inference():
            for start in range(0, len(x), self.options.crop_batch_size):
                part = self.model(x[start:start + self.options.crop_batch_size].to(self.device))
                for k, v in part.items():
                    preds.setdefault(k, []).append(v.float().cpu())
        flat = {k: torch.cat(v).numpy() for k, v in preds.items()}
        j = 0
        for i, (boxes, scores) in enumerate(persons):
            for box, score in zip(boxes, scores):
                out[i].append(_record(box, score, global_orient=flat["global_orient"][j],
                                      body_pose=flat["body_pose"][j], betas=flat["betas"][j], cam=flat["cam"][j]))
                j += 1
        return out

    def _yolo(self, images: list[np.ndarray]) -> list[list[dict]]:
        s = float(self.image_size)
        bgr = [img[..., ::-1].copy() for img in images]  # ultralytics reads numpy images as BGR (cv2)
        results = self.model.predict(bgr, imgsz=self.options.yolo_imgsz, conf=self.options.min_score,
                                     classes=[0], device=str(self.device), verbose=False)  # class 0: person
        out = []
        for res in results:
            boxes = res.boxes.xyxyn.cpu().numpy()  # (P, 4) in [0, 1]
            conf = res.boxes.conf.cpu().numpy()
            kpts = res.keypoints.data.cpu().numpy().copy()  # (P, 17, 3): x, y in pixels, confidence
            kpts[..., :2] /= s
            out.append([_record(np.clip(b, 0, 1), c, keypoints=k) for b, c, k in zip(boxes, conf, kpts)])
        return out
