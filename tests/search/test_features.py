"""Ranking features: known answers for entities, price percentile, debiased history, affinity, dense."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.search.features import FEATURE_NAMES, QueryBatch, SearchFeatures, normalize_queries
from mlsd.search.retrieval import BM25Index

PRODUCTS = pd.DataFrame(
    {
        "product_id": [10, 11, 12, 13],
        "title": [
            "Sonix Wireless Earbuds, Black",
            "Auralis Pro Headphones, White",
            "Sonix Lamp, Black",
            "Oakwell Chair",
        ],
        "brand": ["Sonix", "Auralis", "Sonix", "Oakwell"],
        "category": [
            "Electronics / Audio / Headphones",
            "Electronics / Audio / Headphones",
            "Home / Decor / Lamps",
            "Home / Furniture / Chairs",
        ],
        "attributes": ["color: black", "color: white", "color: black", "color: grey"],
        "description": ["", "", "", ""],
        "price": [30.0, 90.0, 20.0, 100.0],
        "rating": [4.5, 4.5, 3.0, 4.0],
        "review_count": [100, 100, 0, 10],
        "last_review_ts": [1_000_000, 1_000_000 - 400 * 86_400, 0, 900_000],
        "return_rate": [0.1, 0.2, 0.0, 0.05],
        "margin": [0.2, 0.3, 0.1, 0.4],
        "promoted": [False, True, False, False],
    }
)


class _Prop:
    """Known propensities 1/rank (the estimator interface: weights(positions))."""

    def weights(self, positions):
        return np.asarray(positions, dtype=float)


def _history() -> pd.DataFrame:
    # Product 10 always shown at rank 1, clicked 5/10; product 11 always at rank 5, clicked 2/10:
    # raw CTR says 10 is better, examination-corrected (x5) says 11 is (1.0 vs 0.5).
    rows = []
    for i in range(10):
        rows.append(("earbuds", 10, 1, i < 5, False, "u1"))
        rows.append(("earbuds", 11, 5, i < 2, i < 1, "u1" if i < 5 else "u2"))
    return pd.DataFrame(rows, columns=["query", "product_id", "position", "clicked", "purchased", "user_id"])


def _batch(texts, **kw) -> QueryBatch:
    return QueryBatch(
        texts=list(texts),
        understood=list(texts),
        expansions=[[] for _ in texts],
        user_ids=kw.pop("user_ids", ["u1"] * len(texts)),
        **kw,
    )


@pytest.fixture(scope="module")
def bm25() -> BM25Index:
    return BM25Index().fit(PRODUCTS)


def test_shape_names_and_static_features(bm25) -> None:
    f = SearchFeatures().fit(PRODUCTS, bm25, now_ts=1_000_000)
    X = f.transform(_batch(["sonix earbuds"]), np.zeros(4, np.int64), np.arange(4))
    assert X.shape == (4, len(FEATURE_NAMES)) and X.dtype == np.float32
    c = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert X[0, c["bm25_title"]] > 0 and X[3, c["bm25"]] == 0
    assert X[0, c["bm25_gap"]] == 0 and (X[:, c["bm25_gap"]] <= 0).all()
    assert np.isnan(X[:, c["dense_cos"]]).all()  # no dense model: missing, not zero
    # Price percentile within category: 30 < 90 among headphones.
    assert X[0, c["price_pct"]] < X[1, c["price_pct"]] and X[2, c["price_pct"]] == 1.0
    # Same rating and review count, but product 11's last review is 400 days old.
    assert X[0, c["review_score"]] > X[1, c["review_score"]]
    assert X[1, c["promoted"]] == 1 and X[0, c["promoted"]] == 0


def test_entity_matches(bm25) -> None:
    f = SearchFeatures().fit(PRODUCTS, bm25)
    batch = _batch(
        ["sonix black headphones under 50", "chairs"],
        brand=["Sonix", None],
        color=["black", None],
        category=["Electronics / Audio", "Home / Furniture / Chairs"],
        price_min=np.array([np.nan, np.nan]),
        price_max=np.array([50.0, np.nan]),
    )
    qi = np.array([0, 0, 0, 0, 1, 1])
    rows = np.array([0, 1, 2, 3, 3, 0])
    X = f.transform(batch, qi, rows)
    c = {n: i for i, n in enumerate(FEATURE_NAMES)}
    np.testing.assert_array_equal(X[:4, c["match_brand"]], [1, 0, 1, 0])
    np.testing.assert_array_equal(X[:4, c["match_color"]], [1, 0, 1, 0])
    np.testing.assert_array_equal(X[:4, c["match_category"]], [1, 1, 0, 0])
    np.testing.assert_array_equal(X[:4, c["price_in_range"]], [1, 0, 1, 0])
    assert np.isnan(X[4:, c["match_brand"]]).all() and np.isnan(X[4:, c["price_in_range"]]).all()
    np.testing.assert_array_equal(X[4:, c["match_category"]], [1, 0])
    np.testing.assert_array_equal(X[:, c["n_entities"]], [4, 4, 4, 4, 1, 1])


def test_history_is_debiased_by_propensity(bm25) -> None:
    c = {n: i for i, n in enumerate(FEATURE_NAMES)}
    batch = _batch(["Earbuds "])  # normalised to the logged "earbuds"
    raw = SearchFeatures(prior=0.0).fit(PRODUCTS, bm25, history=_history())
    ips = SearchFeatures(prior=0.0).fit(PRODUCTS, bm25, history=_history(), propensity=_Prop())
    Xr = raw.transform(batch, np.zeros(2, np.int64), np.array([0, 1]))
    Xi = ips.transform(batch, np.zeros(2, np.int64), np.array([0, 1]))
    np.testing.assert_allclose(Xr[:, c["ctr_query_product"]], [0.5, 0.2], rtol=1e-6)
    np.testing.assert_allclose(Xi[:, c["ctr_query_product"]], [0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(Xi[:, c["cvr_product"]], [0.0, 0.5], rtol=1e-6)
    # Smoothing pulls a rarely seen product towards the mean.
    smooth = SearchFeatures(prior=20.0).fit(PRODUCTS, bm25, history=_history())
    Xs = smooth.transform(batch, np.zeros(2, np.int64), np.array([0, 1]))
    assert 0.2 < Xs[1, c["ctr_product"]] < Xs[0, c["ctr_product"]] < 0.5


def test_user_affinity(bm25) -> None:
    f = SearchFeatures().fit(PRODUCTS, bm25, history=_history())
    # u1 clicked product 10 five times and 11 twice: 5/7 Sonix, 2/7 Auralis, 7/7 Electronics.
    b, d = f.user_affinity(np.array(["u1", "u1", "u1", "nobody"], dtype=object), np.array([0, 1, 3, 0]))
    np.testing.assert_allclose(b, [5 / 7, 2 / 7, 0, 0])
    np.testing.assert_allclose(d, [1, 1, 0, 0])


def test_dense_cosine_and_normalize() -> None:
    class Dense:
        vectors = np.eye(4, dtype=np.float32)

        def cosine(self, qv, qi, rows):
            return np.einsum("ij,ij->i", qv[qi], self.vectors[rows])

    f = SearchFeatures().fit(PRODUCTS, None, dense=Dense())
    qv = np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    X = f.transform(_batch(["x"], query_vectors=qv), np.zeros(4, np.int64), np.arange(4))
    c = {n: i for i, n in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(X[:, c["dense_cos"]], [0, 1, 0, 0])
    np.testing.assert_allclose(X[:, c["dense_gap"]], [-1, 0, -1, -1])
    assert normalize_queries(["  Red  Shoes", "red shoes", "X"]).tolist() == ["red shoes", "red shoes", "x"]
