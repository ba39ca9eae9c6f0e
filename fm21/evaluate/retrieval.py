"""Retrieval by generated global embeddings (apple/ml-4m `notebooks/retrieval_4M-21.ipynb`):
condition on a modality (RGB, caption, depth, semseg), generate ``tok_dinov2_global`` (or
``tok_imagebind_global``), decode its Memcodes tokens to an embedding and search the
evaluation samples' TRUE embeddings (the labels.lance column) for the query's own sample.

The search goes through the store's vector index (``fm21.store.vector_index``: IVF_PQ,
cosine, exact re-ranking), restricted to the evaluation keys by a Lance prefilter; the
reference searches a flat L2 index instead. Reported per condition: recall@1/5/10 beside
the true-embedding upper bound (the stored vector itself as the query), the tokenizer
bound (the stored tokens, decoded), an image-blind baseline (the mean training embedding:
one query for every sample) and chance (k / N).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fm21.evaluate.conditioning import generate_ids
from fm21.evaluate.metrics import cosine_distance, recall_at_k
from fm21.store.vector_index import search, stored_vectors

KS = (1, 5, 10)


def search_among(labels_uri, column: str, queries: np.ndarray, keys: Sequence[str], *, k: int = max(KS),
                 nprobes: int = 20, refine_factor: int = 10) -> list[list[str]]:
    """The ``k`` nearest of ``keys`` (cosine) to each query, through the column's index
    where it has one (exact scan otherwise), prefiltered to ``keys``."""
    quoted = ", ".join("'" + key.replace("'", "''") + "'" for key in keys)
    found, _ = search(labels_uri, column, queries, k=min(k, len(keys)), metric="cosine", nprobes=nprobes,
                      refine_factor=refine_factor, where=f"key IN ({quoted})")
    return found


def chance(n: int) -> dict[str, float]:
    return {f"recall@{k}": min(k, n) / n for k in KS}


def evaluate_retrieval(model, rows, train_rows, *, target: str, conditions: Sequence[str], tok, labels_uri,
                       cfg) -> dict:
    """{"column", "num_candidates", "scores": {predictor: recall@k (+ cosine to the truth)},
    "conditions": [...]} for one global-embedding target; the 4M predictors are named
    ``<condition> → <target>``."""
    column = model.specs[target].label_columns[0]
    keys = [r["key"] for r in rows]
    true = stored_vectors(labels_uri, column, keys)
    train_true = stored_vectors(labels_uri, column, [r["key"] for r in train_rows])

    def scored(queries: np.ndarray) -> dict:
        found = search_among(labels_uri, column, queries, keys)
        cos = 1.0 - cosine_distance(np.broadcast_to(queries, true.shape), true)
        return {**recall_at_k(found, keys, KS), "cosine": float(cos.mean())}

    scores = {}
    for cond in conditions:
        ids = generate_ids(model, rows, [cond], target, cfg)
        scores[f"{cond} → {target}"] = scored(tok.decode_labels(ids))
    scores["tokenizer_bound"] = scored(tok.decode_labels(np.stack([np.asarray(r[target], np.int64) for r in rows])))
    scores["true embedding"] = scored(true)
    scores["mean training embedding"] = scored(np.broadcast_to(train_true.mean(0), true.shape).copy())
    scores["chance"] = {**chance(len(keys)), "cosine": float("nan")}
    return {"column": column, "num_candidates": len(keys), "conditions": list(conditions), "scores": scores}
