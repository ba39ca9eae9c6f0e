"""The specialist contract: a plain class the pseudolabel job maps over batches.

A specialist knows nothing about Ray or Prefect. The job builds one per worker with
its ``SpecialistConfig`` slice and the run's image size, calls :meth:`Specialist.load`
once, then :meth:`Specialist.__call__` per batch, and writes the returned columns
(typed by :meth:`Specialist.columns`) into labels.lance, keyed by sample key.

Input batch (B samples, S = image_size):

- ``"key"``: ``list[str]``
- ``"rgb"``: ``np.ndarray`` uint8 ``(B, S, S, 3)``
- ``"meta"``: ``list[dict]``, the shard's json (``caption``, ``original_size`` as
  ``[width, height]``, and for synthetic scenes ``"synthetic"``: ``{"boxes", "objects",
  "classes", ...}``)
- ``"gt"``: ``list[dict | None]``, synthetic ground truth (``depth`` float32 (S, S),
  ``normal`` float16 (S, S, 3), ``instance`` uint8 (S, S), ``semantic`` uint8 (S, S));
  ``None`` for real images
- the columns of earlier specialists (named in ``requires``), as they returned them.

Output: only the specialist's own columns, each a list of length B whose items
``fm21.store.labels.encode_column(values, field)`` accepts (dense maps: flat 1-D numpy
arrays of the declared dtype, encoded for storage by the job, not by the specialist).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from fm21.config import ConfigError, SpecialistConfig
from fm21.store import encodings


class NoOptions(BaseModel):
    """Options of a specialist that takes none: every key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OracleInputError(ValueError):
    """An oracle specialist met a sample without synthetic ground truth."""


def parse_options(name: str, model: type[BaseModel], options: dict[str, Any]) -> BaseModel:
    """Validate ``options`` against ``model``; errors name the flows.yaml key path."""
    try:
        return model.model_validate(options)
    except ValidationError as err:
        prefix = f"pseudolabel.specialists.{name}.options"
        lines = [f"invalid options for specialist {name!r}:"]
        for e in err.errors():
            path = ".".join([prefix, *(str(p) for p in e["loc"])])
            if e["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields) or "none"
                lines.append(f"  unknown key '{path}' (known options: {known})")
            else:
                lines.append(f"  '{path}': {e['msg']}")
        raise ConfigError("\n".join(lines)) from None


class Specialist(ABC):
    """One pseudo-labeler. Subclasses set the class variables and implement
    :meth:`columns` and :meth:`__call__` (and :meth:`load` when they have weights)."""

    name: ClassVar[str]  # the registry's ``specialist`` value
    requires: ClassVar[tuple[str, ...]] = ()  # batch columns read beyond key/rgb/meta/gt
    Options: ClassVar[type[BaseModel]] = NoOptions
    supported_weights: ClassVar[tuple[str, ...]] = ("none",)
    oracle: ClassVar[bool] = False  # outputs are ground truth, not predictions
    version: ClassVar[str] = "1"  # bump when a no-weights algorithm changes its output

    def __init__(self, cfg: SpecialistConfig, *, image_size: int) -> None:
        if cfg.weights not in self.supported_weights:
            raise ConfigError(
                f"'pseudolabel.specialists.{self.name}.weights': {cfg.weights!r} is not "
                f"supported by specialist {self.name!r} (supported: "
                f"{', '.join(self.supported_weights)})"
            )
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.cfg = cfg
        self.image_size = image_size
        self.options = parse_options(self.name, self.Options, cfg.options)

    # ------------------------------------------------------------------ contract
    @abstractmethod
    def columns(self) -> list[pa.Field]:
        """The output columns, with exact Arrow types and provenance metadata."""

    def load(self) -> None:
        """Load weights once per worker. Specialists without weights have nothing to do."""

    @abstractmethod
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Label one batch; return only this specialist's columns, each of length B."""

    @property
    def is_random(self) -> bool:
        return self.cfg.weights == "random"

    def weights_fingerprint(self) -> str:
        """Identifies what produced the labels. Without weights: name, version, options."""
        payload = {
            "specialist": self.name,
            "version": self.version,
            "options": self.options.model_dump(mode="json"),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def provenance(self) -> dict:
        return {
            "specialist": self.name,
            "weights": self.cfg.weights,
            "model_id": self.cfg.model_id,
            "weights_fingerprint": self.weights_fingerprint(),
            "random": self.is_random,
            "oracle": self.oracle,
        }

    # ------------------------------------------------------------------ helpers
    def field(
        self,
        name: str,
        type_: pa.DataType,
        *,
        shape: Sequence[int] | None = None,
        dtype: str | None = None,
    ) -> pa.Field:
        """A nullable output field carrying this specialist's provenance as metadata."""
        meta = {
            "specialist": self.name,
            "weights": self.cfg.weights,
            "weights_fingerprint": self.weights_fingerprint(),
            "random": "true" if self.is_random else "false",
            "oracle": "true" if self.oracle else "false",
        }
        if shape is not None:
            meta["shape"] = json.dumps(list(shape))
        if dtype is not None:
            meta["dtype"] = dtype
        return pa.field(name, type_, nullable=True, metadata=meta)

    def map_field(self, name: str, dtype: str, *, kind: str, channels: int = 1) -> pa.Field:
        """A dense (S, S) or (S, S, C) map of label ``kind`` (``fm21.store.encodings``:
        image, class_map, binary_map, depth, unit_vector, raw). The kind picks the stored
        encoding; the field metadata records ``shape``, ``dtype`` and ``encoding``."""
        s = self.image_size
        shape = [s, s] if channels == 1 else [s, s, channels]
        encoding = encodings.encoding_for_kind(kind)
        field = self.field(name, encodings.storage_type(encoding, tuple(shape), dtype), shape=shape, dtype=dtype)
        return field.with_metadata({**field.metadata, encodings.ENCODING_KEY: encoding.encode()})


class OracleSpecialist(Specialist):
    """Reads the synthetic source's ground truth in place of a real model."""

    oracle: ClassVar[bool] = True
    stands_in_for: ClassVar[str]  # the real model this oracle replaces on synthetic data

    def missing_ground_truth(self, key: str) -> OracleInputError:
        return OracleInputError(
            f"specialist {self.name!r} is an oracle: it reads the ground truth of the "
            f"synthetic source (ingest.source: synthetic), but sample {key!r} has none. "
            f"Real images need the real {self.name} specialist ({self.stands_in_for}), "
            f"which this build does not ship yet; disable '{self.name}' for this source."
        )

    def ground_truth(self, batch: dict[str, Any], index: int) -> dict[str, Any]:
        gt = batch["gt"][index]
        if gt is None:
            raise self.missing_ground_truth(batch["key"][index])
        return gt

    def gt_map(
        self, batch: dict[str, Any], index: int, key: str, *, channels: int = 1
    ) -> np.ndarray:
        """One ground-truth map, shape-checked against the run's image size."""
        gt = self.ground_truth(batch, index)
        if key not in gt:
            raise OracleInputError(
                f"specialist {self.name!r}: ground truth of sample {batch['key'][index]!r} "
                f"has no {key!r} map (has: {sorted(gt)})"
            )
        value = np.asarray(gt[key])
        s = self.image_size
        expected = (s, s) if channels == 1 else (s, s, channels)
        if value.shape != expected:
            raise OracleInputError(
                f"specialist {self.name!r}: ground-truth {key!r} of sample "
                f"{batch['key'][index]!r} has shape {value.shape}, expected {expected} "
                f"(image_size {s})"
            )
        return value


def num_samples(batch: dict[str, Any]) -> int:
    return len(batch["key"])


def sample_map(value: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray | None:
    """An earlier specialist's per-sample value (flat list/array) as an array of ``shape``."""
    if value is None:
        return None
    return np.asarray(value, dtype=dtype).reshape(shape)


def sample_image(batch: dict[str, Any], index: int, size: int) -> np.ndarray:
    """The RGB image of one sample as (S, S, 3) uint8, checked against the run's size."""
    rgb = np.asarray(batch["rgb"][index], dtype=np.uint8)
    if rgb.size != size * size * 3:
        raise ValueError(
            f"sample {batch['key'][index]!r}: rgb has shape {rgb.shape}, expected "
            f"({size}, {size}, 3) (image_size {size})"
        )
    return rgb.reshape(size, size, 3)
