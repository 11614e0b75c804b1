"""``mlsd fraud demo``: the fraud system end to end in about a minute, with a readable summary.

simulate 6 weeks of payments -> record the labels known at the cut-off -> train a champion (LightGBM
+ GRU, calibrated) -> warm the online feature windows on history -> stream the next day's payments
through features, rules, model and decision (micro-batches) -> review queue: an analyst claims and
resolves the top cases (labels stored at once) -> a chargeback for an approved fraud arrives late ->
retrain: a challenger on the labels known now, promoted only if it beats the champion -> a shadow
experiment (champion vs challenger through :class:`~mlsd.platform.experiments.client.ExperimentClient`)
on the live day, a drift report and the stage timings, written where the dashboard finds them.

Everything lands in the platform layout (``mlsd demo`` passes ``W/fraud``): payments in
``data/transactions.parquet``, models and ``thresholds.json`` in ``registry/``, the label store in
``features/labels.sqlite``, the review queue in ``review/review.sqlite``, and under ``monitoring/``
the served sample, ``timings.json``, ``drift.json`` and ``experiments/<name>.json``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from mlsd.platform.jsonio import write_json
from mlsd.platform.system import SystemDir

DAY = 86_400


def run(
    dirs: SystemDir,
    *,
    cards: int = 800,
    days: int = 40,
    seed: int = 7,
    sequence: bool = True,
    seq_epochs: int = 4,
    lgbm_params: dict[str, Any] | None = None,
    review_capacity: int = 15,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo in ``dirs`` (``W/fraud``); returns the figures it printed."""
    from mlsd.fraud.config import FraudConfig
    from mlsd.fraud.engine import FraudDirs, load_engine
    from mlsd.fraud.features import replay
    from mlsd.fraud.training import train_version
    from mlsd.fraud.world import simulate_into

    console = console or Console()
    started = time.perf_counter()
    dirs.create()
    out: dict[str, Any] = {"workdir": str(dirs.home)}

    # 1. simulate: history up to the cut-off, then one live day
    tx = simulate_into(dirs, {"cards": cards, "terminals": max(60, cards // 4), "days": days, "seed": seed})
    day0 = int(tx["ts"].min()) // DAY * DAY
    cutoff = day0 + (days - 1) * DAY
    history = tx.loc[tx["ts"] < cutoff].reset_index(drop=True)
    live = tx.loc[tx["ts"] >= cutoff].reset_index(drop=True)
    out["simulated"] = {
        "payments": len(tx),
        "frauds": int(tx["fraud"].sum()),
        "history_days": days - 1,
        "live_payments": len(live),
    }
    console.print(
        f"[bold]1. simulate[/]  {len(tx):,} payments over {days} days, {int(tx['fraud'].sum())} frauds "
        f"in 5 scenarios; the last day is streamed live"
    )

    # 2. labels known at the cut-off, and the first champion
    config = FraudConfig.from_dict({"review": {"daily_capacity": review_capacity}})
    ws = FraudDirs(dirs, config=config)
    n_labels = ws.ingest_labels(history, known_at=cutoff)
    known_frauds = n_labels
    hidden = int(((history["fraud"] == 1) & (history["label_ts"] > cutoff)).sum())
    console.print(
        f"[bold]2. labels[/]    {known_frauds} fraud labels known at the cut-off; {hidden} more frauds "
        "in history are not known yet (chargebacks arrive 30-90 days later)"
    )
    t = time.perf_counter()
    first = train_version(
        history,
        ws,
        cutoff=cutoff,
        sequence=sequence,
        seed=seed,
        seq_epochs=seq_epochs,
        lgbm_params=lgbm_params,
    )
    out["train"] = {**first, "seconds": round(time.perf_counter() - t, 1)}
    ev = first["challenger_eval"]
    console.print(
        f"[bold]3. train[/]     champion v{first['champion_version']} on {first['train_rows']:,} payments "
        f"({first['train_frauds']} known frauds) in {out['train']['seconds']} s; eval period AP "
        f"{ev['average_precision']:.3f}, AUC {ev['auc_roc']:.3f}"
    )

    # thresholds for FPR < 1 % and the review team's capacity, chosen on the matured evaluation period
    # (out of sample) with the labels known at the cut-off
    tuned = first["suggested_thresholds"]
    if tuned is not None:
        write_json(ws.thresholds_path, tuned)
        ws.close()
        ws = FraudDirs(dirs, config=FraudConfig.from_dict({"review": {"daily_capacity": review_capacity}}))
        console.print(
            f"   thresholds tuned on the evaluation period {tuned['tuned_on']['first_day']}..{tuned['tuned_on']['last_day']} "
            f"(after the training days; {tuned['tuned_on']['fraud_labels_known']} fraud labels known at the cut-off, "
            f"later chargebacks unseen): block >= {tuned['block']:.3f}, "
            f"review >= {tuned['review']:.3f}; FPR {tuned['fpr']:.3%}, recall blocked {tuned['recall_block']:.2f}, "
            f"blocked+reviewed {tuned['recall_review_or_block']:.2f}, reviews/day <= {review_capacity}"
        )
    out["thresholds"] = tuned

    # 3. the online pipeline, windows warmed on history (with labels as they arrived)
    pipeline = load_engine(ws)
    known = ws.labels.labels_known_at(cutoff)
    warm = history.drop(columns=["fraud", "label_ts", "scenario"])
    fraud_ts = known.loc[known["label"] == 1].set_index("tx_id")["label_ts"]
    label_ts = warm["tx_id"].astype(str).map(fraud_ts)
    warm["fraud"] = label_ts.notna().astype(np.int8).to_numpy()
    warm["label_ts"] = label_ts.to_numpy(np.float64)
    t = time.perf_counter()
    replay(pipeline.features, warm, batch_size=2000)
    warm_s = time.perf_counter() - t

    # 4. stream one day through the pipeline in micro-batches
    from mlsd.platform.monitoring.sample import ServingSample

    t = time.perf_counter()
    decided = []
    stages: dict[str, list[float]] = {}
    served = ServingSample(max_rows=20_000, seed=seed)
    payments = live.drop(columns=["fraud", "scenario", "label_ts"])
    for start in range(0, len(payments), 500):
        batch = pipeline.score(payments.iloc[start : start + 500])
        decided.append(
            pd.DataFrame({"decision": batch.decisions.labels, "probability": batch.decisions.probability})
        )
        for stage, ms in batch.timer.timings_ms.items():
            stages.setdefault(stage, []).append(round(float(ms), 3))
        if batch.features is not None and not batch.decisions.rules_only:
            served.add(
                batch.features.assign(
                    prediction=batch.decisions.probability,
                    model_version=str(batch.model_version),
                    tx_id=batch.tx_id,
                    ts=payments["ts"].to_numpy()[start : start + len(batch.tx_id)],
                )
            )
    stream_s = time.perf_counter() - t
    served.save(dirs.monitoring / "served.parquet")
    write_json(dirs.monitoring / "timings.json", {"system": "fraud", "stages": stages})
    d = pd.concat(decided, ignore_index=True)
    d["fraud"] = live["fraud"].to_numpy()
    d["amount"] = live["amount"].to_numpy()
    d["scenario"] = live["scenario"].to_numpy()
    counts = d["decision"].value_counts().to_dict()
    legit = d["fraud"] == 0
    fpr = float(((d["decision"] == "block") & legit).sum() / max(legit.sum(), 1))
    caught = d["decision"].isin(["block", "review"])
    frauds = d["fraud"] == 1
    out["stream"] = {
        "payments": len(d),
        "seconds": round(stream_s, 2),
        "tx_per_s": round(len(d) / stream_s, 0),
        "warmup_payments": len(warm),
        "warmup_s": round(warm_s, 1),
        "decisions": {k: int(v) for k, v in counts.items()},
        "fpr_blocked_legit": fpr,
        "frauds": int(frauds.sum()),
        "frauds_blocked_or_reviewed": int((caught & frauds).sum()),
        "fraud_amount_stopped": float(d.loc[caught & frauds, "amount"].sum()),
        "fraud_amount_missed": float(d.loc[~caught & frauds, "amount"].sum()),
    }
    table = Table(
        title=f"4. one live day: {len(d):,} payments in {stream_s:.1f} s "
        f"({len(d) / stream_s:,.0f} tx/s, windows warmed on {len(warm):,} past payments)"
    )
    for col in ("decision", "payments", "of which fraud", "amount"):
        table.add_column(col, justify="right")
    for name in ("approve", "review", "block"):
        m = d["decision"] == name
        table.add_row(
            name, f"{int(m.sum()):,}", f"{int((m & frauds).sum())}", f"{d.loc[m, 'amount'].sum():,.0f}"
        )
    console.print(table)
    console.print(
        f"   false-positive rate (legitimate payments blocked): {fpr:.3%}; frauds blocked or sent to "
        f"review: {int((caught & frauds).sum())}/{int(frauds.sum())}"
    )

    # 5. review queue: an analyst works the top cases; the outcomes become labels at once
    queue = ws.queue
    resolved_at = cutoff + DAY
    claimed = queue.claim("analyst-1", limit=5, now=resolved_at - 3600)
    truth = live.set_index(live["tx_id"].astype(str))["fraud"]
    outcomes = []
    for case in claimed:
        outcome = "fraud" if int(truth.get(case.tx_id, 0)) == 1 else "legit"
        queue.resolve(case.tx_id, "analyst-1", outcome, now=resolved_at - 1800)
        outcomes.append((case.tx_id, round(case.priority, 1), outcome))
    new_fraud = live.loc[live["tx_id"].astype(str).isin([tx_id for tx_id, _, o in outcomes if o == "fraud"])]
    if len(new_fraud):
        pipeline.features.add_labels(
            new_fraud.assign(label_ts=resolved_at - 1800)[["tx_id", "terminal_id", "label_ts", "fraud"]]
        )
    out["review"] = {"queue": queue.counts(), "resolved": outcomes}
    console.print(
        f"[bold]5. review[/]    queue {queue.counts()}; analyst-1 resolved "
        + ", ".join(f"tx {tx_id} (priority {p}) -> {o}" for tx_id, p, o in outcomes)
    )

    # 6. a late label: a chargeback arrives today for a fraud approved weeks ago
    now = cutoff + DAY
    late_rows = history.loc[
        (history["fraud"] == 1) & (history["label_ts"] > cutoff) & (history["label_ts"] <= now)
    ]
    late = None
    if len(late_rows):
        row = late_rows.iloc[0]
        arrival = int(row["label_ts"])
        before = len(ws.labels.labels_known_at(arrival))
        ws.labels.add([row["tx_id"]], [1], [arrival], "chargeback")
        after = len(ws.labels.labels_known_at(arrival))
        pipeline.features.add_labels(late_rows.iloc[:1][["tx_id", "terminal_id", "label_ts", "fraud"]])
        late = {
            "tx_id": str(row["tx_id"]),
            "amount": float(row["amount"]),
            "days_after_payment": round((arrival - int(row["ts"])) / DAY, 1),
            "known_before": before,
            "known_after": after,
        }
        console.print(
            f"[bold]6. late label[/] chargeback for tx {late['tx_id']} ({late['amount']:.2f}), paid "
            f"{late['days_after_payment']} days ago, arrives today: labels known {before} -> {after}"
        )
    out["late_label"] = late

    # 7. retrain on everything known now; the challenger must beat the champion to be promoted
    ws.ingest_labels(tx, known_at=now)  # every other label that arrived by the end of the day
    t = time.perf_counter()
    second = train_version(
        tx.loc[tx["ts"] <= now],
        ws,
        cutoff=now,
        sequence=sequence,
        seed=seed + 1,
        seq_epochs=seq_epochs,
        lgbm_params=lgbm_params,
    )
    out["retrain"] = {**second, "seconds": round(time.perf_counter() - t, 1)}
    ce, ch = second["challenger_eval"], second["champion_eval"]
    verdict = "promoted" if second["promoted"] else "kept the champion"
    console.print(
        f"[bold]7. retrain[/]   challenger v{second['challenger_version']} AP {ce['average_precision']:.3f} "
        f"vs champion v{second['champion_version_before']} AP {ch['average_precision']:.3f} on the latest "
        f"matured week -> {verdict}"
    )
    t = time.perf_counter()
    out["experiment"] = _shadow_experiment(dirs, ws, pipeline.features, live, console)
    out["experiment"]["seconds"] = round(time.perf_counter() - t, 1)
    from mlsd.fraud.monitoring import drift_report

    drift = drift_report(dirs)
    write_json(dirs.monitoring / "drift.json", drift)
    age1, final = drift["performance"]["by_label_age"][0], drift["performance"]["by_label_age"][-1]
    out["drift"] = {"summary": drift["summary"], "performance": drift["performance"]["by_label_age"]}
    console.print(
        f"[bold]9. monitor[/]   drift vs the champion's training sample: {drift['summary']['stable']} stable, "
        f"{drift['summary']['moderate']} moderate, {drift['summary']['significant']} significant (max PSI "
        f"{drift['summary']['max_psi']:.2f}); live-day AP with labels known 1 day later "
        f"{_fmt(age1['average_precision'])} ({age1['frauds_known']} frauds known) vs final labels "
        f"{_fmt(final['average_precision'])} ({final['frauds_known']})"
    )
    out["seconds"] = round(time.perf_counter() - started, 1)
    console.print(f"[green]fraud demo done in {out['seconds']} s[/] (artifacts under {dirs.home})")
    ws.close()
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _shadow_experiment(dirs: SystemDir, ws: Any, features: Any, live: pd.DataFrame, console: Console) -> dict:
    """Champion vs challenger as a shadow experiment on the live day (already in the windows: the
    feature engine replays those payments' features), analysed on the day's final labels."""
    from mlsd.fraud.engine import MODEL_NAME, load_engine
    from mlsd.fraud.world import METRICS, serve_period
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.experiments.online import make_experiment

    versions = {a: ws.model_version(a).version for a in ("champion", "challenger")}
    other = "challenger"
    if versions["champion"] == versions["challenger"]:
        # the challenger won and is the champion now: shadow the champion it replaced instead, the
        # check a team runs for a while after a promotion (is the new one really better live?)
        history = ws.registry.history(MODEL_NAME, "champion")
        previous = next((h["previous"] for h in reversed(history) if h.get("previous")), None)
        if previous is not None:
            ws.registry.promote(MODEL_NAME, int(previous), alias="previous")
            other, versions["previous"] = "previous", int(previous)
    arms = [{"name": "champion", "alias": "champion"}, {"name": other, "alias": other}]
    config = make_experiment("fraud", arms, list(METRICS), mode="shadow", unit="card_id")
    client = ExperimentClient(config)
    name = next(iter(config.experiments))
    started = time.perf_counter()
    pipe = load_engine(ws, review=False, shadow=False, experiments=client, features=features)
    period = serve_period(pipe, live, name, feed_labels=False)
    report = client.analyze(name, period.outcomes, looks=5)
    report["labels"] = "final labels of the live day (simulator truth)"
    path = write_json(dirs.monitoring / "experiments" / f"{name}.json", report)
    units = int(report["srm"]["counts"][0])
    console.print(
        f"[bold]8. shadow experiment[/] {name}: {units:,} cards; champion v{versions['champion']} decides, "
        f"{other} v{versions.get(other)} is scored alongside (its decisions are counterfactual)"
    )
    for metric, rows in report["metrics"].items():
        r = rows[0]
        rel = "" if r.get("relative") is None else f" ({r['relative']:+.1%})"
        console.print(
            f"   {metric}: champion {_fmt(r['mean_control'])}, {other} {_fmt(r['mean_treatment'])}, "
            f"diff {_fmt(r['diff'])}{rel} [{_fmt(r['diff_low'])}, {_fmt(r['diff_high'])}]"
        )
    console.print(
        f"   verdict: {report['verdict'].get(other)} (always-valid interval; no SRM in shadow mode); "
        f"{time.perf_counter() - started:.1f} s"
    )
    return {"name": name, "path": str(path), "verdict": report["verdict"], "versions": versions}
