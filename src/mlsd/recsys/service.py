"""The recommendation service: champion model from the registry -> candidates -> rules -> features ->
ranking -> re-ranking, under a per-request deadline, in-process and over HTTP.

``RecsysService.recommend(user_id, k)`` is the in-process core (the bench measures it directly);
``create_service_app(service)`` wraps it in the platform app factory as
``GET /v1/recommendations/{user_id}?k=50``.

Stages and what the deadline may skip (the response lists ``skipped`` stages with the reason):

==============  ========================================================================  ==============
stage           work                                                                      under deadline
==============  ========================================================================  ==============
candidates      union of ALS/FAISS, EASE, content, popularity, trending, new (cold start:  always runs
                content from seed titles + popularity)
rules           region, age rating, licensing window, release: vectorised hard filters    never skipped
features        point-in-time feature tables (fitted at train time) joined to candidates  skippable
ranking         LightGBM scores                                                           skippable
rerank          freshness, genre caps, epsilon-greedy exploration (+ exposure log)        skippable
==============  ========================================================================  ==============

Rules run right after candidate generation, not after ranking: a title that may not be shown is
never worth scoring, and a deadline can never skip them. When features + ranking would not fit in
the time left (their expected cost is a running average of measured cost per candidate), the
candidate order stands in (best reciprocal rank over the sources); when re-ranking would not fit,
the ranked order is cut at k and every shown title is logged with propensity 1. A user the model has
no history for is scored the way :meth:`TwoStageRecommender.score` scores them (``fallback_scores``,
no features), so serving matches offline evaluation; ``scored_by`` in the answer says which path ran.

The model, catalogue and user attributes form one immutable :class:`_Loaded` snapshot; the registry
watcher swaps in a new snapshot when the champion alias moves (hot reload), so a request never sees
half a model.

**Experiments.** With ``experiments=ExperimentClient(...)``, every experiment of the client's config
with ``system == "recsys"`` is applied to each request: the user is assigned (one ~1 µs hash), the
arm's ``alias`` picks a registry snapshot loaded at startup next to the champion (and hot-reloaded
like it), the arm's ``params`` turn the documented knobs (:data:`ARM_KNOBS`), the exposure is logged
once the response is built, and the response names ``"experiment": {name: arm}``. Users outside
every experiment (arm -1) get the champion path. Ranker scores of every scored candidate go to the
score histogram of the arm's alias (``mlsd_score{system="recsys", model=<alias>}``: the binary ranker's
scores are probabilities). ``recommend_many`` serves a batch of users with one candidate frame and one
LightGBM call per arm (jobs, the experiment simulator); ``preview``/``preview_many`` answer for a given
arm without assignment or exposure (counterfactuals).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from mlsd.platform.errors import InputError
from mlsd.recsys.config import RecsysConfig, RerankConfig
from mlsd.recsys.rerank import DAY_S, ExposureLog, Reranker
from mlsd.recsys.rules import RuleFilter, region_bits

logger = logging.getLogger("mlsd.recsys.service")

USER_ID = re.compile(r"^[0-9]{1,18}$")
REASONS = {
    "als": "viewers with similar taste watched it",
    "ease": "often watched together with your titles",
    "content": "similar to titles you watched",
    "popular": "popular on the platform",
    "trending": "trending this week",
    "new": "new on the platform",
}
SKIPPABLE = ("features", "ranking", "rerank")
USER_NAMESPACE = "recsys:user"
SYSTEM = "recsys"
# What an experiment arm's ``params`` may turn. ``ranker``: "lightgbm" (default) or "none" (candidate
# order, no features, no LightGBM: the model's own fallback order); the rest override the service's
# RerankConfig for that arm (see mlsd.recsys.rerank).
RERANK_KNOBS = ("epsilon", "diversity", "max_genre_share", "mmr_lambda", "freshness_weight", "explore_pool")
ARM_KNOBS = ("ranker", *RERANK_KNOBS)
RANKERS = ("lightgbm", "none")


@dataclass(frozen=True)
class Variant:
    """What one request runs: the registry ``alias`` of its model, the ranker, and the re-ranking policy
    (``None``: the service's own :class:`RerankConfig`)."""

    alias: str = "champion"
    ranker: str = "lightgbm"
    rerank: RerankConfig | None = None


def variant_from_params(
    alias: str | None, params: dict[str, Any] | None, config: RecsysConfig, where: str = "params"
) -> Variant:
    """Validate an arm's alias + params into a :class:`Variant`; a bad knob is an InputError naming it."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(ARM_KNOBS))
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", params[unknown[0]], "unknown recsys knob",
                         f"use one of {list(ARM_KNOBS)}")  # fmt: skip
    ranker = params.pop("ranker", "lightgbm")
    if ranker not in RANKERS:
        raise InputError(f"{where}.ranker", ranker, "unknown ranker", f"use one of {list(RANKERS)}")
    rerank = None
    if params:
        for key, value in params.items():
            numeric = key != "diversity"
            if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InputError(f"{where}.{key}", value, "must be a number", "write e.g. 0.1")
        if "explore_pool" in params:
            if int(params["explore_pool"]) != params["explore_pool"] or params["explore_pool"] < 1:
                raise InputError(f"{where}.explore_pool", params["explore_pool"], "must be a whole number >= 1",
                                 "use e.g. 200")  # fmt: skip
            params["explore_pool"] = int(params["explore_pool"])
        rerank = replace(config.rerank, **params)
        try:
            replace(config, rerank=rerank).validate()
        except InputError as err:  # re-point the message at the arm's knob
            key = str(err.field).rsplit(".", 1)[-1]
            raise InputError(f"{where}.{key}", err.value, err.problem, err.fix) from None
    return Variant(alias=alias or config.service.alias, ranker=ranker, rerank=rerank)


def parse_user_id(raw: str) -> int:
    """A user id is 1-18 decimal digits; anything else is a 422 naming ``user_id``."""
    if not isinstance(raw, str) or not USER_ID.match(raw):
        raise InputError(
            "user_id", raw, "must be a positive integer id (1-18 digits)", "use e.g. /v1/recommendations/42"
        )
    return int(raw)


@dataclass
class _Loaded:
    """One immutable serving snapshot: model + catalogue + user attributes."""

    version: int | None
    model: Any
    rules: RuleFilter
    reranker: Reranker
    titles: np.ndarray  # title per item, in sorted item_id order (as the re-ranker's ids_)
    user_ids: np.ndarray  # sorted
    user_region: np.ndarray  # region bits, aligned with user_ids
    user_age: np.ndarray
    seed_users: np.ndarray  # sorted users the model never saw but who have earlier titles (cold-start seeds)
    seed_starts: np.ndarray  # their slices of seed_items
    seed_items: np.ndarray
    now_ts: int | None
    # Re-rankers of experiment arms that change the policy, fitted state shared with ``reranker``.
    rerankers: dict = field(default_factory=dict)

    def reranker_for(self, config: RerankConfig | None) -> Reranker:
        if config is None:
            return self.reranker
        found = self.rerankers.get(config)
        if found is None:
            # The fitted attributes (ids, genres, release dates) do not depend on the policy: share them.
            found = self.rerankers.setdefault(config, _with_config(self.reranker, config))
        return found


def _with_config(reranker: Reranker, config: RerankConfig) -> Reranker:
    import copy

    clone = copy.copy(reranker)
    clone.config = config
    return clone


def load_snapshot(model_dir: Path, version: int | None, config: RecsysConfig) -> _Loaded:
    """Load a registered artifact directory (model + ``catalog/``) into a serving snapshot."""
    import json

    from mlsd.recsys.model import TwoStageRecommender

    model = TwoStageRecommender.load(model_dir)
    cat = model_dir / "catalog"
    items = pd.read_parquet(cat / "items.parquet")
    users = pd.read_parquet(cat / "users.parquet")
    seeds = pd.read_parquet(cat / "seeds.parquet") if (cat / "seeds.parquet").exists() else None
    meta = json.loads((cat / "meta.json").read_text()) if (cat / "meta.json").exists() else {}
    users = users.sort_values("user_id")
    unknown_age = config.rules.unknown_age
    if seeds is None or seeds.empty:
        seeds = pd.DataFrame(
            {"user_id": np.zeros(0, np.int64), "item_id": np.zeros(0, np.int64), "timestamp": 0}
        )
    seeds = seeds.sort_values(["user_id", "timestamp"], kind="stable")
    seed_users, seed_starts = np.unique(seeds["user_id"].to_numpy(np.int64), return_index=True)
    return _Loaded(
        version=version,
        model=model,
        rules=RuleFilter(config.rules).fit(items),
        reranker=Reranker(config.rerank).fit(items),
        # Titles aligned with the re-ranker's sorted item ids: one array lookup per response.
        titles=items.set_index("item_id")["title"].astype(str).sort_index().to_numpy(object),
        user_ids=users["user_id"].to_numpy(np.int64),
        user_region=(
            region_bits(users["region"].to_numpy())
            if "region" in users
            else np.full(len(users), region_bits(config.service.default_region))
        ),
        user_age=(
            pd.to_numeric(users["age"], errors="coerce").fillna(unknown_age).to_numpy(np.int64)
            if "age" in users
            else np.full(len(users), unknown_age)
        ),
        seed_users=seed_users,
        seed_starts=np.r_[seed_starts, len(seeds)].astype(np.int64),
        seed_items=seeds["item_id"].to_numpy(np.int64),
        now_ts=meta.get("now_ts"),
    )


def _complete(frame: pd.DataFrame, model) -> pd.DataFrame:
    """Give a cold-start frame the columns of the sources that had nothing for it (ALS, EASE): the
    ranker was trained with every source's in_/rank_/score_ columns and needs them, as "absent"."""
    missing = {}
    for name in model.generator_.source_names:
        if f"in_{name}" not in frame.columns:
            missing[f"in_{name}"] = np.zeros(len(frame), dtype=bool)
            missing[f"rank_{name}"] = np.zeros(len(frame), dtype=np.int64)
            missing[f"score_{name}"] = np.full(len(frame), np.nan, dtype=np.float32)
    return frame.assign(**missing) if missing else frame


def _predict(ranker, X: pd.DataFrame) -> np.ndarray:
    """LightGBM scores for one request. One thread on a float32 array: for a few hundred rows,
    OpenMP start-up and the DataFrame conversion cost several times the trees themselves."""
    if list(X.columns) == ranker.feature_names_:  # the usual case: no column-selection copy
        values = X.to_numpy(np.float32)
    else:
        missing = [c for c in ranker.feature_names_ if c not in X.columns]
        if missing:
            raise InputError(
                "features", missing[:5], "the model needs features the request lacks", "retrain it"
            )
        values = X[ranker.feature_names_].to_numpy(np.float32)
    return np.asarray(
        ranker.booster_.predict(values, num_iteration=ranker.best_iteration_, num_threads=1), dtype=np.float64
    )


def limit_threads(n: int) -> None:
    """Cap BLAS, OpenMP and FAISS threads for the process (measured: FAISS flat search over 50K titles
    took ~47 ms with its default threads on a busy 2-core machine; one thread is several times faster)."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(int(n))
    threadpool_limits(int(n))


class _CostModel:
    """Expected milliseconds of a stage per candidate: an exponentially weighted running average."""

    def __init__(self, initial_ms: float, per: int = 1000, alpha: float = 0.2) -> None:
        self.ms_per_candidate = initial_ms / per
        self.alpha = alpha

    def expect(self, n: int) -> float:
        return self.ms_per_candidate * max(n, 1)

    def observe(self, ms: float, n: int) -> None:
        self.ms_per_candidate += self.alpha * (ms / max(n, 1) - self.ms_per_candidate)

    def skipped(self) -> None:
        """A skipped stage is not measured, so one slow spell (a busy machine) would otherwise keep it
        skipped for good: each skip lowers the estimate a little, and the stage is tried again."""
        self.ms_per_candidate *= 1.0 - self.alpha


class RecsysService:
    """Serves the champion of ``config.service.model_name`` from ``registry_root`` (hot-reloaded), or a
    fixed artifact directory (``model_dir``, no registry: tests and benchmarks).

    ``clock`` (seconds since the epoch) decides "now" for licensing windows; by default it follows
    ``config.service.clock`` ("data": the end of the training data; "wall": ``time.time``).

    ``experiments``: an :class:`~mlsd.platform.experiments.client.ExperimentClient`; its recsys
    experiments route each request (see the module docstring); every alias an arm names is loaded at
    startup (a missing one is an InputError naming the arm). ``feature_sample``: an object with
    ``add(frame)`` (e.g. :class:`mlsd.platform.monitoring.sample.ServingSample`) that receives the
    ranker features (+ ``prediction``) of champion-served requests, the "current" window of drift.
    """

    def __init__(
        self,
        registry_root: str | Path | None = None,
        *,
        model_dir: str | Path | None = None,
        config: RecsysConfig | None = None,
        clock=None,
        seed: int = 0,
        watch: bool = True,
        online_store=None,
        experiments=None,
        feature_sample=None,
    ) -> None:
        self.config = config or RecsysConfig()
        self.config.validate()
        self.registry_root = Path(registry_root) if registry_root else None
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self.exposures = ExposureLog(self.config.service.exposure_log_path)
        b = self.config.budgets
        self._costs = {
            "features": _CostModel(b.initial_features_ms),
            "ranking": _CostModel(b.initial_ranking_ms),
            "rerank": _CostModel(b.initial_rerank_ms),
        }
        self._watcher = None
        self.reloads = 0
        # Live user profiles (region, age, onboarding picks) written between daily trainings by the app:
        # an OnlineStore (MemoryStore | RedisStore); read once per request, before the snapshot's arrays.
        self.store = online_store
        limit_threads(self.config.service.threads)
        self.experiments = experiments
        self.feature_sample = feature_sample
        self._watchers: list = []
        # Snapshots of the other aliases experiment arms name ("challenger", ...), by alias.
        self._others: dict[str, _Loaded] = {}
        if model_dir is not None:
            self._state = load_snapshot(Path(model_dir), None, self.config)
        elif self.registry_root is not None:
            self._state = self._load_champion()
            if watch and self.config.service.reload_poll_s > 0:
                self._watcher = self._registry().watch(
                    self.config.service.model_name,
                    self.config.service.alias,
                    self._on_promotion,
                    interval_s=self.config.service.reload_poll_s,
                )
        else:
            raise InputError("registry", None, "no model source", "pass registry_root or model_dir")
        self._arms = self._experiment_arms()
        for alias in sorted(
            {v.alias for arms in self._arms.values() for v in arms} - {self.config.service.alias}
        ):
            self._others[alias] = self._load_alias(alias)
            if self.registry_root is not None and watch and self.config.service.reload_poll_s > 0:
                self._watchers.append(
                    self._registry().watch(
                        self.config.service.model_name,
                        alias,
                        functools.partial(self._on_alias_move, alias),
                        interval_s=self.config.service.reload_poll_s,
                    )
                )

    # -- model loading ---------------------------------------------------------------------------------
    def _registry(self):
        from mlsd.platform.registry import ModelRegistry

        return ModelRegistry(self.registry_root)

    def _load_champion(self) -> _Loaded:
        reg, svc = self._registry(), self.config.service
        version = reg.current_version(svc.model_name, svc.alias)
        if version is None:
            raise InputError(
                "registry", str(self.registry_root), f"has no {svc.alias} for model {svc.model_name!r}",
                "train one first: mlsd recsys train --data DIR --registry DIR",
            )  # fmt: skip
        path = reg.artifact_path(svc.model_name, version)  # checksums verified here
        return load_snapshot(path, version, self.config)

    def _on_promotion(self, new_version) -> None:
        if new_version is None:
            return
        snapshot = load_snapshot(self._registry().artifact_path(new_version.name, new_version.version),
                                 new_version.version, self.config)  # fmt: skip
        self._state = snapshot  # one attribute assignment: requests see the old or the new, never a mix
        self.reloads += 1
        logger.info("recsys: now serving %s v%s", new_version.name, new_version.version)

    def _load_alias(self, alias: str, where: str = "experiments") -> _Loaded:
        svc = self.config.service
        if self.registry_root is None:
            raise InputError(where, alias, "an arm names a registry alias but the service has no registry",
                             "serve from a registry (registry_root) or drop the alias")  # fmt: skip
        reg = self._registry()
        version = reg.current_version(svc.model_name, alias)
        if version is None:
            raise InputError(where, alias, f"the registry has no {alias!r} for model {svc.model_name!r}",
                             "train one (mlsd pipeline run daily) or pick another arm")  # fmt: skip
        return load_snapshot(reg.artifact_path(svc.model_name, version), version, self.config)

    def _experiment_arms(self) -> dict[str, list[Variant]]:
        """Experiment name -> the Variant of each arm, for the client's recsys experiments (validated)."""
        if self.experiments is None:
            return {}
        arms: dict[str, list[Variant]] = {}
        for name, exp in self.experiments.config.experiments.items():
            if exp.system != SYSTEM:
                continue
            arms[name] = [
                variant_from_params(
                    arm.alias, dict(arm.params), self.config, where=f"experiments.{name}.arms[{i}].params"
                )  # fmt: skip
                for i, arm in enumerate(exp.arms)
            ]
        return arms

    def _on_alias_move(self, alias: str, new_version) -> None:
        if new_version is None:
            return
        self._others[alias] = load_snapshot(
            self._registry().artifact_path(new_version.name, new_version.version),
            new_version.version,
            self.config,
        )
        self.reloads += 1
        logger.info("recsys: %s now %s v%s", alias, new_version.name, new_version.version)

    def check_reload(self) -> bool:
        """Poll the registry once (the watcher threads do this every ``reload_poll_s``)."""
        moved = [w.poll() for w in [self._watcher, *self._watchers] if w is not None]
        return any(moved)

    def close(self) -> None:
        for w in [self._watcher, *self._watchers]:
            if w is not None:
                w.stop()

    def snapshot(self, alias: str | None = None) -> _Loaded:
        """The serving snapshot of ``alias`` (default: the champion); other aliases only when an
        experiment arm names them."""
        if alias is None or alias == self.config.service.alias:
            return self._state
        found = self._others.get(alias)
        if found is None:
            raise InputError("alias", alias, "not loaded by this service",
                             f"use one of {[self.config.service.alias, *sorted(self._others)]}")  # fmt: skip
        return found

    def assign(self, user_id: int) -> tuple[Variant, dict[str, str], list[tuple[str, int]]]:
        """The variant a user gets: (variant, {experiment: arm name}, [(experiment, arm index)]).

        A user in several recsys experiments (different layers) gets the later experiment's alias and
        the union of the arms' knobs; one outside every experiment gets the champion path."""
        if not self._arms:
            return Variant(alias=self.config.service.alias), {}, []
        return self._combine({name: int(self.experiments.assign(name, [user_id])[0]) for name in self._arms})

    def _combine(self, arm_of: dict[str, int]) -> tuple[Variant, dict[str, str], list[tuple[str, int]]]:
        alias, ranker, rerank = self.config.service.alias, "lightgbm", None
        names: dict[str, str] = {}
        assigned: list[tuple[str, int]] = []
        for name, idx in arm_of.items():
            if idx < 0:
                continue
            v = self._arms[name][idx]
            alias = v.alias
            ranker = v.ranker if v.ranker != "lightgbm" else ranker
            rerank = v.rerank if v.rerank is not None else rerank
            names[name] = self.experiments.config.experiment(name).arms[idx].name
            assigned.append((name, idx))
        return Variant(alias=alias, ranker=ranker, rerank=rerank), names, assigned

    @property
    def version(self) -> int | None:
        return self._state.version

    def now(self) -> int:
        if self._clock is not None:
            return int(self._clock())
        if self.config.service.clock == "data" and self._state.now_ts is not None:
            return int(self._state.now_ts)
        return int(time.time())

    # -- live profiles (online store) ------------------------------------------------------------------
    def record_profile(
        self,
        user_id: int | str,
        *,
        region: str | None = None,
        age: int | None = None,
        picks: list[int] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """Store a user's live profile (e.g. a sign-up with onboarding picks) in the online store, so
        the next request personalises a user no trained model has seen."""
        if self.store is None:
            raise InputError(
                "online_store", None, "this service has no online store", "pass online_store=..."
            )
        uid = parse_user_id(user_id) if isinstance(user_id, str) else int(user_id)
        row: dict[str, Any] = {}
        if region is not None:
            if region_bits(region) == 0:
                raise InputError("region", region, "unknown region", "use one of US, EU, LATAM, APAC, IN")
            row["region"] = region
        if age is not None:
            row["age"] = int(age)
        if picks:
            row["picks"] = "|".join(str(int(i)) for i in picks)
        if row:
            self.store.put_many(USER_NAMESPACE, {str(uid): row}, ttl_s=ttl_s)

    def _live_profile(self, uid: int) -> dict[str, Any]:
        if self.store is None:
            return {}
        return self.store.get_many(USER_NAMESPACE, [str(uid)])[0] or {}

    # -- the request path --------------------------------------------------------------------------------
    def _user(self, state: _Loaded, user_id: int, region: str | None, age: int | None):
        pos = np.searchsorted(state.user_ids, user_id)
        in_users = pos < len(state.user_ids) and state.user_ids[pos] == user_id
        if region is not None:
            bits = region_bits(region)
            if bits == 0:
                raise InputError("region", region, "unknown region", "use one of US, EU, LATAM, APAC, IN")
        elif in_users:
            bits = int(state.user_region[pos])
        else:
            bits = region_bits(self.config.service.default_region)
        if age is not None:
            if not 0 < age < 130:
                raise InputError("age", age, "must be between 1 and 129", "pass the viewer's age in years")
            user_age = int(age)
        else:
            user_age = int(state.user_age[pos]) if in_users else self.config.rules.unknown_age
        return bits, user_age

    def recommend(
        self,
        user_id: int | str,
        k: int | None = None,
        *,
        region: str | None = None,
        age: int | None = None,
        seed_items: list[int] | None = None,
        deadline_ms: float | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Top ``k`` titles for one user, with scores, sources, reasons, timings and skipped stages.

        ``region``/``age``/``seed_items`` describe a user the platform does not know yet (onboarding
        picks); for known users they override the stored attributes. With experiments, the user's arm
        decides the model and knobs, the exposure is logged after the response was built, and
        ``"experiment"`` names ``{experiment: arm}`` (empty outside every experiment).
        """
        from mlsd.platform.serving import Deadline

        deadline = Deadline(deadline_ms or self.config.budgets.deadline_ms)
        uid = parse_user_id(user_id) if isinstance(user_id, str) else int(user_id)
        variant, names, assigned = self.assign(uid)
        out = self._serve(uid, k, variant, deadline, region=region, age=age, seed_items=seed_items,
                          request_id=request_id, observe=True)  # fmt: skip
        out["experiment"] = names
        for name, idx in assigned:  # only now was it really served
            self.experiments.expose(name, [uid], [idx])
        return out

    def recommend_many(self, user_ids, k: int | None = None) -> list[dict[str, Any]]:
        """:meth:`recommend` for a batch of users, batch-first: per arm, candidates, rules, features and
        ranking run once over the whole batch (one candidate frame, one LightGBM call); re-ranking and
        the answer are per user. Answers have :meth:`recommend`'s shape; ``timings_ms`` are the batch's
        stage times shared evenly among its users (plus the user's own re-ranking), ``total_ms`` the
        user's share of the batch's wall time. A batch has no per-request deadline (it is for jobs: the
        experiment simulator, precomputed pages). Users without a history, and every user when the
        service has an online store (live profiles), take the single-request path."""
        uids = self._user_array(user_ids)
        if self._arms:
            arm_of = {name: self.experiments.assign(name, uids) for name in self._arms}
            keys = np.stack(list(arm_of.values()), axis=1)
        else:
            arm_of, keys = {}, np.zeros((len(uids), 0), np.int64)
        out: list[dict[str, Any] | None] = [None] * len(uids)
        if len(uids):
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            for g, row in enumerate(uniq):
                variant, names, _ = self._combine({name: int(row[j]) for j, name in enumerate(arm_of)})
                rows = np.flatnonzero(inverse.reshape(-1) == g)
                for r, answer in zip(
                    rows, self._serve_many(uids[rows], k, variant, observe=True), strict=True
                ):
                    answer["experiment"] = names
                    out[r] = answer
        for name, arms in arm_of.items():  # only now was the batch really served
            inside = arms >= 0
            if inside.any():
                self.experiments.expose(name, uids[inside], arms[inside])
        return out  # type: ignore[return-value]

    def preview_many(self, user_ids, k: int | None = None, *, alias: str | None = None,
                     params: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """:meth:`preview` for a batch (see :meth:`recommend_many`): no assignment, exposure or metrics."""
        uids = self._user_array(user_ids)
        variant = variant_from_params(alias, params, self.config)
        self.snapshot(variant.alias)
        answers = self._serve_many(uids, k, variant, observe=False)
        for answer in answers:
            answer["experiment"] = {}
        return answers

    @staticmethod
    def _user_array(user_ids) -> np.ndarray:
        raw = list(user_ids)
        return np.asarray([parse_user_id(u) if isinstance(u, str) else int(u) for u in raw], dtype=np.int64)

    def _serve_many(
        self, uids: np.ndarray, k: int | None, variant: Variant, observe: bool
    ) -> list[dict[str, Any]]:
        from mlsd.platform.serving import Deadline, StageTimer
        from mlsd.recsys.model import fallback_scores

        svc = self.config.service
        k = svc.k_default if k is None else k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not svc.k_min <= k <= svc.k_max:
            raise InputError(
                "k", k, f"must be an integer in {svc.k_min}..{svc.k_max}", f"ask for e.g. k={svc.k_default}"
            )
        started = time.perf_counter()
        state = self.snapshot(variant.alias)
        model = state.model
        out: list[dict[str, Any] | None] = [None] * len(uids)
        single = model.users_.index(uids) < 0
        if self.store is not None:
            single[:] = True
        for r in np.flatnonzero(single):  # cold start (seeds, fallback scoring) and live profiles
            out[r] = self._serve(
                int(uids[r]), k, variant, Deadline(self.config.budgets.deadline_ms), observe=observe
            )
        rows = np.flatnonzero(~single)
        if len(rows) == 0:
            return out  # type: ignore[return-value]
        ids = uids[rows]
        now = self.now()
        timer = StageTimer("recsys")
        with timer.stage("candidates"):
            frame = _complete(model.candidates(ids), model)
        with timer.stage("rules"):
            user = frame["user_id"].to_numpy(np.int64)
            pos = np.minimum(np.searchsorted(state.user_ids, user), max(len(state.user_ids) - 1, 0))
            known = state.user_ids[pos] == user if len(state.user_ids) else np.zeros(len(user), bool)
            bits = np.where(known, state.user_region[pos], region_bits(svc.default_region))
            age = np.where(known, state.user_age[pos], self.config.rules.unknown_age)
            ok = state.rules.allowed(frame["item_id"].to_numpy(), now=now, user_region=bits, user_age=age)
            frame = frame[ok]
            frame = frame.iloc[np.argsort(frame["batch_row"].to_numpy(), kind="stable")].reset_index(
                drop=True
            )
        n = len(frame)
        if n and variant.ranker == "none":
            scores, scored_by = fallback_scores(frame), "candidate_order"
        elif n:
            with timer.stage("features"):
                X = model.rank_features(frame)
            with timer.stage("ranking"):
                scores = _predict(model.ranker_, X)
            scored_by = "ranker"
            if observe:
                self._observe(variant, model, X, scores)
        else:
            scores, scored_by = np.zeros(0), "none"
        shared = {stage: ms / len(ids) for stage, ms in timer.timings_ms.items()}
        shared_total = (time.perf_counter() - started) * 1000.0 / len(ids)
        batch_row = frame["batch_row"].to_numpy(np.int64)
        starts = np.searchsorted(batch_row, np.arange(len(ids) + 1))
        item_ids = frame["item_id"].to_numpy(np.int64)
        reranker = state.reranker_for(variant.rerank)
        for j, r in enumerate(rows):
            t0 = time.perf_counter()
            a, b = starts[j], starts[j + 1]
            sub = frame.iloc[a:b]
            user_timer = StageTimer("recsys", clock=time.perf_counter)
            user_timer.timings_ms.update(shared)
            request_id = uuid.uuid4().hex
            if b > a:
                with self._rng_lock:
                    result = reranker.rerank(item_ids[a:b], scores[a:b], k, now=now, rng=self._rng)
                shown, shown_scores, propensity, explored = (
                    result.item_ids, result.scores, result.propensity, result.explored,
                )  # fmt: skip
                user_timer.timings_ms["rerank"] = (time.perf_counter() - t0) * 1000.0
            else:
                shown, shown_scores = np.zeros(0, np.int64), np.zeros(0)
                propensity, explored = np.ones(0), np.zeros(0, bool)
            self.exposures.log(request_id, str(int(ids[j])), shown, propensity, explored, now)
            deadline = Deadline(self.config.budgets.deadline_ms)
            answer = self._response(state, sub, int(ids[j]), k, shown, shown_scores, propensity, explored, False,
                                    now, request_id, user_timer, deadline)  # fmt: skip
            answer["total_ms"] = round(shared_total + (time.perf_counter() - t0) * 1000.0, 3)
            answer["deadline_ms"] = None
            answer["scored_by"] = scored_by if b > a else "none"
            answer["model_alias"] = variant.alias
            out[r] = answer
        return out  # type: ignore[return-value]

    def preview(
        self,
        user_id: int | str,
        k: int | None = None,
        *,
        alias: str | None = None,
        params: dict[str, Any] | None = None,
        deadline_ms: float | None = None,
    ) -> dict[str, Any]:
        """What ``user_id`` would get under a given arm (``alias`` + ``params``), without assignment,
        exposure logging or metrics: counterfactual evaluation in the simulator, replays, debugging."""
        from mlsd.platform.serving import Deadline

        uid = parse_user_id(user_id) if isinstance(user_id, str) else int(user_id)
        variant = variant_from_params(alias, params, self.config)
        self.snapshot(variant.alias)  # an alias the service did not load is an InputError here
        deadline = Deadline(deadline_ms or self.config.budgets.deadline_ms)
        out = self._serve(uid, k, variant, deadline, observe=False)
        out["experiment"] = {}
        return out

    def _serve(
        self,
        uid: int,
        k: int | None,
        variant: Variant,
        deadline,
        *,
        region: str | None = None,
        age: int | None = None,
        seed_items: list[int] | None = None,
        request_id: str | None = None,
        observe: bool = True,
    ) -> dict[str, Any]:
        from mlsd.platform.serving import StageTimer
        from mlsd.recsys.model import fallback_scores

        svc = self.config.service
        k = svc.k_default if k is None else k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not svc.k_min <= k <= svc.k_max:
            raise InputError(
                "k", k, f"must be an integer in {svc.k_min}..{svc.k_max}", f"ask for e.g. k={svc.k_default}"
            )
        state = self.snapshot(variant.alias)  # one snapshot for the whole request (hot reload safe)
        model = state.model
        live = self._live_profile(uid)
        region = region if region is not None else live.get("region")
        age = age if age is not None else (int(live["age"]) if "age" in live else None)
        if live.get("picks"):
            seed_items = list(seed_items or []) + [int(i) for i in str(live["picks"]).split("|")]
        bits, user_age = self._user(state, uid, region, age)
        now = self.now()
        timer = StageTimer("recsys")
        safety = self.config.budgets.safety
        cold = bool(model.users_.index(np.array([uid]))[0] < 0)
        seeds = None
        if cold:
            given = list(seed_items) if seed_items else []
            j = np.searchsorted(state.seed_users, uid)
            known_seed = j < len(state.seed_users) and state.seed_users[j] == uid
            stored = (
                state.seed_items[state.seed_starts[j] : state.seed_starts[j + 1]].tolist()
                if known_seed
                else []
            )
            seeds = [given + stored]

        with timer.stage("candidates"):
            frame = _complete(model.candidates(np.array([uid], dtype=np.int64), seed_items=seeds), model)
        with timer.stage("rules"):
            ok = state.rules.allowed(
                frame["item_id"].to_numpy(), now=now, user_region=bits, user_age=user_age
            )
            if seeds is not None and seeds[0]:
                ok &= ~np.isin(frame["item_id"].to_numpy(), seeds[0])  # titles picked already are not news
            frame = frame[ok].reset_index(drop=True)
        n = len(frame)

        scores = None
        scored_by = "ranker"
        expected = self._costs["features"].expect(n) + self._costs["ranking"].expect(n)
        if n and cold:
            # The model's own scoring path for users without history (TwoStageRecommender.score):
            # candidate order with the trending/new weights, as in offline evaluation; the ranker
            # never trained on history-less rows. No features are needed, so none are computed.
            with timer.stage("ranking"):
                scores = fallback_scores(frame)
            scored_by = "cold_start_fallback"
        elif n and variant.ranker == "none":
            # The arm without a ranker: candidate order, no features, no LightGBM (documented knob).
            scores = fallback_scores(frame)
            scored_by = "candidate_order"
        elif n and deadline.allows(expected * safety):
            with timer.stage("features"):
                X = model.rank_features(frame)
            self._costs["features"].observe(timer.timings_ms["features"], n)
            if deadline.allows(self._costs["ranking"].expect(n) * safety):
                with timer.stage("ranking"):
                    scores = _predict(model.ranker_, X)
                self._costs["ranking"].observe(timer.timings_ms["ranking"], n)
                if observe:
                    self._observe(variant, model, X, scores)
            else:
                timer.skip(
                    "ranking",
                    f"expected {self._costs['ranking'].expect(n):.1f} ms, {deadline.remaining_ms():.1f} ms left",
                )
                self._costs["ranking"].skipped()
        elif n:
            for stage in ("features", "ranking"):
                timer.skip(
                    stage, f"expected {expected:.1f} ms for both, {deadline.remaining_ms():.1f} ms left"
                )
                self._costs[stage].skipped()
        if scores is None:
            scores = fallback_scores(frame) if n else np.zeros(0)
            scored_by = "candidate_order" if n else "none"

        item_ids = frame["item_id"].to_numpy(np.int64)
        request_id = request_id or uuid.uuid4().hex
        if n and deadline.allows(self._costs["rerank"].expect(n) * safety):
            reranker = state.reranker_for(variant.rerank)
            with timer.stage("rerank"), self._rng_lock:
                result = reranker.rerank(item_ids, scores, k, now=now, rng=self._rng)
            self._costs["rerank"].observe(timer.timings_ms["rerank"], n)
            shown, shown_scores, propensity, explored = (
                result.item_ids, result.scores, result.propensity, result.explored,
            )  # fmt: skip
        else:
            if n:
                timer.skip("rerank", f"{deadline.remaining_ms():.1f} ms left")
                self._costs["rerank"].skipped()
            top = np.argsort(-scores, kind="stable")[:k]
            shown, shown_scores = item_ids[top], scores[top]
            propensity, explored = np.ones(len(top)), np.zeros(len(top), dtype=bool)
        self.exposures.log(request_id, str(uid), shown, propensity, explored, now)
        out = self._response(state, frame, uid, k, shown, shown_scores, propensity, explored, cold, now,
                             request_id, timer, deadline)  # fmt: skip
        out["scored_by"] = scored_by
        out["model_alias"] = variant.alias
        return out

    def _observe(self, variant: Variant, model, X: pd.DataFrame, scores: np.ndarray) -> None:
        """Ranker scores of every scored candidate into the score histogram of the arm's alias (a binary
        ranker's scores are probabilities: ``mlsd_score``; a lambdarank margin is unbounded:
        ``mlsd_rank_score``); champion-served feature rows into the drift sample (when kept)."""
        from mlsd.platform.monitoring.metrics import observe_scores

        bounded = getattr(model.ranker_, "objective", "binary") == "binary"
        observe_scores(SYSTEM, scores, model=variant.alias, bounded=bounded)
        if self.feature_sample is not None and variant.alias == self.config.service.alias:
            self.feature_sample.add(X.assign(prediction=scores))

    def _response(
        self,
        state,
        frame,
        uid,
        k,
        shown,
        scores,
        propensity,
        explored,
        cold,
        now,
        request_id,
        timer,
        deadline,
    ):
        names = [c[3:] for c in frame.columns if c.startswith("in_")]
        # Rows of the shown titles: a sorted search over the (unique) candidate ids, then only those
        # rows' source flags (a hash index and a 1,000-row column selection cost more than the rest).
        ids = frame["item_id"].to_numpy()
        order = np.argsort(ids, kind="stable")
        row_of = order[np.searchsorted(ids, shown, sorter=order)] if len(shown) else np.zeros(0, np.int64)
        flags = (
            np.column_stack([frame[f"in_{s}"].to_numpy(bool)[row_of] for s in names])
            if names
            else np.zeros((len(shown), 0), bool)
        )
        release = state.reranker.release_ts_[state.reranker._positions(shown)] if len(shown) else np.zeros(0)
        fresh = (now - release >= 0) & (now - release < 30 * DAY_S)
        titles = state.titles[state.reranker._positions(shown)] if len(shown) else []
        items = []
        for pos in range(len(shown)):  # k <= 500 response rows: building the JSON is per item anyway
            sources = [s for s, f in zip(names, flags[pos], strict=True) if f]
            reasons = [REASONS.get(s, s) for s in sources]
            if fresh[pos]:
                reasons.append("released in the last 30 days")
            if explored[pos]:
                reasons.append("something different for you (exploration)")
            items.append(
                {
                    "item_id": int(shown[pos]),
                    "title": titles[pos],
                    "score": round(float(scores[pos]), 6),
                    "sources": sources,
                    "reasons": reasons,
                    "propensity": float(propensity[pos]),  # exact: off-policy estimates divide by it
                    "explored": bool(explored[pos]),
                }
            )
        out = timer.to_dict()
        return {
            "user_id": str(uid),
            "request_id": request_id,
            "model_version": state.version,
            "cold_start": cold,
            "k": k,
            "n_candidates": int(len(frame)),
            "items": items,
            "timings_ms": out["timings_ms"],
            "skipped": out["skipped"],
            "deadline_ms": deadline.budget_ms,
            "total_ms": round(deadline.elapsed_ms(), 3),
            "now": now,
        }


class Profile(BaseModel):
    """Body of ``PUT /v1/users/{user_id}/profile``."""

    region: str | None = None
    age: int | None = Field(None, gt=0, lt=130)
    picks: list[int] = Field(default_factory=list, max_length=100)


def create_service_app(service: RecsysService):
    """The HTTP surface: ``GET /v1/recommendations/{user_id}?k=50`` on the platform app factory."""
    from fastapi import Query
    from fastapi.responses import JSONResponse

    from mlsd.platform.serving import create_app

    svc_cfg = service.config.service

    def health() -> dict[str, Any]:
        # pid: which worker process answered (several uvicorn workers share one port)
        return {
            "model": svc_cfg.model_name,
            "model_version": service.version,
            "reloads": service.reloads,
            "pid": os.getpid(),
        }

    app = create_app("recsys", title="mlsd movie recommendations", health=health)

    @app.get("/v1/recommendations/{user_id}", tags=["recsys"])
    def recommendations(
        user_id: str,
        k: int = Query(svc_cfg.k_default, description=f"how many titles, {svc_cfg.k_min}..{svc_cfg.k_max}"),
        region: str | None = Query(None, description="viewer region for a user the platform does not know"),
        age: int | None = Query(None, description="viewer age for a user the platform does not know"),
        seed: str | None = Query(
            None, description="comma-separated onboarding picks (item ids) for cold start"
        ),
        deadline_ms: float | None = Query(None, gt=0, le=10_000, description="override the request budget"),
    ) -> JSONResponse:
        seeds = None
        if seed:
            parts = [p.strip() for p in seed.split(",") if p.strip()]
            if not all(p.isdigit() for p in parts) or len(parts) > 100:
                raise InputError(
                    "seed", seed, "must be up to 100 comma-separated item ids", "use e.g. seed=12,40,7"
                )
            seeds = [int(p) for p in parts]
        # The answer holds only JSON types already: a JSONResponse skips FastAPI's generic encoder and
        # response validation (~2.5 ms per 50-title answer, about a tenth of the request).
        return JSONResponse(
            service.recommend(user_id, k, region=region, age=age, seed_items=seeds, deadline_ms=deadline_ms)
        )

    if service.store is not None:

        @app.put("/v1/users/{user_id}/profile", tags=["recsys"])
        def put_profile(user_id: str, profile: Profile) -> dict[str, Any]:
            """A sign-up or profile change (region, age, onboarding picks): used from the next request on."""
            service.record_profile(user_id, region=profile.region, age=profile.age, picks=profile.picks)
            return {"user_id": str(parse_user_id(user_id)), "stored": True}

    app.state.recsys = service
    return app


REGISTRY_ENV = "MLSD_RECSYS_REGISTRY"
DEADLINE_ENV = "MLSD_RECSYS_DEADLINE_MS"
CLOCK_ENV = "MLSD_RECSYS_CLOCK"
EXPERIMENTS_ENV = "MLSD_RECSYS_EXPERIMENTS"
EXPOSURE_REDIS_ENV = "MLSD_RECSYS_EXPOSURE_REDIS"
ONLINE_STORE_ENV = "MLSD_RECSYS_ONLINE_STORE"


def app_from_env(environ=None):
    """App factory for several uvicorn worker processes (``mlsd recsys serve --workers N``, or
    ``uvicorn --factory --workers N mlsd.recsys.service:app_from_env``): each worker loads the champion
    from the registry named by ``MLSD_RECSYS_REGISTRY``; optional ``MLSD_RECSYS_DEADLINE_MS`` (default
    200), ``MLSD_RECSYS_CLOCK`` (data | wall), ``MLSD_RECSYS_EXPERIMENTS`` (experiments YAML) with
    ``MLSD_RECSYS_EXPOSURE_REDIS`` (the shared exposure log), ``MLSD_RECSYS_ONLINE_STORE`` (Redis URL).
    One Python process runs one request at a time (the GIL), so throughput scales with processes."""
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.recsys.config import Budgets, ServiceConfig

    env = os.environ if environ is None else environ
    registry = env.get(REGISTRY_ENV)
    if not registry:
        raise InputError(REGISTRY_ENV, None, "is not set", f"export {REGISTRY_ENV}=/path/to/registry")
    raw = env.get(DEADLINE_ENV, str(Budgets.deadline_ms))
    try:
        budgets = Budgets(deadline_ms=float(raw))
    except ValueError:
        raise InputError(DEADLINE_ENV, raw, "is not a number", f"export {DEADLINE_ENV}=200") from None
    clock = env.get(CLOCK_ENV) or ServiceConfig.clock
    config = RecsysConfig(budgets=budgets, service=ServiceConfig(clock=clock))
    config.validate()
    store = None
    if env.get(ONLINE_STORE_ENV):
        from mlsd.platform.features.online import RedisStore

        store = RedisStore(env[ONLINE_STORE_ENV], prefix="mlsd:")
    experiments = ExperimentClient.from_options(
        env.get(EXPERIMENTS_ENV) or None, env.get(EXPOSURE_REDIS_ENV) or None
    )
    return create_service_app(
        RecsysService(registry, config=config, online_store=store, experiments=experiments)
    )
