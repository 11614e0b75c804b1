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


def _reference_matrices(products: pd.DataFrame, method: str) -> tuple[dict, dict]:
    """The per-row path the index used to take: analyse every row, then ``bm25s.BM25.index`` per field."""
    import bm25s
    import scipy.sparse as sp
    from bm25s.tokenization import Tokenized

    from mlsd.search.data import TEXT_FIELDS, normalize_products
    from mlsd.search.text import analyze_many

    products = normalize_products(products)
    tokens = {f: analyze_many(products[f].tolist()) for f in TEXT_FIELDS}
    vocab: dict[str, int] = {}
    for field_tokens in tokens.values():
        for doc in field_tokens:
            for t in doc:
                vocab.setdefault(t, len(vocab))
    out = {}
    for field in TEXT_FIELDS:
        docs = [[vocab[t] for t in doc] for doc in tokens[field]]
        if sum(map(len, docs)) == 0:
            out[field] = sp.csr_matrix((len(products), len(vocab)), dtype=np.float32)
            continue
        model = bm25s.BM25(k1=1.2, b=0.75, method=method)  # BM25Index defaults
        model.index(Tokenized(ids=docs, vocab=vocab), show_progress=False, create_empty_token=False)
        s = model.scores
        csc = sp.csc_matrix((s["data"], s["indices"], s["indptr"]), shape=(len(products), len(vocab)))
        out[field] = csc.tocsr()
    return vocab, out


# Accents, entities and tags, sizes and fractions, plurals, stop words, punctuation runs, empty text.
TRICKY = [
    "Cámara Réflex 18x18 Boxes",
    "Pillow Covers 18x18, Set of 4 (18X18)",
    "5/16 in. Drill Bits & Batteries; 4.2 V",
    "AT&T phones &amp; chargers &lt;new&gt; <b>Bold</b> Glasses",
    "",
    "...///",
    "a..b//c. v1.2.3/x trailing. /lead",
    "The Shoes of the Year",
    "STRASSE Straße ﬁlter café ＡＢＣ １８ İstanbul",
    "Watches, Glasses, Dresses, Buses, Status, Analysis, Batteries, Boxes",
    "&#233;t&eacute; &#x41;B &bogus; &amp",
    "ñandú — “quotes” 1½ 3×4",
]


@pytest.fixture(scope="module")
def tricky_products():
    rng = np.random.default_rng(3)
    n = 400
    pick = lambda: [TRICKY[i] for i in rng.integers(0, len(TRICKY), n)]  # noqa: E731
    return pd.DataFrame(
        {
            "product_id": np.arange(n) + 100,
            "title": [f"{t} Model {i % 37}" for i, t in enumerate(pick())],
            "brand": [""] * n,  # an empty field: an all-zero matrix
            "category": pick(),
            "attributes": [None if i % 5 == 0 else t for i, t in enumerate(pick())],
            "description": [t + " " + u for t, u in zip(pick(), pick(), strict=True)],
        }
    )


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire"])
def test_fit_identical_to_per_row_bm25s(tricky_products, method):
    index = BM25Index(method=method).fit(tricky_products)
    vocab, reference = _reference_matrices(tricky_products, method)
    assert list(index.vocab_.items()) == list(vocab.items())  # same terms, same column order
    for field, ref in reference.items():
        got = index.matrices_[field]
        assert got.shape == ref.shape and got.dtype == ref.dtype == np.float32
        # bit-identical weights in the same CSR layout, so every downstream sum is identical too
        np.testing.assert_array_equal(got.indptr, ref.indptr)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_array_equal(got.data, ref.data)
    assert index.matrices_["brand"].nnz == 0 and index.matrices_["title"].nnz > 0


def test_fit_identical_on_simulated_catalog():
    from mlsd.search.world import simulate_catalog

    products, _ = simulate_catalog(300, seed=1)
    index = BM25Index().fit(products)
    vocab, reference = _reference_matrices(products, "lucene")
    assert list(index.vocab_) == list(vocab)
    for field, ref in reference.items():
        np.testing.assert_array_equal(index.matrices_[field].toarray(), ref.toarray())
    queries = ["navy watch", "linen throw 20x20", "oakwell blankets"]
    c = index.retrieve(queries, k=20)
    assert (c.product_ids[:, 0] >= 0).all()
    # the fused score of each candidate is the weighted sum of the reference field weights
    weights = {"title": 2.0, "brand": 1.5, "category": 1.0, "attributes": 0.7, "description": 0.5}
    fused = sum(w * reference[f] for f, w in weights.items()).tocsr()
    q = index.query_matrix(queries)
    for i in range(len(queries)):
        rows = c.rows[i][c.rows[i] >= 0]
        expected = np.asarray((fused[rows] @ q[i].T).todense()).ravel()
        np.testing.assert_allclose(c.scores[i, : len(rows)], expected, rtol=1e-6)


@pytest.mark.parametrize("method", ["lucene", "robertson"])
def test_partitions_with_the_catalogs_statistics_weigh_as_one_index(tricky_products, method):
    """A shard fitted on its partition with the merged statistics holds the single index's weights."""
    from mlsd.search.retrieval import BM25Stats

    whole = BM25Index(method=method).fit(tricky_products)
    parts = [tricky_products.iloc[i::3] for i in range(3)]
    stats = BM25Stats.merge([BM25Index(method=method).corpus_stats(p) for p in parts])
    assert stats.n_docs == len(tricky_products)
    for part in parts:
        shard = BM25Index(method=method).fit(part, stats=stats)
        rows = np.searchsorted(whole.product_ids_, shard.product_ids_)
        cols = np.array([whole.vocab_[t] for t in shard.vocab_])  # the shard's terms, in the whole's columns
        for field in whole.fields:
            want = whole.matrices_[field][rows][:, cols].toarray()
            np.testing.assert_array_equal(shard.matrices_[field].toarray(), want)
        local = BM25Index(method=method).fit(part)  # its own statistics: different idf
        assert not np.array_equal(local.matrices_["title"].toarray(), shard.matrices_["title"].toarray())


def test_compact_index_retrieves_the_same(tricky_products):
    full = BM25Index().fit(tricky_products)
    compact = BM25Index().fit(tricky_products).compact()
    queries = ["model 3", "steel"]
    a, b = full.retrieve(queries, 10), compact.retrieve(queries, 10)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert compact.combined_ is None and compact.matrices_ == {}


def test_unsupported_bm25_variant(products):
    with pytest.raises(InputError) as err:
        BM25Index(method="bm25+").fit(products)
    assert err.value.field == "method"


def test_grouped_dense_index_expands_titles_to_products() -> None:
    products = pd.DataFrame(
        {"product_id": [1, 2, 3, 4, 5], "title": ["a", "b", "a", "c", "a"], "review_count": [5, 0, 50, 1, 7]}
    )
    vectors = np.eye(3, dtype=np.float32)  # titles a, b, c in first-seen order
    from mlsd.search.retrieval import GroupedDenseIndex

    index = GroupedDenseIndex().fit(products, embeddings=vectors)
    assert index.n_groups == 3
    qv = np.array([[1.0, 0.0, 0.0], [0.0, 0.2, 0.9]], dtype=np.float32)
    cands = index.retrieve(["x", "y"], k=4, query_vectors=qv)
    assert cands.product_ids[0].tolist()[:3] == [3, 5, 1]  # title "a", most reviewed first
    assert cands.product_ids[1].tolist()[0] == 4
    np.testing.assert_allclose(index.cosine(qv, np.array([0, 1]), np.array([2, 1])), [1.0, 0.2], rtol=1e-6)


def test_bm25_retrieval_memory_is_bounded_by_a_query_batch():
    """Scoring 4 batches of queries against a 20K-product catalog where every product matches: the
    sparse score matrix of all queries (~1024 x 20K entries) is never built, only one batch's."""
    import tracemalloc

    from mlsd.search import retrieval

    n_products, n_queries = 20_000, 4 * retrieval.QUERY_BATCH
    words = np.array([f"w{i}" for i in range(500)])
    rng = np.random.default_rng(0)
    catalog = pd.DataFrame(
        {
            "product_id": np.arange(n_products),
            "title": ["item " + " ".join(rng.choice(words, 3)) for _ in range(n_products)],
        }
    )
    index = BM25Index(fields=("title",)).fit(catalog)
    queries = [f"item {words[i % 500]}" for i in range(n_queries)]  # "item" matches every product
    tracemalloc.start()
    got = index.retrieve(queries, 10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    all_at_once = n_queries * n_products * 8  # float32 score + int32 column per entry
    batch = retrieval.QUERY_BATCH * n_products * 8
    assert peak < all_at_once / 2 and peak < 3 * batch
    # ... and the batches give the same answer as scoring the queries one at a time.
    for i in (0, retrieval.QUERY_BATCH, n_queries - 1):
        one = index.retrieve([queries[i]], 10)
        np.testing.assert_array_equal(got.rows[i], one.rows[0])
        np.testing.assert_allclose(got.scores[i], one.scores[0])
