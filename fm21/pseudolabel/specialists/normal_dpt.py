"""Surface normals from Omnidata's normal DPT (DPT-B-Hybrid v2 with a 3-channel head), the
network behind the ``normal`` name (the oracle stays the ``weights: none`` choice).

4M-21 labels normals with Omnidata DPT-B-Hybrid v2 (apple/ml-4m ``fourm/data/modality_info.py``).
The default ``model_id`` is that checkpoint's public URL (EPFL-VILAB/omnidata
``omnidata_tools/torch/tools/download_surface_normal_models.sh``), downloaded once into the
weights cache and ported into transformers' DPT through the explicit key map of
:mod:`fm21.pseudolabel.specialists.dpt`; ``weights: path`` takes the ``.ckpt`` file, or a folder
of a saved :func:`~fm21.pseudolabel.specialists.dpt.dense_dpt_class` model. Preprocessing as
Omnidata's demo (``omnidata_tools/torch/demo.py``): 384 px, bilinear, pixels in [0, 1] without
mean/std normalisation.

Output: the head gives each component in [0, 1] (its last ReLU, then the demo's clamp);
``v = 2 x - 1`` and a renormalisation to unit length give float16 unit vectors, flattened from
``(S, S, 3)``, the oracle's field (kind ``unit_vector``). A pixel whose vector has no length
(all three components exactly 0.5) gets ``(0, 0, -1)`` in the OpenCV frame: facing the camera.

Axis convention (``options.frame``):

- ``opencv`` (default, the synthetic oracle's frame, ``fm21.ingest.synthetic``): camera frame
  with x right, y down, z forward (away from the camera); a surface facing the camera has z < 0.
- ``omnidata``: the components as Omnidata's images encode them. Its annotator renders Blender's
  camera-space normal pass (x right, y up, z towards the viewer) and inverts the red channel
  (``omnidata_annotator/scripts/create_normal_images.py``), so x points left, y up, z towards the
  viewer: exactly the negation of the OpenCV frame, which is how ``opencv`` is computed.

Backend (``options.backend``): ``dpt`` (default, this class) or ``marigold``: diffusers'
Marigold normals (:class:`~fm21.pseudolabel.specialists.normal_marigold.NormalMarigold`, with
its own options), which constructing this class returns in its place, so the registry's one
``normal`` network serves both and a recipe switches by one key.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.config import ConfigError, SpecialistConfig
from fm21.pseudolabel.specialists.dpt import DPTArchitecture, DPTSpecialist
from fm21.pseudolabel.specialists.normal_marigold import NormalMarigold
from fm21.pseudolabel.specialists.weights import NetworkSpecialist, Preprocess

OMNIDATA_NORMAL_V2 = "https://zenodo.org/records/10447888/files/omnidata_dpt_normal_v2.ckpt"


class NormalDPTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # left out of the dump: the DPT's fingerprint stays what it was before the option existed
    backend: Literal["dpt"] = Field("dpt", exclude=True)
    preprocess: Preprocess = Preprocess(input_size=384, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                        interpolation="bilinear")
    architecture: DPTArchitecture = DPTArchitecture()
    frame: Literal["opencv", "omnidata"] = "opencv"


def unit_normals(x: np.ndarray, *, frame: str) -> np.ndarray:
    """``(B, 3, S, S)`` head output in [0, 1] -> ``(B, S, S, 3)`` float32 unit vectors."""
    v = 2.0 * np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1) - 1.0  # (B, S, S, 3), Omnidata axes
    if frame == "opencv":
        v = -v  # (left, up, towards viewer) -> (right, down, forward)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)  # (B, S, S, 1)
    facing = np.array([0.0, 0.0, -1.0 if frame == "opencv" else 1.0], np.float32)
    return np.where(norm > 1e-6, v / np.maximum(norm, 1e-6), facing).astype(np.float32)


class NormalDPT(DPTSpecialist):
    name: ClassVar[str] = "normal"
    Options: ClassVar[type[BaseModel]] = NormalDPTOptions
    default_model_id: ClassVar[str] = OMNIDATA_NORMAL_V2
    num_output_channels: ClassVar[int] = 3

    def __new__(cls, cfg: SpecialistConfig | None = None, **kwargs: Any):
        """``options.backend: marigold`` constructs and returns a :class:`NormalMarigold`
        instead (not a subclass, so Python does not run this class's ``__init__`` on it).
        Without arguments (unpickling) a plain instance."""
        backend = cfg.options.get("backend", "dpt") if cfg is not None else "dpt"
        if cls is NormalDPT and backend != "dpt":
            if not isinstance(backend, str) or backend not in NORMAL_BACKENDS:
                raise ConfigError(f"'pseudolabel.specialists.{cls.name}.options.backend': {backend!r} is not "
                                  f"one of {', '.join(['dpt', *NORMAL_BACKENDS])}")
            return NORMAL_BACKENDS[backend](cfg, **kwargs)
        return super().__new__(cls)

    def columns(self) -> list[pa.Field]:
        return [self.map_field("normal", "float16", kind="unit_vector", channels=3)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        normal = unit_normals(self.predict(batch).numpy(), frame=self.options.frame)  # (B, S, S, 3)
        return {"normal": [n.astype(np.float16).reshape(-1) for n in normal]}  # each (S*S*3,)


# the normal network's other backends, by ``options.backend`` (``dpt`` is NormalDPT itself)
NORMAL_BACKENDS: dict[str, type[NetworkSpecialist]] = {"marigold": NormalMarigold}
