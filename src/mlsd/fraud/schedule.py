"""The weekly retraining job: ``run_scheduled(workdir, run_date)`` (``mlsd pipeline run weekly``).

1. Data: ``workdir/data/transactions.parquet`` (the default simulated world, written once when absent).
2. Cut-off: the end of ``run_date`` (default: the data's last day). Labels: the events known then are
   recorded in the label store (idempotent; later ones stay invisible to training by construction).
3. Idempotency: the training window's fingerprint (payments up to the cut-off) is looked up in the
   registry's lineage; a version trained on exactly that window means the job already ran -- nothing is
   registered, and the report names that version.
4. Otherwise :func:`~mlsd.fraud.pipeline.retrain`: a challenger on the labels known at the cut-off,
   registered under alias ``challenger``; the offline gate scores champion and challenger on the same
   matured evaluation week (average precision) and promotes the challenger only if it wins.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

from mlsd.platform.retraining import resolve_run_date

DAY = 86_400
# a run needs label_delay (7) + eval (7) days before the cut-off plus a week to train on
MIN_HISTORY_DAYS = 21


def _date(ts: int) -> dt.date:
    return pd.Timestamp(int(ts), unit="s").date()


def run_scheduled(workdir: Path, run_date: dt.date | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Weekly retrain up to ``run_date``; see the module docstring. Returns the job's report."""
    from mlsd.fraud.experiment import LGBM_PARAMS, ensure_data
    from mlsd.fraud.pipeline import MODEL_NAME, Workspace, retrain
    from mlsd.platform.registry import fingerprint

    workdir = Path(workdir)
    tx = ensure_data(workdir)
    first_day = int(tx["ts"].min()) // DAY * DAY
    last_day = int(tx["ts"].max()) // DAY * DAY
    earliest = first_day + MIN_HISTORY_DAYS * DAY
    run_date = resolve_run_date(
        run_date, _date(earliest), _date(last_day),
        what=f"the days with {MIN_HISTORY_DAYS} days of history before them (data from {_date(first_day)})",
    )  # fmt: skip
    day = int(pd.Timestamp(run_date).tz_localize("UTC").timestamp())
    cutoff = min(day + DAY - 1, int(tx["ts"].max()))
    window = tx.loc[tx["ts"] <= cutoff].reset_index(drop=True)
    data_fp = fingerprint(window[["tx_id", "ts", "amount"]])  # the same lineage retrain() records
    ws = Workspace(workdir / "workspace")
    out: dict[str, Any] = {
        "system": "fraud",
        "run_date": run_date.isoformat(),
        "model": MODEL_NAME,
        "cutoff": pd.Timestamp(cutoff, unit="s").isoformat(),
        "data_fingerprint": data_fp,
    }
    existing = [
        mv
        for mv in (ws.registry.versions(MODEL_NAME) if MODEL_NAME in ws.registry.names() else [])
        if mv.data_fingerprint == data_fp and mv.params.get("alias", "challenger") == "challenger"
    ]
    if existing:
        mv = existing[-1]
        champion = ws.model_version("champion")
        return {
            **out,
            "version": mv.version,
            "registered": False,
            "promoted": False,
            "reason": f"already trained on this window: version {mv.version} has the same data fingerprint"
            f" (champion is v{champion.version if champion else None})",
            "metrics": mv.metrics,
        }
    ws.ingest_labels(window, known_at=cutoff)
    if progress:
        print(f"fraud: weekly retrain, labels known at {out['cutoff']}", flush=True)
    result = retrain(window, ws, cutoff=cutoff, sequence=False, lgbm_params=dict(LGBM_PARAMS))
    ce, ch = result["challenger_eval"], result["champion_eval"]
    if result["champion_version_before"] is None:
        reason = "first model: promoted to champion"
    elif result["promoted"]:
        reason = (
            f"challenger AP {ce['average_precision']:.4f} beat champion v{result['champion_version_before']} "
            f"AP {ch['average_precision']:.4f} on the same matured week: promoted"
        )
    else:
        reason = (
            f"challenger AP {ce['average_precision']:.4f} did not beat champion "
            f"v{result['champion_version_before']} AP {ch['average_precision']:.4f} "
            f"(+{ws.config.training.min_improvement} needed): kept the champion"
        )
    return {
        **out,
        "version": result["challenger_version"],
        "registered": True,
        "promoted": bool(result["promoted"]),
        "reason": reason,
        "metrics": {
            "challenger_eval": ce,
            "champion_eval": ch,
            "eval_window": [pd.Timestamp(t, unit="s").isoformat() for t in result["eval_window"]],
            "train_rows": result["train_rows"],
            "train_frauds": result["train_frauds"],
        },
        "champion_version": result["champion_version"],
    }
