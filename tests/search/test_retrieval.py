"""BM25 per field, dense FAISS retrieval and RRF fusion on known-answer catalogs (no model needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.search.retrieval import BM25Index, Candidates, DenseIndex, HybridRetriever, rrf_fuse


@pytest.fixture(scope="module")
def products():
    return pd.DataFrame(
        {
            "product_id": [10, 11, 12, 13],
            "title": ["Wireless Headphones", "Leather Sofa", "Wireless Keyboard", "Oak Desk"],
            "brand": ["Sonix", "Casara", "Sonix", "Oakwell"],
            "category": ["Electronics / Audio", "Home / Sofas", "Electronics / Computers", "Home / Desks"],
            "description": [
                "noise cancelling over-ear",
                "brown leather three seater",
                "",
                "solid oak desk with drawers",
            ],
        }
    )


@pytest.fixture(scope="module")
def bm25(products):
    return BM25Index().fit(products)


def test_bm25_known_answer(bm25):
    c = bm25.retrieve(["wireless headphones", "sofa", "zebra"], k=3)
    assert c.product_ids[0, 0] == 10 and c.product_ids[0, 1] == 12  # both say wireless; 10 also headphones
    assert c.product_ids[1].tolist() == [11, -1, -1]  # only one product matches, the rest is padding
    assert c.product_ids[2].tolist() == [-1, -1, -1] and np.isneginf(c.scores[2]).all()
    assert c.lists()[1].tolist() == [11]
    assert (np.diff(c.scores[0][np.isfinite(c.scores[0])]) <= 0).all()


def test_field_scores_consistent_with_retrieval(bm25):
    queries = ["sonix wireless", "home oak desk"]
    c = bm25.retrieve(queries, k=2)
    assert (c.rows >= 0).all()
    qi = np.repeat([0, 1], 2)
    scores = bm25.field_scores(queries, qi, c.rows.ravel())
    np.testing.assert_allclose(scores[:, -1], c.scores.ravel(), rtol=1e-5)
    fields = list(bm25.fields)
    # "sonix" only in the brand field, "wireless" only in titles
    row = int(np.flatnonzero(c.product_ids[0] == 10)[0])
    assert scores[row, fields.index("brand")] > 0 and scores[row, fields.index("description")] == 0
    # the desk query hits title, category and description of product 13, ranked first
    assert c.product_ids[1, 0] == 13
    assert (
        scores[2, [fields.index("title"), fields.index("category"), fields.index("description")]] > 0
    ).all()


def test_expansions_add_matches(bm25):
    plain = bm25.retrieve(["couch"], k=2)
    expanded = bm25.retrieve(["couch"], k=2, expansions=[["sofa"]])
    assert plain.product_ids[0, 0] == -1 and expanded.product_ids[0, 0] == 11


@pytest.mark.parametrize("k", [0, 1001, 2.5])
def test_bad_k(bm25, k):
    with pytest.raises(InputError) as err:
        bm25.retrieve(["sofa"], k=k)
    assert err.value.field == "k"


def test_dense_with_given_vectors(products):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense = DenseIndex().fit(products, embeddings=vectors)
    c = dense.retrieve(["ignored"] * 2, k=6, query_vectors=vectors[[2, 0]])
    assert c.product_ids[:, 0].tolist() == [12, 10]
    assert c.product_ids[0, 4:].tolist() == [-1, -1]  # 4 products, k=6
    np.testing.assert_allclose(
        dense.cosine(vectors[[2]], np.array([0, 0]), np.array([2, 1])),
        [1.0, vectors[2] @ vectors[1]],
        rtol=1e-5,
    )
    hybrid = HybridRetriever(BM25Index().fit(products), dense, depth=4)
    h = hybrid.retrieve(["leather sofa"], k=4, query_vectors=vectors[[3]])
    assert set(h.product_ids[0, :2].tolist()) == {11, 13}  # BM25's and the dense model's top 1


def test_rrf_known_answer():
    a = Candidates(np.array([[1, 2, 3]]), np.array([[1, 2, 3]]), np.zeros((1, 3), np.float32))
    b = Candidates(np.array([[3, 2, -1]]), np.array([[3, 2, -1]]), np.zeros((1, 3), np.float32))
    fused = rrf_fuse([a, b], k=4, rrf_k=0.0)
    # scores: 1 -> 1/1 ; 2 -> 1/2 + 1/2 = 1 ; 3 -> 1/3 + 1/1
    assert fused.product_ids[0].tolist() == [3, 1, 2, -1] or fused.product_ids[0].tolist() == [3, 2, 1, -1]
    np.testing.assert_allclose(fused.scores[0, :3], [4 / 3, 1.0, 1.0])
