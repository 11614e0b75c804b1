"""Drift of the recommender: the ranker's features and score now vs the champion's training rows.

**Reference**: ``reference.parquet`` inside the champion's registered artifact, written at train time
(:meth:`TwoStageRecommender._reference`): a seeded sample (<= 20,000 rows) of the ranker's training
rows -- the candidates of the label window, with their point-in-time features -- plus the champion's
score of each row as ``prediction``.

**Current**, the first that exists:

1. ``W/recsys/monitoring/served_features.parquet``: a reservoir sample of the feature rows the engine
   actually scored for champion-served requests (the engine's ``feature_sample``; written by the
   simulated world's experiments and the demo), with its ``.json`` note saying which run;
2. otherwise the most recent day of the data: the users active that day, their candidates as the
   champion generates them now, the features and the champion's scores (what serving would see).

:func:`drift_report` returns :meth:`DriftMonitor.report`'s dict (``features``, ``summary``, ...) plus
``reference`` / ``current`` strings naming the windows, ``model`` / ``version``, and
``prediction`` (the score's drift, also in ``features``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir
from mlsd.recsys.config import make_data

SERVED_FILE = "served_features.parquet"
DAY_S = 86_400
MAX_CURRENT_USERS = 500  # users of the last day scored for the fallback "current" window


def save_served(dirs: SystemDir, frame: pd.DataFrame, *, source: str) -> Path:
    """Write served feature rows (+ ``prediction``) as the "current" window, with a note of its source."""
    from mlsd.platform.jsonio import write_json

    dirs.monitoring.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(dirs.monitoring / SERVED_FILE, index=False)
    write_json(dirs.monitoring / "served_features.json", {"source": source, "rows": len(frame)})
    return dirs.monitoring / SERVED_FILE


def last_day_features(
    dirs: SystemDir, model_dir: Path, max_users: int = MAX_CURRENT_USERS
) -> tuple[pd.DataFrame, str]:
    """Features + champion scores of the candidates of users active on the data's last day."""
    from mlsd.recsys.data import load
    from mlsd.recsys.model import TwoStageRecommender

    dataset = load(dirs.require_data(make_data(dirs.root)))
    model = TwoStageRecommender.load(model_dir)
    inter = dataset.interactions
    ts = inter["timestamp"].to_numpy()
    end = int(dataset.meta.get("end_ts") or ts.max() + 1)
    day = inter[ts >= end - DAY_S]
    users = np.unique(day["user_id"].to_numpy(np.int64))
    users = users[model.users_.index(users) >= 0]  # the ranker scores users with a history
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(0).choice(users, max_users, replace=False))
    if len(users) == 0:
        raise InputError("data", str(dirs.data), "no known user was active on the last day",
                         "run an experiment or the demo first (they save served requests)")  # fmt: skip
    frame = model.candidates(users)
    X = model.rank_features(frame)[model.ranker_.feature_names_]
    day_name = pd.to_datetime(end - DAY_S, unit="s").date().isoformat()
    current = X.assign(prediction=np.asarray(model.ranker_.predict(X), dtype=np.float64))
    return (
        current,
        f"candidates of {len(users)} users active on {day_name} (the data's last day), scored by the champion",
    )


def drift_report(dirs: SystemDir, *, bins: int = 10) -> dict[str, Any]:
    """Drift of the champion's features and score: training reference vs served (or last-day) rows.
    A read path: no champion is an InputError with the fix, and nothing is created."""
    from mlsd.platform.monitoring.drift import DriftMonitor
    from mlsd.platform.registry import verify
    from mlsd.recsys.training import MODEL_NAME, REFERENCE_FILE

    mv = dirs.require_champion(MODEL_NAME)
    verify(mv)
    model_dir, version = mv.path, mv.version
    if not (model_dir / REFERENCE_FILE).exists():
        raise InputError("--workdir", str(dirs.root), f"the champion v{version} has no training reference",
                         "retrain it (mlsd pipeline run daily): models now save reference.parquet")  # fmt: skip
    reference = pd.read_parquet(model_dir / REFERENCE_FILE)
    served = dirs.monitoring / SERVED_FILE
    if served.exists():
        current = pd.read_parquet(served)
        note = dirs.monitoring / "served_features.json"
        source = (
            json.loads(note.read_text()).get("source", "served requests")
            if note.exists()
            else "served requests"
        )
        current_desc = f"{len(current)} feature rows sampled from requests served by the champion: {source}"
    else:
        current, current_desc = last_day_features(dirs, model_dir)
    features = [c for c in reference.columns if c in current.columns]
    monitor = DriftMonitor(bins=bins, features=features).fit(reference)
    report = monitor.report(current)
    window = mv.params
    start = pd.to_datetime(window.get("cutoff", 0), unit="s").date().isoformat()
    end = pd.to_datetime(window.get("eval_start", 0), unit="s").date().isoformat()
    return {
        "system": "recsys",
        "model": MODEL_NAME,
        "version": version,
        "reference": f"{len(reference)} ranker training rows of champion v{version} "
        f"(label window {start}..{end}), score = 'prediction'",
        "current": current_desc,
        **report,
        "prediction": report["features"].get("prediction"),
    }
