"""The recommender's scheduled daily retrain: ``mlsd pipeline run daily --workdir W [--date D]``.

``run_scheduled(workdir, run_date)`` is the daily job of :func:`mlsd.recsys.pipeline.train_daily` on
the data *up to and including* ``run_date`` (the simulated events carry timestamps: day ``D`` is
``[D 00:00, D+1 00:00)`` UTC). That day is the job's evaluation day, the ``train_days`` before it its
training window. The model is registered as the ``challenger``, compared with the champion on the
same evaluation day, and promoted only if it wins.

* **Data**: ``workdir/data``; when absent, the experiment world (:data:`mlsd.recsys.experiment.WORLD_SIZE`,
  seeded, so every run simulates the same one) is simulated there first.
* **Settings**: the champion's registered training settings (the same job every day); the world's
  :data:`~mlsd.recsys.experiment.WORLD_TRAIN` when there is no champion yet.
* **Idempotent**: the training window's data fingerprint (the registry's ``data_fingerprint``) plus the
  settings identify a job; when a registered version already has both, nothing is trained or
  registered (``registered=False``, the reason names that version).
* A ``run_date`` outside the data is an InputError naming ``--date`` with the valid range.
* A backfill (``run_date`` before the champion's own evaluation day) registers a challenger but never
  promotes: the champion has trained on that day's events, so the gate would be a leak.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from mlsd.platform.retraining import resolve_run_date
from mlsd.recsys.config import TrainConfig

DAY_S = 86_400
SYSTEM = "recsys"
# Settings that define "the same job" (with the data fingerprint): a version trained otherwise on the
# same window (e.g. the experiment's challenger with fewer trees) is a different job.
JOB_KEYS = ("train_days", "label_days", "eval_days", "sources", "n_estimators", "k")


def _day(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC).date()


def _midnight(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def valid_dates(dataset, config: TrainConfig) -> tuple[dt.date, dt.date]:
    """First and last run dates the data supports: the last day of events, and the first day with at
    least one full day of history before its label and evaluation days."""
    ts = dataset.interactions["timestamp"].to_numpy()
    end = int(dataset.meta.get("end_ts") or ts.max() + 1)
    last = _day(end - 1)
    need = int(np.ceil(config.eval_days + config.label_days)) + 1
    first = _day(int(ts.min())) + dt.timedelta(days=need - 1)
    return min(first, last), last


def config_from_params(params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a registered version was trained with (its params hold the config's fields)."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in params.items() if k in names})


def _same_job(params: dict[str, Any], config: TrainConfig) -> bool:
    mine = asdict(config)
    return all(params.get(key) == mine[key] for key in JOB_KEYS)


def run_scheduled(workdir: Path, run_date: dt.date | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Retrain on the data up to ``run_date`` (default: the data's last day); see the module doc."""
    from mlsd.platform.registry import ModelRegistry, fingerprint
    from mlsd.recsys.data import RecsysDataset
    from mlsd.recsys.experiment import WORLD_SIZE, WORLD_TRAIN
    from mlsd.recsys.pipeline import MODEL_NAME, split_days, train_daily
    from mlsd.recsys.simulate import load, save, simulate

    started = time.perf_counter()
    workdir = Path(workdir)
    data_dir, registry_root = workdir / "data", workdir / "registry"
    if not (data_dir / "items.parquet").exists():
        if progress:
            print(f"recsys schedule: no data in {data_dir}; simulating the default world", file=sys.stderr)
        save(*simulate(**WORLD_SIZE), data_dir)
    dataset = load(data_dir)
    registry = ModelRegistry(registry_root)
    champion = registry.current_version(MODEL_NAME, "champion") if MODEL_NAME in registry.names() else None
    config = (
        config_from_params(registry.get(MODEL_NAME, champion).params) if champion is not None else WORLD_TRAIN
    )

    first, last = valid_dates(dataset, config)
    run_date = resolve_run_date(run_date, first, last)
    end = _midnight(run_date + dt.timedelta(days=1))
    inter = dataset.interactions
    upto = RecsysDataset(
        inter[inter["timestamp"].to_numpy() < end].reset_index(drop=True),
        dataset.items,
        dataset.users,
        dataset.name,
        {**dataset.meta, "end_ts": end},
    )
    # The same training window train_daily will use, to recognise a job that already ran.
    bounds = split_days(upto, train_days=config.train_days, label_days=config.label_days,
                        eval_days=config.eval_days)  # fmt: skip
    ts = upto.interactions["timestamp"].to_numpy()
    window = upto.interactions[(ts >= bounds["train_start"]) & (ts < bounds["eval_start"])].reset_index(
        drop=True
    )
    fp = fingerprint(window)
    base = {"system": SYSTEM, "run_date": run_date.isoformat(), "model": MODEL_NAME, "data_fingerprint": fp}
    if MODEL_NAME in registry.names():
        for mv in registry.versions(MODEL_NAME):
            if mv.data_fingerprint == fp and _same_job(mv.params, config):
                return {
                    **base,
                    "version": mv.version,
                    "registered": False,
                    "promoted": False,
                    "reason": f"v{mv.version} was already trained on this window (data fingerprint {fp[:12]}...)"
                    " with the same settings: nothing to do",
                    "metrics": mv.metrics,
                    "champion": registry.current_version(MODEL_NAME, "champion"),
                    "seconds": round(time.perf_counter() - started, 2),
                }
    # A backfill (a date before the champion's own evaluation day): the champion has trained on this
    # run's evaluation day, so the offline gate would compare against a model that saw the answers.
    later = (
        champion is not None
        and int(registry.get(MODEL_NAME, champion).params.get("eval_start", 0)) > bounds["eval_start"]
    )
    report = train_daily(upto, registry_root, config, progress=progress, gate=not later)
    if later:
        report["reason"] = (
            f"backfill: champion v{champion} was trained on data after {run_date.isoformat()}, so the gate "
            "cannot compare on this day; registered as challenger only"
        )
    return {
        **base,
        "version": report["version"],
        "registered": True,
        "promoted": report["promoted"],
        "reason": report["reason"],
        "metrics": report["metrics"],
        "champion": report["champion"],
        "popularity": report["popularity"],
        "window": {
            k: _day(v).isoformat() if k != "end" else _day(v - 1).isoformat() for k, v in bounds.items()
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
