"""T5 caption embeddings from a tiny T5 encoder (the real ``T5EncoderModel`` class) and a tiny
T5 tokenizer, both saved to tmp_path and loaded through the specialist's own
``from_pretrained`` / ``AutoTokenizer.from_pretrained`` path. No hub is contacted."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch

from fm21.config import ConfigError, SpecialistConfig
from fm21.modalities import MODALITIES
from fm21.pseudolabel.specialists import SPECIALISTS
from fm21.pseudolabel.specialists.t5 import T5CaptionEmbedding, decode_t5

D, MAX_LEN = 16, 8
WORDS = "a red cube and green sphere they sit on the ground".split()
TINY = {"d_model": D, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 32}
CAPTIONS = ["a red cube on the ground", None,
            "they sit on the ground and the ground is red and the sphere is green",  # longer than MAX_LEN
            "   "]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A T5 encoder at a tiny config and a tiny Unigram T5 tokenizer in one folder, as a hub repo has them."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path = tmp_path_factory.mktemp("t5") / "tiny-t5"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0) for w in WORDS] + [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(path)
    torch.manual_seed(3)
    config = T5Config(vocab_size=len(vocab), feed_forward_proj="gated-gelu", is_encoder_decoder=False, **TINY)
    model = T5EncoderModel(config).eval()
    model.save_pretrained(path)
    return model, path


def make(weights: str, path=None, **options) -> T5CaptionEmbedding:
    options = {"max_seq_len": MAX_LEN, **options}
    cfg = SpecialistConfig(weights=weights, path=str(path) if path else None, batch_size=2, options=options)
    return T5CaptionEmbedding(cfg, image_size=16)


def batch(captions=CAPTIONS) -> dict:
    n = len(captions)
    return {"key": [f"k{i}" for i in range(n)], "caption": list(captions), "meta": [{}] * n, "gt": [None] * n}


def test_embeddings_are_the_encoder_states_of_the_tokenised_caption(t5_dir):
    from transformers import AutoTokenizer

    model, path = t5_dir
    t5 = make("path", path, d_model=D)
    out = t5(batch())["t5_caption"]
    assert out[1] is None and out[3] is None  # null and blank captions: null embedding
    tok = AutoTokenizer.from_pretrained(path)
    for i in (0, 2):
        ids = tok(CAPTIONS[i], max_length=MAX_LEN, truncation=True)["input_ids"]
        emb = np.stack(out[i])
        assert emb.shape == (len(ids), D) and emb.dtype == np.float16 and np.isfinite(emb).all()
        assert ids[-1] == tok.eos_token_id and len(ids) <= MAX_LEN
        with torch.no_grad():  # the caption alone, no padding: padding in the batch changed nothing
            direct = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        np.testing.assert_allclose(emb.astype(np.float32), direct, rtol=1e-2, atol=2e-3)
    assert len(out[2]) == MAX_LEN and len(out[0]) < MAX_LEN  # truncated vs. short caption


def test_the_column_stores_and_reads_back_without_padding(t5_dir, tmp_path):
    _, path = t5_dir
    t5 = make("path", path, d_model=D)
    field = t5.columns()[0]
    assert field.type == pa.list_(pa.list_(pa.float16(), D))
    assert field.metadata[b"embedding_dim"] == str(D).encode() and field.metadata[b"max_seq_len"] == b"8"
    values = t5(batch())["t5_caption"]
    table = pa.table({"key": pa.array(["k0", "k1", "k2", "k3"]), "t5_caption": pa.array(values, type=field.type)},
                     schema=pa.schema([pa.field("key", pa.string()), field]))
    lance.write_dataset(table, str(tmp_path / "t5.lance"))
    back = lance.dataset(str(tmp_path / "t5.lance")).to_table()
    assert back.schema.field("t5_caption").type == field.type
    rows = back.column("t5_caption").to_pylist()
    assert rows[1] is None
    padded, mask = decode_t5(rows[0], D, 77)
    n = len(values[0])
    assert padded.shape == (77, D) and mask.sum() == n and not padded[n:].any()
    np.testing.assert_array_equal(padded[:n], np.stack(values[0]).astype(np.float32))


def test_random_init_is_seeded_and_tagged(t5_dir):
    _, path = t5_dir
    opts = {**TINY, "vocab_size": 64, "tokenizer": str(path)}
    a, b = make("random", **opts), make("random", **opts)
    oa, ob = a(batch())["t5_caption"], b(batch())["t5_caption"]
    np.testing.assert_array_equal(np.stack(oa[0]), np.stack(ob[0]))
    assert a.provenance()["random"] is True and a.columns()[0].metadata[b"random"] == b"true"


def test_errors_name_their_keys_and_samples(t5_dir):
    _, path = t5_dir
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.t5\.path"):
        make("path", path.parent / "missing").load()
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.t5\.options\.d_model"):
        make("path", path).load()  # default d_model 4096 (XXL) vs the tiny checkpoint's 16
    with pytest.raises(ValueError, match="'k1'"):
        make("path", path, d_model=D)(batch(["a cube", 42]))


def test_registry_entry_reads_the_caption_column():
    cls = SPECIALISTS[MODALITIES["t5_caption"].specialist]
    assert cls is T5CaptionEmbedding and cls.requires == ("caption",)
    field = cls(SpecialistConfig(weights="pretrained"), image_size=16).columns()[0]
    assert field.type.value_type.list_size == MODALITIES["t5_caption"].embedding_dim == 4096
    assert cls.default_model_id == "google/t5-v1_1-xxl"


def test_random_init_with_the_byte_tokenizer_needs_no_files():
    """The demo's offline choice: ByT5's byte tokenizer, a random-init tiny encoder."""
    t5 = make("random", d_model=D, tokenizer="byt5", vocab_size=384, **{k: v for k, v in TINY.items() if k != "d_model"})
    out = t5(batch())["t5_caption"]
    assert out[1] is None and out[3] is None
    first = np.asarray(out[0], dtype=np.float16)
    assert first.shape == (MAX_LEN, D) and np.isfinite(first.astype(np.float32)).all()  # 24 bytes, truncated
    with pytest.raises(ConfigError, match="vocab_size"):
        make("random", d_model=D, tokenizer="byt5", vocab_size=100,
             **{k: v for k, v in TINY.items() if k != "d_model"})(batch())
