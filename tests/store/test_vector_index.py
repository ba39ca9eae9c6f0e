"""A Lance vector index over the global embeddings of labels.lance: build, list, search."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fm21.store.vector_index import (build_global_index, global_embedding_columns, list_indices, search,
                                     stored_vectors)

N, DIM = 200, 16


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """~200 random samples: a float16 global embedding (as stored by the pseudolabel job),
    the same vectors as float32, and a non-embedding column."""
    import lance

    vectors = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float16)
    table = pa.table({
        "key": [f"k{i:03d}" for i in range(N)],
        "dinov2_global": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        "emb32": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), DIM),
        "caption": ["a photo"] * N,
    })
    uri = tmp_path_factory.mktemp("labels") / "labels.lance"
    lance.write_dataset(table, str(uri))
    build_global_index(uri, "dinov2_global")
    return uri, vectors.astype(np.float32)


def test_embedding_columns_come_from_the_global_token_specs(labels):
    import lance

    assert global_embedding_columns(lance.dataset(str(labels[0])).schema) == ["dinov2_global"]


def test_index_is_listed_by_lance_and_by_the_stats(labels):
    import lance

    from fm21.store.stats import label_store_stats

    uri, _ = labels
    ds = lance.dataset(str(uri))
    assert [d.name for d in ds.describe_indices()] == ["dinov2_global_ivf"]
    assert list_indices(uri) == [{"name": "dinov2_global_ivf", "type": "IVF_PQ", "columns": ["dinov2_global"],
                                  "indexed_rows": N}]
    assert ds.schema.field("dinov2_global").type.value_type == pa.float16()  # the column is not rewritten
    assert label_store_stats(uri)["lance"]["indices"] == list_indices(uri)


def test_nearest_neighbour_of_a_stored_vector_is_itself_with_exact_cosine_distances(labels):
    uri, vectors = labels
    keys, dist = search(uri, "dinov2_global", stored_vectors(uri, "dinov2_global", [f"k{i:03d}" for i in range(N)]), 5)
    assert [k[0] for k in keys] == [f"k{i:03d}" for i in range(N)]  # every stored vector finds itself first
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = 1.0 - unit @ unit.T  # (N, N) cosine distances
    found = np.array([[int(k[1:]) for k in row] for row in keys])  # (N, 5) row ids
    # distances are re-ranked exactly (float16 inputs), in increasing order
    assert dist == pytest.approx(np.take_along_axis(exact, found, axis=1), abs=1e-3)
    assert (np.diff(dist, axis=1) >= -1e-6).all()
    # PQ is approximate: most true top-5 neighbours are found (0.98 measured; k-means is not seeded)
    truth = np.argsort(exact, axis=1, kind="stable")[:, :5]
    recall = np.mean([len(set(t) & set(f)) / 5 for t, f in zip(truth, found)])
    assert recall > 0.85


def test_ivf_flat_is_refused_on_float16_and_built_on_float32(labels):
    uri, vectors = labels
    with pytest.raises(ValueError, match="IVF_FLAT needs float32"):
        build_global_index(uri, "dinov2_global", index_type="IVF_FLAT")
    info = build_global_index(uri, "emb32", index_type="IVF_FLAT", metric="l2")
    assert (info["type"], info["metric"], info["indexed_rows"]) == ("IVF_FLAT", "l2", N)
    keys, dist = search(uri, "emb32", vectors[42], 1, metric="l2")
    assert keys == [["k042"]] and dist[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_non_vector_columns_are_refused(labels):
    with pytest.raises(ValueError, match="not a fixed-size float vector column"):
        build_global_index(labels[0], "caption")


def test_index_global_columns_builds_keeps_rebuilds_and_skips(tmp_path):
    """The pseudolabel stage's step: build where missing, keep while it covers every row,
    rebuild after rows were appended, skip columns with too few vectors for PQ."""
    import lance

    from fm21.store.vector_index import MIN_ROWS_4BIT_PQ, index_global_columns

    def table(start: int, n: int, dim: int = DIM) -> pa.Table:
        vectors = np.random.default_rng(start).standard_normal((n, dim)).astype(np.float16)
        return pa.table({"key": [f"k{i:03d}" for i in range(start, start + n)],
                         "dinov2_global": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})

    uri = tmp_path / "labels.lance"
    lance.write_dataset(table(0, MIN_ROWS_4BIT_PQ - 1), str(uri))
    assert index_global_columns(uri)["dinov2_global"]["action"] == "skipped"
    lance.write_dataset(table(100, 40), str(uri), mode="append")
    calls = []
    built = index_global_columns(uri, run=lambda fn, *args: calls.append(fn.__name__) or fn(*args))
    assert calls == ["build_global_index"]
    assert built["dinov2_global"]["action"] == "built" and built["dinov2_global"]["indexed_rows"] == 55
    assert index_global_columns(uri)["dinov2_global"]["action"] == "kept"
    lance.write_dataset(table(200, 8), str(uri), mode="append")
    again = index_global_columns(uri)["dinov2_global"]
    assert again["action"] == "rebuilt" and again["indexed_rows"] == 63 and again["unindexed_rows"] == 0
