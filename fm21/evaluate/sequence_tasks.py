"""RGB -> det and RGB -> caption: generated sequences decoded to text and scored.

- det (label kind ``boxes``): the generated text is parsed back to boxes
  (``fm21.tokenize.serialize.parse_det``) and scored by mAP@0.5 against the stored
  detections of the full image (crop 0) with score >= the serializer's threshold.
- caption (label kind ``text``): the F1 of object and colour mentions (precision and
  recall reported too) against the synthetic scene's visible objects, which ingest records
  in each shard sample's ``meta["synthetic"]`` (``objects`` with shape and colour, ``boxes``
  of the visible ones).

Each beside the tokenizer bound (the stored token ids of the truth, decoded: what the
serialisation and vocabulary keep), image-blind baselines built from the training split's
stored sequences, and chance (the sequence of a random training sample). The caption
baselines are the constants a metric-aware cheat would pick: the training caption that
scores best on the training split, and the word set made of the training split's most
frequent object classes and colours (as many as maximise the training F1).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from fm21.evaluate.conditioning import generate_ids, until_eos
from fm21.evaluate.metrics import HEADLINE, caption_recall, detection_map, mention_auc, mentions
from fm21.tokenize.serialize import parse_det

MAX_SEARCH = 256  # training captions tried (and scored on) for the best constant caption
DET_THRESHOLD = 0.6  # the det serializer's score threshold (fm21.tokenize.serialize.serialize_det)


def _texts(text_tok, id_lists: list[list[int]]) -> list[str]:
    return [text_tok.decode(until_eos(ids)) for ids in id_lists]


def _stored(rows: list[dict], name: str) -> list[list[int]]:
    return [[int(t) for t in (r.get(name) or [])] for r in rows]


def _chance(train: list, n: int, seed: int) -> list:
    """The value of a random training sample per evaluated sample."""
    rng = np.random.default_rng(seed)
    return [train[i] for i in rng.integers(len(train), size=n)]


def _mode(values: list[list[int]]) -> list[int]:
    return list(Counter(tuple(v) for v in values).most_common(1)[0][0])


def true_boxes(labels_uri, keys: list[str]) -> list[list[dict]]:
    """Stored detections of ``keys`` (full image), those the serializer keeps."""
    import lance

    quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
    table = lance.dataset(str(labels_uri)).to_table(columns=["key", "det"], filter=f"key IN ({quoted})")
    by_key = dict(zip(table.column("key").to_pylist(), table.column("det").to_pylist()))
    return [[{"box": list(b["box"]), "class_name": b["class_name"]} for b in (by_key.get(k) or [])
             if float(b.get("score") if b.get("score") is not None else 1.0) >= DET_THRESHOLD] for k in keys]


def evaluate_det(model, rows, train_rows, *, target: str, source: str, text_tok, labels_uri, cfg) -> dict:
    """Per-predictor metrics of RGB -> det: {name: {"map_50", "mean_boxes"}}."""
    truth = true_boxes(labels_uri, [r["key"] for r in rows])
    train = _stored(train_rows, target)
    seqs = {
        "4m": generate_ids(model, rows, [source], target, cfg),
        "tokenizer_bound": _stored(rows, target),
        "most common box set": [_mode(train)] * len(rows),
        "no boxes": [[] for _ in rows],
        "chance": _chance(train, len(rows), cfg.seed),
    }
    preds = {n: [parse_det(t) for t in _texts(text_tok, s)] for n, s in seqs.items()}
    return {"scores": {"all": {n: detection_map(p, truth) for n, p in preds.items()}},
            "baselines": ["most common box set", "no boxes"],
            "examples": {n: _texts(text_tok, s[:cfg.num_grid_samples]) for n, s in seqs.items()}}


def scene_objects(shard_paths, keys: list[str]) -> dict[str, tuple[set[str], set[str]]]:
    """key -> (object classes, colours) of the scene's visible objects, from the shards'
    synthetic metadata; keys without it (real images) are absent."""
    import json

    from fm21.pseudolabel.worker import read_shard

    wanted, out = set(keys), {}
    for path in shard_paths:
        table = read_shard(str(path), wanted)
        for key, raw in zip(table.column("key").to_pylist(), table.column("json").to_pylist()):
            syn = (json.loads(raw) if raw else {}).get("synthetic") or {}
            visible = {b.get("instance_id") for b in syn.get("boxes") or [] if isinstance(b, dict)}
            objs = [o for o in syn.get("objects") or [] if o.get("instance_id") in visible]
            if syn.get("objects") is not None:
                out[key] = ({o["shape"] for o in objs}, {o["color_name"] for o in objs})
    return out


def best_word_set(truth: list[tuple[set[str], set[str]]], *, object_vocab: set[str],
                  colour_vocab: set[str]) -> str:
    """The strongest image-blind caption under the F1 headline: the k most frequent
    training object classes and the m most frequent colours, k and m each chosen to
    maximise the training split's F1 (the object and colour F1s are independent, so each
    prefix length is searched on its own)."""
    words: list[str] = []
    for part, vocab in ((0, object_vocab), (1, colour_vocab)):
        counts = Counter(w for t in truth for w in t[part] if w in vocab)
        ranked = [w for w, _ in counts.most_common()]
        name = ("object_f1", "colour_f1")[part]

        def f1(k: int, ranked=ranked, part=part, name=name) -> float:
            text = " ".join(ranked[:k])
            objs = [t[0] for t in truth] if part == 0 else [set()] * len(truth)
            cols = [t[1] for t in truth] if part == 1 else [set()] * len(truth)
            return caption_recall([text] * len(truth), objs, cols, object_vocab=object_vocab,
                                  colour_vocab=colour_vocab)[name]

        best = max(range(len(ranked) + 1), key=lambda k: np.nan_to_num(f1(k), nan=-1.0)) if ranked else 0
        words += ranked[:best]
    return " ".join(words)


def samples_name(k: int) -> str:
    return f"4m, words of {k} samples"


def sampled_mentions(model, rows, *, source: str, target: str, text_tok, vocab: list[str], cfg) -> np.ndarray:
    """(N, V): the share of ``cfg.caption_samples`` captions per row (seeds seed+1..seed+K,
    at ``cfg.caption_temperature``) that name each vocab word: 4M's posterior of a mention."""
    k = cfg.caption_samples
    total = np.zeros((len(rows), len(vocab)))
    for i in range(k):
        run = cfg.model_copy(update={"seed": cfg.seed + 1 + i, "temperature": cfg.caption_temperature})
        total += mentions(_texts(text_tok, generate_ids(model, rows, [source], target, run)), vocab)
    return total / k


def posterior_word_sets(train_freq: np.ndarray, train_truth: list[tuple[set[str], set[str]]],
                        freq: np.ndarray, *, object_vocab: set[str], colour_vocab: set[str],
                        vocab: list[str], k: int) -> list[str]:
    """The F1 decision from 4M's mention posterior: per image, the words that at least a
    share tau of its K samples name, tau (objects and colours each) the one that maximises
    the training rows' F1 -- the rule that picks the constant word set, applied to the
    posterior instead of the prior."""
    thresholds = np.full(len(vocab), np.inf)  # a word of neither part is never named
    for part, part_vocab in ((0, object_vocab), (1, colour_vocab)):
        cols = np.array([w in part_vocab for w in vocab])
        name = ("object_f1", "colour_f1")[part]

        def f1(tau: float, cols=cols, part=part, name=name) -> float:
            texts = [" ".join(w for w, c, f in zip(vocab, cols, row) if c and f >= tau) for row in train_freq]
            objs = [t[0] if part == 0 else set() for t in train_truth]
            colours = [t[1] if part == 1 else set() for t in train_truth]
            return caption_recall(texts, objs, colours, object_vocab=object_vocab, colour_vocab=colour_vocab)[name]

        taus = [(j + 1) / k for j in range(k)]
        thresholds[cols] = max(taus, key=lambda t: np.nan_to_num(f1(t), nan=-1.0))
    return [" ".join(w for w, f, t in zip(vocab, row, thresholds) if f >= t) for row in freq]


def evaluate_caption(model, rows, train_rows, *, target: str, source: str, text_tok, shard_paths, cfg) -> dict:
    """Per-predictor metrics of RGB -> caption, or {"skipped": reason} without synthetic truth."""
    from fm21.ingest.synthetic import COLOR_NAMES, SEMANTIC_CLASSES

    keys = [r["key"] for r in rows]
    train_keys = [r["key"] for r in train_rows]
    truth = scene_objects(shard_paths, keys + train_keys)
    if any(k not in truth for k in keys):
        return {"skipped": "no synthetic ground truth (objects, colours) for the evaluated samples"}
    vocab = {"object_vocab": set(SEMANTIC_CLASSES[2:]), "colour_vocab": set(COLOR_NAMES)}
    train = _stored(train_rows, target)
    train_text = _texts(text_tok, train)

    def score(texts: list[str], ks: list[str]) -> dict:
        return caption_recall(texts, [truth[k][0] for k in ks], [truth[k][1] for k in ks], **vocab)

    # the strongest constant captions: the training caption that scores best on the training
    # split, and the most frequent words; both chosen by the headline (F1), never by recall
    # alone, which a caption naming every class and colour maximises
    metric = HEADLINE["text"][0]
    scored = [k for k in train_keys if k in truth][:MAX_SEARCH]
    best = max(range(min(len(train_text), MAX_SEARCH)),
               key=lambda i: np.nan_to_num(score([train_text[i]] * len(scored), scored)[metric], nan=-1.0)) \
        if scored else 0
    word_set = best_word_set([truth[k] for k in train_keys if k in truth], **vocab)
    seqs = {
        "4m": generate_ids(model, rows, [source], target, cfg),
        "tokenizer_bound": _stored(rows, target),
        "most frequent caption": [_mode(train)] * len(rows),
        "best training caption": [train[best]] * len(rows),
    }
    texts = {n: _texts(text_tok, s) for n, s in seqs.items()}
    texts["most frequent words"] = [word_set] * len(rows)
    texts["chance"] = _texts(text_tok, _chance(train, len(rows), cfg.seed))
    words = sorted(vocab["object_vocab"]) + sorted(vocab["colour_vocab"])
    posteriors = {n: mentions(t, words) for n, t in texts.items()}
    if cfg.caption_samples > 1:  # 4M's posterior of each mention, and its F1 decision
        fit_rows = [r for r in train_rows if r["key"] in truth][:len(rows)]

        def sampled(rs: list[dict]) -> np.ndarray:
            return sampled_mentions(model, rs, source=source, target=target, text_tok=text_tok, vocab=words, cfg=cfg)

        name = samples_name(cfg.caption_samples)
        posteriors[name] = sampled(rows)
        texts[name] = posterior_word_sets(sampled(fit_rows), [truth[r["key"]] for r in fit_rows], posteriors[name],
                                          vocab=words, k=cfg.caption_samples, **vocab)
    scores = {n: score(t, keys) for n, t in texts.items()}
    for n, post in posteriors.items():  # does a mention depend on the image? (0.5: no)
        for part, vocab_part in ((0, "object_vocab"), (1, "colour_vocab")):
            cols = [j for j, w in enumerate(words) if w in vocab[vocab_part]]
            present = np.array([[words[j] in truth[k][part] for j in cols] for k in keys])
            scores[n][("object_auc", "colour_auc")[part]] = mention_auc(post[:, cols], present)
    return {"scores": {"all": scores},
            "baselines": ["most frequent caption", "best training caption", "most frequent words"],
            "examples": {n: t[:cfg.num_grid_samples] for n, t in texts.items()}}
