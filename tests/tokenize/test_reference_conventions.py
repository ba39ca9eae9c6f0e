"""fm21's token conventions are the reference's (issue 12), each pinned to values written
from the reference files cited; docs/reference-conventions.md lists them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from fm21.config import load_config
from fm21.modalities import MODALITIES
from fm21.tokenize.text import (
    CLASS_TOKENS, NUM_SPECIAL_TOKENS, TextTokenizer, _empty_tokenizer, load_released_text_tokenizer, special_tokens,
)
from fm21.train.masking import EOS_ID, max_budget, sequence_units

# apple/ml-4m `fourm/utils/tokenizer/object_classes.json`, key "coco", in file order
REFERENCE_COCO = [
    "airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove", "bear", "bed", "bench", "bicycle",
    "bird", "boat", "book", "bottle", "bowl", "broccoli", "bus", "cake", "car", "carrot", "cat", "cell phone",
    "chair", "clock", "couch", "cow", "cup", "dining table", "dog", "donut", "elephant", "fire hydrant", "fork",
    "frisbee", "giraffe", "hair drier", "handbag", "horse", "hot dog", "keyboard", "kite", "knife", "laptop",
    "microwave", "motorcycle", "mouse", "orange", "oven", "parking meter", "person", "pizza", "potted plant",
    "refrigerator", "remote", "sandwich", "scissors", "sheep", "sink", "skateboard", "skis", "snowboard", "spoon",
    "sports ball", "stop sign", "suitcase", "surfboard", "teddy bear", "tennis racket", "tie", "toaster", "toilet",
    "toothbrush", "traffic light", "train", "truck", "tv", "umbrella", "vase", "wine glass", "zebra",
]


def test_class_tokens_are_the_reference_list_at_4204() -> None:
    assert list(CLASS_TOKENS) == REFERENCE_COCO
    ids = {t.content: i for i, t in enumerate(special_tokens())}
    assert [ids[c] for c in REFERENCE_COCO] == list(range(4204, 4284)) and NUM_SPECIAL_TOKENS == 4284


def test_special_token_flags_are_the_reference_s() -> None:
    """apple/ml-4m `fourm/utils/tokenizer/text_tokenizer.py`: sentinels and coordinate tokens
    single_word=True, normalized=False; class names single_word=True, normalized=True."""
    flags = [(t.single_word, t.normalized) for t in special_tokens()]
    assert set(flags[:4]) == {(False, False)}
    assert set(flags[4:204]) == {(True, False)} and set(flags[204:4204]) == {(True, False)}
    assert set(flags[4204:]) == {(True, True)}


def _released_like(path) -> None:
    """A tokenizer JSON made the way the released one is (train_wordpiece_tokenizer.py): the
    reference's special tokens in order, then word pieces; a small vocabulary of 4,300 ids."""
    tok = _empty_tokenizer()
    vocab = {t.content: i for i, t in enumerate(special_tokens())}
    for w in ["a", "on", "the", "grass", "##s", "red", "cube", "!", ".", ","]:
        vocab[w] = len(vocab)
    from tokenizers import models

    tok.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##")
    tok.add_special_tokens(special_tokens())
    path.write_text(tok.to_str())


def test_released_tokenizer_loads_and_its_ids_are_used(tmp_path) -> None:
    _released_like(tmp_path / "text_tokenizer_4m_wordpiece_30k.json")
    tok = load_released_text_tokenizer(tmp_path)  # the folder: the released file name inside
    # dog = 4232 and zebra = 4283 (alphabetical), v0=12 = 216, [S_1] = 5, words after 4283
    assert tok.encode("A dog on the grass v0=12 zebra [S_1]") == [4284, 4232, 4285, 4286, 4287, 216, 4283, 5]
    assert tok.vocab_size == NUM_SPECIAL_TOKENS + 10
    # a file whose class names are in another order is refused, naming the token
    data = json.loads((tmp_path / "text_tokenizer_4m_wordpiece_30k.json").read_text())
    for entry in data["added_tokens"]:
        entry["content"] = {"airplane": "apple", "apple": "airplane"}.get(entry["content"], entry["content"])
    vocab = data["model"]["vocab"]
    vocab["airplane"], vocab["apple"] = vocab["apple"], vocab["airplane"]
    with pytest.raises(ValueError, match="'airplane' is at id 4205, not 4204"):
        TextTokenizer(Tokenizer.from_str(json.dumps(data)))
    with pytest.raises(ValueError, match="exactly one"):
        load_released_text_tokenizer(None)


def test_text_source_config() -> None:
    cfg = load_config(recipe="4m21-b")
    assert cfg.tokenizers.text.source == "released" and cfg.tokenizers.text.path
    with pytest.raises(Exception, match="exactly one"):
        load_config(overrides=["tokenizers.text.source=released"])


@pytest.mark.parametrize("name,max_tokens", [("caption", 256), ("det", 256), ("metadata", 40),
                                             ("color_palette", 23)])
def test_sequence_cap_counts_the_eos(name: str, max_tokens: int) -> None:
    """apple/ml-4m `fourm/data/masking.py` sequence_mask: EOS appended, then seq_ids[:max_tokens];
    `fourm/data/modality_info.py` max_tokens: caption/det 256, metadata 40, color_palette 23."""
    spec = MODALITIES[name]
    assert max_budget(spec) == max_tokens
    units = sequence_units(list(range(4300, 4300 + max_tokens)), max_budget(spec))
    assert len(units) == max_tokens and units[-1] != [EOS_ID]  # a full sequence loses its EOS
    assert sequence_units([4300] * (max_tokens - 1), max_budget(spec))[-1] == [EOS_ID]
    assert spec.seq_tensor_len == (max_tokens + 1) * 2


# apple/ml-4m `cfgs/default/4m/alphas_mixture/main/mix_mod21_all2allmix_rgb2all_capT5bias.yaml`
ALL2ALL = [0.01, 0.1, 1.0, 10.0]
REF_WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
REF_OTHER = (ALL2ALL + [0.0, 0.05, 0.05], ALL2ALL + [0.5, 0.5, 0.5])  # every other modality
REF = {
    "rgb": (ALL2ALL + [1000.0, 0.05, 0.05], [0.0] * 7),
    "caption": (ALL2ALL + [0.0, 5.0, 0.0], ALL2ALL + [0.5, 0.0, 0.5]),
    "t5_caption": (ALL2ALL + [0.0, 0.0, 5.0], ALL2ALL + [0.5, 0.5, 0.0]),
}
REF_KEEP = {"caption": ["random"] * 5 + ["all", "random"], "t5_caption": ["random"] * 6 + ["all"],
            "color_palette": ["binary"] * 7}


def test_4m21_mixture_is_the_reference_s() -> None:
    mixture = load_config(recipe="4m21-b").train.mixture
    assert [c.weight for c in mixture] == REF_WEIGHTS
    for name, spec in MODALITIES.items():
        ref_in, ref_tgt = REF.get(name, REF_OTHER)
        got_in = [c.input_alphas.get(name, c.default_input_alpha) for c in mixture]
        got_tgt = [c.target_alphas.get(name, c.default_target_alpha) for c in mixture]
        assert np.allclose(got_in, ref_in), name
        if spec.can_be_target:  # input-only targets are never drawn in fm21 (see MixtureComponent)
            assert np.allclose(got_tgt, ref_tgt), name
        keep = [c.keep.get(name, "random") for c in mixture]
        assert keep == REF_KEEP.get(name, ["random"] * 7), name

