"""The captioning network: source text first, BLIP greedy captions for the rest.

A tiny BLIP (vision + text) with a WordPiece tokenizer trained here on a few words stands
in for ``Salesforce/blip-image-captioning-base``: saved with ``save_pretrained`` and read
back through the same ``from_pretrained`` code as the hub model (``weights: path``).
"""

from __future__ import annotations

import numpy as np
import pytest

from fm21.config import SpecialistConfig
from fm21.pseudolabel.specialists import NETWORKS, SPECIALISTS, specialist_class
from fm21.pseudolabel.specialists.caption_model import CaptionModel, blip_config
from fm21.store import labels as store

S = 32
TINY = {"size": "tiny", "max_new_tokens": 6, "preprocess": {"input_size": 32}}
WORDS = "a man riding a horse on the beach . two dogs playing in the snow . a red car parked near a tree".split()


def make(weights="random", **cfg) -> CaptionModel:
    spec = specialist_class("caption", weights)(
        SpecialistConfig(weights=weights, options={**TINY, **cfg.pop("options", {})}, **cfg), image_size=S)
    assert isinstance(spec, CaptionModel)
    return spec


def batch(metas: list[dict]) -> dict:
    rng = np.random.default_rng(0)
    n = len(metas)
    return {"key": [f"s{i}" for i in range(n)], "rgb": rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8),
            "meta": metas, "gt": [None] * n}


@pytest.fixture(scope="module")
def saved_blip(tmp_path_factory):
    """A tiny random BLIP + BertTokenizerFast (WordPiece trained on a few words), saved locally."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    raw.train_from_iterator([" ".join(WORDS)] * 4, trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    tokenizer = BertTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]")
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(blip_config("tiny", tokenizer, image_size=S))
    path = tmp_path_factory.mktemp("blip-tiny")
    model.save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": S, "width": S}), tokenizer=tokenizer
                  ).save_pretrained(path)
    return path


def test_registered_as_the_network_behind_caption():
    assert NETWORKS["caption"] is CaptionModel and specialist_class("caption", "none") is SPECIALISTS["caption"]
    spec = make()
    fields = {f.name: f for f in spec.columns()}
    assert set(fields) == {"caption", "caption_source"}
    none_field = SPECIALISTS["caption"](SpecialistConfig(), image_size=S).columns()[0]
    assert fields["caption"].type == none_field.type  # the caption tokenizer reads both alike


def test_alt_text_is_kept_and_the_model_not_called(saved_blip, monkeypatch):
    spec = make("path", path=str(saved_blip))
    spec.load()
    calls = []
    real = spec.generate
    monkeypatch.setattr(spec, "generate", lambda images: calls.append(len(images)) or real(images))
    out = spec(batch([{"caption": "  A dog on a beach. "}, {"caption": ["", "second"]}]))
    assert out == {"caption": ["A dog on a beach.", "second"], "caption_source": ["source", "source"]}
    assert calls == []
    out = spec(batch([{"caption": "kept"}, {}, {"synthetic": {"caption": "scene"}}]))
    assert calls == [1]  # only the sample without text went through the network
    assert out["caption"][0] == "kept" and out["caption"][2] == "scene"
    assert out["caption_source"] == ["source", "model", "source"]
    assert isinstance(out["caption"][1], str) and out["caption"][1]


def test_generated_captions_respect_max_new_tokens(saved_blip):
    spec = make("path", path=str(saved_blip))
    rgb = batch([{}, {}])["rgb"]
    ids = spec.generate(rgb)
    assert len(ids) == 2 and all(1 <= len(row) <= TINY["max_new_tokens"] for row in ids)
    out = spec(batch([{}, {}]))
    assert out["caption"] == [spec.caption_text(row) for row in ids]
    fields = spec.columns()
    for field in fields:
        arr = store.encode_column(out[field.name], field)
        assert arr.type == field.type and arr.null_count == 0
    assert fields[0].metadata[b"random"] == b"false"


def test_random_mode_is_deterministic_and_tagged():
    a, b = make(), make()
    metas = [{}, {"caption": "kept"}]
    out_a, out_b = a(batch(metas)), b(batch(metas))
    assert out_a == out_b and out_a["caption"][1] == "kept" and out_a["caption_source"][0] == "model"
    assert a.columns()[0].metadata[b"random"] == b"true"


def test_generation_off_behaves_as_the_source_specialist():
    spec = make(options={"generate": False})
    out = spec(batch([{}, {"caption": "x"}]))
    assert out == {"caption": [None, "x"], "caption_source": [None, "source"]}
    assert spec.model is None  # nothing to generate: never loaded
