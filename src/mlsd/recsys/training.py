"""Training: window the events, train the two-stage model, evaluate it on the next day, register it as
the challenger and promote it only if it beats the champion on that same day; and the recommender's
half of the scheduled retrain job (:class:`RecsysRetrainSteps` for :func:`mlsd.platform.retraining.retrain`).

::

    ──────────── train window (train_days) ────────────┬─ eval day ─┐
    history (candidates + features)  │ labels (label_days) │ held out  │ end
                                     cutoff               eval_start

* The model (:class:`~mlsd.recsys.model.TwoStageRecommender`, temporal split) sees only the train
  window: candidate models and features from events before ``cutoff``, ranker labels from
  ``[cutoff, eval_start)`` (point-in-time by construction), then stage one is refitted on the whole
  window so serving uses the freshest history.
* The eval day is never seen in training. Relevant titles are the ones a user watched past 70% that
  day and had not interacted with in the window (the engine excludes seen titles too).
* Champion and challenger are scored on the **same** eval day (the champion's registered metrics came
  from an older day, so comparing against them would compare days, not models). Promotion needs a
  strictly higher ``ndcg@k``.

Entry points:

* :func:`train` (``mlsd recsys train --workdir W``) and :func:`retrain` (``mlsd pipeline run daily``,
  ``System.retrain``) are the platform's job over :class:`RecsysRetrainSteps`: the data up to (and
  including) a run date ``D`` -- day ``D`` is ``[D 00:00, D+1 00:00)`` UTC -- is the window, ``D`` its
  evaluation day. The training settings are the champion's (the same job every day), or, with no
  champion yet, the job the data's ``meta.json`` names (``train``, written by the simulator), else
  :class:`TrainConfig` fitted to the data's calendar. The window's data fingerprint plus the
  :data:`JOB_KEYS` settings identify a job: one that already ran registers nothing. A backfill (a run
  date before the champion's own evaluation day) registers a challenger but never promotes: the
  champion trained on that day, so the gate would be a leak.
* :func:`train_daily` trains on a dataset into a registry directly (the simulated world's champion
  and its online-only challenger, the bench).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.jsonio import write_json
from mlsd.platform.retraining import Trained, Verdict, Window, resolve_run_date
from mlsd.platform.system import SystemDir
from mlsd.recsys.config import (
    MODEL_NAME,
    USER_STATE_ENV,
    USER_STATE_PREFIX,
    USER_STATE_PREFIX_ENV,
    TrainConfig,
    make_data,
)
from mlsd.recsys.data import LABEL_THRESHOLD, RecsysDataset

DAY_S = 86_400
SYSTEM = "recsys"
REFERENCE_FILE = "reference.parquet"  # inside the registered artifact: drift monitoring's training reference
# Settings that define "the same job" (with the data fingerprint): a version trained otherwise on the
# same window (e.g. the experiment's challenger with fewer trees) is a different job.
JOB_KEYS = ("train_days", "label_days", "eval_days", "sources", "n_estimators", "k")


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
    """What the engine needs beside the model, inside the same registered (checksummed) artifact:
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
    write_json(out / "meta.json", {"now_ts": int(now_ts), "dataset": dataset.name})


@dataclass
class _Fitted:
    """One training run before registration: the model, its next-day metrics and what they were measured on."""

    model: Any
    metrics: dict[str, float]
    baseline: dict[str, float]
    users: np.ndarray  # eval-day users with a relevant title
    relevant: list
    train: pd.DataFrame  # the window's events
    bounds: dict[str, int]
    n_items: int
    sources_dropped: dict[str, str]  # sources the model definition left out for this catalogue, and why

    def registered_metrics(self) -> dict[str, Any]:
        return {**self.metrics, **{f"popularity_{k}": v for k, v in self.baseline.items()},
                "eval_users": len(self.users)}  # fmt: skip


def model_for(
    dataset: RecsysDataset,
    cfg: TrainConfig,
    *,
    progress: bool = False,
    als_engine: str = "implicit",
    spark_master: str | None = None,
):
    """The job's (unfitted) model: :func:`~mlsd.recsys.model.model_spec` for the data's catalogue, the
    definition ``mlsd recsys evaluate`` measures, with the job's explicit ``sources``/``n_estimators``
    overrides, under the temporal label split; its ALS factors trained by ``als_engine`` (``spark``:
    Spark MLlib on ``spark_master``)."""
    from mlsd.recsys.model import model_spec

    spec = model_spec(len(dataset.items), cfg.sources, cfg.n_estimators, als_engine=als_engine,
                      spark_master=spark_master)  # fmt: skip
    if progress:
        spec.log_dropped("recsys train")
    if als_engine == "spark":
        from mlsd.recsys.candidates.spark_als import spark_session

        # Start (or check) the session now: no pyspark, or another session already active on another
        # master, is the job's error here; inside fit the generator would skip the source and go on.
        spark_session(spark_master)
    return spec.build(label_split="temporal", label_days=cfg.label_days, n_jobs=cfg.threads)


def _fit(dataset: RecsysDataset, cfg: TrainConfig, steps, **engine: Any) -> _Fitted:
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
    model = model_for(dataset, cfg, progress=not steps.disable, **engine).fit(
        dataset.with_interactions(train), cutoff=bounds["cutoff"]
    )
    steps.update()

    steps.set_postfix_str("evaluate on the held-out days")
    metrics = evaluate_model(model, users, relevant, cfg.k, n_items)
    baseline = evaluate_model(_Popularity(train), users, relevant, cfg.k, n_items)
    steps.update()
    from mlsd.recsys.model import model_spec

    dropped = model_spec(n_items, cfg.sources, cfg.n_estimators).dropped
    # and those that could not fit this data (the generator keeps a source's InputError): said, not silent
    skipped = getattr(model.generator_, "skipped_", {})
    for name, why in skipped.items():
        print(f"recsys train: source {name!r} could not be fitted and is left out: {why}", file=sys.stderr)
    dropped = {**dropped, **skipped}
    return _Fitted(model, metrics, baseline, users, relevant, train, bounds, n_items, dropped)


def _save_artifact(fitted: _Fitted, dataset: RecsysDataset, out: Path) -> Path:
    """The registered artifact: the model, ``catalog/`` (what the engine needs beside it) and
    ``reference.parquet`` (drift monitoring's training reference)."""
    fitted.model.save(out)
    write_catalog(out / "catalog", dataset, fitted.train, fitted.bounds["eval_start"])
    if getattr(fitted.model, "reference_", None) is not None:
        fitted.model.reference_.to_parquet(out / REFERENCE_FILE, index=False)
    return out


def _gate(challenger: dict[str, float], champion_model, champion_version: int, users, relevant, cfg: TrainConfig,
          n_items: int) -> tuple[bool, str, dict[str, float]]:  # fmt: skip
    """Challenger vs champion on the same eval day: promote on a strictly higher ``ndcg@k`` (+ min_gain)."""
    key = f"ndcg@{cfg.k}"
    champ = evaluate_model(champion_model, users, relevant, cfg.k, n_items)
    promote = challenger[key] > champ[key] + cfg.min_gain
    reason = (
        f"challenger {key} {challenger[key]:.4f} {'>' if promote else '<='} champion "
        f"v{champion_version} {champ[key]:.4f}"
        + (f" + min gain {cfg.min_gain}" if cfg.min_gain else "")
        + " on the same held-out days"
    )
    return bool(promote), reason, champ


def train_daily(
    dataset: RecsysDataset,
    registry_root: str | Path,
    config: TrainConfig | None = None,
    *,
    model_name: str = MODEL_NAME,
    progress: bool = True,
    gate: bool = True,
) -> dict[str, Any]:
    """Train on ``dataset`` into the registry at ``registry_root`` once; returns the report (metrics,
    version, promoted or not, and why).

    ``gate=False`` registers the model as the challenger only, never comparing or promoting it: for a
    challenger whose test is an online experiment rather than the offline gate.
    """
    from tqdm import tqdm

    from mlsd.platform.registry import ModelRegistry, fingerprint
    from mlsd.recsys.model import TwoStageRecommender

    cfg = config or TrainConfig()
    started = time.perf_counter()
    steps = tqdm(total=4, desc="recsys train", file=sys.stderr, disable=not progress)
    fitted = _fit(dataset, cfg, steps)

    steps.set_postfix_str("register challenger")
    registry = ModelRegistry(Path(registry_root))
    held = registry.current_version(model_name, "champion")  # None (no error) before the first model
    with tempfile.TemporaryDirectory(prefix="recsys-model-") as tmp:
        version = registry.register(
            model_name, _save_artifact(fitted, dataset, Path(tmp) / "model"),
            params={**asdict(cfg), **fitted.bounds, "sources_dropped": fitted.sources_dropped},
            metrics=fitted.registered_metrics(),
            data_fingerprint=fingerprint(fitted.train), parent=held,
        )  # fmt: skip
    registry.promote(model_name, version.version, alias="challenger")
    steps.update()

    steps.set_postfix_str("challenger vs champion")
    champion_metrics = None
    if not gate:
        promote, reason = False, "registered as challenger only: its test is the online experiment"
    elif held is None:
        promote, reason = True, "no champion yet"
    else:
        champ = TwoStageRecommender.load(registry.artifact_path(model_name, "champion"))
        promote, reason, champion_metrics = _gate(
            fitted.metrics, champ, held, fitted.users, fitted.relevant, cfg, fitted.n_items
        )
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
        "metrics": fitted.metrics,
        "popularity": fitted.baseline,
        "champion_metrics_same_day": champion_metrics,
        "eval_users": len(fitted.users),
        "train_events": len(fitted.train),
        "train_meta": getattr(fitted.model, "train_meta_", {}),
        "window": fitted.bounds,
        "seconds": round(time.perf_counter() - started, 2),
    }


# ---------------------------------------------------------------------------------------------------
# The scheduled job: the platform's retrain() over the recommender's steps


def _day(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC).date()


def _midnight(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def valid_dates(dataset: RecsysDataset, config: TrainConfig) -> tuple[dt.date, dt.date]:
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


def config_for(dataset: RecsysDataset) -> TrainConfig:
    """The job for data without a champion: the one its ``meta.json`` names (``train``: the simulator
    writes the job that fits its calendar), else the default job fitted to the data's days."""
    named = dataset.meta.get("train")
    if isinstance(named, dict):
        return config_from_params(named)
    ts = dataset.interactions["timestamp"].to_numpy()
    if len(ts) == 0:
        raise InputError("data", dataset.name, "has no events", "simulate or load some first")
    end = int(dataset.meta.get("end_ts") or ts.max() + 1)
    return TrainConfig().fit((end - int(ts.min())) / DAY_S)


def model_card(dataset: RecsysDataset) -> dict[str, list[str]]:
    """The optional columns this data feeds into rules and features (``features_used``) and the ones
    it lacks (``features_dropped``; :func:`mlsd.recsys.contract.coverage`): kept in the registry params."""
    from mlsd.recsys.contract import coverage

    cover = coverage(dataset.items, dataset.users)
    return {"features_used": cover["used"], "features_dropped": sorted(cover["dropped"])}


class RecsysRetrainSteps:
    """The recommender's half of :func:`mlsd.platform.retraining.retrain` (window, train, gate).

    The job's settings are the champion's, else :func:`config_for` the data; ``overrides`` (TrainConfig
    fields: ``mlsd recsys train --n-estimators 50``) change them. ``als_engine``/``spark_master``: which
    trainer fits the ALS factors and where (``mlsd recsys train --als-engine spark --spark-master URL``),
    this run's choice, not the champion's (a stored master may be a cluster long gone); the engine is
    part of the job's identity (factors from another trainer are another model).
    """

    system = SYSTEM
    model = MODEL_NAME

    def __init__(
        self,
        overrides: dict[str, Any] | None = None,
        *,
        als_engine: str = "implicit",
        spark_master: str | None = None,
        user_state: str | None = None,
        user_state_prefix: str = USER_STATE_PREFIX,
    ) -> None:
        from mlsd.recsys.model import model_spec

        names = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(overrides or {}) - names)
        if unknown:
            raise InputError(unknown[0], (overrides or {})[unknown[0]], "is not a training setting",
                             f"use one of {sorted(names)}")  # fmt: skip
        # A bad engine or master fails here, before the data loads.
        model_spec(0, als_engine=als_engine, spark_master=spark_master)
        self.overrides = dict(overrides or {})
        self.engine = {"als_engine": als_engine, "spark_master": spark_master}
        self.user_state, self.user_state_prefix = user_state, user_state_prefix

    def window(self, dirs: SystemDir, run_date: dt.date | None, champion: Any, *, progress: bool) -> Window:
        from mlsd.platform.registry import fingerprint
        from mlsd.recsys.data import load

        dataset = load(dirs.require_data(make_data(dirs.root)))
        config = config_from_params(champion.params) if champion is not None else config_for(dataset)
        config = replace(config, **self.overrides)
        dropped = model_card(dataset)["features_dropped"]
        if progress and dropped:  # said once per run; the model card keeps the list
            print(f"recsys train: the data has no {', '.join(dropped)}: the rules and features that need "
                  "them are left out (registry params: features_dropped)", file=sys.stderr)  # fmt: skip
        first, last = valid_dates(dataset, config)
        run_date = resolve_run_date(run_date, first, last)
        end = _midnight(run_date + dt.timedelta(days=1))
        inter = dataset.interactions
        upto = RecsysDataset(inter[inter["timestamp"].to_numpy() < end].reset_index(drop=True), dataset.items,
                             dataset.users, dataset.name, {**dataset.meta, "end_ts": end})  # fmt: skip
        bounds = split_days(upto, train_days=config.train_days, label_days=config.label_days,
                            eval_days=config.eval_days)  # fmt: skip
        ts = upto.interactions["timestamp"].to_numpy()
        window = upto.interactions[(ts >= bounds["train_start"]) & (ts < bounds["eval_start"])]
        # A backfill (a date before the champion's own evaluation day): the champion has trained on this
        # run's evaluation day, so the offline gate would compare against a model that saw the answers.
        later = champion is not None and int(champion.params.get("eval_start", 0)) > bounds["eval_start"]
        return Window(
            run_date=run_date, fingerprint=fingerprint(window.reset_index(drop=True)),
            settings={**{k: v for k, v in asdict(config).items() if k in JOB_KEYS},
                      "als_engine": self.engine["als_engine"]},
            data={"dataset": upto, "config": config, "registry": dirs.registry}, backfill=later,
            backfill_reason=(
                f"backfill: champion v{champion.version} was trained on data after {run_date.isoformat()}, "
                "so the gate cannot compare on this day; registered as challenger only"
            ) if later else "",
        )  # fmt: skip

    def train(self, window: Window, out: Path, *, progress: bool) -> Trained:
        from tqdm import tqdm

        dataset, config = window.data["dataset"], window.data["config"]
        steps = tqdm(total=2, desc="recsys train", file=sys.stderr, disable=not progress)
        fitted = _fit(dataset, config, steps, **self.engine)
        steps.close()
        window.data["fitted"] = fitted  # the gate scores the champion on the same eval day
        return Trained(
            artifact_dir=_save_artifact(fitted, dataset, out / "model"),
            params={**asdict(config), **fitted.bounds, **model_card(dataset), "sources_dropped": fitted.sources_dropped},
            metrics=fitted.registered_metrics(),
        )  # fmt: skip

    def gate(self, window: Window, challenger: Any, champion: Any, *, progress: bool) -> Verdict:
        from mlsd.platform.registry import verify
        from mlsd.recsys.model import TwoStageRecommender

        fitted: _Fitted = window.data["fitted"]
        verify(champion)  # checksums of every file, as the engine's load does
        promote, reason, champ = _gate(fitted.metrics, TwoStageRecommender.load(champion.path), champion.version,
                                       fitted.users, fitted.relevant, window.data["config"], fitted.n_items)  # fmt: skip
        return Verdict(promote, reason, {"champion_same_day": champ, "challenger": fitted.metrics})

    def before_promote(self, window: Window, challenger: Any, *, progress: bool) -> dict[str, Any] | None:
        """With ``user_state`` (the online store the serving workers read: ``--user-state``,
        ``MLSD_RECSYS_USER_STATE``): the new champion's per-user rows written there before the alias
        moves, so no worker loads a champion whose rows are missing (an export inside a serving worker
        takes minutes at a million users); then the rows of versions no alias holds any more are
        deleted (the store stays bounded: about 1 KB per user per version kept)."""
        if not self.user_state:
            return None
        from mlsd.platform.features.online import RedisStore
        from mlsd.platform.registry import ModelRegistry
        from mlsd.recsys.engine import ensure_user_state, prune_user_state
        from mlsd.recsys.model import TwoStageRecommender

        fitted = window.data.get("fitted")  # absent when a held run resumes: load what was registered
        model = fitted.model if fitted is not None else TwoStageRecommender.load(challenger.path)
        store = RedisStore(self.user_state, prefix=self.user_state_prefix)
        try:
            started = time.perf_counter()
            done = ensure_user_state(model, store, challenger.version, progress=progress)
            held = set(ModelRegistry(window.data["registry"]).aliases(MODEL_NAME).values())
            pruned = prune_user_state(store, keep=held | {challenger.version})
        finally:
            store.close()
        return {"user_state": {
            "version": challenger.version, "users": None if done is None else done["users"],
            "already_there": done is None, "seconds": round(time.perf_counter() - started, 1),
            "pruned_versions": pruned,
        }}  # fmt: skip


def retrain(dirs: SystemDir, run_date: dt.date | None = None, *, progress: bool = True) -> dict[str, Any]:
    """The scheduled daily job (``System.retrain``): the platform's retrain over :class:`RecsysRetrainSteps`;
    the serving workers' ``MLSD_RECSYS_USER_STATE`` (and ``..._PREFIX``) in its environment: the new
    champion's user rows go there before it is promoted."""
    from mlsd.platform.retraining import retrain as platform_retrain

    return platform_retrain(RecsysRetrainSteps(**_user_state_from_env()), dirs, run_date, progress=progress)


def _user_state_from_env() -> dict[str, Any]:
    url = os.environ.get(USER_STATE_ENV) or None
    return {
        "user_state": url,
        "user_state_prefix": os.environ.get(USER_STATE_PREFIX_ENV) or USER_STATE_PREFIX,
    }


def train(
    dirs: SystemDir,
    *,
    progress: bool = True,
    als_engine: str = "implicit",
    spark_master: str | None = None,
    user_state: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """``mlsd recsys train --workdir W``: the same job on the data's last day, ``overrides`` changing
    its settings (a job that already ran registers nothing and says which version it was); its ALS
    factors trained by ``als_engine`` on ``spark_master``; ``user_state``: the online store the new
    champion's user rows go to before promotion (default: ``MLSD_RECSYS_USER_STATE``; :class:`RecsysRetrainSteps`)."""
    from mlsd.platform.retraining import retrain as platform_retrain

    state = _user_state_from_env()
    if user_state:
        state["user_state"] = user_state
    steps = RecsysRetrainSteps(overrides, als_engine=als_engine, spark_master=spark_master, **state)
    return platform_retrain(steps, dirs, None, progress=progress)
