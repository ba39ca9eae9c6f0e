"""The shared 4M WordPiece text tokenizer (apple/ml-4m `fourm/utils/tokenizer/text_tokenizer.py`), on HF ``tokenizers``.

BertNormalizer (lower-case, accents kept), BertPreTokenizer, ``##`` continuations, no
post-processor (no automatic BOS/EOS). Special tokens have FIXED ids, in this order:

=========== ================================================================
0-3         ``[PAD] [UNK] [SOS] [EOS]``
4-203       sentinels ``[S_0]`` .. ``[S_199]``
204-4203    value tokens ``v0=0`` .. ``v0=999``, then ``v1=``, ``v2=``, ``v3=``
4204-4283   the 80 COCO class names, each ONE token ("baseball bat" included), in
            ALPHABETICAL order (airplane = 4204 ... zebra = 4283), as the reference's
            ``object_classes.json["coco"]`` lists them (not COCO's category order)
4284-...    learned word pieces, up to ``vocab_size``
=========== ================================================================

Value tokens and class names are added tokens, matched before pre-tokenisation (the
longest match wins, so ``v0=12`` is not ``v0=1`` + ``2``). Sentinels, value tokens and
class names are ``single_word`` (matched only as whole words) and class names are
matched after normalisation: "Dog" is the class token, the "person" in "personal" is
not. Decoding keeps every special token. These flags and ids are those of the released
``fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json``, so that file
loads here unchanged (:func:`load_released_text_tokenizer`) and the 4M-21 models read
the ids fm21 writes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.trainers import WordPieceTrainer

from fm21.store.fs import as_location

# COCO's 80 classes in COCO's category order: the label order of COCO detectors
# (fm21.pseudolabel.specialists.detection_net maps model label ids through it).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

# The class-name tokens, ids 4204..4283: alphabetical, as in apple/ml-4m
# `fourm/utils/tokenizer/object_classes.json` ("coco" list), which
# `fourm/utils/tokenizer/text_tokenizer.py` (generate_object_class_tokens) adds in file order.
CLASS_TOKENS: tuple[str, ...] = tuple(sorted(COCO_CLASSES))

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
NUM_SENTINELS = 200
NUM_VALUE_KINDS = 4  # v0= .. v3=
NUM_VALUE_BINS = 1000  # 0..999
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def special_tokens() -> list[AddedToken]:
    """The 4,284 fixed-id tokens, in id order, with the reference's flags
    (apple/ml-4m `fourm/utils/tokenizer/text_tokenizer.py`: sentinels and coordinate tokens
    ``single_word=True, normalized=False``; class names ``single_word=True, normalized=True``;
    PAD/UNK/SOS/EOS plain)."""
    tokens = [AddedToken(t, single_word=False, normalized=False) for t in (PAD, UNK, SOS, EOS)]
    tokens += [AddedToken(f"[S_{k}]", single_word=True, normalized=False) for k in range(NUM_SENTINELS)]
    tokens += [AddedToken(f"v{v}={k}", single_word=True, normalized=False)
               for v in range(NUM_VALUE_KINDS) for k in range(NUM_VALUE_BINS)]
    tokens += [AddedToken(c, single_word=True, normalized=True) for c in CLASS_TOKENS]
    return tokens


NUM_SPECIAL_TOKENS = 4 + NUM_SENTINELS + NUM_VALUE_KINDS * NUM_VALUE_BINS + len(CLASS_TOKENS)


def value_token(kind: int, value: int) -> str:
    """``vN=k``, the coordinate/value token (``kind`` N in 0..3, ``value`` k in 0..999)."""
    return f"v{kind}={value}"


def _empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


class TextTokenizer:
    """A trained WordPiece tokenizer with the 4M special tokens at fixed ids."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        for want, t in enumerate(special_tokens()):  # the whole fixed layout, 4,284 look-ups
            found = tokenizer.token_to_id(t.content)
            if found != want:
                hint = ""
                if t.content in CLASS_TOKENS and tokenizer.token_to_id(COCO_CLASSES[0]) == 4204:
                    hint = (" (a tokenizer built with COCO's category order, before fm21 used the "
                            "reference's alphabetical order: rerun the tokenizers stage)")
                raise ValueError(f"special token {t.content!r} is at id {found}, not {want}{hint}")
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        self.sos_id = tokenizer.token_to_id(SOS)
        self.eos_id = tokenizer.token_to_id(EOS)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def sentinel_id(self, k: int) -> int:
        """Id of ``[S_k]`` (``[S_1]`` = 5; span masking numbers sentinels from 1)."""
        if not 0 <= k < NUM_SENTINELS:
            raise ValueError(f"sentinel index {k} outside 0..{NUM_SENTINELS - 1}")
        return 4 + k

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

    def save(self, directory: Path | str) -> str:
        """``tokenizer.json`` + ``config.json`` (sizes, special layout, fingerprint), in a
        local folder or under a URI (written as text, no local file)."""
        directory = as_location(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_FILE).write_text(self._tok.to_str(pretty=True))  # what Tokenizer.save writes
        fingerprint = self.fingerprint()
        config = {
            "family": "wordpiece",
            "vocab_size": self.vocab_size,
            "num_special_tokens": NUM_SPECIAL_TOKENS,
            "pad_id": self.pad_id, "unk_id": self.unk_id,
            "sos_id": self.sos_id, "eos_id": self.eos_id,
            "sentinel_0_id": self.sentinel_id(0),
            "value_token_0_id": self._tok.token_to_id("v0=0"),
            "class_token_0_id": self._tok.token_to_id(CLASS_TOKENS[0]),
            "fingerprint": fingerprint,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return fingerprint

    @classmethod
    def load(cls, directory: Path | str) -> TextTokenizer:
        directory = as_location(directory)
        tok = cls(Tokenizer.from_str((directory / TOKENIZER_FILE).read_text()))
        recorded = json.loads((directory / CONFIG_FILE).read_text()).get("fingerprint")
        if recorded is not None and recorded != tok.fingerprint():
            raise ValueError(f"{directory}: tokenizer.json does not match its fingerprint")
        return tok


def train_text_tokenizer(
    corpus: Iterable[str], *, vocab_size: int, min_frequency: int = 1
) -> TextTokenizer:
    """Learn word pieces on ``corpus`` after the fixed special tokens.

    The WordPiece trainer gives each continuation piece (``##e``) its id the first time it
    meets it while iterating a hash map of words, and breaks ties between equally frequent
    merges by those ids, so the same corpus could learn other pieces in another process
    (huggingface/tokenizers#1794). Registering every continuation piece up front, in sorted
    order, removes the only order-dependent ids: the pieces learned are then a function of
    the corpus (tests/tokenize/test_text_determinism.py)."""
    if vocab_size <= NUM_SPECIAL_TOKENS:
        raise ValueError(f"vocab_size {vocab_size} must exceed the {NUM_SPECIAL_TOKENS} specials")
    corpus = list(corpus)
    tok = _empty_tokenizer()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*special_tokens(), *_continuation_pieces(tok, corpus)],  # specials: ids 0..4283, in order
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return TextTokenizer(_canonical_ids(tok))


def _continuation_pieces(tok: Tokenizer, corpus: list[str]) -> list[str]:
    """Every ``##c`` the trainer would create: each non-initial character of each word."""
    chars: set[str] = set()
    for text in corpus:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            chars.update(word[1:])
    return ["##" + c for c in sorted(chars)]


def _canonical_ids(tok: Tokenizer) -> Tokenizer:
    """Renumber the learned word pieces in sorted order. The WordPiece trainer breaks ties
    in hash-map order, which changes from process to process: the same corpus gave the
    same pieces at different ids. Tokenizing is greedy longest-match over the vocabulary,
    whatever the ids, so sorted ids make the tokenizer a function of its corpus alone."""
    vocab = tok.get_vocab(with_added_tokens=False)
    kept = {t: i for t, i in vocab.items() if i < NUM_SPECIAL_TOKENS}
    learned = sorted(t for t, i in vocab.items() if i >= NUM_SPECIAL_TOKENS)
    kept.update({t: NUM_SPECIAL_TOKENS + j for j, t in enumerate(learned)})
    fresh = _empty_tokenizer()  # without the continuation pieces the trainer saw as special
    fresh.model = models.WordPiece(kept, unk_token=UNK, continuing_subword_prefix="##")
    fresh.add_special_tokens(special_tokens())
    return fresh


# ------------------------------------------------------------------------------ released
# The released 4M text tokenizer ships in the reference repository (apple/ml-4m
# `fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json`, named by every
# `cfgs/default/4m/models/main/*.yaml` as ``tokenizer_path``); a Hugging Face Hub repo
# holding a copy is read through ``huggingface_hub`` under this file name.
RELEASED_TEXT_FILE = "text_tokenizer_4m_wordpiece_30k.json"
RELEASED_VOCAB_SIZE = 30_000


def load_released_text_tokenizer(
    path: str | Path | None = None, *, hub_id: str | None = None, filename: str = RELEASED_TEXT_FILE,
    revision: str | None = None,
) -> TextTokenizer:
    """The released 30k WordPiece tokenizer as a :class:`TextTokenizer`, from a local file or
    URI (``path``: the JSON, or a folder holding ``filename``) or a Hub repo (``hub_id``, e.g.
    a copy under ``EPFL-VILAB/...``; downloaded once into the Hugging Face cache).

    Refused unless every one of the 4,284 special tokens is at the reference's id (the
    layout this module writes), so sequences keep one meaning whichever tokenizer made them.
    """
    if (path is None) == (hub_id is None):
        raise ValueError("give exactly one of path (a tokenizer JSON) or hub_id (a Hub repo)")
    if hub_id is not None:
        from huggingface_hub import hf_hub_download

        text = Path(hf_hub_download(repo_id=hub_id, filename=filename, revision=revision)).read_text()
    else:
        location = as_location(path)
        if location.is_dir():
            location = location / filename
        text = location.read_text()
    return TextTokenizer(Tokenizer.from_str(text))
