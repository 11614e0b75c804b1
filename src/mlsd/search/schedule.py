"""Daily retraining of the search ranker: window the click log, train, register a challenger, gate, promote.

``run_scheduled(workdir, run_date)`` (what ``mlsd pipeline run daily`` calls for search):

1. data: ``workdir/data`` (the default simulated world is written there first when absent --
   deterministic, seed 0);
2. window: every click-log impression with ``ts`` before the end of ``run_date`` (UTC; default: the
   log's last day). A date outside the log is an ``InputError`` naming ``--date`` and the valid range;
3. idempotency: the window's data fingerprint is compared with every registered version's; a match
   registers nothing (``registered=False``, the reason names that version), so a re-run of the same day
   is a no-op even without the platform's ledger;
4. train LambdaMART with IPS on the window (:func:`~mlsd.search.pipeline.train_ranker`), register it
   and point the ``challenger`` alias at it;
5. offline gate: the challenger and the current champion are scored on the *same* evaluation -- the
   simulator's judged set (true grades of every pooled query-product pair), with history features from
   the same window -- and the challenger is promoted to ``champion`` only if its ground-truth nDCG@10 is
   higher (a first model is promoted, there being nothing to beat).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlsd.platform.errors import InputError
from mlsd.platform.retraining import resolve_run_date
from mlsd.search.pipeline import MODEL_NAME, SYSTEM

GATE_METRIC = "truth_ndcg@10"


def _day_start(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _date_of(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC).date()


def run_scheduled(
    workdir: Path,
    run_date: dt.date | None = None,
    *,
    progress: bool = True,
    parser_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One daily run for search; returns ``system, run_date, model, version, registered, promoted,
    reason, metrics, data_fingerprint`` (+ ``window``, ``champion_before``, ``seconds``)."""
    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.config import SearchConfig
    from mlsd.search.experiment import FAST_PARSER, ensure_data
    from mlsd.search.ltr import LambdaMARTRanker, ground_truth_ndcg
    from mlsd.search.pipeline import (
        SearchEngine,
        load_data,
        register_ranker,
        train_ranker,
        window_fingerprint,
    )
    from mlsd.search.propensity import estimate_propensities

    say = print if progress else (lambda *_: None)
    started = time.perf_counter()
    workdir = Path(workdir)
    data_dir, registry_dir = workdir / "data", workdir / "registry"
    if not (data_dir / "products.parquet").exists():
        ensure_data(data_dir, progress=progress)
    data = load_data(data_dir)
    log = data["clicklog"].impressions()
    if len(log) == 0:
        raise InputError("--workdir", str(workdir), "the click log is empty", "simulate sessions first")
    first, last = _date_of(log["ts"].min()), _date_of(log["ts"].max())
    run_date = resolve_run_date(run_date, first, last, what="the click log")
    end_ts = _day_start(run_date + dt.timedelta(days=1))
    impressions = log[log["ts"].to_numpy() < end_ts].reset_index(drop=True)
    data_fp = window_fingerprint(impressions)
    window = {"from": first.isoformat(), "to": run_date.isoformat(), "impressions": int(len(impressions))}
    registry = ModelRegistry(registry_dir)
    known = registry.versions(MODEL_NAME) if MODEL_NAME in registry.names() else []
    champion = registry.alias(MODEL_NAME) if known else None
    base = {
        "system": SYSTEM,
        "run_date": run_date.isoformat(),
        "model": MODEL_NAME,
        "data_fingerprint": data_fp,
        "window": window,
        "champion_before": None if champion is None else champion.version,
    }
    same = next((v for v in known if v.data_fingerprint == data_fp), None)
    if same is not None:
        return {
            **base,
            "version": same.version,
            "registered": False,
            "promoted": False,
            "reason": f"same data window as v{same.version} (fingerprint {data_fp[:12]}): nothing new to train",
            "metrics": dict(same.metrics),
            "seconds": round(time.perf_counter() - started, 2),
        }

    # Serve-time settings follow the champion (dense or not), so the gate compares like with like.
    dense = bool(champion.params.get("dense", False)) if champion is not None else False
    config = SearchConfig()
    say(f"search daily {run_date}: training on {len(impressions):,} impressions ({first} .. {run_date})")
    engine = SearchEngine(config, dense=dense, parser_options=parser_options or FAST_PARSER)
    if dense:
        from mlsd.search.pipeline import default_cache_dir

        engine.cache_dir = default_cache_dir()
    engine.fit(data["products"], query_log=impressions["query"].astype(str).unique().tolist())
    propensity = estimate_propensities(impressions, clip=config.ltr.propensity_clip)
    ranker, train_report = train_ranker(engine, impressions, ips=True, propensity=propensity, config=config)

    metrics: dict[str, float] = {}
    champion_score = None
    if data["qrels"] is not None and data["queries"] is not None:

        def ndcg(model: Any) -> float:
            return round(
                ground_truth_ndcg(
                    lambda tx, qi, rows: engine.score_pairs(tx, qi, rows, model),
                    data["queries"],
                    data["qrels"],
                    engine.row_of_id_,
                ),
                4,
            )

        metrics[GATE_METRIC] = ndcg(ranker)
        if champion is not None:
            champion_score = ndcg(LambdaMARTRanker.load(registry.artifact_path(MODEL_NAME, "champion")))
            metrics[f"champion_{GATE_METRIC}"] = champion_score
    metrics["training_queries"] = float(train_report["training_queries"])
    version = register_ranker(
        registry, ranker, propensity, impressions, config=config, dense=dense, metrics=metrics,
        extra_params={"run_date": run_date.isoformat(), "window": window},
    )  # fmt: skip
    registry.promote(MODEL_NAME, version.version, alias="challenger")
    if champion is None:
        promote, reason = True, "no champion yet: the first model is promoted"
    elif GATE_METRIC not in metrics:
        promote, reason = False, "no judged set to gate on: registered as challenger only"
    else:
        new, old = metrics[GATE_METRIC], float(champion_score if champion_score is not None else -np.inf)
        promote = new > old
        verdict = "beats" if promote else "does not beat"
        reason = (
            f"challenger v{version.version} {verdict} champion v{champion.version} on the judged set: "
            f"{GATE_METRIC} {new:.4f} vs {old:.4f}"
        )
    if promote:
        registry.promote(MODEL_NAME, version.version)
    say(f"  registered v{version.version} (challenger); {reason}")
    return {
        **base,
        "version": version.version,
        "registered": True,
        "promoted": bool(promote),
        "reason": reason,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }
