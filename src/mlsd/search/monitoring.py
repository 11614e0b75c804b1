"""Drift of the search ranker's inputs and scores against its training reference.

* **Reference**: saved next to the model at train time (``reference.parquet`` in the registry version,
  written by :func:`~mlsd.search.training.train_ranker` / ``LambdaMARTRanker.save``): up to 20,000 of the
  logged (query, product) pairs the champion learned from, one row of :data:`FEATURE_NAMES` each, plus
  the champion's score as ``prediction``. The random negatives added for training are left out: serving
  never shows them.
* **Current**: the click log's latest ``days`` (default 7) of impressions, as distinct (query, product)
  pairs, featurised exactly like the training pairs (point in time: history features from the same
  number of impressions *before* the window as the training history had, user affinity averaged over
  the users who saw the pair) and re-scored by the champion. A week, not a day: the affinity features
  are per-pair averages over the users who saw the pair, and a one-day window averages over far fewer
  users than the training label window (two weeks), so its averages are more dispersed -- measured on
  the default world, ``aff_brand`` reads PSI 0.51 ("significant") on one unchanged day and 0.02 on seven.

:func:`drift_report` reads ``W/search/data`` (the click log) and ``W/search/registry`` (the champion
and its reference) and writes nothing: the caller decides where a report goes (the demo writes
``W/search/monitoring/drift.json``).

Both sides are built the same way on purpose: a difference then means the traffic moved (new queries,
new products, a shifted click-through), not that the two windows were computed differently. One
deliberate residual: the training label window spans half the log and the current one a week, so
per-pair averages (user affinity) are somewhat noisier in the current window.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir
from mlsd.search.engine import FEATURE_NAMES, MODEL_NAME, SYSTEM

DAY = 86_400


def current_window(
    engine: Any, impressions: pd.DataFrame, ranker: Any, meta: dict[str, Any], *, days: int = 7
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Features + ``prediction`` of the distinct (query, product) pairs of the log's last ``days``.

    ``engine`` is not modified (a shallow copy gets the window's point-in-time history features).
    """
    from mlsd.search.features import normalize_queries
    from mlsd.search.training import pair_features

    ts = impressions["ts"].to_numpy()
    last_day = dt.datetime.fromtimestamp(int(ts.max()), tz=dt.UTC).date()
    start = int(dt.datetime(last_day.year, last_day.month, last_day.day, tzinfo=dt.UTC).timestamp())
    start -= (days - 1) * DAY
    window = impressions[ts >= start]
    before = impressions[ts < start]
    n_hist = int(meta.get("history_impressions") or len(before))
    history = before.iloc[max(0, len(before) - n_hist) :]
    scoring = copy.copy(engine)
    scoring.refit_history(history, getattr(engine, "propensity_", None))
    q = normalize_queries(window["query"].to_numpy())
    pairs = pd.DataFrame({"q": q, "p": window["product_id"].to_numpy()}).drop_duplicates()
    rows = scoring.row_of_id_.reindex(pairs["p"].to_numpy()).to_numpy()
    ok = ~np.isnan(rows)
    pairs, rows = pairs[ok], rows[ok].astype(np.int64)
    texts, qi = np.unique(pairs["q"].to_numpy(), return_inverse=True)
    X = pair_features(scoring, window, texts, qi, rows, pairs["p"].to_numpy())
    frame = pd.DataFrame(X, columns=list(FEATURE_NAMES))
    frame["prediction"] = ranker.predict(X)
    first = dt.datetime.fromtimestamp(start, tz=dt.UTC).date()
    return frame, {
        "from": first.isoformat(),
        "to": last_day.isoformat(),
        "impressions": int(len(window)),
        "pairs": int(len(frame)),
        "history_impressions": int(len(history)),
    }


def _retrieval_only_report(dirs: SystemDir, champion: Any) -> dict[str, Any]:
    """A champion trained without a click log (a catalog and judgements imported): no ranker, no
    served traffic, so no drift to compute; the report says so and gives the one estimate the data
    supports, the champion's nDCG@10 on the imported judgements (measured when it was trained)."""
    from mlsd.platform.monitoring.drift import empty_report

    fix = (
        f"import events (mlsd search import --format csv --table events --workdir {dirs.root} --path F) "
        "and train (mlsd search train) to get a ranker whose inputs can be monitored"
    )
    return {
        **empty_report(),
        "system": SYSTEM,
        "model": MODEL_NAME,
        "version": champion.version,
        "reference": f"none: {MODEL_NAME} v{champion.version} serves retrieval only (trained without a click log)",
        "current": "none: the data holds no click log (no served or logged searches)",
        "not_computed": {
            "feature and score drift": "no ranker and no training reference: the champion was trained "
            f"with no click log. Fix: {fix}",
            "online metrics (CTR, conversion)": "no click log: nothing records what searchers did",
        },
        "quality": {
            "what": "the champion's retrieval on the imported judgements when it was trained (the "
            "data's own relevance grades: an offline estimate, no online truth)",
            **{k: v for k, v in champion.metrics.items() if isinstance(v, int | float)},
        },
    }


def drift_report(dirs: SystemDir, *, engine: Any = None, days: int = 7) -> dict[str, Any]:
    """``DriftMonitor.report`` of the champion's training reference vs the latest ``days`` of traffic.

    ``dirs``: the search folders (``data/`` with the click log, ``registry/`` with a champion; none: an
    InputError naming the commands that train one). ``engine``: an already fitted engine over the same
    catalog (the demo's), else one is fitted here with the champion's settings. Adds
    ``reference``/``current`` (which windows), ``system``, ``model``, ``version``.
    """
    from mlsd.platform.monitoring.drift import DriftMonitor
    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.engine import SearchEngine, load_data
    from mlsd.search.ltr import LambdaMARTRanker

    if days < 1:
        raise InputError("days", days, "must be >= 1", "use 1 for the latest day")
    champion = dirs.require_champion(MODEL_NAME)
    path = ModelRegistry(dirs.registry).artifact_path(MODEL_NAME, champion.version)
    if champion.params.get("ranker", "") is None:  # a retrieval-only champion: no ranker inputs to watch
        return _retrieval_only_report(dirs, champion)
    if not (path / "reference.parquet").exists():
        raise InputError(
            "--workdir", str(path), f"champion v{champion.version} was saved without a training reference",
            "retrain it (`mlsd pipeline run daily`) so reference.parquet is saved with the model",
        )  # fmt: skip
    reference = pd.read_parquet(path / "reference.parquet")
    meta_file = path / "reference.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    ranker = LambdaMARTRanker.load(path)
    data = load_data(dirs.data)
    impressions = data["clicklog"].impressions()
    if len(impressions) == 0:
        raise InputError(
            "--workdir", str(dirs.root), "the click log is empty", "serve or simulate searches first"
        )
    if engine is None:
        from mlsd.search.embeddings import default_cache_dir
        from mlsd.search.propensity import estimate_propensities

        engine = SearchEngine(dense=bool(champion.params.get("dense", False)), cache_dir=default_cache_dir(),
                              parser_options=dict(champion.params.get("parser") or {}))  # fmt: skip
        engine.fit(data["products"], query_log=impressions["query"].astype(str).unique().tolist())
        engine.propensity_ = estimate_propensities(impressions, clip=engine.config.ltr.propensity_clip)
    current, window = current_window(engine, impressions, ranker, meta, days=days)
    report = DriftMonitor(features=[*FEATURE_NAMES, "prediction"]).fit(reference).report(current)
    lw = meta.get("label_window_ts") or [None, None]
    span = " .. ".join(
        dt.datetime.fromtimestamp(t, tz=dt.UTC).date().isoformat() for t in lw if t is not None
    )
    report.update(
        system=SYSTEM,
        model=MODEL_NAME,
        version=champion.version,
        reference=(
            f"training pairs of {MODEL_NAME} v{champion.version} (label window {span or 'unknown'}, "
            f"{len(reference):,} rows; prediction = the champion's score)"
        ),
        current=(
            f"click-log pairs of {window['from']}..{window['to']} ({window['pairs']:,} pairs from "
            f"{window['impressions']:,} impressions), re-scored by v{champion.version}"
        ),
        window=window,
    )
    return report
