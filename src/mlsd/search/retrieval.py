"""Candidate retrieval: BM25 per field (bm25s), dense MiniLM + FAISS, and hybrid fusion.

Everything is batch-first: ``retrieve(queries, k)`` takes a list of query strings and returns a
:class:`Candidates` of ``(n_queries, k)`` arrays padded with -1. BM25 keeps one sparse weight
matrix per field (the weights computed by bm25s), so a query batch is a sparse matrix product and
the score of any (query, product) pair per field is a cheap row gather — the same numbers serve
retrieval and the ranker's features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.search.data import TEXT_FIELDS, normalize_products
from mlsd.search.text import analyze, analyze_many

MAX_CANDIDATES = 1000
# BM25F-style field weights for the fused lexical score (title matches matter most).
DEFAULT_FIELD_WEIGHTS: dict[str, float] = {
    "title": 2.0,
    "brand": 1.5,
    "category": 1.0,
    "attributes": 0.7,
    "description": 0.5,
}


@dataclass
class Candidates:
    """Retrieved candidates per query: ``rows`` index the catalog frame; padding is -1 / -inf."""

    product_ids: np.ndarray  # (n_queries, k) int64
    rows: np.ndarray  # (n_queries, k) int64
    scores: np.ndarray  # (n_queries, k) float32

    def lists(self) -> list[np.ndarray]:
        """Per query, the product ids without padding."""
        return [ids[ids >= 0] for ids in self.product_ids]


class Retriever(Protocol):
    """Anything that returns up to ``k`` candidates per query from a fitted catalog."""

    def retrieve(self, queries: Sequence[str], k: int) -> Candidates: ...


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or not 1 <= k <= MAX_CANDIDATES:
        raise InputError(
            "k", k, f"must be an integer in [1, {MAX_CANDIDATES}]", f"ask for 1..{MAX_CANDIDATES} candidates"
        )
    return int(k)


def _top_k_dense(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k column indices and scores per row of a dense matrix, best first; -1 where score is -inf."""
    n, m = scores.shape
    kk = min(k, m)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < m else np.tile(np.arange(m), (n, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(part_scores, order, axis=1)
    idx = np.where(np.isfinite(top), idx, -1)
    if kk < k:
        idx = np.pad(idx, ((0, 0), (0, k - kk)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return idx.astype(np.int64), top.astype(np.float32)


def _top_k_sparse(scores: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of a sparse score matrix (absent = no match), best first, padded with -1/-inf."""
    n = scores.shape[0]
    idx = np.full((n, k), -1, dtype=np.int64)
    top = np.full((n, k), -np.inf, dtype=np.float32)
    indptr, indices, data = scores.indptr, scores.indices, scores.data
    for i in range(n):  # one numpy partition per query; the matrix is already the batch product
        lo, hi = indptr[i], indptr[i + 1]
        if hi == lo:
            continue
        row_data, row_idx = data[lo:hi], indices[lo:hi]
        kk = min(k, hi - lo)
        sel = np.argpartition(-row_data, kk - 1)[:kk] if kk < hi - lo else np.arange(hi - lo)
        sel = sel[np.argsort(-row_data[sel], kind="stable")]
        idx[i, :kk] = row_idx[sel]
        top[i, :kk] = row_data[sel]
    return idx, top


class BM25Index:
    """BM25 over title, brand, category, attributes and description, one bm25s weight matrix per field.

    ``fit(products)`` indexes the catalog; ``retrieve(queries, k)`` ranks by the weighted sum of the
    field scores (BM25F-like); ``field_scores(queries, rows)`` returns the per-field BM25 of given
    (query, product) pairs for the ranker.
    """

    def __init__(
        self,
        fields: Sequence[str] = TEXT_FIELDS,
        field_weights: dict[str, float] | None = None,
        k1: float = 1.2,
        b: float = 0.75,
        method: str = "lucene",
    ) -> None:
        self.fields = tuple(fields)
        self.field_weights = field_weights
        self.k1 = k1
        self.b = b
        self.method = method

    def fit(self, products: pd.DataFrame) -> BM25Index:
        import bm25s
        from bm25s.tokenization import Tokenized

        products = normalize_products(products)
        tokens = {f: analyze_many(products[f].tolist()) for f in self.fields}
        vocab: dict[str, int] = {}
        for field_tokens in tokens.values():
            for doc in field_tokens:
                for t in doc:
                    if t not in vocab:
                        vocab[t] = len(vocab)
        self.vocab_ = vocab
        self.product_ids_ = products["product_id"].to_numpy(np.int64)
        n_docs, n_terms = len(products), len(vocab)
        self.matrices_: dict[str, sp.csr_matrix] = {}
        for field in self.fields:
            docs = [[vocab[t] for t in doc] for doc in tokens[field]]
            if sum(map(len, docs)) == 0:  # e.g. no brands in this catalog
                self.matrices_[field] = sp.csr_matrix((n_docs, n_terms), dtype=np.float32)
                continue
            model = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
            model.index(Tokenized(ids=docs, vocab=vocab), show_progress=False, create_empty_token=False)
            s = model.scores
            indptr = np.asarray(s["indptr"])
            indptr = np.pad(indptr, (0, n_terms + 1 - len(indptr)), mode="edge")
            csc = sp.csc_matrix((s["data"], s["indices"], indptr), shape=(n_docs, n_terms))
            self.matrices_[field] = csc.tocsr()
        weights = self.field_weights or DEFAULT_FIELD_WEIGHTS
        combined = sum(weights.get(f, 1.0) * self.matrices_[f] for f in self.fields)
        self.combined_ = sp.csr_matrix(combined, dtype=np.float32)
        self.combined_T_ = self.combined_.T.tocsr()
        return self

    # -- queries -------------------------------------------------------------------------------
    def query_matrix(
        self,
        queries: Sequence[str],
        expansions: Sequence[Sequence[str]] | None = None,
        expansion_weight: float = 0.5,
    ) -> sp.csr_matrix:
        """Sparse ``(n_queries, vocab)``: 1 per distinct query term, ``expansion_weight`` per expansion term."""
        rows, cols, vals = [], [], []
        for i, text in enumerate(queries):
            terms = dict.fromkeys(analyze(text), 1.0)
            if expansions is not None:
                for phrase in expansions[i]:
                    for t in analyze(phrase):
                        terms.setdefault(t, expansion_weight)
            for t, w in terms.items():
                col = self.vocab_.get(t)
                if col is not None:
                    rows.append(i)
                    cols.append(col)
                    vals.append(w)
        return sp.csr_matrix(
            (np.asarray(vals, np.float32), (rows, cols)), shape=(len(queries), len(self.vocab_))
        )

    def score_all(self, queries: Sequence[str], field: str | None = None, **kw) -> sp.csr_matrix:
        """Sparse ``(n_queries, n_products)`` BM25 scores (fused, or one ``field``)."""
        q = self.query_matrix(queries, **kw)
        matrix = self.combined_ if field is None else self.matrices_[field]
        return (q @ matrix.T).tocsr()

    def retrieve(
        self,
        queries: Sequence[str],
        k: int = 100,
        *,
        expansions: Sequence[Sequence[str]] | None = None,
        expansion_weight: float = 0.5,
    ) -> Candidates:
        """Top ``k`` products per query by the fused BM25 score; products sharing no term are not returned."""
        k = _check_k(k)
        q = self.query_matrix(queries, expansions, expansion_weight)
        scores = (q @ self.combined_T_).tocsr()
        rows, top = _top_k_sparse(scores, k)
        return Candidates(np.where(rows >= 0, self.product_ids_[rows], -1), rows, top)

    def field_scores(
        self,
        queries: Sequence[str],
        query_index: np.ndarray,
        rows: np.ndarray,
        *,
        expansions: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """BM25 of the pairs ``(queries[query_index[j]], catalog row rows[j])``: ``(n_pairs, n_fields + 1)``.

        Columns: one per field in ``self.fields``, then the fused score.
        """
        q = self.query_matrix(queries, expansions)[np.asarray(query_index)]
        rows = np.asarray(rows)
        out = np.empty((len(rows), len(self.fields) + 1), dtype=np.float32)
        for j, field in enumerate(self.fields):
            out[:, j] = np.asarray(self.matrices_[field][rows].multiply(q).sum(axis=1)).ravel()
        out[:, -1] = np.asarray(self.combined_[rows].multiply(q).sum(axis=1)).ravel()
        return out


class DenseIndex:
    """MiniLM product embeddings in a FAISS inner-product index (exact below ``hnsw_above`` products)."""

    def __init__(
        self,
        *,
        hnsw_above: int = 200_000,
        hnsw_m: int = 32,
        ef_search: int = 128,
        cache_dir: str | None = None,
        description_chars: int = 300,
    ) -> None:
        self.hnsw_above = hnsw_above
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.cache_dir = cache_dir
        self.description_chars = description_chars

    def fit(
        self,
        products: pd.DataFrame,
        embeddings: np.ndarray | None = None,
        encoder=None,
        progress: bool = False,
    ) -> DenseIndex:
        """Index ``products``; pass precomputed ``embeddings`` (n, 384) to skip the encoder."""
        import faiss

        from mlsd.search.embeddings import embed_products

        products = normalize_products(products)
        if embeddings is None:
            embeddings = embed_products(
                products,
                encoder,
                cache_dir=self.cache_dir,
                progress=progress,
                description_chars=self.description_chars,
            )
        self.embeddings_ = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.product_ids_ = products["product_id"].to_numpy(np.int64)
        dim = self.embeddings_.shape[1]
        if len(products) > self.hnsw_above:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(self.embeddings_)
        self.index_ = index
        self._encoder = encoder
        return self

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        from mlsd.search.embeddings import load_encoder

        encoder = self._encoder or load_encoder()
        return encoder.encode(list(queries))

    def retrieve(
        self, queries: Sequence[str], k: int = 100, *, query_vectors: np.ndarray | None = None
    ) -> Candidates:
        """Top ``k`` products per query by cosine similarity."""
        k = _check_k(k)
        vectors = (
            self.encode_queries(queries)
            if query_vectors is None
            else np.ascontiguousarray(query_vectors, np.float32)
        )
        kk = min(k, len(self.product_ids_))
        scores, rows = self.index_.search(vectors, kk)
        rows = rows.astype(np.int64)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        if kk < k:
            rows = np.pad(rows, ((0, 0), (0, k - kk)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        return Candidates(np.where(rows >= 0, self.product_ids_[rows], -1), rows, scores)

    def cosine(self, query_vectors: np.ndarray, query_index: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine similarity of the pairs ``(query_vectors[query_index[j]], product row rows[j])``."""
        return np.einsum(
            "ij,ij->i", query_vectors[np.asarray(query_index)], self.embeddings_[np.asarray(rows)]
        )


def rrf_fuse(
    candidate_lists: Sequence[Candidates],
    k: int,
    *,
    rrf_k: float = 60.0,
    weights: Sequence[float] | None = None,
) -> Candidates:
    """Reciprocal-rank fusion: score = sum_i w_i / (rrf_k + rank_i); ``rows`` of all inputs must agree."""
    k = _check_k(k)
    weights = list(weights) if weights is not None else [1.0] * len(candidate_lists)
    n = candidate_lists[0].rows.shape[0]
    rows_out = np.full((n, k), -1, dtype=np.int64)
    ids_out = np.full((n, k), -1, dtype=np.int64)
    scores_out = np.full((n, k), -np.inf, dtype=np.float32)
    for i in range(n):
        all_rows = np.concatenate([c.rows[i] for c in candidate_lists])
        all_ids = np.concatenate([c.product_ids[i] for c in candidate_lists])
        contrib = np.concatenate(
            [
                w / (rrf_k + 1.0 + np.arange(c.rows.shape[1]))
                for c, w in zip(candidate_lists, weights, strict=True)
            ]
        )
        valid = all_rows >= 0
        uniq, inverse = np.unique(all_rows[valid], return_inverse=True)
        fused = np.bincount(inverse, weights=contrib[valid], minlength=len(uniq))
        id_of = np.empty(len(uniq), dtype=np.int64)
        id_of[inverse] = all_ids[valid]
        order = np.argsort(-fused, kind="stable")[:k]
        rows_out[i, : len(order)] = uniq[order]
        ids_out[i, : len(order)] = id_of[order]
        scores_out[i, : len(order)] = fused[order]
    return Candidates(ids_out, rows_out, scores_out)


class HybridRetriever:
    """BM25 and dense candidates fused by reciprocal rank (RRF), up to 1,000 per query.

    ``depth`` candidates are taken from each retriever before fusion.
    """

    def __init__(
        self,
        bm25: BM25Index,
        dense: DenseIndex | None,
        *,
        depth: int = 1000,
        rrf_k: float = 60.0,
        weights: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        self.bm25 = bm25
        self.dense = dense
        self.depth = depth
        self.rrf_k = rrf_k
        self.weights = weights

    def retrieve(
        self,
        queries: Sequence[str],
        k: int = MAX_CANDIDATES,
        *,
        expansions: Sequence[Sequence[str]] | None = None,
        query_vectors: np.ndarray | None = None,
    ) -> Candidates:
        k = _check_k(k)
        depth = max(k, self.depth) if self.depth < k else self.depth
        depth = min(depth, MAX_CANDIDATES)
        lexical = self.bm25.retrieve(queries, depth, expansions=expansions)
        if self.dense is None:
            return rrf_fuse([lexical], k, rrf_k=self.rrf_k)
        semantic = self.dense.retrieve(queries, depth, query_vectors=query_vectors)
        return rrf_fuse([lexical, semantic], k, rrf_k=self.rrf_k, weights=self.weights)
