"""Training the search ranker: LambdaMART from the click log, registered, gated and promoted.

In data-flow order:

* :func:`training_pairs` -- the training frame, point in time: history features from the impressions
  before a cutoff, labels from the rest; :func:`train_ranker` -- LambdaMART with IPS (or on raw
  clicks) on it; :func:`pair_features` featurises logged pairs the
  way the drift monitor does; :func:`reference_sample` is the drift reference saved with the model.
* :class:`SearchSteps` -- the search half of a retrain job (:class:`mlsd.platform.retraining.RetrainSteps`):
  ``window`` (every click-log impression up to the end of the run date, UTC; default the log's last
  day; a date outside the log is an InputError naming ``--date``), ``train`` (fit the engine, estimate
  propensities, train LambdaMART with IPS, save the ranker with its propensities and drift
  reference) and ``gate``. The platform's :func:`~mlsd.platform.retraining.retrain` does the rest:
  fingerprint -> earlier run? -> register -> ``challenger`` alias -> gate -> promote -> report in
  ``W/search/runs``.
* :func:`train` (``mlsd search train --workdir W``) and :func:`retrain` (the daily job, ``mlsd pipeline
  run daily``) are both that job: ``train`` with the settings asked for (dense by default), ``retrain``
  with the champion's settings, so its gate compares like with like. Re-running either on the same data
  and settings registers nothing.

The gate: the challenger and the champion are scored on the *same* offline evaluation, and the result
goes through the ship rule (:func:`ship_decision`): a challenger ships only when the offline evaluation
and the online A/B test agree. Offline worse: rejected. Offline better: **held** (the ``challenger`` alias,
not promoted) until its online test's result is in ``W/search/monitoring/online/v<N>.json``
(:func:`write_online_result`; ``mlsd experiment run search --arms ltr,challenger`` writes it on a
simulated world); the scheduled job (:func:`retrain`) trains nothing while a candidate waits (at most
:data:`ONLINE_WAIT_DAYS`), and decides as soon as the result is there (:func:`review_held`).

* With a judged set (``qrels.parquet``: graded query-product pairs): nDCG@10 on it, history features
  from the same window (:data:`GATE_METRIC`; the simulator writes its true grades there).
* Without one, on a click log: the counterfactual gate (:mod:`mlsd.search.counterfactual`). The
  latest ``holdout_share`` of the window's searches is kept out of training (ranker, history features
  and propensities), and both versions are scored by the clipped-IPS estimate of their top-10 clicks
  when re-ordering those held-out pages (:data:`~mlsd.search.counterfactual.IPS_METRIC`), with the
  propensities fitted in training. It reads no judgement and no simulator truth.
* Neither (no click log and no judged set): registered as challenger only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.jsonio import write_json
from mlsd.platform.retraining import Trained, Verdict, Window, resolve_run_date
from mlsd.platform.retraining import retrain as platform_retrain
from mlsd.platform.system import SystemDir
from mlsd.search.config import SearchConfig
from mlsd.search.counterfactual import IPS_METRIC, compare_ips, holdout_split, ips_clicks, ranker_scores
from mlsd.search.engine import FEATURE_NAMES, MODEL_NAME, SYSTEM, SearchEngine, load_data
from mlsd.search.features import normalize_queries

GATE_METRIC = "truth_ndcg@10"
HOLDOUT_SHARE = 0.2  # the latest searches the counterfactual gate holds out of training
DAY = 86_400


# --------------------------------------------------------------------------------------------------
# LambdaMART from the click log


@dataclass
class TrainingPairs:
    """The ranker's training frame: one row per (query, product) pair labelled in ``window``.

    ``X`` holds the pairs' features, every history feature (CTR, conversion, user affinity) computed
    from ``history`` = the impressions strictly before ``cutoff``; ``gain`` and ``query_index`` come from
    ``window`` = the impressions at or after it. No label of the window reaches a feature.
    """

    X: np.ndarray
    gain: np.ndarray
    query_index: np.ndarray
    labels: pd.DataFrame  # query, product_id, gain (random negatives last, gain 0)
    n_logged: int  # rows of labels that were logged pairs (the rest are random negatives)
    cutoff: int
    history: pd.DataFrame
    window: pd.DataFrame
    propensity: Any


def training_pairs(
    engine: SearchEngine,
    impressions: pd.DataFrame,
    *,
    ips: bool = True,
    propensity: Any = None,
    config: SearchConfig | None = None,
    history_share: float = 0.5,
    cutoff: int | None = None,
) -> TrainingPairs:
    """Point in time: the engine's history features refit on the impressions before ``cutoff`` (default
    the ``history_share`` quantile of the log's times), labels from the rest (IPS-weighted when ``ips``).
    Leaves the engine's history features as they were fitted here."""
    from mlsd.search.ltr import pair_labels
    from mlsd.search.propensity import estimate_propensities

    config = config or engine.config
    if ips and propensity is None:
        propensity = estimate_propensities(impressions, clip=config.ltr.propensity_clip)
    ts = impressions["ts"].to_numpy()
    cutoff = int(np.quantile(ts, history_share)) if cutoff is None else int(cutoff)
    history = impressions[ts < cutoff]
    window = impressions[ts >= cutoff]
    engine.refit_history(history, propensity if ips else None)
    labels = pair_labels(
        window, propensity if ips else None, config.objective, shrink=config.ltr.label_shrink
    )
    texts, qi = np.unique(labels["query"].to_numpy(), return_inverse=True)
    rows = engine.row_of_id_.reindex(labels["product_id"].to_numpy()).to_numpy()
    ok = ~np.isnan(rows)
    labels, qi, rows = labels[ok], qi[ok], rows[ok].astype(np.int64)
    n_logged = len(labels)
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
    return TrainingPairs(X, labels["gain"].to_numpy(), qi, labels.reset_index(drop=True), n_logged,
                         cutoff, history, window, propensity)  # fmt: skip


def train_ranker(
    engine: SearchEngine,
    impressions: pd.DataFrame,
    *,
    ips: bool = True,
    propensity: Any = None,
    config: SearchConfig | None = None,
    history_share: float = 0.5,
) -> tuple[Any, dict[str, Any]]:
    """LambdaMART from the click log's :func:`training_pairs` (features from the first ``history_share``
    of the log by time, labels from the rest). ``ips`` weights outcomes by 1/propensity (estimated from
    the log when not given). Returns ``(ranker, report)``; the engine's history features are left as
    trained.
    """
    from mlsd.search.ltr import LambdaMARTRanker

    config = config or engine.config
    pairs = training_pairs(
        engine, impressions, ips=ips, propensity=propensity, config=config, history_share=history_share
    )
    X, n_logged, history, window = pairs.X, pairs.n_logged, pairs.history, pairs.window
    ranker = LambdaMARTRanker(config.ltr).fit(X, pairs.gain, pairs.query_index)
    # The drift reference: the logged pairs the ranker learned from (not the random negatives, which
    # serving never shows), with its own scores as "prediction".
    ranker.reference_ = reference_sample(X[:n_logged], ranker.predict(X[:n_logged]), seed=config.ltr.seed)
    ranker.reference_meta_ = {
        "history_impressions": int(len(history)),
        "history_from_ts": int(history["ts"].min()) if len(history) else None,
        "label_window_ts": [int(window["ts"].min()), int(window["ts"].max())] if len(window) else None,
        "pairs": int(n_logged),
    }
    report = {
        "ips": ips,
        "training_pairs": len(pairs.labels),
        "random_negatives": int(len(pairs.labels) - n_logged),
        "training_queries": int(len(np.unique(pairs.query_index))),
        "history_impressions": len(history),
        "label_impressions": len(window),
        "propensity": pairs.propensity.to_dict() if (ips and pairs.propensity is not None) else None,
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


# What each feature needs from the data; a feature whose need is missing is dropped (constant, so the
# trees never split on it) and the model card says so.
CATALOG_NEEDS: dict[str, str] = {
    "bm25_brand": "brand", "bm25_category": "category", "bm25_attributes": "attributes",
    "bm25_description": "description", "review_score": "rating", "rating": "rating",
    "log_reviews": "review_count", "price_pct": "price", "log_price": "price", "return_rate": "return_rate",
    "margin": "margin", "promoted": "promoted", "match_brand": "brand", "match_category": "category",
    "price_in_range": "price",
}  # fmt: skip
HISTORY_FEATURES: tuple[str, ...] = ("ctr_product", "cvr_product", "ctr_query_product", "log_impressions",
                                     "aff_brand", "aff_category")  # fmt: skip


def feature_card(products: pd.DataFrame, *, has_events: bool, dense: bool) -> dict[str, Any]:
    """``{"used": [...], "dropped": {feature: why}}``: the ranker's features this data can feed."""
    dropped: dict[str, str] = {}
    for name, column in CATALOG_NEEDS.items():
        values = products[column] if column in products.columns else None
        empty = values is None or (values.isna() | (values.astype(str).str.strip() == "")).all()
        if empty:
            dropped[name] = f"the catalog has no {column}"
    if not has_events:
        for name in HISTORY_FEATURES:
            dropped[name] = "no click log"
    if not dense:
        dropped["dense_cos"] = dropped["dense_gap"] = "dense retrieval is off"
    return {"used": [f for f in FEATURE_NAMES if f not in dropped], "dropped": dropped}


def window_fingerprint(impressions: pd.DataFrame) -> str:
    """The data fingerprint of a training window (what idempotent retraining compares)."""
    from mlsd.platform.registry import fingerprint

    return fingerprint(impressions[["search_id", "product_id", "position", "clicked", "purchased"]])


def judged_ndcg(engine: SearchEngine, ranker: Any, queries: pd.DataFrame, qrels: pd.DataFrame) -> float:
    """nDCG@10 of ``ranker`` over the judged set (every judged pair of each query, ranked by its score)
    with the engine's current history features; ``ranker=None``: the retrieval-only order (BM25 and
    dense ranks of the pairs, reciprocal-rank fused)."""
    from mlsd.search.ltr import ground_truth_ndcg

    return round(ground_truth_ndcg(_pair_scorer(engine, ranker), queries, qrels, engine.row_of_id_), 4)


def judged_ndcg_by_query(
    engine: SearchEngine, ranker: Any, queries: pd.DataFrame, qrels: pd.DataFrame
) -> pd.Series:
    """nDCG@10 of ``ranker`` (None: the retrieval-only order) on each judged query with a relevant
    product (index: ``query_id``): what a paired comparison of two versions needs (:func:`judged_ndcg`
    is their mean)."""
    from mlsd.search.ltr import ground_truth_ndcg

    score = _pair_scorer(engine, ranker)
    graded = np.sort(qrels[qrels["grade"] > 0]["query_id"].unique())
    values = {
        qid: ground_truth_ndcg(score, queries, qrels, engine.row_of_id_, query_ids=np.array([qid]))
        for qid in graded
    }
    return pd.Series(values, dtype=np.float64)


def _pair_scorer(
    engine: SearchEngine, ranker: Any
) -> Callable[[list[str], np.ndarray, np.ndarray], np.ndarray]:
    """``score(texts, qi, rows)`` of judged pairs by ``ranker``, or by the fused BM25 + dense order of a
    retrieval-only version (``ranker=None``)."""

    def score(texts: list[str], qi: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if ranker is None:
            from mlsd.search.ltr import retrieval_scores

            batch, _ = engine.query_batch(texts)
            X = engine.features_.transform(batch, qi, rows)
            dense = X[:, FEATURE_NAMES.index("dense_cos")] if engine.dense_ is not None else None
            return retrieval_scores(X[:, FEATURE_NAMES.index("bm25")], dense, qi)
        return engine.score_pairs(texts, qi, rows, ranker)

    return score


# --------------------------------------------------------------------------------------------------
# The ship rule: the offline evaluation and the online A/B test must agree

OFFLINE_TOLERANCE = 0.02  # the offline difference's 95% CI may reach 2% of the champion's value below 0
ONLINE_MARGIN = 0.01  # a blended-metric drop beyond 0.01 (1%: the blend is 1 at the baseline) is a loss
ONLINE_WAIT_DAYS = 14  # a held challenger with no online result after this many days is dropped
ONLINE_RESULTS = "online"  # W/search/monitoring/online/v<N>.json: the online test of version N


@dataclass(frozen=True)
class ShipDecision:
    """What the ship rule says about a challenger: ``action`` is ``"ship"`` (promote), ``"hold"`` (keep
    it as challenger, not served to everyone) or ``"reject"``; ``reason`` says which evidence decided.
    ``final``: False when more evidence can still change it (no online result yet, an inconclusive or
    broken test): the scheduled job then keeps waiting for a new result instead of recording it."""

    action: str
    reason: str
    final: bool = True

    @property
    def ship(self) -> bool:
        return self.action == "ship"


def ship_decision(
    offline: dict[str, Any],
    online: dict[str, Any] | None = None,
    *,
    z: float = 1.96,
    offline_tolerance: float = OFFLINE_TOLERANCE,
    online_margin: float = ONLINE_MARGIN,
) -> ShipDecision:
    """The search ship rule: a challenger ships only when the offline evaluation and the online test agree.

    ``offline``: the gate's challenger-minus-champion difference on one offline evaluation (judged
    nDCG@10, or the clipped-IPS estimate on held-out click logs): ``{"metric", "new", "old", "diff",
    "se"}`` (``se`` of the paired difference; None when unknown). ``online``: the A/B test of the
    challenger against the champion (:func:`write_online_result`): ``{"metric": "blended", "diff",
    "diff_low", "diff_high", "srm_flagged"}``, the difference of the seed's blended metric (normalised
    to 1 at the logged baseline, so 0.01 is a 1% lift) with its confidence interval; None: not run yet.

    1. Offline: ``diff >= 0`` and its CI's lower end ``diff - z * se`` not below
       ``-offline_tolerance * |old|``; otherwise **reject** (the offline evaluation does not support it;
       no online test is spent on it).
    2. Offline passes, no online result: **hold** (waiting for the online test; not final).
    3. Online test with a sample-ratio mismatch: **hold** (the test is broken, its numbers say nothing;
       not final: a fixed test can still decide).
    4. Online CI excludes a loss (``diff_low >= -online_margin``): both agree, **ship**.
    5. Online CI entirely below 0 (``diff_high < 0``): offline says better, online says worse: they
       disagree, **hold** and say so (a person looks at why: the offline metric and the blend measure
       different things, or the offline data is stale).
    6. Otherwise the online CI still includes a loss: inconclusive, **hold** (more units; not final).

    Examples:
        >>> offline = {"metric": "ips_clicks@10", "new": 0.52, "old": 0.50, "diff": 0.02, "se": 0.004}
        >>> ship_decision(offline).action
        'hold'
        >>> ship_decision(offline, {"metric": "blended", "diff": 0.03, "diff_low": 0.01, "diff_high": 0.05}).action
        'ship'
        >>> ship_decision(offline, {"metric": "blended", "diff": -0.04, "diff_low": -0.06, "diff_high": -0.02}).action
        'hold'
        >>> ship_decision({**offline, "diff": -0.01}).action
        'reject'
    """
    diff, se, old = float(offline["diff"]), offline.get("se"), float(offline.get("old") or 0.0)
    low = diff - z * float(se) if se is not None and np.isfinite(se) else diff
    metric = offline.get("metric", "offline metric")
    said = f"offline {metric} {diff:+.4f} (95% CI low {low:+.4f})"
    if diff < 0:
        return ShipDecision("reject", f"{said}: the offline evaluation says the challenger is worse")
    if low < -offline_tolerance * abs(old):
        return ShipDecision("reject", f"{said}: too uncertain offline (its CI reaches below "
                                      f"-{offline_tolerance:.0%} of the champion's {old:.4f})")  # fmt: skip
    if online is None:
        return ShipDecision(
            "hold", f"{said} passes; held for the online A/B test against the champion", final=False
        )
    name = online.get("metric", "blended")
    o_diff, o_low, o_high = float(online["diff"]), float(online["diff_low"]), float(online["diff_high"])
    heard = f"{said}, online {name} {o_diff:+.4f} [{o_low:+.4f}, {o_high:+.4f}]"
    if online.get("srm_flagged"):
        return ShipDecision("hold", f"{heard}: the online test has a sample-ratio mismatch, its result "
                                    "cannot be trusted; fix the exposure logging and run it again",
                            final=False)  # fmt: skip
    if o_low >= -online_margin:
        return ShipDecision("ship", f"{heard}: offline and online agree (no online loss beyond "
                                    f"{online_margin:g})")  # fmt: skip
    if o_high < 0:
        return ShipDecision("hold", f"{heard}: offline and online DISAGREE (offline better, online worse); "
                                    "held for a person to look at why")  # fmt: skip
    return ShipDecision("hold", f"{heard}: the online test is inconclusive (its CI includes a loss beyond "
                                f"{online_margin:g}); run it with more units", final=False)  # fmt: skip


def write_online_result(
    dirs: SystemDir, report: dict[str, Any], arm: str, version: int, champion_version: int
) -> Path:
    """Record an online A/B test of model ``version`` (arm ``arm``) against ``champion_version`` (the
    control arm) for the ship rule: ``W/search/monitoring/online/v<version>.json`` from an experiment
    analysis ``report`` (:func:`mlsd.platform.experiments.analysis.analyze_experiment`'s JSON; its
    primary metric, for search the blended one)."""
    primary = report.get("primary_metric") or next(iter(report["metrics"]))
    comp = next((c for c in report["metrics"][primary] if c.get("treatment") == arm), None)
    if comp is None:
        raise InputError("arm", arm, f"is not a treatment arm of experiment {report.get('experiment')!r}",
                         "name the arm that served the challenger")  # fmt: skip
    result = {
        "version": int(version), "champion_version": int(champion_version),
        "experiment": report.get("experiment"), "arm": arm, "metric": primary,
        "diff": comp["diff"], "diff_low": comp["diff_low"], "diff_high": comp["diff_high"],
        "srm_flagged": bool((report.get("srm") or {}).get("flagged")), "units": report.get("units"),
    }  # fmt: skip
    path = dirs.monitoring / ONLINE_RESULTS / f"v{int(version)}.json"
    write_json(path, result)
    return path


def read_online_result(dirs: SystemDir, version: int) -> dict[str, Any] | None:
    """The online test result of ``version`` (:func:`write_online_result`), None when there is none."""
    import json

    path = dirs.monitoring / ONLINE_RESULTS / f"v{int(version)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# The retrain job's search half


def _day_start(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _date_of(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC).date()


@dataclass
class SearchSteps:
    """The search half of a retrain job (see the module docstring).

    ``dense``: serve and train with the MiniLM index (None: as the current champion was trained, False
    without one); ``parser_options``: :class:`~mlsd.search.query.QueryUnderstanding` options (None: the
    champion's, defaults without one). Both are training settings stored with the version, and
    :func:`~mlsd.search.engine.load_engine` serves with them. ``compare_raw`` also trains the same
    model on raw clicks and reports its judged nDCG (the IPS baseline; not registered).
    """

    config: SearchConfig = field(default_factory=SearchConfig)
    dense: bool | None = None
    parser_options: dict[str, Any] | None = None
    cache_dir: str | Path | None = None
    compare_raw: bool = False
    log: Callable[[str], None] | None = None
    holdout_share: float = HOLDOUT_SHARE
    ship_without_online_test: bool = False  # an operator's explicit override (train --ship-without-online-test)
    system: str = SYSTEM
    model: str = MODEL_NAME

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def window(self, dirs: SystemDir, run_date: dt.date | None, champion: Any, *, progress: bool) -> Window:
        from mlsd.platform.registry import fingerprint

        data = load_data(
            dirs.require_data(
                f"mlsd search import --workdir {dirs.root} --format F --path P (your data), "
                f"or mlsd search simulate --workdir {dirs.root}"
            )
        )
        log = data["clicklog"].impressions()
        before = champion.params if champion is not None else {}
        if len(log) == 0:  # no click log: a retrieval-only version (see the module docstring)
            run_date = run_date or dt.datetime.now(dt.UTC).date()
            catalog_and_judged = [data["products"][["product_id", "title"]]]
            if data["qrels"] is not None:
                catalog_and_judged.append(data["qrels"])
            dense = bool(before.get("dense", False)) if self.dense is None else bool(self.dense)
            parser = (
                dict(before.get("parser") or {}) if self.parser_options is None else dict(self.parser_options)
            )
            settings = {"dense": dense, "parser": parser, "ranker": None}
            span = {"from": None, "to": run_date.isoformat(), "impressions": 0}
            joined = "+".join(fingerprint(frame) for frame in catalog_and_judged)
            return Window(run_date, joined, settings,
                          data={**data, "impressions": log, "span": span})  # fmt: skip
        first, last = _date_of(log["ts"].min()), _date_of(log["ts"].max())
        run_date = resolve_run_date(run_date, first, last, what="the click log")
        impressions = log[log["ts"].to_numpy() < _day_start(run_date + dt.timedelta(days=1))]
        impressions = impressions.reset_index(drop=True)
        dense = bool(before.get("dense", False)) if self.dense is None else bool(self.dense)
        parser = (
            dict(before.get("parser") or {}) if self.parser_options is None else dict(self.parser_options)
        )
        settings = {
            "dense": dense,
            "parser": parser,
            "ranker": "lambdamart-ips",
            "ltr": dict(self.config.ltr.__dict__),
            "objective": dict(self.config.objective.__dict__),
        }
        if data["qrels"] is None or data["queries"] is None:  # the counterfactual gate trains on less
            settings["gate"] = {"metric": IPS_METRIC, "holdout_share": self.holdout_share}
        span = {"from": first.isoformat(), "to": run_date.isoformat(), "impressions": int(len(impressions))}
        return Window(run_date, window_fingerprint(impressions), settings,
                      data={**data, "impressions": impressions, "span": span})  # fmt: skip

    def train(self, window: Window, out: Path, *, progress: bool) -> Trained:
        from mlsd.platform.jsonio import dumps
        from mlsd.search.embeddings import default_cache_dir
        from mlsd.search.propensity import estimate_propensities

        data, impressions, config = window.data, window.data["impressions"], self.config
        self._say(f"search {window.run_date}: fitting the engine on {len(data['products']):,} products, "
                  f"training on {len(impressions):,} impressions ({window.data['span']['from']} .. "
                  f"{window.run_date})")  # fmt: skip
        engine = SearchEngine(config, dense=window.settings["dense"],
                              cache_dir=self.cache_dir or default_cache_dir(),
                              parser_options=window.settings["parser"])  # fmt: skip
        engine.fit(data["products"], query_log=impressions["query"].astype(str).unique().tolist(),
                   progress=progress)  # fmt: skip
        judged = data["qrels"] is not None and data["queries"] is not None
        features = feature_card(
            data["products"], has_events=len(impressions) > 0, dense=engine.dense_ is not None
        )
        if features["dropped"]:
            self._say("features dropped (the data lacks what they need): " + "; ".join(
                f"{name} ({why})" for name, why in features["dropped"].items()))  # fmt: skip
        if len(impressions) == 0:
            return self._train_retrieval_only(window, engine, out, features, judged)
        holdout = None
        if not judged:  # the counterfactual gate: the latest searches stay out of everything trained
            impressions, holdout = self._holdout(impressions)
        if holdout is not None:
            self._say(f"no judged set: holding out the latest {holdout['search_id'].nunique():,} searches "
                      f"({self.holdout_share:.0%}) for the counterfactual gate ({IPS_METRIC})")  # fmt: skip
        propensity = estimate_propensities(impressions, clip=config.ltr.propensity_clip)
        self._say(f"propensities from {type(propensity).__name__}: eta={propensity.eta_:.3f}")
        metrics: dict[str, float] = {}
        if self.compare_raw and judged:  # first: train_ranker leaves the engine's history as it trained
            raw, _ = train_ranker(engine, impressions, ips=False, config=config)
            metrics[f"raw_clicks_{GATE_METRIC}"] = judged_ndcg(engine, raw, data["queries"], data["qrels"])
            self._say(f"raw-click LambdaMART: judged nDCG@10 = {metrics[f'raw_clicks_{GATE_METRIC}']}")
        ranker, report = train_ranker(engine, impressions, ips=True, propensity=propensity, config=config)
        if judged:
            metrics[GATE_METRIC] = judged_ndcg(engine, ranker, data["queries"], data["qrels"])
            self._say(f"IPS LambdaMART: judged nDCG@10 = {metrics[GATE_METRIC]}")
        if holdout is not None:
            scores = ranker_scores(engine, ranker, holdout)
            metrics[IPS_METRIC] = round(ips_clicks(scores, holdout, propensity)["value"], 4)
            self._say(f"IPS LambdaMART: {IPS_METRIC} = {metrics[IPS_METRIC]} on the held-out searches")
            window.data["holdout"], window.data["propensity"] = holdout, propensity
        metrics["training_queries"] = float(report["training_queries"])
        metrics["propensity_eta"] = round(float(propensity.eta_), 4)
        window.data["engine"] = engine  # the gate scores both versions with this engine's history
        artifact = ranker.save(out / "ranker")
        (artifact / "propensity.json").write_text(dumps(propensity.to_dict(), indent=2))
        params = {
            "run_date": window.run_date.isoformat(),
            "window": window.data["span"],
            "training": {k: report[k] for k in ("training_pairs", "training_queries", "history_impressions",
                                                "label_impressions", "random_negatives")},
            "features": features,
        }  # fmt: skip
        if holdout is not None:
            params["holdout"] = {"searches": int(holdout["search_id"].nunique()), "impressions": len(holdout),
                                 "from_ts": int(holdout["ts"].min()), "to_ts": int(holdout["ts"].max())}  # fmt: skip
        return Trained(artifact, params=params, metrics=metrics)

    def _holdout(self, impressions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """``(training part, holdout)``; a log too small to hold searches out trains on all of it, and the
        version is then registered without a gate (never promoted on no evidence)."""
        try:
            return holdout_split(impressions, self.holdout_share)
        except InputError as err:
            self._say(f"no counterfactual gate: {err.problem}; training on the whole log")
            return impressions, None

    def _train_retrieval_only(self, window: Window, engine: SearchEngine, out: Path,
                              features: dict[str, Any], judged: bool) -> Trained:  # fmt: skip
        """No click log: nothing to learn a ranker from. Register BM25 + dense retrieval as the version
        (its card says why), scored on the judged set when there is one (an evaluation: nothing here is
        fitted to the judgements)."""
        from mlsd.search.ltr import save_retrieval_card

        data = window.data
        reason = (f"no click log in {data['clicklog'].root}: the ranker was dropped; this version serves "
                  "BM25 + dense retrieval (import events with `mlsd search import --format csv|parquet "
                  "--table events` and train again to fit LambdaMART with IPS)")  # fmt: skip
        self._say(reason)
        metrics: dict[str, float] = {}
        if judged:
            metrics[GATE_METRIC] = judged_ndcg(engine, None, data["queries"], data["qrels"])
            metrics["judged_queries"] = float(data["qrels"]["query_id"].nunique())
            self._say(f"retrieval only: judged nDCG@10 = {metrics[GATE_METRIC]} "
                      f"({int(metrics['judged_queries'])} judged queries)")  # fmt: skip
        window.data["engine"] = engine
        artifact = save_retrieval_card(out / "ranker", {"serves": "bm25+dense" if engine.dense_ is not None
                                                        else "bm25", "reason": reason, "features": features})  # fmt: skip
        params = {"run_date": window.run_date.isoformat(), "window": data["span"], "ranker_dropped": reason,
                  "features": features}  # fmt: skip
        return Trained(artifact, params=params, metrics=metrics)

    def gate(self, window: Window, challenger: Any, champion: Any, *, progress: bool) -> Verdict:
        """The offline evaluation (judged nDCG@10, else the counterfactual estimate on held-out clicks),
        then the ship rule (:func:`ship_decision`): a version just registered has no online test yet, so
        it is held (offline better) or rejected, never promoted here."""
        data = window.data
        if data.get("holdout") is not None:
            offline, metrics = self._counterfactual_offline(window, challenger, champion)
            where = (
                f"{offline['searches']:,} held-out searches (no judged set: counterfactual gate, clipped IPS)"
            )
        elif data["qrels"] is None or data["queries"] is None:
            return Verdict(False, "no judged set (qrels.parquet) and no held-out click log to gate on: "
                                  "registered as challenger only")  # fmt: skip
        else:
            offline, metrics = self._judged_offline(window, challenger, champion)
            where = f"the judged set ({offline['queries']} queries)"
        decision = ship_decision(offline)
        better = "beats" if offline["diff"] > 0 else "does not beat"
        reason = (f"challenger v{challenger.version} {better} champion v{champion.version} on {where}: "
                  f"{offline['metric']} {offline['new']:.4f} vs {offline['old']:.4f}; {decision.action}: "
                  f"{decision.reason}")  # fmt: skip
        # the gate has no online result: "hold" here always means the offline evaluation passed
        if decision.action == "hold" and self.ship_without_online_test:
            reason += ("; shipped on the offline gate alone: the operator ran train with "
                       "--ship-without-online-test (no online test of this version exists)")  # fmt: skip
            self._say(reason)
            return Verdict(True, reason, {**metrics, "offline": offline, "ship": "ship-offline-only"})
        if decision.action == "hold":
            reason += (f" (the scheduled job promotes it once W/search/monitoring/{ONLINE_RESULTS}/"
                       f"v{challenger.version}.json holds an online test that agrees; on a simulated world: "
                       "mlsd experiment run search --arms ltr,challenger --workdir W)")  # fmt: skip
        self._say(reason)
        return Verdict(False, reason, {**metrics, "offline": offline, "ship": decision.action})

    def _registered_rankers(self, challenger: Any, champion: Any) -> dict[str, Any]:
        from mlsd.platform.registry import verify
        from mlsd.search.ltr import load_ranker

        rankers = {}
        for role, mv in (("challenger", challenger), ("champion", champion)):
            verify(mv)  # the artifact files are the registered ones
            rankers[role] = load_ranker(mv.path)
        return rankers

    def _judged_offline(self, window: Window, challenger: Any, champion: Any) -> tuple[dict, dict]:
        """Both versions' nDCG@10 on the judged set, and their paired per-query difference."""
        data = window.data
        rankers = self._registered_rankers(challenger, champion)
        per_query = {role: judged_ndcg_by_query(data["engine"], r, data["queries"], data["qrels"])
                     for role, r in rankers.items()}  # fmt: skip
        new, old = per_query["challenger"], per_query["champion"]
        diff = new - old
        offline = {
            "metric": GATE_METRIC, "new": round(float(new.mean()), 4), "old": round(float(old.mean()), 4),
            "diff": round(float(diff.mean()), 4), "queries": len(diff),
            "se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4) if len(diff) > 1 else None,
        }  # fmt: skip
        return offline, {GATE_METRIC: offline["new"], f"champion_{GATE_METRIC}": offline["old"]}

    def _counterfactual_offline(self, window: Window, challenger: Any, champion: Any) -> tuple[dict, dict]:
        """No judged set: both versions re-order the held-out searches; clipped-IPS top-10 clicks."""
        data = window.data
        holdout, engine = data["holdout"], data["engine"]
        rankers = self._registered_rankers(challenger, champion)
        scores = {role: ranker_scores(engine, r, holdout) for role, r in rankers.items()}
        est = compare_ips(scores["challenger"], scores["champion"], holdout, data["propensity"])
        offline = {"metric": IPS_METRIC, "new": round(est["new"], 4), "old": round(est["old"], 4),
                   "diff": round(est["diff"], 4), "se": round(est["se"], 4), "searches": est["searches"]}  # fmt: skip
        return offline, {
            "gate": "counterfactual (clipped IPS on held-out click logs)", IPS_METRIC: offline["new"],
            f"champion_{IPS_METRIC}": offline["old"], "diff": offline["diff"], "se": offline["se"],
            "searches": est["searches"],
        }  # fmt: skip


def train(
    dirs: SystemDir,
    *,
    config: SearchConfig | None = None,
    dense: bool = True,
    parser_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    compare_raw: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    ship_without_online_test: bool = False,
) -> dict[str, Any]:
    """``mlsd search train --workdir W``: train on all of ``W/search/data``'s click log, register, gate
    against the champion (promoted when there is none), write the report to ``W/search/runs``. The ship
    rule holds a challenger that wins offline until its online test agrees;
    ``ship_without_online_test`` promotes it on the offline gate alone (data with no way to run an A/B
    test; the reason says so)."""
    steps = SearchSteps(config or SearchConfig(), dense=dense, parser_options=parser_options or {},
                        cache_dir=cache_dir, compare_raw=compare_raw, log=log,
                        ship_without_online_test=ship_without_online_test)  # fmt: skip
    return _retrain(steps, dirs, None, progress)


def retrain(
    dirs: SystemDir,
    run_date: dt.date | None = None,
    *,
    progress: bool = True,
    config: SearchConfig | None = None,
) -> dict[str, Any]:
    """The scheduled daily job: first the ship rule on a held challenger (:func:`review_held`: decided
    once its online result is in, waited for otherwise: nothing is trained meanwhile); then the click log
    up to ``run_date``, with the champion's settings."""
    steps = SearchSteps(config or SearchConfig(), log=print if progress else None)
    reviewed = review_held(steps, dirs, run_date)
    if reviewed is not None:
        return reviewed
    return _retrain(steps, dirs, run_date, progress)


def review_held(steps: SearchSteps, dirs: SystemDir, run_date: dt.date | None) -> dict[str, Any] | None:
    """The scheduled job's ship decision on a held challenger; None when there is none to review.

    A challenger is held when its gate passed offline (its run report's ``gate.ship == "hold"``) and no
    decision was recorded for it yet (``W/search/runs/v<N>-ship.json``). With its online result
    (:func:`read_online_result`) against the current champion, :func:`ship_decision` decides: ``ship``
    promotes it; a final ``hold`` (offline and online disagree) or ``reject`` is recorded and training
    resumes. Without a result, or with one that is not final (inconclusive, SRM, another champion), the
    job waits (``ship.action == "wait"``; it trains nothing: a new challenger would replace the one under
    test), re-reading the result file each run, for :data:`ONLINE_WAIT_DAYS` days; then it drops it. Returns the run's report
    (:data:`~mlsd.platform.retraining.REPORT_KEYS`, plus ``ship``), None when training should go on."""
    import json

    from mlsd.platform.registry import ModelRegistry

    if not (dirs.registry / "registry.sqlite").is_file():
        return None
    registry = ModelRegistry(dirs.registry)
    if steps.model not in registry.names():
        return None
    champion, held = registry.alias(steps.model, "champion"), registry.alias(steps.model, "challenger")
    if champion is None or held is None or held.version == champion.version:
        return None
    decided = dirs.runs / f"v{held.version}-ship.json"
    reports = sorted(dirs.runs.glob(f"*-v{held.version}.json"))
    if decided.exists() or not reports:
        return None
    registered = json.loads(reports[0].read_text())
    if (registered.get("gate") or {}).get("ship") != "hold":
        return None
    window = steps.window(dirs, run_date, champion, progress=False)  # the run's date and data
    online = read_online_result(dirs, held.version)
    offline = registered["gate"]["offline"]
    waited = (window.run_date - dt.date.fromisoformat(registered["run_date"])).days
    report = {
        "system": steps.system, "run_date": window.run_date.isoformat(), "model": steps.model,
        "version": held.version, "registered": False, "data_fingerprint": window.fingerprint,
        "metrics": held.metrics, "champion": champion.version,
    }  # fmt: skip
    if online is None:
        decision = ShipDecision("hold", "no online A/B result yet", final=False)
    elif online.get("champion_version") != champion.version:
        decision = ShipDecision("hold", f"its online test compared it with v{online.get('champion_version')}, "
                                        f"not the current champion v{champion.version}: run it again",
                                final=False)  # fmt: skip
    else:
        decision = ship_decision(offline, online)
    if not decision.final and waited <= ONLINE_WAIT_DAYS:
        reason = (f"challenger v{held.version} is held for its online A/B test since {registered['run_date']} "
                  f"(day {waited} of {ONLINE_WAIT_DAYS}): {decision.reason}; nothing trained. Its result goes "
                  f"to {dirs.monitoring / ONLINE_RESULTS / f'v{held.version}.json'}")  # fmt: skip
        steps._say(reason)
        ship = {"action": "wait", "reason": decision.reason, "offline": offline, "online": online}
        return {**report, "promoted": False, "reason": reason, "ship": ship}
    if not decision.final:
        decision = ShipDecision("reject", f"no conclusive online A/B result within {ONLINE_WAIT_DAYS} days of "
                                          f"{registered['run_date']} ({decision.reason}): dropped, training "
                                          "resumes")  # fmt: skip
    if decision.ship:
        registry.promote(steps.model, held.version, "champion")
    reason = f"ship rule on challenger v{held.version}: {decision.action}: {decision.reason}"
    steps._say(reason)
    ship = {"action": decision.action, "reason": decision.reason, "offline": offline, "online": online}
    write_json(decided, {**ship, "version": held.version, "run_date": window.run_date.isoformat()})
    return {**report, "promoted": decision.ship, "reason": reason, "ship": ship,
            "champion": registry.current_version(steps.model, "champion")}  # fmt: skip


def _retrain(steps: SearchSteps, dirs: SystemDir, run_date: dt.date | None, progress: bool) -> dict[str, Any]:
    report = platform_retrain(steps, dirs, run_date, progress=progress)
    if report["registered"]:
        steps._say(f"registered {MODEL_NAME} v{report['version']} "
                   f"({'champion' if report['promoted'] else 'challenger'}): {report['reason']}")  # fmt: skip
    return report
