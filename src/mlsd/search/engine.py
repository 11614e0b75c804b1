"""The in-process serving core of search: query -> parse -> retrieve (BM25 + dense) -> features -> LTR -> rules.

:class:`SearchEngine` holds every fitted piece (query understanding, BM25, the dense index over distinct
titles, the feature builder, the ranker, the rules) and answers a **batch** of searches under one
:class:`~mlsd.platform.serving.Deadline` (200 ms by default): :meth:`SearchEngine.search_batch` is the one
serving path -- a single request (the HTTP service's ``GET /v1/search``, :meth:`SearchEngine.search`) is a
batch of one, and :meth:`SearchEngine.handle` takes the service's JSON bodies (``{"q", "k", "user_id"}``).
Every stage runs once per batch: one parse call, one sparse product for BM25, one encoder call and one
FAISS search for the dense side, one feature matrix and one ``predict`` for LTR; only the rules loop per
query (each query has its own filters and pins).

Before each skippable stage the engine checks that the time left covers the stage's expected cost, a
:class:`~mlsd.platform.serving.StageCost` learned from its own timings (a fixed part per call plus a
part per item: queries for dense retrieval, candidate pairs for LTR) times a safety factor; when it
does not, the stage is skipped and reported, and the batch degrades instead of running late:

* dense retrieval skipped -> BM25 candidates only (the ``dense_cos`` feature is missing, which the
  ranker routes like any missing value);
* LTR skipped -> the fused retrieval order;
* rules always run (they are cheap, and a hard rule is never optional).

:func:`load_engine` builds the engine a workdir serves: the catalog and click log of ``W/search/data``
and the champion of ``W/search/registry`` (none: an :class:`~mlsd.platform.errors.InputError` naming
the commands that train one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.serving import Deadline, StageCost, StageTimer
from mlsd.platform.system import SystemDir
from mlsd.search.config import SearchConfig
from mlsd.search.features import FEATURE_NAMES, QueryBatch, SearchFeatures
from mlsd.search.query import validate_query
from mlsd.search.retrieval import BM25Index, Candidates, GroupedDenseIndex, rrf_fuse
from mlsd.search.rules import BusinessRules

__all__ = [
    "FEATURE_NAMES",
    "MODEL_NAME",
    "RANKINGS",
    "REQUEST_FIELDS",
    "SYSTEM",
    "SearchEngine",
    "load_data",
    "load_engine",
]

SYSTEM = "search"
MODEL_NAME = "search-ltr"
# Ranking variants an experiment arm can ask for (``params: {"ranker": ...}``), see SearchEngine.search_batch.
RANKINGS: tuple[str, ...] = ("ltr", "hybrid", "bm25", "dense")
# A request body of Engine.handle (the query string of GET /v1/search).
REQUEST_FIELDS: tuple[str, ...] = ("q", "k", "user_id")
MAX_USER_ID_CHARS = 200


class SearchEngine:
    """Every fitted piece of search; ``search_batch(queries, user_ids, k)`` under a deadline."""

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
        from mlsd.search.query import PARSER_OPTIONS, QueryUnderstanding

        unknown = sorted(set(self.parser_options) - set(PARSER_OPTIONS))
        if unknown:  # e.g. a version trained by an older mlsd with `intent_queries`, removed since
            raise InputError(
                "parser_options", unknown[0], "unknown query-understanding option",
                f"use only {', '.join(PARSER_OPTIONS)}; a model version trained with an older option: "
                "train a new one (mlsd search train --workdir W)",
            )  # fmt: skip
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
            self.dense_.warm_up(self.config.retrieval.dense_k)
            timings["dense_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.rules_ = BusinessRules(self.config.rules).fit(self.products_)
        self.refit_history(history, propensity)
        timings["features_s"] = time.perf_counter() - t
        self.build_timings_ = timings
        self._ranker_pair: tuple[Any, int | None] = (None, None)  # (ranker, version), swapped as one
        b = self.config.budgets
        # A batch of one query teaches the fixed part of a stage's cost, larger batches the per-item
        # part: queries for dense retrieval (one encoder call + one FAISS search), candidate pairs for
        # LTR (one request reranks up to `rerank_depth` of them).
        self._cost = {
            "dense": StageCost(b.initial_dense_ms, b.initial_dense_ms / 10, small_batch=1),
            "ltr": StageCost(b.initial_ltr_ms, b.initial_ltr_ms / self.config.retrieval.rerank_depth,
                             small_batch=self.config.retrieval.rerank_depth),
        }  # fmt: skip
        return self

    def refit_history(self, history: pd.DataFrame | None, propensity: Any = None) -> SearchEngine:
        """Rebuild the history features (CTR, affinity) from click-log impressions."""
        self.propensity_ = propensity
        self.features_ = SearchFeatures().fit(self.products_, self.bm25_, self.dense_, history, propensity)
        return self

    def set_ranker(self, ranker: Any, version: int | None = None) -> SearchEngine:
        """Serve ``ranker`` from the next batch on (hot reload: a batch in flight keeps the ranker and
        version it started with, read together from one tuple)."""
        self._ranker_pair = (ranker, version)
        return self

    @property
    def ranker_(self) -> Any:
        return self._ranker_pair[0]

    @property
    def ranker_version_(self) -> int | None:
        return self._ranker_pair[1]

    @property
    def model_version(self) -> int | None:
        """The registry version of the ranker served (the champion's); None before one is set."""
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

    # -- serving: request bodies -> one batch ---------------------------------------------------------
    def handle(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Answer request bodies ``{"q": text, "k": n, "user_id": id}`` (``k`` and ``user_id`` optional)
        as one batch on the champion path; one response per body, in order."""
        queries, user_ids, ks = self.parse_requests(requests)
        return self.search_batch(queries, user_ids, ks)

    def parse_requests(self, requests: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[int]]:
        """``(queries, user_ids, ks)`` of request bodies; the first bad field is an :class:`InputError`
        named as the service names it (``q``, ``k``, ``user_id``; ``requests[i].q`` in a larger batch)."""
        svc = self.config.service
        if isinstance(requests, Mapping) or not isinstance(requests, Sequence) or not len(requests):
            raise InputError("requests", requests, "must be a non-empty list of request bodies",
                             'send [{"q": "red shoes", "k": 10, "user_id": "u1"}]')  # fmt: skip
        queries, user_ids, ks = [], [], []
        for i, body in enumerate(requests):

            def name(f: str, i: int = i) -> str:
                return f if len(requests) == 1 else f"requests[{i}].{f}"

            if not isinstance(body, Mapping):
                raise InputError(name("body"), body, "must be a JSON object", 'send {"q": "red shoes"}')
            unknown = sorted(set(body) - set(REQUEST_FIELDS))
            if unknown:
                raise InputError(name(unknown[0]), body[unknown[0]], "unknown request field",
                                 f"send only {', '.join(REQUEST_FIELDS)}")  # fmt: skip
            queries.append(validate_query(body.get("q"), self.max_query_chars, name("q")))
            k = body.get("k", svc.k_default)
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or not svc.k_min <= k <= svc.k_max:
                raise InputError(name("k"), k, f"must be a whole number in [{svc.k_min}, {svc.k_max}]",
                                 f"ask for {svc.k_min}..{svc.k_max} results")  # fmt: skip
            ks.append(int(k))
            user = body.get("user_id", "")
            if (
                isinstance(user, bool)
                or not isinstance(user, str | int)
                or len(str(user)) > MAX_USER_ID_CHARS
            ):
                raise InputError(name("user_id"), user, f"must be a string of at most {MAX_USER_ID_CHARS} characters",
                                 "send the shopper's id, or leave it out for an anonymous search")  # fmt: skip
            user_ids.append(str(user))
        return queries, user_ids, ks

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
        """One search: :meth:`search_batch` of one."""
        return self.search_batch([query], [user_id], k, budget_ms=budget_ms, ranking=ranking, model=model)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        user_ids: Sequence[str] | None = None,
        k: int | Sequence[int] | None = None,
        *,
        budget_ms: float | None = None,
        ranking: str = "ltr",
        model: Any = None,
    ) -> list[dict[str, Any]]:
        """Top ``k`` results for each of ``queries`` with the parsed query, the batch's stage timings and
        what was skipped. ``k``: one for all or one per query (default ``service.k_default``).

        ``ranking`` picks the variant an experiment arm asks for (:data:`RANKINGS`): ``"ltr"`` (hybrid
        retrieval reranked by LambdaMART: the production path), ``"hybrid"`` (BM25 + dense fused, no
        LTR), ``"bm25"`` (BM25 only: no dense retrieval, no LTR), ``"dense"`` (dense only, no LTR).
        ``model``: a ranker to use instead of the engine's own (a registry alias other than the
        champion). Business rules apply to every variant. ``budget_ms`` is the batch's deadline
        (default ``budgets.deadline_ms``): every request of a batch waits for the whole batch.
        """
        if ranking not in RANKINGS:
            raise InputError("ranking", ranking, "unknown ranking variant", f"use one of {list(RANKINGS)}")
        cfg = self.config
        n = len(queries)
        users = [""] * n if user_ids is None else [str(u) for u in user_ids]
        if len(users) != n:
            raise InputError("user_ids", len(users), f"expected one per query ({n})", "align them")
        ks = _per_query(cfg.service.k_default if k is None else k, n)
        deadline = Deadline(budget_ms if budget_ms is not None else cfg.budgets.deadline_ms)
        timer = StageTimer(SYSTEM)
        safety = cfg.budgets.safety
        with timer.stage("parse"):
            parsed = self.parser_.parse(list(queries))
            texts = [_retrieval_text(p) for p in parsed]
        lists: list[Candidates] = []
        if ranking == "dense":
            timer.skip("bm25", "ranking variant: dense")
        else:
            with timer.stage("bm25"):
                expansions = [p.expansions for p in parsed]
                lists.append(self.bm25_.retrieve(texts, cfg.retrieval.bm25_k, expansions=expansions))
        lexical = bool(lists)
        vectors = None
        dense_cost = self._cost["dense"]
        if ranking == "bm25":
            timer.skip("dense", "ranking variant: bm25")
        elif self.dense_ is None or not cfg.retrieval.use_dense:
            timer.skip("dense", "disabled")
        elif deadline.allows(dense_cost.expect(n) * safety):
            started = time.perf_counter()
            with timer.stage("dense"):
                vectors = self.dense_.encode_queries(texts)
                lists.append(self.dense_.retrieve(texts, cfg.retrieval.dense_k, query_vectors=vectors))
            dense_cost.observe((time.perf_counter() - started) * 1000, n)
        else:
            timer.skip("dense", f"deadline: {deadline.remaining_ms():.1f} ms left, dense needs "
                                f"~{dense_cost.expect(n):.1f} ms")  # fmt: skip
            dense_cost.skipped()
        with timer.stage("fuse"):
            if len(lists) > 1:
                fused = rrf_fuse(lists, cfg.retrieval.candidates)
            elif lists:
                fused = lists[0]
            else:  # dense-only variant whose dense stage was skipped or unavailable: nothing retrieved
                fused = Candidates(np.full((n, 0), -1), np.full((n, 0), -1), np.zeros((n, 0)))
            keep = fused.rows >= 0
            rows = [fused.rows[i][keep[i]] for i in range(n)]
            scores = [fused.scores[i][keep[i]].astype(np.float64) for i in range(n)]
        ranked_by = "hybrid" if len(lists) > 1 else ("bm25" if lexical else "dense")
        champion, champion_version = self._ranker_pair  # one read: a hot reload cannot split the pair
        ranker = model if model is not None else champion
        # LTR reorders the best `rerank_depth` fused candidates of each query; the rest keep the fused
        # order below them (features and trees cost per candidate, and deep candidates rarely reach
        # the top 48).
        depth = np.array([min(len(r), cfg.retrieval.rerank_depth) for r in rows], dtype=np.int64)
        pairs = int(depth.sum())
        ltr_cost = self._cost["ltr"]
        if ranking != "ltr":
            timer.skip("ltr", f"ranking variant: {ranking}")
        elif ranker is None:
            timer.skip("ltr", "no ranker loaded")
        elif pairs and deadline.allows(ltr_cost.expect(pairs) * safety):
            started = time.perf_counter()
            batch = QueryBatch.from_parsed(list(queries), parsed, users, vectors)
            batch.understood = texts
            qi = np.repeat(np.arange(n), depth)
            heads_rows = np.concatenate([r[:d] for r, d in zip(rows, depth, strict=True)])
            with timer.stage("features"):
                X = self.features_.transform(batch, qi, heads_rows)
            with timer.stage("ltr"):
                heads = np.split(ranker.predict(X), np.cumsum(depth)[:-1])
                for i, head in enumerate(heads):
                    if not len(head):
                        continue
                    tail = scores[i][depth[i] :]
                    # Every reranked candidate stays above the tail, whatever the scales of the two scores.
                    offset = (head.min() - tail.max() - 1.0) if len(tail) else 0.0
                    scores[i] = np.concatenate([head, tail + offset])
            ltr_cost.observe((time.perf_counter() - started) * 1000, pairs)
            ranked_by = "ltr"
        elif pairs:
            timer.skip("ltr", f"deadline: {deadline.remaining_ms():.1f} ms left, ltr needs "
                              f"~{ltr_cost.expect(pairs):.1f} ms")  # fmt: skip
            ltr_cost.skipped()
        finals = []
        with timer.stage("rules"):
            for i in range(n):  # per query: each has its own filters, pins and diversity cut
                finals.append(self._apply_rules(queries[i], parsed[i], rows[i], scores[i], ks[i]))
        version = champion_version if model is None else getattr(model, "version_", None)
        timings = {s: round(v, 3) for s, v in timer.timings_ms.items()}
        total_ms = round(deadline.elapsed_ms(), 3)
        return [
            {
                "search_id": uuid.uuid4().hex,
                "query": queries[i],
                "user_id": users[i],
                "parsed": parsed[i].to_dict(),
                "ranked_by": ranked_by,
                "model_version": version,
                "results": self._results(final, final_scores),
                "rules": report.to_dict(),
                "timings_ms": dict(timings),
                "skipped": [dict(s) for s in timer.skipped],
                "total_ms": total_ms,
                "deadline_ms": deadline.budget_ms,
                "batch": n,
            }
            for i, (final, final_scores, report) in enumerate(finals)
        ]

    def _apply_rules(
        self, query: str, parsed: Any, rows: np.ndarray, scores: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        order = np.argsort(-scores, kind="stable")
        ent = parsed.entities
        final, report = self.rules_.apply(
            rows[order], price_min=ent.price_min, price_max=ent.price_max, category=ent.category,
            query=query, brand_in_query=ent.brand is not None, k=k,
        )  # fmt: skip
        # Scores of the final rows; a pinned product that retrieval did not find has none (NaN -> null).
        final_scores = np.full(len(final), np.nan)
        if len(rows) and len(final):
            by_row = np.argsort(rows, kind="stable")
            at = np.minimum(np.searchsorted(rows[by_row], final), len(rows) - 1)
            found = rows[by_row[at]] == final
            final_scores[found] = scores[by_row[at[found]]]
        return final, final_scores, report

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


def _per_query(k: int | Sequence[int], n: int) -> list[int]:
    if isinstance(k, int | np.integer):
        return [int(k)] * n
    ks = [int(v) for v in k]
    if len(ks) != n:
        raise InputError("k", len(ks), f"expected one per query ({n})", "pass one k, or one per query")
    return ks


def _retrieval_text(parsed: Any) -> str:
    """What retrieval searches for: the corrected text, or the original when understanding left nothing
    (a query that was only a price phrase)."""
    return parsed.corrected if parsed.corrected.strip() else parsed.original


# --------------------------------------------------------------------------------------------------
# Loading: the data folder and the champion of a workdir


def load_data(data_dir: Path, field: str = "--workdir") -> dict[str, Any]:
    """``products`` (required), ``clicklog`` (:class:`~mlsd.search.clicklog.ClickLog` of ``clicklog/``)
    and, when present, ``queries`` and ``qrels`` (a judged set) of a search data folder
    (``W/search/data``, written by ``mlsd search simulate --workdir W`` or an import)."""
    from mlsd.search.clicklog import ClickLog

    data_dir = Path(data_dir)
    products_file = data_dir / "products.parquet"
    if not products_file.exists():
        raise InputError(field, str(data_dir), "has no products.parquet",
                         "create the data first: mlsd search simulate --workdir W")  # fmt: skip
    out: dict[str, Any] = {
        "products": pd.read_parquet(products_file),
        "clicklog": ClickLog(data_dir / "clicklog"),
    }
    for name in ("queries", "qrels"):
        f = data_dir / f"{name}.parquet"
        out[name] = pd.read_parquet(f) if f.exists() else None
    return out


def load_engine(
    dirs: SystemDir,
    *,
    config: SearchConfig | None = None,
    dense: bool | None = None,
    cache_dir: str | Path | None = None,
    parser_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> SearchEngine:
    """The engine ``dirs`` serves: its catalog, history features from its click log, and the champion
    ranker of its registry (a retrieval-only champion, trained without a click log, serves BM25 + dense
    with no ranker). No champion: :class:`InputError` naming the commands that train one.

    ``dense`` and ``parser_options`` default to what the champion was trained with (its registry
    params): the served features are then the ones the ranker learned from.
    """
    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.embeddings import default_cache_dir
    from mlsd.search.ltr import load_ranker
    from mlsd.search.propensity import estimate_propensities

    champion = dirs.require_champion(MODEL_NAME)
    config = config or SearchConfig()
    data = load_data(dirs.data)
    impressions = data["clicklog"].impressions()
    use_dense = bool(champion.params.get("dense", False)) if dense is None else dense
    parser = champion.params.get("parser") or {} if parser_options is None else parser_options
    engine = SearchEngine(config, dense=use_dense, cache_dir=cache_dir or default_cache_dir(),
                          parser_options=dict(parser))  # fmt: skip
    engine.fit(
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
    # Load the champion by version (not by alias): a promotion between the two reads cannot split them.
    # A retrieval-only champion (trained without a click log) has no ranker: LTR is skipped, "no ranker
    # loaded", and answers are ranked by the fused BM25 + dense order.
    ranker = load_ranker(ModelRegistry(dirs.registry).artifact_path(MODEL_NAME, champion.version))
    engine.set_ranker(ranker, champion.version)
    engine.source_ = dirs  # where its click log and registry are (the service appends and polls there)
    return engine
