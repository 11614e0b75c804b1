"""Fraud monitoring: feature and prediction drift against the champion's training reference, and the
model's performance on labels as they mature.

``drift_report(dirs)`` (``dirs``: the fraud :class:`~mlsd.platform.system.SystemDir`, ``W/fraud``;
reading it creates nothing):

* **reference** -- ``reference.parquet`` saved next to the champion in the registry at training time
  (<= 20k training rows, the model's own features plus its score as ``prediction``);
* **current** -- what the service served: ``dirs.monitoring/served.parquet`` (a reservoir sample of
  served feature rows with the champion's score, written by the world's ``run_experiment`` and the
  demo); when it is absent, the data's last ``LIVE_DAYS`` days are featurised offline (labels as the
  label store knows them) and scored by the champion;
* **features / summary** -- :class:`~mlsd.platform.monitoring.drift.DriftMonitor` (PSI bands, KS);
* **performance** -- fraud labels arrive late (review: hours; chargebacks: 30-90 days), so a
  precision/recall measured a day after scoring is not the one measured a month later. For the
  current payments, the report recomputes AUC, average precision and precision/recall at the live
  block and review thresholds with the labels *known* 1, 7, 14, 30, 60 and 90 days after each payment was
  scored (a payment counts as fraud once its label event is known, as the label store's
  ``labels_known_at`` answers), plus the final labels. ``matured_share`` says which share of the
  payments is already that old at the data's end; the rest of a row is projected with the simulated
  world's label arrival times (production fills it in as time passes). On **imported** data there is
  no known truth beyond the export (``imports.json``'s ``as_of``, the data's end here): the rows are
  computed on the label events imported, ``truth`` says so and ``not_computed`` names what is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsd.fraud.contract import is_simulated, read_manifest
from mlsd.fraud.engine import MODEL_NAME, FraudDirs
from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir

DAY = 86_400
# chargebacks take 30-90 days: the last ages show the labels that 1-30 days cannot see yet
LABEL_AGES_DAYS = (1, 7, 14, 30, 60, 90)
LIVE_DAYS = 7  # without a served sample, the data's last week is "what was served"


def live_start(tx: pd.DataFrame) -> int:
    """First second of the data's last ``LIVE_DAYS`` days (the world's live period)."""
    last_day = int(tx["ts"].max()) // DAY * DAY
    return last_day - (LIVE_DAYS - 1) * DAY


def _offline_current(ws: FraudDirs, tx: pd.DataFrame, start: int) -> pd.DataFrame:
    """The payments from ``start`` featurised offline (labels as known at the data's end) and scored."""
    from mlsd.fraud.features import compute_features

    end = int(tx["ts"].max())
    known = ws.labels_known_at(end)
    fraud_ts = known.loc[known["label"] == 1].set_index("tx_id")["label_ts"]
    frame = tx.drop(columns=["fraud", "label_ts", "scenario"], errors="ignore")
    label_ts = frame["tx_id"].astype(str).map(fraud_ts)
    frame["fraud"] = label_ts.notna().astype(np.int8).to_numpy()
    frame["label_ts"] = label_ts.to_numpy(np.float64)
    feats = compute_features(frame, ws.feature_config())
    ring = ws.ring("champion")
    if ring is not None:
        feats = pd.concat([feats, ring.lookup(frame).set_axis(feats.index)], axis=1)
    recent = tx["ts"].to_numpy() >= start
    current = feats.loc[recent].reset_index(drop=True)
    current["prediction"] = ws.scorer("champion").predict(current)
    current["tx_id"] = tx["tx_id"].to_numpy()[recent]
    current["ts"] = tx["ts"].to_numpy()[recent]
    return current


def performance_by_label_age(
    scored: pd.DataFrame,
    truth: pd.DataFrame,
    thresholds: Any,
    *,
    now: int,
    ages_days: tuple[int, ...] = LABEL_AGES_DAYS,
    simulated: bool = True,
) -> dict[str, Any]:
    """Metrics of the scores in ``scored`` (``tx_id, ts, prediction``) on the labels known ``age`` days
    after each payment, for every age, and on the final labels. ``truth`` holds ``tx_id, fraud,
    label_ts`` (when each fraud label became known). Vectorised: one join, one mask per age."""
    from mlsd.platform.metrics import average_precision, roc_auc

    joined = scored[["tx_id", "ts", "prediction"]].merge(
        truth[["tx_id", "fraud", "label_ts"]], on="tx_id", how="inner", validate="one_to_one"
    )
    if joined.empty:
        raise InputError(
            "current", 0, "no scored payment has a row in the data", "score payments of the data"
        )
    p = joined["prediction"].to_numpy(np.float64)
    ts = joined["ts"].to_numpy(np.int64)
    fraud = joined["fraud"].to_numpy() == 1
    label_ts = joined["label_ts"].to_numpy(np.float64)
    blocked, flagged = p >= thresholds.block, p >= thresholds.review

    def metrics(y: np.ndarray) -> dict[str, Any]:
        both = 0 < y.sum() < len(y)
        out = {
            "payments": int(len(y)),
            "frauds_known": int(y.sum()),
            "auc_roc": float(roc_auc(y, p)) if both else None,
            "average_precision": float(average_precision(y, p)) if both else None,
        }
        for name, mask in (("block", blocked), ("review", flagged)):
            hits = int((mask & y).sum())
            out[f"precision_at_{name}"] = hits / int(mask.sum()) if mask.any() else None
            out[f"recall_at_{name}"] = hits / int(y.sum()) if y.any() else None
        return out

    rows = []
    for age in ages_days:
        known = fraud & (label_ts <= ts + age * DAY)
        row = {"age_days": age, **metrics(known)}
        row["share_of_final_frauds"] = float(known.sum() / fraud.sum()) if fraud.any() else None
        row["matured_share"] = float((ts + age * DAY <= now).mean())
        rows.append(row)
    final = {"age_days": "final", **metrics(fraud), "share_of_final_frauds": 1.0 if fraud.any() else None}
    final["matured_share"] = float((label_ts[fraud] <= now).mean()) if fraud.any() else None
    rows.append(final)
    if simulated:
        note = ("labels known `age_days` after each payment was scored; rows not yet that old at `as_of` "
                "(1 - matured_share) use the simulated world's label arrival times")  # fmt: skip
    else:
        note = ("labels known `age_days` after each payment was scored, from the imported label events; "
                "no known truth beyond `as_of` (the data's export): a fraud not reported by then counts as "
                "legitimate, so rows not yet that old (1 - matured_share) and the final row are estimates "
                "on the labels known so far (frauds and recall can only grow as labels arrive)")  # fmt: skip
    return {
        "by_label_age": rows,
        "thresholds": {"block": thresholds.block, "review": thresholds.review},
        "as_of": pd.Timestamp(int(now), unit="s").isoformat(),
        "truth": "simulated" if simulated else "imported labels as of the export",
        "note": note,
    }


def drift_report(dirs: SystemDir) -> dict[str, Any]:
    """The champion's training reference vs what was served (+ performance by label age)."""
    from mlsd.fraud.training import read_transactions
    from mlsd.platform.monitoring.drift import DriftMonitor

    mv = dirs.require_champion(MODEL_NAME)  # no champion: the fix, and nothing created
    ws = FraudDirs(dirs)
    ref_path = ws.registry.artifact_path(MODEL_NAME, mv.version) / "reference.parquet"
    if not ref_path.exists():
        raise InputError(
            "--workdir", str(ref_path), "the champion has no training reference (trained before it existed)",
            f"retrain: `mlsd fraud train --workdir {dirs.root}` saves one next to the new model",
        )  # fmt: skip
    reference = pd.read_parquet(ref_path)
    tx = read_transactions(ws)
    served_path = dirs.monitoring / "served.parquet"
    if served_path.exists():
        current = pd.read_parquet(served_path)
        current_text = f"served sample ({served_path}): {len(current):,} payments scored by the service"
        served_by = sorted(set(current.get("model_version", pd.Series([], dtype=str)).astype(str)))
        if served_by != [str(mv.version)]:
            # scored by an earlier champion: the score drift must compare one model with itself, so
            # the served feature rows are rescored by the current champion
            current = current.assign(prediction=ws.scorer("champion").predict(current))
            current_text += f" (served by v{','.join(served_by)}; 'prediction' rescored by v{mv.version})"
    else:
        start = live_start(tx)
        current = _offline_current(ws, tx, start)
        current_text = (
            f"the data's last {LIVE_DAYS} days from {pd.Timestamp(start, unit='s').date()}, featurised "
            f"offline and scored by the champion v{mv.version} (no served sample yet)"
        )
    columns = [c for c in reference.columns if c in current.columns]
    # A window shorter than a week has the weekend share of its calendar, not of the traffic: a
    # Saturday alone reads is_weekend PSI ~3 ("significant") with nothing wrong. Leave it out then.
    left_out = []
    if "ts" in current.columns and len(current):
        span_days = (int(current["ts"].max()) - int(current["ts"].min())) / 86_400
        if span_days < 7 and "is_weekend" in columns:
            columns.remove("is_weekend")
            left_out.append(f"is_weekend (the current window spans {span_days:.1f} days, less than a week)")
    # flags and ring sizes are spikes, compared as categories (DriftMonitor's discrete_max)
    monitor = DriftMonitor(features=columns, discrete_max=20).fit(reference[columns])
    report = monitor.report(current[columns])
    window = mv.params.get("reference_window") or mv.params.get("train_window")
    report["system"] = "fraud"
    report["model_version"] = mv.version
    report["reference"] = (
        f"champion v{mv.version} training/eval sample with full windows ({len(reference):,} rows"
        + (
            f", payments {pd.Timestamp(window[0], unit='s').date()} to {pd.Timestamp(window[1], unit='s').date()}"
            if window
            else ""
        )
        + ", score as 'prediction')"
    )
    report["current"] = current_text
    if left_out:
        report["left_out"] = left_out
    if {"tx_id", "ts", "prediction"} <= set(current.columns) and {"fraud", "label_ts"} <= set(tx.columns):
        simulated = is_simulated(dirs.data)
        # imported data was exported when its latest label was known (as_of), after its last payment
        as_of = None if simulated else (read_manifest(dirs.data) or {}).get("as_of")
        now = max(int(tx["ts"].max()), int(as_of or 0))
        report["performance"] = performance_by_label_age(
            current, tx, ws.config.thresholds, now=now, simulated=simulated
        )
        if not simulated:
            report["not_computed"] = {
                "final precision and recall": "no known truth beyond the export "
                f"({pd.Timestamp(now, unit='s').date()}): frauds reported later are not in the data; "
                "the performance rows are estimates on the labels known then",
            }
    return report
