"""The WordPiece text tokenizer: fixed special ids, one-token values/classes, save/load."""

from __future__ import annotations

import json

import pytest

from fm21.tokenize.text import (
    CLASS_TOKENS,
    NUM_SPECIAL_TOKENS,
    TextTokenizer,
    train_text_tokenizer,
)

CORPUS = [
    "a red cube next to a blue sphere on the grass.",
    "two dogs and a person holding a baseball bat, near a dining table!",
    "the personal computer sits on a wooden desk; it is quite old",
    "A Green cylinder behind the small yellow cone",
] * 20


@pytest.fixture(scope="module")
def text_tok() -> TextTokenizer:
    return train_text_tokenizer(CORPUS, vocab_size=5000)


def test_special_token_ids_are_fixed(text_tok: TextTokenizer) -> None:
    assert (text_tok.pad_id, text_tok.unk_id, text_tok.sos_id, text_tok.eos_id) == (0, 1, 2, 3)
    assert text_tok.sentinel_id(0) == 4 and text_tok.sentinel_id(1) == 5
    assert text_tok.token_to_id("[S_199]") == 203
    assert text_tok.token_to_id("v0=0") == 204
    assert text_tok.token_to_id("v1=0") == 1204
    assert text_tok.token_to_id("v3=999") == 4203
    # class names in the reference's alphabetical order (test_reference_conventions.py pins all 80)
    assert text_tok.token_to_id("airplane") == 4204
    assert text_tok.token_to_id("person") == 4253
    assert text_tok.token_to_id("zebra") == 4283 == NUM_SPECIAL_TOKENS - 1
    # learned pieces come after the specials
    assert text_tok.vocab_size > NUM_SPECIAL_TOKENS
    assert text_tok.encode("grass")[0] >= NUM_SPECIAL_TOKENS


def test_every_value_and_class_is_one_token(text_tok: TextTokenizer) -> None:
    values = [f"v{v}={k}" for v in range(4) for k in range(1000)]
    encoded = text_tok._tok.encode_batch(values + list(CLASS_TOKENS), add_special_tokens=False)
    ids = [e.ids for e in encoded]
    assert all(len(i) == 1 for i in ids)
    assert [i[0] for i in ids] == list(range(204, NUM_SPECIAL_TOKENS))


def test_encode_decode_special_strings(text_tok: TextTokenizer) -> None:
    det = "v0=12 v1=34 v2=500 v3=999 baseball bat v0=1 v1=0 v2=3 v3=4 person"
    ids = text_tok.encode(det)
    assert len(ids) == 10
    assert text_tok.decode(ids) == det
    # class names are whole words after lower-casing; "personal" is not "person" + "al"
    assert text_tok.encode("Baseball Bat") == [text_tok.token_to_id("baseball bat")]
    assert text_tok.token_to_id("person") not in text_tok.encode("personal")
    # sentinels and EOS survive decoding
    ids = text_tok.encode("a cube [S_1] [EOS]")
    assert ids[-2:] == [5, 3]
    assert text_tok.decode(ids) == "a cube [S_1] [EOS]"


def test_caption_lowercased_and_word_pieces_joined(text_tok: TextTokenizer) -> None:
    ids = text_tok.encode("A Green CYLINDER")
    assert text_tok.decode(ids) == "a green cylinder"
    assert all(i != text_tok.unk_id for i in ids)


def test_save_load_identical(text_tok: TextTokenizer, tmp_path) -> None:
    fp = text_tok.save(tmp_path / "text")
    loaded = TextTokenizer.load(tmp_path / "text")
    cfg = json.loads((tmp_path / "text" / "config.json").read_text())
    assert cfg["fingerprint"] == fp == loaded.fingerprint()
    assert cfg["vocab_size"] == text_tok.vocab_size
    for s in CORPUS[:4] + ["v2=17 dog v0=999 [S_3]"]:
        assert loaded.encode(s) == text_tok.encode(s)
    # an edited tokenizer.json no longer matches its recorded fingerprint
    path = tmp_path / "text" / "tokenizer.json"
    path.write_text(path.read_text().replace('"grass"', '"grasz"'))
    with pytest.raises(ValueError, match="fingerprint"):
        TextTokenizer.load(tmp_path / "text")


def test_vocab_must_exceed_specials() -> None:
    with pytest.raises(ValueError):
        train_text_tokenizer(CORPUS, vocab_size=NUM_SPECIAL_TOKENS)
