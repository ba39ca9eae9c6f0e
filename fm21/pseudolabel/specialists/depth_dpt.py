"""Monocular depth from a DPT-family network (transformers ``AutoModelForDepthEstimation``:
DPT, DPT-Hybrid, Depth Anything V2), the network behind the ``depth`` name (the oracle stays
the ``weights: none`` choice).

4M-21 labels depth with Omnidata DPT-B-Hybrid v2 (apple/ml-4m ``fourm/data/modality_info.py``),
and so does fm21 by default: ``model_id`` is that checkpoint's public URL
(EPFL-VILAB/omnidata, ``omnidata_dpt_depth_v2.ckpt``), downloaded once into the weights cache
and loaded into transformers' DPT-Hybrid through the explicit key map of
:mod:`fm21.pseudolabel.specialists.dpt`, with Omnidata's preprocessing
(``omnidata_tools/torch/demo.py``: 384 px, bilinear, mean = std = 0.5). Its values run the
same way as the oracle's (larger is farther), so one depth tokenizer reads both alike.
Hub models load through ``from_pretrained`` instead: ``Intel/dpt-hybrid-midas`` (the same
architecture, Apache-2.0; set ``options.depth_semantics: inverse_relative`` and
``preprocess.interpolation: bicubic``) or Depth Anything V2
(``depth-anything/Depth-Anything-V2-Small-hf``: ``preprocess: {input_size: 518, mean/std:
ImageNet}``; Base and Large are CC-BY-NC-4.0). Inverse depth runs the other way: do not
feed it to a tokenizer trained on depth (the tokenizers stage fingerprints the labels'
provenance, so switching retrains).

Column ``depth``: float16 ``(S, S)``, the same field as the oracle (kind ``depth``, stored
losslessly), holding what the network predicts, resized (bilinear, antialiased) from its
input size to the run's S x S; nothing is normalised here (the tokenizer's robust per-image
standardisation does that). What the values mean (``depth_semantics``, also written into the
field metadata so readers can tell):

- ``inverse_relative`` (MiDaS DPT, Depth Anything): affine-invariant inverse depth
  (disparity), larger is nearer, unknown scale and shift;
- ``relative`` (default; Omnidata v2): affine-invariant depth, larger is farther, about [0, 1];
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
OMNIDATA_DEPTH_V2 = "https://zenodo.org/records/10447888/files/omnidata_dpt_depth_v2.ckpt"


class DepthDPTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Omnidata's preprocessing (omnidata_tools/torch/demo.py: 384 px, bilinear, mean = std = 0.5)
    preprocess: Preprocess = Preprocess(input_size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                        interpolation="bilinear")
    architecture: DPTArchitecture = DPTArchitecture()  # random init and Omnidata .ckpt files
    depth_semantics: Literal["inverse_relative", "relative", "metric"] = "relative"


class DepthDPT(DPTSpecialist):
    name: ClassVar[str] = "depth"
    Options: ClassVar[type[BaseModel]] = DepthDPTOptions
    default_model_id: ClassVar[str] = OMNIDATA_DEPTH_V2
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
