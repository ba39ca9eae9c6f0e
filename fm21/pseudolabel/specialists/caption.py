"""Captions: the synthetic scene's caption, or the source's alt-text for real images.

4M-21 trains on CC12M/COYO alt-text (apple/ml-4m `fourm/data/modality_info.py`), so for real images the source
caption *is* the label; a captioning network is a later issue. Looked up in order:
``meta["synthetic"]["caption"]``, then ``meta["caption"]`` (a string, or a list whose
first non-empty string is used). A sample with neither, or only blank text, gets null.
Not an oracle: it never needs ground truth, and alt-text is not ground truth.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from fm21.pseudolabel.specialists.base import Specialist, num_samples


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)):
        for item in value:
            text = _text(item)
            if text is not None:
                return text
    return None


def source_caption(meta: dict | None) -> str | None:
    meta = meta or {}
    synthetic = meta.get("synthetic") or {}
    return _text(synthetic.get("caption")) or _text(meta.get("caption"))


class CaptionSource(Specialist):
    name: ClassVar[str] = "caption"

    def columns(self) -> list[pa.Field]:
        return [self.field("caption", pa.string())]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"caption": [source_caption(batch["meta"][i]) for i in range(num_samples(batch))]}
