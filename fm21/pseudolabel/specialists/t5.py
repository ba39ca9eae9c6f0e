"""T5 caption embeddings: the frozen T5 encoder's last hidden state of each sample's caption,
the 4M-21 ``t5_caption`` input modality (embedding kind, ``Linear(4096 -> d)`` in the model).

4M-21 feeds the 4096-d T5-XXL encoder states of the caption (apple/ml-4m
``fourm/data/modality_info.py``, ``t5_caption``: ``seq_emb``, 77 positions; the 4096 width is T5
v1.1 XXL's ``d_model``). Reads the ``caption`` column of the caption specialist.

Column ``t5_caption``: per sample a variable-length list of ``L`` vectors, each a fixed-size
list of ``d_model`` float16 (``list<fixed_size_list<float16, D>>``), ``L`` = the caption's token
count including T5's ``</s>``, truncated to ``options.max_seq_len`` (77). Padding is never
stored: the list length is the valid length, the mask is ``arange(max_len) < L``. A sample
without a caption gets null. Field metadata: ``dtype``, ``embedding_dim``, ``max_seq_len``.

Weights: ``pretrained`` = ``T5EncoderModel.from_pretrained("google/t5-v1_1-xxl")`` (any T5 by
``model_id``), ``path`` = a ``save_pretrained`` folder (same call), ``random`` = a ``T5Config``
from the options (defaults: v1.1 XXL's encoder). The tokenizer is
``AutoTokenizer.from_pretrained`` of ``options.tokenizer``, else of the weights' id or folder
(in random mode: ``model_id``, from the cache). ``options.tokenizer: byt5`` takes transformers'
``ByT5Tokenizer`` (UTF-8 bytes, 384 ids, no files to load): the offline choice for a
random-init encoder (the demo), with ``vocab_size`` ≥ 384.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.config import ConfigError
from fm21.pseudolabel.specialists.base import num_samples
from fm21.pseudolabel.specialists.weights import NetworkSpecialist, cache_dir

FP16_MAX = float(np.finfo(np.float16).max)


class T5Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_seq_len: int = Field(77, ge=1)  # tokens kept per caption, </s> included
    tokenizer: str | None = None  # hub id or folder, or "byt5" (no files); default: the weights' own
    d_model: int = Field(4096, ge=1)  # stored width; a checkpoint must agree
    # random init only (a checkpoint brings its own); defaults: T5 v1.1 XXL encoder
    num_layers: int = Field(24, ge=1)
    num_heads: int = Field(64, ge=1)
    d_kv: int = Field(64, ge=1)
    d_ff: int = Field(10240, ge=1)
    vocab_size: int = Field(32128, ge=1)


class T5CaptionEmbedding(NetworkSpecialist):
    name: ClassVar[str] = "t5"
    requires: ClassVar[tuple[str, ...]] = ("caption",)
    default_model_id: ClassVar[str] = "google/t5-v1_1-xxl"
    Options: ClassVar[type[BaseModel]] = T5Options

    tokenizer: Any = None

    def columns(self) -> list[pa.Field]:
        d = self.options.d_model
        field = self.field("t5_caption", pa.list_(pa.list_(pa.float16(), d)), dtype="float16")
        return [field.with_metadata({**field.metadata, "embedding_dim": str(d),
                                     "max_seq_len": str(self.options.max_seq_len)})]

    # ------------------------------------------------------------------ model
    def build(self, location: str | None):
        from transformers import T5Config, T5EncoderModel

        o = self.options
        if location is None:
            config = T5Config(vocab_size=o.vocab_size, d_model=o.d_model, d_kv=o.d_kv, d_ff=o.d_ff,
                              num_layers=o.num_layers, num_heads=o.num_heads, feed_forward_proj="gated-gelu",
                              is_encoder_decoder=False)
            return T5EncoderModel(config)
        model = T5EncoderModel.from_pretrained(location, cache_dir=str(cache_dir() / "hf"))
        if model.config.d_model != o.d_model:
            raise ConfigError(f"'pseudolabel.specialists.{self.name}.options.d_model': {o.d_model}, but the checkpoint "
                              f"{location} has d_model {model.config.d_model}")
        return model

    def tokenizer_location(self) -> str:
        return self.options.tokenizer or self.weights_location() or self.model_id

    def load(self) -> None:
        from transformers import AutoTokenizer

        super().load()
        if self.tokenizer is None and self.options.tokenizer == "byt5":
            from transformers import ByT5Tokenizer

            self.tokenizer = ByT5Tokenizer()  # bytes: nothing to download
            if self.model.config.vocab_size < len(self.tokenizer):
                raise ConfigError(f"'pseudolabel.specialists.t5.options.vocab_size' must be >= {len(self.tokenizer)} "
                                  "with the byt5 tokenizer")
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_location(), cache_dir=str(cache_dir() / "hf"))

    def fetch(self) -> None:
        super().fetch()
        self.load()

    # ------------------------------------------------------------------ labelling
    def embed(self, texts: list[str]) -> list[np.ndarray]:
        """Captions -> one ``(L_i, d_model)`` float16 array each, ``L_i <= max_seq_len``."""
        self.load()
        out: list[np.ndarray] = []
        step = max(1, self.cfg.batch_size)
        for start in range(0, len(texts), step):
            enc = self.tokenizer(texts[start:start + step], max_length=self.options.max_seq_len, truncation=True,
                                 padding="longest", return_tensors="pt")
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)  # (b, L)
            with self.inference():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, L, D)
            hidden = hidden.float().clamp(-FP16_MAX, FP16_MAX).cpu().numpy().astype(np.float16)
            lengths = mask.sum(dim=1).tolist()
            out.extend(hidden[i, :n] for i, n in enumerate(lengths))  # padding dropped
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        captions = batch["caption"]
        todo: list[int] = []
        for i in range(num_samples(batch)):
            text = captions[i]
            if text is not None and not isinstance(text, str):
                raise ValueError(f"sample {batch['key'][i]!r}: caption must be a string or null, "
                                 f"got {type(text).__name__}")
            if text is not None and text.strip():
                todo.append(i)
        values: list[list[np.ndarray] | None] = [None] * num_samples(batch)
        for i, emb in zip(todo, self.embed([captions[i] for i in todo])):
            values[i] = list(emb)  # L vectors of D: the arrow list<fixed_size_list<float16, D>>
        return {"t5_caption": values}


def decode_t5(value: list | None, dim: int, max_len: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A stored ``t5_caption`` row -> ``(max_len, dim)`` float32 zero-padded, ``(max_len,)`` valid mask."""
    if value is None:
        return None
    emb = np.asarray(value, dtype=np.float32).reshape(-1, dim)[:max_len]
    out = np.zeros((max_len, dim), np.float32)
    out[: len(emb)] = emb
    return out, np.arange(max_len) < len(emb)
