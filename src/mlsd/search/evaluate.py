"""``mlsd search evaluate``: BM25, dense, hybrid and judged LTR on a public relevance dataset.

Two settings:

- ``rerank`` (default): each query's judged products are its candidates; every model orders them.
- ``full``: every model retrieves from all products in the file; unjudged products count as gain 0.
  The LTR model reranks the hybrid candidates.

The LTR model (:mod:`mlsd.search.judged_ltr`: a bagged ridge, blended with LightGBM lambdarank
when there are enough judged queries) is trained by 5-fold cross-validation grouped by query on the
labels themselves, so each query is scored by a model that never saw it; any blend weight is chosen
by an inner CV inside each training fold. ``--nested`` replaces the LTR by ``ltr-nested``: inside
each outer training fold an inner CV grouped by query picks among a fixed grid of rankers
(:data:`mlsd.search.judged_ltr.CANDIDATE_GRID`), and the pick, refitted on the outer training fold,
scores the outer test fold; the features are computed once and the grid only refits models on them.
Metrics come from :mod:`mlsd.platform.metrics`: graded nDCG (gain ``2**g - 1``), MAP@10 and
recall@100 with "relevant" = grade >= 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform import metrics
from mlsd.platform.errors import InputError
from mlsd.search.data import RELEVANT_GRADE, SearchDataset
from mlsd.search.loaders import DATASETS, load_dataset
from mlsd.search.retrieval import BM25Index, Candidates, DenseIndex, rrf_fuse

SETTINGS = ("rerank", "full")
MODELS = ("bm25", "dense", "hybrid", "ltr")
LTR_DEPTH = 300  # hybrid candidates the LTR model reranks in the full setting
RETRIEVAL_DEPTH = 1000  # candidates each retriever gives the hybrid fusion, per query
METRIC_DEPTH = 100  # the deepest cut-off a metric reads (recall@100): only that much of a list is kept
# Queries per chunk in the full setting: retrieval, fusion and the LTR features of a chunk hold
# O(QUERY_CHUNK x (n_products + RETRIEVAL_DEPTH x 384)) at once, whatever the number of queries.
QUERY_CHUNK = 256
# Full setting: the LTR trains on every retrieved candidate (~300 per query, nearly all unjudged = 0),
# thousands of pairs where trees learn what separates judged from merely retrieved products; the
# blend keeps the weight the judged LTR had before the ridge bag (fixed, not re-tuned here).
FULL_LINEAR_WEIGHT = 0.7
OUTER_FOLDS = 5  # the LTR's cross-validation folds (JudgedLTR.n_folds), outer folds of --nested
INNER_FOLDS = 3  # --nested: inner CV folds inside each outer training fold
# --nested: the inner CV runs on at most this many training queries (a seeded sample): enough to rank
# a handful of candidates, and it bounds the inner lambdarank fits on the 5,000-query dev file.
INNER_QUERIES = 1000


def default_cache_dir() -> Path:
    return Path(os.environ.get("MLSD_CACHE_DIR", Path.home() / ".cache" / "mlsd")) / "embeddings"


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def _bar(total: int, desc: str, unit: str, quiet: bool):
    """A tqdm progress bar on stderr (stdout stays the report; ``--json`` keeps it one object)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=f"[evaluate] {desc}", unit=unit, file=sys.stderr, disable=quiet, leave=True)


def query_chunks(n_queries: int, chunk: int | None = None) -> list[slice]:
    """Consecutive slices of at most ``chunk`` (default ``QUERY_CHUNK``) queries covering ``range(n_queries)``.

    >>> query_chunks(5, 2)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    chunk = chunk or QUERY_CHUNK
    return [slice(lo, min(lo + chunk, n_queries)) for lo in range(0, n_queries, chunk)]


# -- ranking helpers ---------------------------------------------------------------------------------


def rank_pairs(
    query_index: np.ndarray,
    product_ids: np.ndarray,
    scores: np.ndarray,
    n_queries: int,
    width: int,
    seed: int = 0,
) -> np.ndarray:
    """``(n_queries, width)`` product ids ordered by score within each query (ties broken at random, seeded)."""
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(len(scores))
    order = np.lexsort((tiebreak, -np.asarray(scores, dtype=np.float64), query_index))
    qi = query_index[order]
    starts = np.searchsorted(qi, np.arange(n_queries))
    rank = np.arange(len(qi)) - starts[qi]
    out = np.full((n_queries, width), -1, dtype=np.int64)
    keep = rank < width
    out[qi[keep], rank[keep]] = product_ids[order][keep]
    return out


def ranking_report(
    recommended: np.ndarray, judged: list[dict[int, float]], *, with_recall: bool
) -> dict[str, float]:
    """nDCG@10, nDCG@48, MAP@10 (+ recall@100) of ``recommended`` against graded judgements."""
    relevant = [np.fromiter((p for p, g in j.items() if g >= RELEVANT_GRADE), dtype=np.int64) for j in judged]
    report = {
        "ndcg@10": metrics.graded_ndcg_at_k(recommended, judged, 10),
        "ndcg@48": metrics.graded_ndcg_at_k(recommended, judged, 48),
        "map@10": metrics.map_at_k(recommended, relevant, 10),
    }
    if with_recall:
        report["recall@100"] = metrics.recall_at_k(recommended, relevant, 100)
    return {k: round(float(v), 4) for k, v in report.items()}


# -- the pieces every model shares -----------------------------------------------------------------


class _Context:
    """Indexes, embeddings and understood queries of one dataset, built once."""

    def __init__(self, ds: SearchDataset, *, cache_dir: Path | None, quiet: bool, dense: bool = True) -> None:
        from mlsd.search.judged_ltr import PairContext

        self.ds = ds
        self.products = ds.products
        self.row_of = pd.Series(np.arange(len(ds.products)), index=ds.products["product_id"].to_numpy())
        self.query_texts = ds.queries["text"].tolist()
        _progress(f"BM25 over {len(ds.products)} products", quiet)
        self.bm25 = BM25Index().fit(ds.products)
        understood, expansions = understand_queries(self.query_texts, ds)
        self.dense = None
        qv = np.zeros((len(self.query_texts), 0), dtype=np.float32)
        title_vectors = None
        embed_terms = None
        if dense:
            from mlsd.search.embeddings import embed_products, load_encoder

            _progress(f"MiniLM embeddings of {len(ds.products)} products (cached in {cache_dir})", quiet)
            encoder = load_encoder()
            self.dense = DenseIndex(cache_dir=str(cache_dir) if cache_dir else None).fit(
                ds.products, encoder=encoder, progress=not quiet
            )
            title_vectors = _title_vectors(ds, self.dense.embeddings_, encoder, cache_dir, quiet)
            qv = encoder.encode(understood)

            def embed_terms(words: list[str]) -> np.ndarray:
                # Single words embedded like titles, cached by vocabulary fingerprint like the catalog.
                table = pd.DataFrame({"product_id": np.arange(len(words)), "title": words})
                return embed_products(
                    table, encoder, cache_dir=cache_dir, progress=False, description_chars=0
                )

        self.query_vectors = qv
        self.pairs_ctx = PairContext(self.query_texts, understood, expansions, qv)
        from mlsd.search.judged_ltr import JudgedFeatures

        self.features = JudgedFeatures().fit(
            ds.products,
            self.bm25,
            self.dense.embeddings_ if self.dense else None,
            title_vectors,
            embed_terms=embed_terms,
        )


def _title_vectors(
    ds: SearchDataset, product_vectors: np.ndarray, encoder, cache_dir: Path | None, quiet: bool
) -> np.ndarray:
    """MiniLM vectors of the titles alone; the product vectors themselves when the encoder saw only
    the title anyway (Home Depot: title is the only product text), instead of embedding it twice."""
    from mlsd.search.data import normalize_products
    from mlsd.search.embeddings import embed_products, product_texts

    titles_only = normalize_products(ds.products[["product_id", "title"]])
    if product_texts(titles_only, description_chars=0) == product_texts(normalize_products(ds.products)):
        return product_vectors
    return embed_products(titles_only, encoder, cache_dir=cache_dir, progress=not quiet, description_chars=0)


def understand_queries(texts: Sequence[str], ds: SearchDataset) -> tuple[list[str], list[list[str]]]:
    """Spell-corrected / translated query text and synonym expansions, from the query-understanding
    pipeline fitted on this dataset's catalog and query log."""
    from mlsd.search.query import QueryUnderstanding

    qu = QueryUnderstanding().fit(ds.products, query_log=list(texts))
    parsed = qu.parse(list(texts))
    return [p.corrected for p in parsed], [list(p.expansions) for p in parsed]


def pair_features(
    ctx: _Context, qi: np.ndarray, rows: np.ndarray, *, chunk: int | None = None, quiet: bool = True
) -> np.ndarray:
    """LTR features of the pairs ``(qi, rows)``, computed ``chunk`` queries at a time.

    Every feature is a function of one query's own pairs (list-relative ones included), so chunking
    by query gives the same matrix while the per-pair float64 temporaries (384-wide vector gathers)
    stay ``chunk`` queries deep. Only the float32 result is ``n_pairs`` long.
    """
    chunk = chunk or QUERY_CHUNK
    order = np.argsort(qi, kind="stable")
    sorted_qi = qi[order]
    queries = np.unique(sorted_qi)
    if len(queries) <= chunk:
        return ctx.features.transform(ctx.pairs_ctx, qi, rows)
    ctx.features.prepare_terms(ctx.pairs_ctx, rows)
    out: np.ndarray | None = None
    bar = _bar(len(queries), "LTR features", "query", quiet)
    for part in query_chunks(len(queries), chunk):
        lo, hi = np.searchsorted(sorted_qi, [queries[part][0], queries[part][-1] + 1])
        take = order[lo:hi]
        X = ctx.features.transform(ctx.pairs_ctx, qi[take], rows[take])
        if out is None:
            out = np.empty((len(qi), X.shape[1]), dtype=np.float32)
        out[take] = X
        bar.update(len(queries[part]))
    bar.close()
    return out


def _ltr_scores(
    ctx: _Context,
    qi: np.ndarray,
    rows: np.ndarray,
    grades: np.ndarray,
    seed: int,
    linear_weight: float | None = None,
    quiet: bool = True,
) -> np.ndarray:
    from mlsd.search.judged_ltr import JudgedLTR

    X = pair_features(ctx, qi, rows, quiet=quiet)
    # linear_weight=None: the ridge bag alone below 200 training queries, else chosen by an inner CV
    # inside each training fold (nested CV); see JudgedLTR.
    ltr = JudgedLTR(linear_weight=linear_weight, seed=seed)
    bar = _bar(ltr.n_folds, "LTR cross-validation", "fold", quiet)
    scores = ltr.cross_val_predict(X, grades, qi, on_fold=lambda: bar.update(1))
    bar.close()
    return scores


def _evaluate_rerank(ctx: _Context, seed: int, quiet: bool, nested: dict | None = None) -> dict:
    ds = ctx.ds
    qid_to_index = pd.Series(np.arange(len(ds.queries)), index=ds.queries["query_id"].to_numpy())
    j = ds.judgements
    qi = qid_to_index.loc[j["query_id"].to_numpy()].to_numpy()
    rows = ctx.row_of.loc[j["product_id"].to_numpy()].to_numpy()
    pids = j["product_id"].to_numpy(np.int64)
    grades = j["grade"].to_numpy(np.float64)
    n_q = len(ds.queries)
    width = max(int(np.bincount(qi).max()), 48)
    judged = _judged_lists(ds, qid_to_index)
    scores: dict[str, np.ndarray] = {}
    feats = ctx.bm25.field_scores(ctx.query_texts, qi, rows)
    scores["bm25"] = feats[:, -1]
    if ctx.dense is not None:
        scores["dense"] = ctx.dense.cosine(ctx.query_vectors, qi, rows)
        from mlsd.search.judged_ltr import group_rank

        # Hybrid in the rerank setting: reciprocal-rank fusion of the two orders of the judged list.
        sizes = np.bincount(qi)[qi]
        r_bm25 = group_rank(scores["bm25"], qi) * sizes
        r_dense = group_rank(scores["dense"], qi) * sizes
        scores["hybrid"] = 1.0 / (61.0 + r_bm25) + 1.0 / (61.0 + r_dense)
    selection = None
    if nested is None:
        _progress(f"LTR: {len(qi)} judged pairs, 5-fold CV grouped by query", quiet)
        scores["ltr"] = _ltr_scores(ctx, qi, rows, grades, seed, quiet=quiet)
    else:
        _progress(f"nested LTR selection: {len(qi)} judged pairs", quiet)
        scores["ltr-nested"], selection = _nested_scores(
            ctx, qi, rows, grades, dict(scores), seed, quiet, **nested
        )
    out = {
        name: ranking_report(rank_pairs(qi, pids, s, n_q, width, seed), judged, with_recall=False)
        for name, s in scores.items()
    }
    return out if selection is None else {**out, "nested": selection}


def _nested_scores(
    ctx: _Context,
    qi: np.ndarray,
    rows: np.ndarray,
    grades: np.ndarray,
    fixed: dict[str, np.ndarray],
    seed: int,
    quiet: bool,
    *,
    inner_folds: int,
    inner_queries: int | None,
    transfer: SearchDataset | None = None,
    cache_dir: Path | None = None,
) -> tuple[np.ndarray, dict]:
    """Out-of-fold scores of :class:`~mlsd.search.judged_ltr.NestedSelection` over the candidate grid,
    and what it picked. The features are computed once; the grid only refits models on them.
    ``fixed`` holds the unlearned rankers' scores of the pairs (bm25 / dense / hybrid); ``transfer``
    adds the ``transfer`` candidate (:func:`transfer_scores`)."""
    from mlsd.search.judged_ltr import JudgedLTR, NestedSelection

    X = pair_features(ctx, qi, rows, quiet=quiet)
    names = list(ctx.features.feature_names_)
    if transfer is not None:
        fixed = {**fixed, "transfer": transfer_scores(transfer, X, names, qi, cache_dir, seed, quiet)}
    selector = NestedSelection(
        n_folds=OUTER_FOLDS,
        inner_folds=inner_folds,
        inner_queries=inner_queries,
        ltr=JudgedLTR(seed=seed),
        seed=seed,
    )
    grid = [c.name for c in selector.usable(fixed)]
    _progress(
        f"nested CV: {selector.n_folds} outer folds x {inner_folds} inner folds grouped by query, "
        f"grid {', '.join(grid)}",
        quiet,
    )
    bar = _bar(selector.n_folds, "nested outer folds", "fold", quiet)

    def on_fold(k: int, pick: str, inner: dict[str, float]) -> None:
        bar.update(1)
        _progress(f"outer fold {k + 1}: picked {pick} (inner nDCG@10 {inner[pick]:.4f})", quiet)

    scores = selector.cross_val_predict(X, grades, qi, feature_names=names, fixed=fixed, on_fold=on_fold)
    bar.close()
    return scores, {
        "outer_folds": selector.n_folds,
        "inner_folds": inner_folds,
        "inner_queries": inner_queries,
        "grid": grid,
        "picks": selector.fold_picks_,
        "inner_ndcg@10": selector.inner_scores_,
    }


def transfer_scores(
    source: SearchDataset,
    X: np.ndarray,
    feature_names: list[str],
    qi: np.ndarray,
    cache_dir: Path | None,
    seed: int,
    quiet: bool,
) -> np.ndarray:
    """Scores of the pairs ``X`` (rows grouped by ``qi``) by a :class:`JudgedLTR` trained on all of
    ``source``'s judged pairs (its blend weight chosen by its own inner CV on ``source``): a ranker
    that saw none of the evaluated queries, so it can sit in the nested grid as a fixed candidate."""
    from mlsd.search.judged_ltr import JudgedLTR

    _progress(
        f"transfer: a JudgedLTR trained on {source.name} ({source.summary()['queries']} queries)", quiet
    )
    src = _Context(source, cache_dir=cache_dir, quiet=quiet, dense=True)
    qid_to_index = pd.Series(np.arange(len(source.queries)), index=source.queries["query_id"].to_numpy())
    j = source.judgements
    s_qi = qid_to_index.loc[j["query_id"].to_numpy()].to_numpy()
    s_rows = src.row_of.loc[j["product_id"].to_numpy()].to_numpy()
    X_source = pair_features(src, s_qi, s_rows, quiet=quiet)
    if list(src.features.feature_names_) != feature_names:
        raise InputError(
            "--transfer-from",
            source.name,
            "its features differ from the evaluated data's",
            "evaluate both with the dense model on (drop --no-dense)",
        )
    model = JudgedLTR(seed=seed).fit(X_source, j["grade"].to_numpy(np.float64), s_qi)
    _progress(f"transfer: trained, blend weight (ridge bag) {model.linear_weight_}", quiet)
    return model.predict(X, qi)


def _judged_lists(ds: SearchDataset, qid_to_index: pd.Series) -> list[dict[int, float]]:
    by_query = ds.judged_lists()
    out: list[dict[int, float]] = [{} for _ in range(len(qid_to_index))]
    for qid, judged in by_query.items():
        out[int(qid_to_index.loc[qid])] = judged
    return out


def _retrieve_chunk(ctx: _Context, part: slice, depth: int, keep: int) -> dict[str, Candidates]:
    """Every model's candidates for the queries in ``part``, cut to what the metrics and LTR read."""
    texts = ctx.query_texts[part]
    lists = {"bm25": ctx.bm25.retrieve(texts, depth)}
    if ctx.dense is not None:
        lists["dense"] = ctx.dense.retrieve(texts, depth, query_vectors=ctx.query_vectors[part])
        understood_bm25 = ctx.bm25.retrieve(
            ctx.pairs_ctx.understood[part], depth, expansions=ctx.pairs_ctx.expansions[part]
        )
        lists["hybrid"] = rrf_fuse(
            [lists["bm25"], understood_bm25, lists["dense"]], depth, weights=(0.5, 0.5, 1.0)
        )
    base = "hybrid" if "hybrid" in lists else "bm25"
    return {name: _head(c, keep if name == base else min(keep, METRIC_DEPTH)) for name, c in lists.items()}


def _head(c: Candidates, k: int) -> Candidates:
    return Candidates(c.product_ids[:, :k].copy(), c.rows[:, :k].copy(), c.scores[:, :k].copy())


def _retrieve_all(ctx: _Context, depth: int, keep: int, quiet: bool) -> dict[str, Candidates]:
    """Candidates of all queries, ``QUERY_CHUNK`` queries at a time (a dense score matrix of all
    queries x all products is never built, and only the kept head of each list is stored)."""
    chunks = query_chunks(len(ctx.query_texts))
    parts: list[dict[str, Candidates]] = []
    bar = _bar(len(ctx.query_texts), f"retrieval ({depth} per query)", "query", quiet)
    for part in chunks:
        parts.append(_retrieve_chunk(ctx, part, depth, keep))
        bar.update(part.stop - part.start)
    bar.close()
    return {
        name: Candidates(
            *(np.concatenate([getattr(p[name], f) for p in parts]) for f in Candidates.__dataclass_fields__)
        )
        for name in parts[0]
    }


def _evaluate_full(
    ctx: _Context, seed: int, quiet: bool, ltr_depth: int = LTR_DEPTH, nested: dict | None = None
) -> dict:
    ds = ctx.ds
    qid_to_index = pd.Series(np.arange(len(ds.queries)), index=ds.queries["query_id"].to_numpy())
    judged = _judged_lists(ds, qid_to_index)
    depth = min(RETRIEVAL_DEPTH, len(ds.products))
    n_ltr = min(ltr_depth, depth)
    _progress(f"retrieving {depth} candidates per query for {len(ds.queries)} queries", quiet)
    lists = _retrieve_all(ctx, depth, max(n_ltr, METRIC_DEPTH), quiet)
    base = lists.get("hybrid", lists["bm25"])
    qi = np.repeat(np.arange(len(ds.queries)), n_ltr)
    rows = base.rows[:, :n_ltr].ravel()
    keep = rows >= 0
    qi, rows = qi[keep], rows[keep]
    pids = ctx.products["product_id"].to_numpy(np.int64)[rows]
    grades = np.fromiter(
        (judged[q].get(p, 0.0) for q, p in zip(qi.tolist(), pids.tolist(), strict=True)),
        dtype=np.float64,
        count=len(qi),
    )
    out = {name: ranking_report(c.product_ids, judged, with_recall=True) for name, c in lists.items()}
    if nested is None:
        _progress(f"LTR: {len(qi)} candidate pairs (unjudged = 0), 5-fold CV grouped by query", quiet)
        ltr = _ltr_scores(ctx, qi, rows, grades, seed, linear_weight=FULL_LINEAR_WEIGHT, quiet=quiet)
        name, selection = "ltr", None
    else:
        _progress(f"nested LTR selection: {len(qi)} candidate pairs (unjudged = 0)", quiet)
        # The unlearned candidates reorder the same hybrid pool the LTR reranks.
        fixed = {"bm25": ctx.bm25.field_scores(ctx.query_texts, qi, rows)[:, -1]}
        if ctx.dense is not None:
            fixed["dense"] = ctx.dense.cosine(ctx.query_vectors, qi, rows)
            fixed["hybrid"] = base.scores[:, :n_ltr].ravel()[keep]
        ltr, selection = _nested_scores(ctx, qi, rows, grades, fixed, seed, quiet, **nested)
        name = "ltr-nested"
    reranked = rank_pairs(qi, pids, ltr, len(ds.queries), max(n_ltr, METRIC_DEPTH), seed)
    out[name] = ranking_report(reranked, judged, with_recall=True)
    return out if selection is None else {**out, "nested": selection}


def evaluate(
    ds: SearchDataset,
    setting: str = "rerank",
    *,
    cache_dir: Path | None = None,
    dense: bool = True,
    seed: int = 0,
    quiet: bool = False,
    ltr_depth: int = LTR_DEPTH,
    nested: bool = False,
    inner_folds: int = INNER_FOLDS,
    inner_queries: int | None = INNER_QUERIES,
    transfer: SearchDataset | None = None,
) -> dict:
    """The evaluate report for ``ds``: ``{"dataset", "setting", "data", "models": {name: metrics}}``.

    ``nested=True``: the LTR is the pick of a nested CV over ``judged_ltr.CANDIDATE_GRID`` (model
    ``ltr-nested``), and the report gains ``"nested"``: the grid, each outer fold's pick and the inner
    nDCG@10 of every candidate (``inner_folds`` folds over at most ``inner_queries`` training queries).
    ``transfer`` (rerank setting, with ``nested``): another judged data set whose JudgedLTR joins the
    grid as the fixed candidate ``transfer``.
    """
    if setting not in SETTINGS:
        raise InputError("--setting", setting, "unknown setting", f"choose from {', '.join(SETTINGS)}")
    if not 1 <= ltr_depth <= RETRIEVAL_DEPTH:
        raise InputError(
            "--ltr-depth",
            ltr_depth,
            "out of range",
            f"rerank 1..{RETRIEVAL_DEPTH} hybrid candidates per query",
        )
    n_judged = ds.judgements["query_id"].nunique()
    if n_judged < 2:
        raise InputError(
            "--path",
            ds.name,
            f"has {n_judged} judged query",
            "the LTR is cross-validated by query: give it 2 or more",
        )
    if transfer is not None and not (nested and setting == "rerank" and dense):
        raise _transfer_combination_error(transfer.name)
    nested_settings = None
    if nested:
        _check_nested(n_judged, inner_folds, inner_queries)
        nested_settings = {"inner_folds": inner_folds, "inner_queries": inner_queries}
        if transfer is not None:
            nested_settings.update(transfer=transfer, cache_dir=cache_dir)
    ctx = _Context(ds, cache_dir=cache_dir, quiet=quiet, dense=dense)
    models = (
        _evaluate_rerank(ctx, seed, quiet, nested_settings)
        if setting == "rerank"
        else _evaluate_full(ctx, seed, quiet, ltr_depth, nested_settings)
    )
    report = {
        "dataset": ds.name,
        "setting": setting,
        "data": ds.summary(),
        "models": {m: models[m] for m in (*MODELS, "ltr-nested") if m in models},
    }
    if nested:
        report["nested"] = models["nested"]
    return report


def _transfer_combination_error(value: str) -> InputError:
    return InputError(
        "--transfer-from",
        value,
        "a transferred ranker is a candidate of the nested rerank grid only",
        "add --nested with --setting rerank (and the dense model on), or drop --transfer-from",
    )


def _check_nested(n_judged: int, inner_folds: int, inner_queries: int | None) -> None:
    if inner_folds < 2:
        raise InputError("--inner-folds", inner_folds, "too few folds", "give 2 or more (default 3)")
    if inner_queries is not None and inner_queries < 2 * inner_folds:
        raise InputError(
            "--inner-queries",
            inner_queries,
            f"too few for {inner_folds} inner folds",
            f"give at least {2 * inner_folds} (2 per inner fold), or 0 for all training queries",
        )
    if n_judged < OUTER_FOLDS + inner_folds:
        raise InputError(
            "--nested",
            n_judged,
            "too few judged queries for a nested CV",
            f"give {OUTER_FOLDS + inner_folds} or more judged queries ({OUTER_FOLDS} outer x "
            f"{inner_folds} inner folds), or drop --nested",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="which public relevance dataset")
    parser.add_argument(
        "--path", required=True, help="the dataset file or folder (e.g. ../shared/data/crowdflower-sample)"
    )
    parser.add_argument(
        "--setting",
        default="rerank",
        choices=SETTINGS,
        help="rerank: order each query's judged products; full: retrieve from all products",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="embedding cache (default: $MLSD_CACHE_DIR or ~/.cache/mlsd)"
    )
    parser.add_argument(
        "--no-dense", action="store_true", help="skip the MiniLM bi-encoder (BM25 + LTR only)"
    )
    parser.add_argument(
        "--ltr-depth",
        type=int,
        default=LTR_DEPTH,
        help=f"full setting: hybrid candidates per query the LTR reranks (default {LTR_DEPTH}); "
        "memory and time of the LTR stage grow with it",
    )
    parser.add_argument(
        "--nested",
        action="store_true",
        help="nested CV: inside each outer training fold an inner CV grouped by query picks the LTR "
        "among a fixed grid (judged_ltr.CANDIDATE_GRID); reports model ltr-nested and each fold's pick",
    )
    parser.add_argument(
        "--inner-folds",
        type=int,
        default=None,
        help=f"with --nested: inner CV folds (default {INNER_FOLDS})",
    )
    parser.add_argument(
        "--inner-queries",
        type=int,
        default=None,
        help=f"with --nested: the inner CV uses at most this many of the outer training queries, a seeded "
        f"sample (default {INNER_QUERIES}; 0 = all)",
    )
    parser.add_argument(
        "--transfer-from",
        default=None,
        metavar="PATH",
        help="with --nested --setting rerank: a Home Depot file whose JudgedLTR (trained on all its judged "
        "pairs) joins the grid as the candidate 'transfer' (e.g. ../shared/data/home-depot-dev)",
    )
    parser.add_argument("--seed", type=int, default=0, help="fold assignment of queries (outer and inner)")
    parser.add_argument("--json", action="store_true", help="print ONE JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise InputError("--path", str(path), "does not exist", "point it at the dataset file or folder")
    ds = load_dataset(args.dataset, path)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    nested = bool(getattr(args, "nested", False))
    inner_folds = getattr(args, "inner_folds", None)
    inner_queries = getattr(args, "inner_queries", None)
    transfer_path = getattr(args, "transfer_from", None)
    for flag, value in (
        ("--inner-folds", inner_folds),
        ("--inner-queries", inner_queries),
        ("--transfer-from", transfer_path),
    ):
        if value is not None and not nested:
            raise InputError(flag, value, "only applies to a nested CV", "add --nested, or drop it")
    transfer = None
    if transfer_path is not None:
        if not Path(transfer_path).exists():
            raise InputError(
                "--transfer-from",
                transfer_path,
                "does not exist",
                "point it at a Home Depot train.csv or folder",
            )
        if args.setting != "rerank" or args.no_dense:
            raise _transfer_combination_error(transfer_path)
        transfer = load_dataset("homedepot", Path(transfer_path))
    report = evaluate(
        ds,
        args.setting,
        cache_dir=cache_dir,
        dense=not args.no_dense,
        seed=args.seed,
        quiet=bool(args.json),
        ltr_depth=args.ltr_depth,
        nested=nested,
        inner_folds=INNER_FOLDS if inner_folds is None else inner_folds,
        inner_queries=INNER_QUERIES if inner_queries is None else (inner_queries or None),
        transfer=transfer,
    )
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['dataset']} ({report['setting']}): {report['data']}")
        for name, m in report["models"].items():
            print(f"  {name:<10} " + "  ".join(f"{k}={v:.4f}" for k, v in m.items()))
        if "nested" in report:
            print(f"  nested picks per outer fold: {', '.join(report['nested']['picks'])}")
    return 0
