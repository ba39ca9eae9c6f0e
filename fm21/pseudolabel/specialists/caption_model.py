"""Captions by a captioning network where the source has none (BLIP through transformers).

4M-21 trains on CC12M/COYO alt-text (apple/ml-4m ``fourm/data/modality_info.py``), so the
source's own caption is kept whenever a sample has one (``caption.source_caption``:
the synthetic scene's caption, or the shard's alt-text). Samples without one get a caption
from an image-captioning model: by default BLIP (Li et al., ICML 2022) as released on the
hub, ``Salesforce/blip-image-captioning-base``, loaded with transformers'
``BlipForConditionalGeneration`` and ``BlipProcessor`` (transformers 5.23), decoded greedily
for at most ``max_new_tokens`` tokens. Any BLIP captioning checkpoint works as ``model_id``
(e.g. ``Salesforce/blip-image-captioning-large``, which wants ``preprocess.input_size`` 384).

Columns:

- ``caption`` (string): the same column, type and metadata kind as the no-weights
  ``caption`` specialist, so the caption tokenizer reads both alike; null when generation
  gives only blank text (or, with ``generate: false``, when the source has none);
- ``caption_source`` (string): ``"source"`` (the sample's own text, kept unchanged),
  ``"model"`` (generated), or null with the caption.

Pixels are prepared by ``options.preprocess`` (BLIP: 384 px bicubic, CLIP mean/std), not by
the processor's image processor, so preprocessing travels with the options; the processor
supplies the tokenizer. ``weights: random`` builds BLIP's architecture (``size``: base or a
tiny one) with fm21's stand-in WordPiece vocabulary (:func:`stand_in_tokenizer`), since the
real BERT vocabulary is not at hand offline; random captions are plumbing, tagged random.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fm21.pseudolabel.specialists.base import num_samples, sample_image
from fm21.pseudolabel.specialists.caption import source_caption
from fm21.pseudolabel.specialists.weights import CLIP_MEAN, CLIP_STD, NetworkSpecialist, Preprocess, cache_dir

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")  # [DEC]: BLIP's decoder bos
STAND_IN_WORDS = (
    "a an the of on in with and at to is are two three man woman person people dog cat car street table "
    "room white black red green blue small large sitting standing next near building field water sky tree"
).split()


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    generate: bool = True  # caption samples without source text (false: as the no-weights specialist)
    max_new_tokens: int = Field(30, ge=1)  # greedy decoding budget per caption
    prompt: str | None = None  # BLIP's conditional prefix (e.g. "a picture of"), kept in the caption
    size: Literal["base", "tiny"] = "base"  # architecture at random init (weights: random)
    preprocess: Preprocess = Preprocess(input_size=384, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")


def stand_in_tokenizer():
    """A BERT-style WordPiece tokenizer over a fixed small vocabulary (special tokens,
    characters, a few caption words); fixed, not trained, so every process builds the same."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    vocab_list = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *STAND_IN_WORDS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]")


def blip_config(size: str, tokenizer, *, image_size: int):
    """BLIP's captioning architecture (``base``: transformers' defaults, ViT-B/16 + BERT-base
    decoder; ``tiny``: tests), its text side sized to ``tokenizer``."""
    from transformers import BlipConfig

    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
           "sep_token_id": tokenizer.sep_token_id, "eos_token_id": tokenizer.sep_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if size == "base":
        return BlipConfig(text_config=ids, vision_config={"image_size": image_size})
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return BlipConfig(
        text_config={**small, **ids, "max_position_embeddings": 64},
        vision_config={**small, "image_size": image_size, "patch_size": 8},
        projection_dim=32, image_text_hidden_size=32,
    )


class CaptionModel(NetworkSpecialist):
    name: ClassVar[str] = "caption"
    Options: ClassVar[type[BaseModel]] = Options
    default_model_id: ClassVar[str] = "Salesforce/blip-image-captioning-base"

    tokenizer: Any = None

    def build(self, location: str | None):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        if location is None:
            self.tokenizer = stand_in_tokenizer()
            cfg = blip_config(self.options.size, self.tokenizer, image_size=self.options.preprocess.input_size)
            return BlipForConditionalGeneration(cfg)
        kw = {"cache_dir": str(cache_dir() / "hf")} if self.cfg.weights == "pretrained" else {}
        self.tokenizer = BlipProcessor.from_pretrained(location, **kw).tokenizer
        return BlipForConditionalGeneration.from_pretrained(location, **kw)

    def columns(self) -> list[pa.Field]:
        return [self.field("caption", pa.string()), self.field("caption_source", pa.string())]

    def generate(self, images: np.ndarray) -> list[list[int]]:
        """``(N, S, S, 3)`` uint8 -> the new token ids of each greedy caption (<= max_new_tokens)."""
        import torch

        if self.model is None:
            self.load()
        pixels = self.options.preprocess(images, self.device)  # (N, 3, R, R)
        prompt = self.tokenizer(self.options.prompt or "").input_ids  # [CLS] prompt [SEP]; BLIP swaps in its bos
        input_ids = torch.tensor([prompt] * len(images), device=self.device)
        with self.inference():
            out = self.model.generate(pixel_values=pixels, input_ids=input_ids, do_sample=False, num_beams=1,
                                      max_new_tokens=self.options.max_new_tokens)
        start = len(prompt) - 1  # generate drops the prompt's last ([SEP]) token
        return [row[start:].tolist() for row in out.cpu()]

    def caption_text(self, ids: list[int]) -> str | None:
        """Decoded caption (with its prompt, as BLIP returns it), or None when blank."""
        prompt = self.options.prompt.strip() + " " if self.options.prompt else ""
        text = (prompt + self.tokenizer.decode(ids, skip_special_tokens=True)).strip()
        return text or None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = num_samples(batch)
        captions = [source_caption(batch["meta"][i]) for i in range(n)]
        sources: list[str | None] = ["source" if c is not None else None for c in captions]
        todo = [i for i in range(n) if captions[i] is None] if self.options.generate else []
        if todo:
            images = np.stack([sample_image(batch, i, self.image_size) for i in todo])  # (N, S, S, 3)
            for i, ids in zip(todo, self.generate(images)):
                captions[i] = self.caption_text(ids)
                sources[i] = "model" if captions[i] is not None else None
        return {"caption": captions, "caption_source": sources}
