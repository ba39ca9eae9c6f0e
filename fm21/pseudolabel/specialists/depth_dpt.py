"""Monocular depth from a DPT-family network (transformers ``AutoModelForDepthEstimation``:
DPT, DPT-Hybrid, Depth Anything V2), the network behind the ``depth`` name (the oracle stays
the ``weights: none`` choice).

4M-21 labels depth with Omnidata DPT-B-Hybrid v2 (apple/ml-4m ``fourm/data/modality_info.py``).
Its checkpoint is not on the Hugging Face hub, so the default ``model_id`` is
``Intel/dpt-hybrid-midas``: the same DPT-B-Hybrid architecture at 384 px (random init and the
Omnidata port build exactly this network), Apache-2.0 licensed (Depth Anything V2 Base and
Large are CC-BY-NC-4.0), and the same input normalisation as Omnidata's depth model. The
Omnidata file itself loads with ``weights: path`` (a ``.ckpt``) or ``weights: pretrained`` and
``model_id: https://zenodo.org/records/10447888/files/omnidata_dpt_depth_v2.ckpt``, through the
explicit key map of :mod:`fm21.pseudolabel.specialists.dpt`; for it set
``options.preprocess.interpolation: bilinear`` and ``options.depth_semantics: relative``
(EPFL-VILAB/omnidata ``omnidata_tools/torch/demo.py``: 384 px, bilinear, mean = std = 0.5).
Depth Anything V2 (``depth-anything/Depth-Anything-V2-Small-hf``) needs
``preprocess: {input_size: 518, mean/std: ImageNet}``.

Column ``depth``: float16 ``(S, S)``, the same field as the oracle (kind ``depth``, stored
losslessly), holding what the network predicts, resized (bilinear, antialiased) from its
input size to the run's S x S; nothing is normalised here (the tokenizer's robust per-image
standardisation does that). What the values mean (``depth_semantics``, also written into the
field metadata so readers can tell):

- ``inverse_relative`` (default; MiDaS DPT, Depth Anything): affine-invariant inverse depth
  (disparity), larger is nearer, unknown scale and shift;
- ``relative`` (Omnidata v2): affine-invariant depth, larger is farther, about [0, 1];
- ``metric`` (metric-depth fine-tunes, and the oracle): metres.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from fm21.pseudolabel.specialists.dpt import DPTArchitecture, DPTSpecialist
from fm21.pseudolabel.specialists.weights import Preprocess

FLOAT16_MAX = float(np.finfo(np.float16).max)


class DepthDPTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Intel/dpt-hybrid-midas preprocessing (DPTImageProcessor: 384 px, bicubic, mean = std = 0.5)
    preprocess: Preprocess = Preprocess(input_size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                        interpolation="bicubic")
    architecture: DPTArchitecture = DPTArchitecture()  # random init and Omnidata .ckpt files
    depth_semantics: Literal["inverse_relative", "relative", "metric"] = "inverse_relative"


class DepthDPT(DPTSpecialist):
    name: ClassVar[str] = "depth"
    Options: ClassVar[type[BaseModel]] = DepthDPTOptions
    default_model_id: ClassVar[str] = "Intel/dpt-hybrid-midas"
    num_output_channels: ClassVar[int] = 1

    def model_class(self):
        from transformers import AutoModelForDepthEstimation

        return AutoModelForDepthEstimation  # DPT, DPT-Hybrid, Depth Anything, ...

    def columns(self) -> list[pa.Field]:
        field = self.map_field("depth", "float16", kind="depth")
        semantics = self.options.depth_semantics.encode()
        return [field.with_metadata({**field.metadata, b"depth_semantics": semantics})]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        depth = self.predict(batch)[:, 0].numpy()  # (B, S, S) float32
        depth = np.clip(np.nan_to_num(depth), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        return {"depth": [d.reshape(-1) for d in depth]}  # each (S*S,)
