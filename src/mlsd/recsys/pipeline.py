"""The daily training job: window the events, train the two-stage model, evaluate it on the next day,
register it as the challenger and promote it only if it beats the champion on that same day.

::

    ──────────── train window (train_days) ────────────┬─ eval day ─┐
    history (candidates + features)  │ labels (label_days) │ held out  │ end
                                     cutoff               eval_start

* The model (:class:`~mlsd.recsys.model.TwoStageRecommender`, temporal split) sees only the train
  window: candidate models and features from events before ``cutoff``, ranker labels from
  ``[cutoff, eval_start)`` (point-in-time by construction), then stage one is refitted on the whole
  window so serving uses the freshest history.
* The eval day is never seen in training. Relevant titles are the ones a user watched past 70% that
  day and had not interacted with in the window (the service excludes seen titles too).
* Champion and challenger are scored on the **same** eval day (the champion's registered metrics came
  from an older day, so comparing against them would compare days, not models). Promotion needs a
  strictly higher ``ndcg@k``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.recsys.config import TrainConfig
from mlsd.recsys.data import RecsysDataset
from mlsd.recsys.simulate import LABEL_THRESHOLD

DAY_S = 86_400
MODEL_NAME = "recsys-ranker"
REFERENCE_FILE = "reference.parquet"  # inside the registered artifact: drift monitoring's training reference


def split_days(
    dataset: RecsysDataset, *, train_days: float = 30, label_days: float = 7, eval_days: float = 1
) -> dict[str, int]:
    """The job's time boundaries (epoch seconds) from the end of the data."""
    ts = dataset.interactions["timestamp"].to_numpy()
    if len(ts) == 0:
        raise InputError("data", dataset.name, "has no events", "simulate or load some first")
    end = int(dataset.meta.get("end_ts") or ts.max() + 1)
    eval_start = int(end - eval_days * DAY_S)
    train_start = int(eval_start - train_days * DAY_S)
    cutoff = int(eval_start - label_days * DAY_S)
    if not train_start < cutoff < eval_start:
        raise InputError("label_days", label_days, "must be shorter than train_days", "use e.g. 7 of 30 days")
    if ts.min() >= cutoff:
        raise InputError(
            "train_days", train_days, "leaves no history before the label window", "use more data"
        )
    return {"train_start": train_start, "cutoff": cutoff, "eval_start": eval_start, "end": end}


def relevant_on(train: pd.DataFrame, held_out: pd.DataFrame, threshold: float = LABEL_THRESHOLD):
    """(user ids, list of relevant item arrays): held-out watches past ``threshold``, not seen in ``train``."""
    pos = held_out.loc[held_out["weight"].to_numpy() > threshold, ["user_id", "item_id"]].drop_duplicates()
    seen = train[["user_id", "item_id"]].drop_duplicates()
    pos = pos.merge(seen, how="left", indicator=True)
    pos = pos[pos["_merge"] == "left_only"].sort_values(["user_id", "item_id"])
    users, starts = np.unique(pos["user_id"].to_numpy(), return_index=True)
    return users, np.split(pos["item_id"].to_numpy(np.int64), starts[1:])


def evaluate_model(model, users: np.ndarray, relevant: list, k: int, n_items: int, batch: int = 512) -> dict:
    """Ranking metrics of ``model.recommend`` (seen titles excluded) for ``users`` against ``relevant``."""
    from mlsd.platform.metrics import ranking_metrics

    if len(users) == 0:
        raise InputError("eval day", 0, "has no user with a relevant title", "use more users or another day")
    recs = [model.recommend(users[s : s + batch], k=k)[0] for s in range(0, len(users), batch)]
    return {key: float(v) for key, v in ranking_metrics(np.vstack(recs), relevant, k, n_items).items()}


class _Popularity:
    """The baseline reported beside the model: most-watched titles in the window, seen ones excluded."""

    def __init__(self, train: pd.DataFrame) -> None:
        counts = train.loc[train["weight"] > LABEL_THRESHOLD, "item_id"].value_counts()
        self.order = counts.index.to_numpy(np.int64)
        self.seen_keys = np.unique(
            train["user_id"].to_numpy(np.int64) * (1 << 32) + train["item_id"].to_numpy(np.int64)
        )

    def recommend(self, users: np.ndarray, k: int):
        head = self.order[: k + 500]
        grid = np.broadcast_to(head, (len(users), len(head)))
        seen = np.isin(np.asarray(users, np.int64)[:, None] * (1 << 32) + grid, self.seen_keys)
        # Unseen titles first, in popularity order (a stable sort of the seen flags).
        order = np.argsort(seen, axis=1, kind="stable")[:, :k]
        out = np.take_along_axis(grid, order, axis=1).copy()
        out[np.take_along_axis(seen, order, axis=1)] = -1
        if out.shape[1] < k:
            out = np.hstack([out, np.full((len(users), k - out.shape[1]), -1, np.int64)])
        return out, None, None


def write_catalog(
    out: Path, dataset: RecsysDataset, train: pd.DataFrame, now_ts: int, seeds_per_user: int = 10
) -> None:
    """What the service needs beside the model, inside the same registered (checksummed) artifact:
    the title catalogue (rules, re-ranking, titles), user attributes (region, age) and, for users the
    model never saw in its window, their last titles before it (cold-start seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    dataset.items.to_parquet(out / "items.parquet", index=False)
    cols = [c for c in ("user_id", "region", "age") if c in dataset.users.columns]
    dataset.users[cols].to_parquet(out / "users.parquet", index=False)
    inter = dataset.interactions
    before = inter[
        (inter["timestamp"].to_numpy() < now_ts) & ~inter["user_id"].isin(train["user_id"].unique())
    ]
    seeds = before.sort_values("timestamp", kind="stable").groupby("user_id").tail(seeds_per_user)
    seeds[["user_id", "item_id", "timestamp"]].to_parquet(out / "seeds.parquet", index=False)
    (out / "meta.json").write_text(json.dumps({"now_ts": int(now_ts), "dataset": dataset.name}))


def train_daily(
    dataset: RecsysDataset,
    registry_root: str | Path,
    config: TrainConfig | None = None,
    *,
    model_name: str = MODEL_NAME,
    progress: bool = True,
    gate: bool = True,
) -> dict[str, Any]:
    """Run the daily job once; returns the report (metrics, version, promoted or not, and why).

    ``gate=False`` registers the model as the challenger only, never comparing or promoting it: for a
    challenger whose test is an online experiment rather than the offline gate. The artifact holds
    ``reference.parquet`` (a sample of the ranker's training rows + ``prediction``) for drift monitoring.
    """
    from tqdm import tqdm

    from mlsd.platform.registry import ModelRegistry, fingerprint
    from mlsd.recsys.model import TwoStageRecommender
    from mlsd.recsys.ranker import LightGBMRanker

    cfg = config or TrainConfig()
    k = cfg.k
    started = time.perf_counter()
    steps = tqdm(total=5, desc="recsys train", file=sys.stderr, disable=not progress)
    bounds = split_days(
        dataset, train_days=cfg.train_days, label_days=cfg.label_days, eval_days=cfg.eval_days
    )
    inter = dataset.interactions
    ts = inter["timestamp"].to_numpy()
    train = inter[(ts >= bounds["train_start"]) & (ts < bounds["eval_start"])].reset_index(drop=True)
    held_out = inter[(ts >= bounds["eval_start"]) & (ts < bounds["end"])]
    users, relevant = relevant_on(train, held_out)
    n_items = len(dataset.items)

    steps.set_postfix_str("fit two-stage model")
    ranker = LightGBMRanker(n_estimators=cfg.n_estimators, n_jobs=cfg.threads)
    model = TwoStageRecommender(
        sources=cfg.sources, ranker=ranker, label_split="temporal", label_days=cfg.label_days
    ).fit(dataset.with_interactions(train), cutoff=bounds["cutoff"])
    steps.update()

    steps.set_postfix_str("evaluate on the next day")
    metrics = evaluate_model(model, users, relevant, k, n_items)
    baseline = evaluate_model(_Popularity(train), users, relevant, k, n_items)
    steps.update()

    steps.set_postfix_str("register challenger")
    registry = ModelRegistry(Path(registry_root))
    with tempfile.TemporaryDirectory(prefix="recsys-model-") as tmp:
        artifact = Path(tmp) / "model"
        model.save(artifact)
        write_catalog(artifact / "catalog", dataset, train, bounds["eval_start"])
        if getattr(model, "reference_", None) is not None:
            model.reference_.to_parquet(artifact / REFERENCE_FILE, index=False)
        held = registry.current_version(model_name, "champion")  # None (no error) before the first model
        champion = registry.get(model_name, held) if held is not None else None
        version = registry.register(
            model_name,
            artifact,
            params={**asdict(cfg), **bounds},
            metrics={
                **metrics,
                **{f"popularity_{key}": v for key, v in baseline.items()},
                "eval_users": len(users),
            },
            data_fingerprint=fingerprint(train),
            parent=champion.version if champion else None,
        )
    registry.promote(model_name, version.version, alias="challenger")
    steps.update()

    steps.set_postfix_str("challenger vs champion")
    key = f"ndcg@{k}"
    champion_metrics = None
    if not gate:
        promote, reason = False, "registered as challenger only: its test is the online experiment"
    elif champion is None:
        promote, reason = True, "no champion yet"
    else:
        champ = TwoStageRecommender.load(registry.artifact_path(model_name, "champion"))
        champion_metrics = evaluate_model(champ, users, relevant, k, n_items)
        promote = metrics[key] > champion_metrics[key] + cfg.min_gain
        reason = (
            f"challenger {key} {metrics[key]:.4f} {'>' if promote else '<='} champion "
            f"v{champion.version} {champion_metrics[key]:.4f} (+{cfg.min_gain}) on the same eval day"
        )
    steps.update()
    if promote:
        registry.promote(model_name, version.version, alias="champion")
    steps.update()
    steps.close()
    return {
        "model": model_name,
        "version": version.version,
        "promoted": bool(promote),
        "reason": reason,
        "champion": registry.current_version(model_name, "champion"),
        "metrics": metrics,
        "popularity": baseline,
        "champion_metrics_same_day": champion_metrics,
        "eval_users": len(users),
        "train_events": len(train),
        "train_meta": getattr(model, "train_meta_", {}),
        "window": bounds,
        "seconds": round(time.perf_counter() - started, 2),
    }
