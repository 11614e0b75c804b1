"""The search pipeline: query -> parse -> retrieve (BM25 + dense, hybrid) -> features -> LTR -> rules.

:class:`SearchEngine` holds every fitted piece (query understanding, BM25, dense index, feature
builder, ranker, rules) and answers one request under a :class:`~mlsd.platform.serving.Deadline`
(200 ms by default). Before each skippable stage it checks that the time left covers the stage's
expected cost (a running average of its measured durations, times a safety factor); when it does not,
the stage is skipped and reported, and the request degrades instead of running late:

* dense retrieval skipped -> BM25 candidates only (the ``dense_cos`` feature is missing, which the
  ranker routes like any missing value);
* LTR skipped -> the fused retrieval order;
* rules always run (they are cheap, and a hard rule is never optional).

:class:`GroupedDenseIndex` is the dense retriever used here: it embeds each *distinct* product title
once and searches those (FAISS, exact inner product), then expands a hit to the products listed under
that title. Marketplaces list the same item many times (the simulator's 1M products share ~30K
titles), so this costs the encoder and the index a factor of ~30 less with the same answers for
title-level semantics.

:func:`train_ranker` trains LambdaMART from the click log with IPS (or on raw clicks), point-in-time:
features from the first part of the log, labels from the rest.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.serving import Deadline, StageTimer
from mlsd.search.config import SearchConfig
from mlsd.search.features import FEATURE_NAMES, QueryBatch, SearchFeatures, normalize_queries
from mlsd.search.retrieval import BM25Index, Candidates, rrf_fuse
from mlsd.search.rules import BusinessRules

SYSTEM = "search"
# Ranking variants an experiment arm can ask for (``params: {"ranker": ...}``), see SearchEngine.search.
RANKINGS: tuple[str, ...] = ("ltr", "hybrid", "bm25", "dense")


def default_cache_dir() -> Path:
    """Where embeddings are cached across runs (the same place ``mlsd search evaluate`` uses)."""
    import os

    return Path(os.environ.get("MLSD_CACHE_DIR", Path.home() / ".cache" / "mlsd")) / "embeddings"


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


# --------------------------------------------------------------------------------------------------
# Dense retrieval over distinct titles


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


# --------------------------------------------------------------------------------------------------
# The engine


class _CostEstimate:
    """Exponential moving average of a stage's duration (ms), seeded with a guess.

    A skipped stage is not measured, so one slow run (a GC pause, a noisy neighbour) would otherwise
    keep the estimate above the budget and the stage skipped forever: each skip decays the estimate,
    and after a few skips the stage is tried (and measured) again.
    """

    def __init__(self, initial_ms: float, alpha: float = 0.1, decay_on_skip: float = 0.85) -> None:
        self.value = initial_ms
        self.alpha = alpha
        self.decay_on_skip = decay_on_skip

    def update(self, ms: float) -> None:
        self.value += self.alpha * (ms - self.value)

    def skipped(self) -> None:
        self.value *= self.decay_on_skip


class SearchEngine:
    """Every fitted piece of search, and ``search(query, user_id, k)`` under a deadline."""

    def __init__(
        self,
        config: SearchConfig | None = None,
        *,
        dense: bool = True,
        cache_dir: str | Path | None = None,
        max_query_chars: int | None = None,
        parser_options: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or SearchConfig()
        self.dense = dense
        self.cache_dir = cache_dir
        self.max_query_chars = max_query_chars or self.config.service.max_query_chars
        self.parser_options = parser_options or {}

    def fit(
        self,
        products: pd.DataFrame,
        *,
        query_log: Sequence[str] = (),
        history: pd.DataFrame | None = None,
        propensity: Any = None,
        encoder: Any = None,
        progress: bool = False,
    ) -> SearchEngine:
        """Build query understanding, BM25, the dense index, features and rules over ``products``."""
        from mlsd.search.data import normalize_products
        from mlsd.search.query import QueryUnderstanding

        self.products_ = normalize_products(products)
        self.row_of_id_ = pd.Series(
            np.arange(len(self.products_)), index=self.products_["product_id"].to_numpy()
        )
        timings: dict[str, float] = {}
        t = time.perf_counter()
        self.parser_ = QueryUnderstanding(max_chars=self.max_query_chars, **self.parser_options).fit(
            self.products_, query_log=list(query_log)
        )
        timings["query_understanding_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.bm25_ = BM25Index().fit(self.products_)
        timings["bm25_s"] = time.perf_counter() - t
        self.dense_ = None
        if self.dense:
            t = time.perf_counter()
            self.dense_ = GroupedDenseIndex(cache_dir=self.cache_dir).fit(
                self.products_, encoder, progress=progress
            )
            # Warm up: the first encode pays one-off allocation costs that would poison the cost estimate.
            with _torch_threads(1):
                self.dense_._encoder_or_load().encode(["warm up"])
            self.dense_.retrieve(["warm up"], self.config.retrieval.dense_k)
            self.dense_._qcache.clear()
            timings["dense_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.rules_ = BusinessRules(self.config.rules).fit(self.products_)
        self.refit_history(history, propensity)
        timings["features_s"] = time.perf_counter() - t
        self.build_timings_ = timings
        self._ranker_pair: tuple[Any, int | None] = (None, None)  # (ranker, version), swapped as one
        b = self.config.budgets
        self._cost = {"dense": _CostEstimate(b.initial_dense_ms), "ltr": _CostEstimate(b.initial_ltr_ms)}
        return self

    def refit_history(self, history: pd.DataFrame | None, propensity: Any = None) -> SearchEngine:
        """Rebuild the history features (CTR, affinity) from click-log impressions."""
        self.propensity_ = propensity
        self.features_ = SearchFeatures().fit(self.products_, self.bm25_, self.dense_, history, propensity)
        return self

    def set_ranker(self, ranker: Any, version: int | None = None) -> SearchEngine:
        """Serve ``ranker`` from the next request on (hot reload: a request in flight keeps the ranker
        and version it started with, read together from one tuple)."""
        self._ranker_pair = (ranker, version)
        return self

    @property
    def ranker_(self) -> Any:
        return self._ranker_pair[0]

    @property
    def ranker_version_(self) -> int | None:
        return self._ranker_pair[1]

    # -- batch helpers (training, evaluation) ---------------------------------------------------------
    def query_batch(
        self, texts: Sequence[str], user_ids: Sequence[str] | None = None, *, with_vectors: bool = True
    ) -> tuple[QueryBatch, list[Any]]:
        parsed = self.parser_.parse(list(texts))
        vectors = None
        if with_vectors and self.dense_ is not None:
            vectors = self.dense_.encode_queries([_retrieval_text(p) for p in parsed])
        batch = QueryBatch.from_parsed(texts, parsed, user_ids, vectors)
        batch.understood = [_retrieval_text(p) for p in parsed]
        return batch, parsed

    def score_pairs(
        self, texts: list[str], qi: np.ndarray, rows: np.ndarray, ranker: Any = None
    ) -> np.ndarray:
        """Ranker scores of (texts[qi[j]], catalog row rows[j]) with no user (evaluation)."""
        batch, _ = self.query_batch(texts)
        X = self.features_.transform(batch, qi, rows)
        return (ranker or self.ranker_).predict(X)

    # -- one request ------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        user_id: str = "",
        k: int | None = None,
        *,
        budget_ms: float | None = None,
        ranking: str = "ltr",
        model: Any = None,
    ) -> dict[str, Any]:
        """Top ``k`` results for ``query`` with the parsed query, per-stage timings and what was skipped.

        ``ranking`` picks the variant an experiment arm asks for (:data:`RANKINGS`): ``"ltr"`` (hybrid
        retrieval reranked by LambdaMART: the production path), ``"hybrid"`` (BM25 + dense fused, no
        LTR), ``"bm25"`` (BM25 only: no dense retrieval, no LTR), ``"dense"`` (dense only, no LTR).
        ``model``: a ranker to use instead of the engine's own (a registry alias other than the
        champion). Business rules apply to every variant.
        """
        if ranking not in RANKINGS:
            from mlsd.platform.errors import InputError

            raise InputError("ranking", ranking, "unknown ranking variant", f"use one of {list(RANKINGS)}")
        cfg = self.config
        k = cfg.service.k_default if k is None else k
        deadline = Deadline(budget_ms if budget_ms is not None else cfg.budgets.deadline_ms)
        timer = StageTimer(SYSTEM)
        safety = cfg.budgets.safety
        with timer.stage("parse"):
            parsed = self.parser_.parse([query])[0]
            text = _retrieval_text(parsed)
        if ranking == "dense":
            timer.skip("bm25", "ranking variant: dense")
            lexical = None
        else:
            with timer.stage("bm25"):
                lexical = self.bm25_.retrieve([text], cfg.retrieval.bm25_k, expansions=[parsed.expansions])
        vectors = None
        lists = [lexical] if lexical is not None else []
        if ranking == "bm25":
            timer.skip("dense", "ranking variant: bm25")
        elif self.dense_ is None or not cfg.retrieval.use_dense:
            timer.skip("dense", "disabled")
        elif deadline.allows(self._cost["dense"].value * safety):
            started = time.perf_counter()
            with timer.stage("dense"):
                vectors = self.dense_.encode_queries([text])
                lists.append(self.dense_.retrieve([text], cfg.retrieval.dense_k, query_vectors=vectors))
            self._cost["dense"].update((time.perf_counter() - started) * 1000)
        else:
            timer.skip(
                "dense",
                f"deadline: {deadline.remaining_ms():.1f} ms left, dense needs ~{self._cost['dense'].value:.1f} ms",
            )
            self._cost["dense"].skipped()
        with timer.stage("fuse"):
            if len(lists) > 1:
                fused = rrf_fuse(lists, cfg.retrieval.candidates)
            elif lists:
                fused = lists[0]
            else:  # dense-only variant whose dense stage was skipped or unavailable: nothing retrieved
                fused = Candidates(np.full((1, 0), -1), np.full((1, 0), -1), np.zeros((1, 0)))
            keep = fused.rows[0] >= 0
            rows, scores = fused.rows[0][keep], fused.scores[0][keep].astype(np.float64)
        ranked_by = "hybrid" if len(lists) > 1 else ("dense" if lexical is None else "bm25")
        champion, champion_version = self._ranker_pair  # one read: a hot reload cannot split the pair
        ranker = model if model is not None else champion
        if ranking != "ltr":
            timer.skip("ltr", f"ranking variant: {ranking}")
        elif ranker is None:
            timer.skip("ltr", "no ranker loaded")
        elif len(rows) and deadline.allows(self._cost["ltr"].value * safety):
            started = time.perf_counter()
            batch = QueryBatch.from_parsed([query], [parsed], [user_id], vectors)
            batch.understood = [text]
            # LTR reorders the best `rerank_depth` fused candidates; the rest keep the fused order below
            # them (features and trees cost per candidate, and deep candidates rarely reach the top 48).
            depth = min(len(rows), cfg.retrieval.rerank_depth)
            with timer.stage("features"):
                X = self.features_.transform(batch, np.zeros(depth, np.int64), rows[:depth])
            with timer.stage("ltr"):
                head = ranker.predict(X)
                tail = scores[depth:]
                # Every reranked candidate stays above the tail, whatever the scales of the two scores.
                offset = (head.min() - tail.max() - 1.0) if len(tail) else 0.0
                scores = np.concatenate([head, tail + offset])
            self._cost["ltr"].update((time.perf_counter() - started) * 1000)
            ranked_by = "ltr"
        elif len(rows):
            timer.skip(
                "ltr",
                f"deadline: {deadline.remaining_ms():.1f} ms left, ltr needs ~{self._cost['ltr'].value:.1f} ms",
            )
            self._cost["ltr"].skipped()
        with timer.stage("rules"):
            order = np.argsort(-scores, kind="stable")
            ent = parsed.entities
            final, report = self.rules_.apply(
                rows[order],
                price_min=ent.price_min,
                price_max=ent.price_max,
                category=ent.category,
                query=query,
                brand_in_query=ent.brand is not None,
                k=k,
            )
            # Scores of the final rows; a pinned product that retrieval did not find has none (NaN -> null).
            final_scores = np.full(len(final), np.nan)
            if len(rows) and len(final):
                by_row = np.argsort(rows, kind="stable")
                at = np.minimum(np.searchsorted(rows[by_row], final), len(rows) - 1)
                found = rows[by_row[at]] == final
                final_scores[found] = scores[by_row[at[found]]]
        return {
            "search_id": uuid.uuid4().hex,
            "query": query,
            "user_id": user_id,
            "parsed": parsed.to_dict(),
            "ranked_by": ranked_by,
            "model_version": champion_version if model is None else getattr(model, "version_", None),
            "results": self._results(final, final_scores),
            "rules": report.to_dict(),
            "timings_ms": {s: round(v, 3) for s, v in timer.timings_ms.items()},
            "skipped": timer.skipped,
            "total_ms": round(deadline.elapsed_ms(), 3),
            "deadline_ms": deadline.budget_ms,
        }

    def _results(self, rows: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        # Plain arrays prepared at fit: building 48 dicts from them is ~50x cheaper than DataFrame.iloc.
        cols = self._result_columns
        out = []
        for i, (r, s) in enumerate(zip(rows.tolist(), np.asarray(scores).tolist(), strict=True)):
            item = {name: values[r] for name, values in cols.items()}
            item["position"] = i + 1
            item["score"] = round(float(s), 6) if np.isfinite(s) else None
            out.append(item)
        return out

    @property
    def _result_columns(self) -> dict[str, list[Any]]:
        if getattr(self, "_result_cols", None) is None:
            p = self.products_
            cols: dict[str, list[Any]] = {
                "product_id": p["product_id"].astype(np.int64).tolist(),
                "title": p["title"].astype(str).tolist(),
                "brand": p["brand"].astype(str).tolist(),
                "category": p["category"].astype(str).tolist(),
                "price": [None if np.isnan(x) else float(x) for x in p["price"].to_numpy(np.float64)],
            }
            for extra in ("stock", "rating"):
                if extra in p:
                    cols[extra] = p[extra].tolist()
            self._result_cols = cols
        return self._result_cols


def _retrieval_text(parsed: Any) -> str:
    """What retrieval searches for: the corrected text, or the original when understanding left nothing
    (a query that was only a price phrase)."""
    return parsed.corrected if parsed.corrected.strip() else parsed.original


# --------------------------------------------------------------------------------------------------
# Training from the click log


def train_ranker(
    engine: SearchEngine,
    impressions: pd.DataFrame,
    *,
    ips: bool = True,
    propensity: Any = None,
    config: SearchConfig | None = None,
    history_share: float = 0.5,
) -> tuple[Any, dict[str, Any]]:
    """LambdaMART from the click log: features from the first ``history_share`` of the log (by time),
    labels from the rest. ``ips`` weights outcomes by 1/propensity (``propensity`` estimated from the log
    when not given). Returns ``(ranker, report)``; the engine's history features are left as trained.
    """
    from mlsd.search.ltr import LambdaMARTRanker, pair_labels
    from mlsd.search.propensity import estimate_propensities

    config = config or engine.config
    if ips and propensity is None:
        propensity = estimate_propensities(impressions, clip=config.ltr.propensity_clip)
    cutoff = np.quantile(impressions["ts"].to_numpy(), history_share)
    history = impressions[impressions["ts"].to_numpy() < cutoff]
    window = impressions[impressions["ts"].to_numpy() >= cutoff]
    engine.refit_history(history, propensity if ips else None)
    labels = pair_labels(
        window, propensity if ips else None, config.objective, shrink=config.ltr.label_shrink
    )
    texts, qi = np.unique(labels["query"].to_numpy(), return_inverse=True)
    rows = engine.row_of_id_.reindex(labels["product_id"].to_numpy()).to_numpy()
    ok = ~np.isnan(rows)
    labels, qi, rows = labels[ok], qi[ok], rows[ok].astype(np.int64)
    n_neg = config.ltr.random_negatives
    if n_neg > 0:
        rng = np.random.default_rng(config.ltr.seed)
        neg_q = np.repeat(np.arange(len(texts)), n_neg)
        neg_rows = rng.integers(0, len(engine.products_), len(neg_q))
        seen = set(zip(qi.tolist(), rows.tolist(), strict=True))
        fresh = np.array(
            [(q, r) not in seen for q, r in zip(neg_q.tolist(), neg_rows.tolist(), strict=True)], dtype=bool
        )
        neg = pd.DataFrame(
            {
                "query": texts[neg_q[fresh]],
                "product_id": engine.products_["product_id"].to_numpy()[neg_rows[fresh]],
                "gain": 0.0,
            }
        )
        labels = pd.concat([labels, neg], ignore_index=True)
        qi = np.concatenate([qi, neg_q[fresh]])
        rows = np.concatenate([rows, neg_rows[fresh]])
    X = pair_features(engine, window, texts, qi, rows, labels["product_id"].to_numpy())
    ranker = LambdaMARTRanker(config.ltr).fit(X, labels["gain"].to_numpy(), qi)
    # The drift reference: the logged pairs the ranker learned from (not the random negatives, which
    # serving never shows), with its own scores as "prediction".
    n_logged = len(labels) - (len(neg) if n_neg > 0 else 0)
    ranker.reference_ = reference_sample(X[:n_logged], ranker.predict(X[:n_logged]), seed=config.ltr.seed)
    ranker.reference_meta_ = {
        "history_impressions": int(len(history)),
        "history_from_ts": int(history["ts"].min()) if len(history) else None,
        "label_window_ts": [int(window["ts"].min()), int(window["ts"].max())] if len(window) else None,
        "pairs": int(n_logged),
    }
    report = {
        "ips": ips,
        "training_pairs": len(labels),
        "random_negatives": int(n_neg * len(texts)),
        "training_queries": len(texts),
        "history_impressions": len(history),
        "label_impressions": len(window),
        "propensity": propensity.to_dict() if (ips and propensity is not None) else None,
        "objective": dict(config.objective.__dict__),
        "feature_names": list(FEATURE_NAMES),
    }
    return ranker, report


def pair_features(
    engine: SearchEngine,
    window: pd.DataFrame,
    texts: np.ndarray,
    qi: np.ndarray,
    rows: np.ndarray,
    product_ids: np.ndarray,
) -> np.ndarray:
    """Features of pairs (``texts[qi[j]]``, catalog row ``rows[j]``), the user-affinity features being the
    mean over the users of ``window`` (impressions) who saw each (query, product) pair: a training label
    aggregates their behaviour, and the drift monitor builds its current window the same way."""
    batch, _ = engine.query_batch(list(texts))
    w_rows = engine.row_of_id_.reindex(window["product_id"].to_numpy()).to_numpy()
    w_ok = ~np.isnan(w_rows)
    b_aff, d_aff = engine.features_.user_affinity(
        window["user_id"].astype(str).to_numpy()[w_ok], w_rows[w_ok].astype(np.int64)
    )
    aff = (
        pd.DataFrame(
            {
                "q": normalize_queries(window["query"].to_numpy())[w_ok],
                "p": window["product_id"].to_numpy()[w_ok],
                "b": b_aff,
                "d": d_aff,
            }
        )
        .groupby(["q", "p"])
        .mean()
    )
    pair_aff = aff.reindex(pd.MultiIndex.from_arrays([np.asarray(texts)[qi], np.asarray(product_ids)]))
    return engine.features_.transform(
        batch,
        qi,
        rows,
        user_affinity=(pair_aff["b"].fillna(0).to_numpy(), pair_aff["d"].fillna(0).to_numpy()),
    )


def reference_sample(
    X: np.ndarray, scores: np.ndarray, *, max_rows: int = 20_000, seed: int = 0
) -> pd.DataFrame:
    """Feature rows (:data:`FEATURE_NAMES` columns) plus ``prediction``, at most ``max_rows`` (seeded
    sample): what the drift monitor compares served traffic with."""
    frame = pd.DataFrame(np.asarray(X, dtype=np.float32), columns=list(FEATURE_NAMES))
    frame["prediction"] = np.asarray(scores, dtype=np.float64)
    if len(frame) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    return frame


# --------------------------------------------------------------------------------------------------
# Data folders, training + registration, loading for serving

MODEL_NAME = "search-ltr"


def load_data(data_dir: Path) -> dict[str, Any]:
    """``products`` (required) and, when present, ``queries``, ``qrels`` (ground truth) and the click log
    of a folder written by ``mlsd search simulate --out``."""
    from mlsd.search.clicklog import ClickLog

    data_dir = Path(data_dir)
    products_file = data_dir / "products.parquet"
    if not products_file.exists():
        from mlsd.platform.errors import InputError

        raise InputError(
            "--data", str(data_dir), "has no products.parquet", "run `mlsd search simulate --out DIR` first"
        )
    out: dict[str, Any] = {
        "products": pd.read_parquet(products_file),
        "clicklog": ClickLog(data_dir / "clicklog"),
    }
    for name in ("queries", "qrels"):
        f = data_dir / f"{name}.parquet"
        out[name] = pd.read_parquet(f) if f.exists() else None
    return out


def train_and_register(
    data_dir: Path,
    registry_dir: Path,
    *,
    config: SearchConfig | None = None,
    dense: bool = True,
    cache_dir: str | Path | None = None,
    compare_raw: bool = True,
    progress: bool = False,
    log: Any = None,
    parser_options: dict[str, Any] | None = None,
    return_engine: bool = False,
    until_ts: int | None = None,
) -> Any:
    """Train LTR with IPS from the folder's click log, evaluate against ground truth when the folder has
    it (also the raw-click baseline), register the model and promote it to champion if it beats the
    current one (or there is none). Returns the report, or ``(report, engine)`` with ``return_engine``:
    the fitted engine with history from the whole log and the new ranker, ready to serve.
    ``until_ts``: use only click-log impressions before this time (a scheduled run's window)."""
    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.ltr import ground_truth_ndcg
    from mlsd.search.propensity import estimate_propensities

    def say(msg: str) -> None:
        if log is not None:
            log(msg)

    config = config or SearchConfig()
    data = load_data(data_dir)
    impressions = data["clicklog"].impressions(until_ts=until_ts)
    if len(impressions) == 0:
        from mlsd.platform.errors import InputError

        raise InputError(
            "--data", str(data_dir), "the click log is empty", "simulate sessions or POST /v1/events first"
        )
    t0 = time.perf_counter()
    say(f"fitting the engine on {len(data['products'])} products")
    engine = SearchEngine(config, dense=dense, cache_dir=cache_dir, parser_options=parser_options).fit(
        data["products"], query_log=impressions["query"].astype(str).unique().tolist(), progress=progress
    )
    propensity = estimate_propensities(impressions, clip=config.ltr.propensity_clip)
    say(f"propensities from {type(propensity).__name__}: eta={propensity.eta_:.3f}")
    ranker, report = train_ranker(engine, impressions, ips=True, propensity=propensity, config=config)
    metrics: dict[str, float] = {}
    if data["qrels"] is not None and data["queries"] is not None:

        def truth(r: Any) -> float:
            return ground_truth_ndcg(
                lambda tx, qi, rows: engine.score_pairs(tx, qi, rows, r),
                data["queries"],
                data["qrels"],
                engine.row_of_id_,
            )

        metrics["truth_ndcg@10"] = round(truth(ranker), 4)
        say(f"IPS LambdaMART: ground-truth nDCG@10 = {metrics['truth_ndcg@10']}")
        if compare_raw:
            raw, _ = train_ranker(engine, impressions, ips=False, config=config)
            metrics["raw_clicks_truth_ndcg@10"] = round(truth(raw), 4)
            say(f"raw-click LambdaMART: ground-truth nDCG@10 = {metrics['raw_clicks_truth_ndcg@10']}")
    registry = ModelRegistry(registry_dir)
    version = register_ranker(
        registry, ranker, propensity, impressions, config=config, dense=dense, metrics=metrics
    )
    champion = registry.alias(MODEL_NAME)
    key = "truth_ndcg@10"
    promote = champion is None or (
        key in metrics and metrics[key] >= float(champion.metrics.get(key, float("-inf")))
    )
    if promote:
        registry.promote(MODEL_NAME, version.version)
    report.update(
        model=MODEL_NAME,
        version=version.version,
        promoted=promote,
        previous_champion=None if champion is None else champion.version,
        metrics=metrics,
        train_seconds=round(time.perf_counter() - t0, 2),
    )
    if return_engine:
        engine.refit_history(impressions, propensity).set_ranker(ranker, version.version)
        return report, engine
    return report


def window_fingerprint(impressions: pd.DataFrame) -> str:
    """The data fingerprint of a training window (what idempotent retraining compares)."""
    from mlsd.platform.registry import fingerprint

    return fingerprint(impressions[["search_id", "product_id", "position", "clicked", "purchased"]])


def register_ranker(
    registry: Any,
    ranker: Any,
    propensity: Any,
    impressions: pd.DataFrame,
    *,
    config: SearchConfig,
    dense: bool,
    metrics: dict[str, float],
    extra_params: dict[str, Any] | None = None,
) -> Any:
    """Save ``ranker`` (with its propensities and drift reference) as the next version of
    :data:`MODEL_NAME`, fingerprinted by its training window. Sets no alias."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ranker.save(Path(tmp) / "ranker")
        (Path(tmp) / "ranker" / "propensity.json").write_text(json_dumps(propensity.to_dict()))
        return registry.register(
            MODEL_NAME,
            Path(tmp) / "ranker",
            params={
                "ltr": dict(config.ltr.__dict__),
                "objective": dict(config.objective.__dict__),
                "dense": dense,
                **(extra_params or {}),
            },
            metrics=metrics,
            data_fingerprint=window_fingerprint(impressions),
        )


def json_dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2)


def load_engine(
    data_dir: Path,
    registry_dir: Path | None = None,
    *,
    config: SearchConfig | None = None,
    dense: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    parser_options: dict[str, Any] | None = None,
) -> SearchEngine:
    """An engine over the folder's catalog with history features from its click log and the champion
    ranker from the registry (none: retrieval order)."""
    from mlsd.search.propensity import estimate_propensities

    config = config or SearchConfig()
    data = load_data(data_dir)
    impressions = data["clicklog"].impressions()
    engine = SearchEngine(config, dense=dense, cache_dir=cache_dir, parser_options=parser_options).fit(
        data["products"],
        query_log=impressions["query"].astype(str).unique().tolist() if len(impressions) else (),
        progress=progress,
    )
    if len(impressions):
        try:
            propensity = estimate_propensities(impressions, clip=config.ltr.propensity_clip)
        except Exception:  # too little log to estimate: history features without debiasing
            propensity = None
        engine.refit_history(impressions, propensity)
    if registry_dir is not None and Path(registry_dir).exists():
        from mlsd.platform.registry import ModelRegistry
        from mlsd.search.ltr import LambdaMARTRanker

        registry = ModelRegistry(registry_dir)
        champion = registry.alias(MODEL_NAME) if MODEL_NAME in registry.names() else None
        if champion is not None:
            path = registry.artifact_path(MODEL_NAME, "champion")
            engine.set_ranker(LambdaMARTRanker.load(path), champion.version)
    return engine
