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

The gate: the challenger and the champion are scored on the *same* evaluation and the challenger is
promoted only if it scores strictly higher.

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

    def score(texts: list[str], qi: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if ranker is None:  # a retrieval-only version: the fused BM25 + dense order of the pairs
            from mlsd.search.ltr import retrieval_scores

            batch, _ = engine.query_batch(texts)
            X = engine.features_.transform(batch, qi, rows)
            dense = X[:, FEATURE_NAMES.index("dense_cos")] if engine.dense_ is not None else None
            return retrieval_scores(X[:, FEATURE_NAMES.index("bm25")], dense, qi)
        return engine.score_pairs(texts, qi, rows, ranker)

    return round(ground_truth_ndcg(score, queries, qrels, engine.row_of_id_), 4)


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
        from mlsd.platform.registry import verify
        from mlsd.search.ltr import load_ranker

        data = window.data
        if data.get("holdout") is not None:
            return self._counterfactual_gate(window, challenger, champion)
        if data["qrels"] is None or data["queries"] is None:
            return Verdict(False, "no judged set (qrels.parquet) and no held-out click log to gate on: "
                                  "registered as challenger only")  # fmt: skip
        engine = data["engine"]
        scores = {}
        for role, mv in (("challenger", challenger), ("champion", champion)):
            verify(mv)  # the artifact files are the registered ones
            scores[role] = judged_ndcg(engine, load_ranker(mv.path), data["queries"], data["qrels"])
        new, old = scores["challenger"], scores["champion"]
        promote = new > old
        reason = (
            f"challenger v{challenger.version} {'beats' if promote else 'does not beat'} champion "
            f"v{champion.version} on the judged set: {GATE_METRIC} {new:.4f} vs {old:.4f}"
        )
        self._say(reason)
        return Verdict(promote, reason, {GATE_METRIC: new, f"champion_{GATE_METRIC}": old})

    def _counterfactual_gate(self, window: Window, challenger: Any, champion: Any) -> Verdict:
        """No judged set: both versions re-order the held-out searches; clipped-IPS top-10 clicks decide."""
        from mlsd.platform.registry import verify
        from mlsd.search.ltr import load_ranker

        data = window.data
        holdout, engine = data["holdout"], data["engine"]
        scores = {}
        for role, mv in (("challenger", challenger), ("champion", champion)):
            verify(mv)  # the artifact files are the registered ones
            scores[role] = ranker_scores(engine, load_ranker(mv.path), holdout)
        est = compare_ips(scores["challenger"], scores["champion"], holdout, data["propensity"])
        promote = est["diff"] > 0
        reason = (
            f"challenger v{challenger.version} {'beats' if promote else 'does not beat'} champion "
            f"v{champion.version} on {est['searches']:,} held-out searches (no judged set: counterfactual "
            f"gate, clipped IPS): {IPS_METRIC} {est['new']:.4f} vs {est['old']:.4f}, difference "
            f"{est['diff']:+.4f} (se {est['se']:.4f})"
        )
        self._say(reason)
        return Verdict(promote, reason, {
            "gate": "counterfactual (clipped IPS on held-out click logs)", IPS_METRIC: round(est["new"], 4),
            f"champion_{IPS_METRIC}": round(est["old"], 4), "diff": round(est["diff"], 4),
            "se": round(est["se"], 4), "searches": est["searches"],
        })  # fmt: skip


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
) -> dict[str, Any]:
    """``mlsd search train --workdir W``: train on all of ``W/search/data``'s click log, register, gate
    against the champion (promoted when there is none), write the report to ``W/search/runs``."""
    steps = SearchSteps(config or SearchConfig(), dense=dense, parser_options=parser_options or {},
                        cache_dir=cache_dir, compare_raw=compare_raw, log=log)  # fmt: skip
    return _retrain(steps, dirs, None, progress)


def retrain(
    dirs: SystemDir,
    run_date: dt.date | None = None,
    *,
    progress: bool = True,
    config: SearchConfig | None = None,
) -> dict[str, Any]:
    """The scheduled daily job: the click log up to ``run_date``, with the champion's settings."""
    steps = SearchSteps(config or SearchConfig(), log=print if progress else None)
    return _retrain(steps, dirs, run_date, progress)


def _retrain(steps: SearchSteps, dirs: SystemDir, run_date: dt.date | None, progress: bool) -> dict[str, Any]:
    report = platform_retrain(steps, dirs, run_date, progress=progress)
    if report["registered"]:
        steps._say(f"registered {MODEL_NAME} v{report['version']} "
                   f"({'champion' if report['promoted'] else 'challenger'}): {report['reason']}")  # fmt: skip
    return report
