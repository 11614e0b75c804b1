"""Candidate retrieval: BM25 per field (bm25s), dense MiniLM + FAISS, and hybrid fusion.

Everything is batch-first: ``retrieve(queries, k)`` takes a list of query strings and returns a
:class:`Candidates` of ``(n_queries, k)`` arrays padded with -1. BM25 keeps one sparse weight
matrix per field (the weights computed by bm25s), so a query batch is a sparse matrix product and
the score of any (query, product) pair per field is a cheap row gather — the same numbers serve
retrieval and the ranker's features.

The indexes, in the order a served query meets them: :class:`BM25Index` (lexical), :class:`DenseIndex`
(MiniLM over every product, the offline evaluation's), :class:`GroupedDenseIndex` (MiniLM over each
*distinct* title, what :class:`~mlsd.search.engine.SearchEngine` serves with: marketplaces list the same
item many times -- the simulator's 1M products share ~30K titles -- so the encoder and the index cost a
factor of ~30 less with the same answers for title-level semantics), then :func:`rrf_fuse` /
:class:`HybridRetriever`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.search.data import TEXT_FIELDS, normalize_products
from mlsd.search.text import AnalyzedTexts, analyze, analyze_batch

MAX_CANDIDATES = 1000
# Queries scored against the catalog at once: a batch's sparse score matrix holds at most
# QUERY_BATCH x n_products entries (a common term matches most of a catalog), never all queries' at once.
QUERY_BATCH = 256
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


def _bm25_idf(df: np.ndarray, n_docs: int, method: str) -> np.ndarray:
    """float32 idf per term, by bm25s's own idf function on each distinct document frequency."""
    from bm25s.scoring import _select_idf_scorer

    idf_fn = _select_idf_scorer(method)
    distinct, inverse = np.unique(df, return_inverse=True)
    # Python floats rounded to float32, exactly as bm25s fills its idf array; df 0 (absent) stays 0.
    values = np.array([idf_fn(int(d), N=n_docs) if d else 0.0 for d in distinct], dtype=np.float32)
    return values[inverse]


@dataclass
class BM25Stats:
    """Corpus statistics BM25 weights depend on: documents, and per field each term's document frequency
    and the summed length. A catalog split into partitions (shards) is indexed with the statistics of
    the whole catalog (:meth:`BM25Index.corpus_stats` per partition, :meth:`merge`, then
    ``fit(part, stats=...)``), so every partition's weights equal the single index's."""

    n_docs: int
    df: dict[str, dict[str, int]]  # field -> term -> documents holding it
    total_len: dict[str, int]  # field -> sum of the documents' term counts

    @classmethod
    def merge(cls, parts: Sequence[BM25Stats]) -> BM25Stats:
        df: dict[str, dict[str, int]] = {}
        total: dict[str, int] = {}
        for part in parts:
            for field, counts in part.df.items():
                into = df.setdefault(field, {})
                for term, n in counts.items():
                    into[term] = into.get(term, 0) + n
                total[field] = total.get(field, 0) + part.total_len[field]
        return cls(sum(p.n_docs for p in parts), df, total)


def _field_entries(
    analyzed: AnalyzedTexts, term_ids: np.ndarray, n_terms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(text, term) pairs of a field's distinct texts with their term frequency, sorted by text then term
    (CSR order), the terms per distinct text, and each term's document frequency over the rows."""
    n_distinct = len(analyzed.offsets) - 1
    length = np.diff(analyzed.offsets)  # terms per distinct text
    text_of_term = np.repeat(np.arange(n_distinct, dtype=np.int64), length)
    keys, tf = np.unique(text_of_term * n_terms + term_ids[analyzed.term_codes], return_counts=True)
    e_text, e_term = keys // n_terms, keys % n_terms
    rows_per_text = np.bincount(analyzed.text_codes, minlength=n_distinct)
    df = np.bincount(e_term, weights=rows_per_text[e_text], minlength=n_terms).astype(np.int64)
    return e_text, e_term, tf, length, df


def _bm25_field_matrix(
    analyzed: AnalyzedTexts,
    term_ids: np.ndarray,
    n_terms: int,
    k1: float,
    b: float,
    method: str,
    corpus: tuple[np.ndarray, int, int] | None = None,
) -> sp.csr_matrix:
    """``(n_docs, n_terms)`` float32 BM25 weights of one field, equal to ``bm25s.BM25(...).index`` of its rows.

    Weights are computed once per (distinct text, term) and gathered to the rows holding that text: a
    weight depends only on the text's terms and length and the field-wide idf and mean length.
    ``corpus`` = (df per term id, documents, summed length) of a whole catalog this field's rows are a
    partition of; by default the rows are the corpus.
    """
    if method not in ("robertson", "lucene", "atire"):
        # bm25l / bm25+ subtract a non-occurrence score this fast path does not compute.
        raise InputError("method", method, "unsupported BM25 variant", "use 'lucene', 'robertson' or 'atire'")
    from bm25s.scoring import _select_tfc_scorer

    n_docs, n_distinct = len(analyzed.text_codes), len(analyzed.offsets) - 1
    if len(analyzed.term_codes) == 0:  # e.g. no brands in this catalog
        return sp.csr_matrix((n_docs, n_terms), dtype=np.float32)
    e_text, e_term, tf, length, df = _field_entries(analyzed, term_ids, n_terms)
    if corpus is None:
        avg_len = length[analyzed.text_codes].mean()  # bm25s: mean of the row lengths (int64 array)
        corpus_docs = n_docs
    else:
        # The sum of integer lengths is exact in float64, so total / n equals numpy's mean of the rows.
        df, corpus_docs, total_len = corpus
        avg_len = np.float64(total_len) / corpus_docs
    # Same operand types as bm25s (float32 tf, integer length, float64 mean), so the same rounding.
    tf32 = tf.astype(np.float32)
    tfc = _select_tfc_scorer(method)(tf_array=tf32, l_d=length[e_text], l_avg=avg_len, k1=k1, b=b)
    weights = (_bm25_idf(df, corpus_docs, method)[e_term] * tfc).astype(np.float32)
    # Gather each row's run of entries from its distinct text.
    entry_start = np.concatenate([[0], np.cumsum(np.bincount(e_text, minlength=n_distinct))])
    row_nnz = np.diff(entry_start)[analyzed.text_codes]
    indptr = np.concatenate([[0], np.cumsum(row_nnz)]).astype(np.int64)
    gather = np.repeat(entry_start[analyzed.text_codes] - indptr[:-1], row_nnz) + np.arange(indptr[-1])
    return sp.csr_matrix((weights[gather], e_term[gather].astype(np.int32), indptr), shape=(n_docs, n_terms))


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

    def corpus_stats(self, products: pd.DataFrame) -> BM25Stats:
        """The :class:`BM25Stats` of ``products`` over this index's fields (one partition's share)."""
        products = normalize_products(products)
        df: dict[str, dict[str, int]] = {}
        total: dict[str, int] = {}
        for f in self.fields:
            a = analyze_batch(products[f])
            ids = np.arange(len(a.terms), dtype=np.int64)
            counts = _field_entries(a, ids, len(a.terms))[4] if len(a.term_codes) else np.zeros(0, np.int64)
            df[f] = dict(zip(a.terms, counts.tolist(), strict=True))
            total[f] = int(np.diff(a.offsets)[a.text_codes].sum())
        return BM25Stats(len(products), df, total)

    def fit(self, products: pd.DataFrame, *, stats: BM25Stats | None = None) -> BM25Index:
        """Index ``products`` (the :mod:`mlsd.search.data` schema): one BM25 weight matrix per field.

        The weights are bm25s's (same idf, length normalisation and float32 rounding), computed with numpy
        over the distinct texts of each field and gathered to rows, instead of bm25s's per-document loop.
        ``stats``: the whole catalog's when ``products`` is one partition of it (a shard).
        """
        products = normalize_products(products)
        analyzed = {f: analyze_batch(products[f]) for f in self.fields}
        # Vocabulary in first-seen order over fields, then rows, then tokens (as a row-by-row pass builds it).
        vocab: dict[str, int] = {}
        global_ids = {
            f: np.fromiter((vocab.setdefault(t, len(vocab)) for t in a.terms), np.int64, len(a.terms))
            for f, a in analyzed.items()
        }
        self.vocab_ = vocab
        self.product_ids_ = products["product_id"].to_numpy(np.int64)

        def corpus(field: str) -> tuple[np.ndarray, int, int] | None:
            if stats is None:
                return None
            counts = stats.df.get(field, {})
            df = np.fromiter((counts.get(t, 0) for t in vocab), np.int64, len(vocab))
            return df, stats.n_docs, stats.total_len.get(field, 0)

        self.matrices_: dict[str, sp.csr_matrix] = {
            f: _bm25_field_matrix(
                analyzed[f], global_ids[f], len(vocab), self.k1, self.b, self.method, corpus(f)
            )
            for f in self.fields
        }
        weights = self.field_weights or DEFAULT_FIELD_WEIGHTS
        combined = sum(weights.get(f, 1.0) * self.matrices_[f] for f in self.fields)
        self.combined_ = sp.csr_matrix(combined, dtype=np.float32)
        self.combined_T_ = self.combined_.T.tocsr()
        return self

    def compact(self) -> BM25Index:
        """Keep only what :meth:`retrieve` reads (the term-major fused matrix): a shard that retrieves and
        computes no ranker features holds a third of the memory. :meth:`field_scores` then raises."""
        self.matrices_ = {}
        self.combined_ = None
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
        """Top ``k`` products per query by the fused BM25 score; products sharing no term are not returned.

        Queries are scored ``QUERY_BATCH`` at a time and only each batch's top ``k`` is kept.
        """
        k = _check_k(k)
        q = self.query_matrix(queries, expansions, expansion_weight)
        parts = [
            _top_k_sparse((q[lo : lo + QUERY_BATCH] @ self.combined_T_).tocsr(), k)
            for lo in range(0, q.shape[0], QUERY_BATCH)
        ]
        rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.int64)
        top = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.float32)
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


@contextmanager
def _torch_threads(n: int = 1):
    """Run the encoder on ``n`` torch threads, then restore. On a small shared box, intra-op threads
    contend with each other and with the request threads: measured here, one thread encodes a query
    ~15x faster than two under load (77 ms vs 1.3 s) and a batch ~4x faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _faiss_threads(n: int = 1):
    """FAISS search on ``n`` OpenMP threads, then restore. Measured here under load: a flat search over
    30K title vectors takes 2.7 ms p50 on one thread and 31 ms on two (the threads wait on each other)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class GroupedDenseIndex:
    """MiniLM embeddings of distinct ``key`` texts (titles) in a FAISS inner-product index.

    ``retrieve`` returns products (catalog rows) of the best-matching titles, most-reviewed listing
    first within a title; ``cosine`` gives the pair similarity the ranker uses.
    """

    def __init__(
        self, *, key: str = "title", cache_dir: str | Path | None = None, query_cache: int = 50_000
    ) -> None:
        self.key = key
        self.cache_dir = cache_dir
        self.query_cache = query_cache

    def fit(
        self,
        products: pd.DataFrame,
        encoder: Any = None,
        *,
        embeddings: np.ndarray | None = None,
        progress: bool = False,
    ) -> GroupedDenseIndex:
        import faiss

        texts = products[self.key].astype(str).to_numpy()
        codes, uniq = pd.factorize(texts)
        self.codes_ = codes.astype(np.int64)
        self.texts_ = np.asarray(uniq, dtype=object)
        self._encoder = encoder
        if embeddings is None:
            embeddings = self._embed(list(self.texts_), progress)
        self.vectors_ = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.index_ = faiss.IndexFlatIP(self.vectors_.shape[1])
        self.index_.add(self.vectors_)
        # Members of each group, most-reviewed first (the listing a shopper most likely wants).
        pop = (
            products["review_count"].to_numpy(np.float64)
            if "review_count" in products
            else np.zeros(len(products))
        )
        self.members_ = np.lexsort((-pop, self.codes_)).astype(np.int64)
        self.group_size_ = np.bincount(self.codes_, minlength=len(self.texts_))
        self.group_start_ = np.concatenate([[0], np.cumsum(self.group_size_)[:-1]])
        self.product_ids_ = products["product_id"].to_numpy(np.int64)
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits_ = 0
        self.cache_misses_ = 0
        return self

    @property
    def n_groups(self) -> int:
        return len(self.texts_)

    def _encoder_or_load(self) -> Any:
        if self._encoder is None:
            from mlsd.search.embeddings import load_encoder

            self._encoder = load_encoder()
        return self._encoder

    def _embed(self, texts: list[str], progress: bool) -> np.ndarray:
        """Encode distinct texts, cached on disk by a hash of the texts (the catalog's title set)."""
        cache_file = None
        if self.cache_dir is not None:
            digest = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:16]
            cache_file = Path(self.cache_dir) / f"minilm-groups-{digest}.npy"
            if cache_file.exists():
                cached = np.load(cache_file)
                if cached.shape[0] == len(texts):
                    return cached
        with _torch_threads(1):
            vectors = self._encoder_or_load().encode(texts, progress=progress)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(cache_file)
        return vectors

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors, with an LRU cache: head queries repeat, and encoding is the dense stage's cost."""
        with self._lock:
            hits = [self._qcache.get(q) for q in queries]
        missing = [i for i, h in enumerate(hits) if h is None]
        self.cache_hits_ += len(hits) - len(missing)
        self.cache_misses_ += len(missing)
        if missing:
            with _torch_threads(1):
                fresh = self._encoder_or_load().encode([queries[i] for i in missing])
            with self._lock:
                for i, v in zip(missing, fresh, strict=True):
                    hits[i] = v
                    self._qcache[queries[i]] = v
                while len(self._qcache) > self.query_cache:
                    self._qcache.popitem(last=False)
        return (
            np.vstack(hits).astype(np.float32) if hits else np.zeros((0, self.vectors_.shape[1]), np.float32)
        )

    def retrieve(
        self, queries: Sequence[str], k: int = 100, *, query_vectors: np.ndarray | None = None
    ) -> Candidates:
        qv = (
            self.encode_queries(queries)
            if query_vectors is None
            else np.ascontiguousarray(query_vectors, np.float32)
        )
        n_groups = min(self.n_groups, k)
        with _faiss_threads(1):
            scores, groups = self.index_.search(qv, n_groups)
        rows_out = np.full((len(qv), k), -1, dtype=np.int64)
        score_out = np.full((len(qv), k), -np.inf, dtype=np.float32)
        for i in range(len(qv)):  # per query of the batch (serving: one)
            g = groups[i][groups[i] >= 0]
            sizes = self.group_size_[g]
            take = np.searchsorted(np.cumsum(sizes), k) + 1  # groups needed to reach k products
            g, sizes = g[:take], sizes[:take]
            # Positions of each chosen group's members in `members_`, concatenated in group order.
            offsets = np.repeat(self.group_start_[g] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
            rows = self.members_[offsets + np.arange(sizes.sum())][:k]
            rows_out[i, : len(rows)] = rows
            score_out[i, : len(rows)] = np.repeat(scores[i][: len(g)], sizes)[: len(rows)]
        ids = np.where(rows_out >= 0, self.product_ids_[np.maximum(rows_out, 0)], -1)
        return Candidates(ids, rows_out, score_out)

    def cosine(self, query_vectors: np.ndarray, query_index: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.einsum(
            "ij,ij->i", query_vectors[np.asarray(query_index)], self.vectors_[self.codes_[np.asarray(rows)]]
        )

    def warm_up(self, k: int) -> None:
        """Encode and search once: the first encode pays one-off allocation costs that would otherwise
        land on the first request (and poison the engine's learned stage cost)."""
        with _torch_threads(1):
            self._encoder_or_load().encode(["warm up"])
        self.retrieve(["warm up"], k)
        self._qcache.clear()


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
