"""The recommender's online world simulator: A/B tests through the real service, with a known truth.

``run_experiment(workdir, units=2000, arms=("champion", "challenger"))`` reuses (or builds) a simulated
platform in ``workdir`` (``data/`` from :mod:`mlsd.recsys.simulate`, ``registry/`` with the aliases the
arms name), starts :class:`~mlsd.recsys.service.RecsysService` in-process with an
:class:`~mlsd.platform.experiments.client.ExperimentClient`, and sends one request per simulated
viewer, in batches of :data:`BATCH` (:meth:`RecsysService.recommend_many`: one candidate frame and one
LightGBM call per arm and batch, ~4x cheaper than one request at a time). The service assigns the
viewers, serves their arms and logs the exposures; each viewer then reacts to the list she was shown,
following the simulator's hidden truth (her taste, each title's quality).

**Viewer model** (per viewer ``u`` and shown title ``i`` at position ``p``, 0-based):

* affinity ``z = -0.8 + 1.1 ln(genre affinity + 0.05) + era match + 0.6 quality`` -- the planted
  preference of :func:`mlsd.recsys.simulate._watched_fraction`, without its noise;
* sessions ``N_u ~ Poisson(lambda_u)`` during the test, ``lambda_u`` proportional to her watch events
  in the data (heavy viewers come back more: what CUPED's pre-period covariate explains);
* per session she plays the title with probability ``0.85^p * sigmoid(z - 0.5)`` (attention decays
  down the list), and watches a fraction ``f = sigmoid(z + e)``, ``e ~ N(0, 0.8)``, of its runtime;
  a play is *completed* when ``f > 0.7`` (the data's label threshold).

Every expectation is exact: ``E[plays] = lambda_u * sum_p 0.85^p sigmoid(z - 0.5)``,
``P(f > 0.7) = Phi((z - logit 0.7) / 0.8)``, and ``E[f]`` by 40-point Gauss-Hermite quadrature. So the
**counterfactual truth** is computed, not estimated: every viewer's list is also produced under every
other arm (:meth:`RecsysService.preview_many`: same code path, no exposure), and the true effect is the
difference of expected outcomes over all viewers. Exploration is off in the world (``epsilon = 0``) and
the deadline generous, so each arm's list is a deterministic function of the viewer.

Metrics: ``watch_minutes`` per viewer (the primary one; CUPED on ``pre_watch_minutes``),
``completion_rate`` = completions / plays and ``play_rate`` = plays / impressions (ratios, delta method),
and a ``latency_ms`` guardrail (the viewer's share of her batch's real wall time in-process; no
truth, since it is not simulated).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from mlsd.platform.errors import InputError
from mlsd.recsys.config import Budgets, RecsysConfig, RerankConfig, ServiceConfig, TrainConfig
from mlsd.recsys.simulate import GENRES, LABEL_THRESHOLD

SYSTEM = "recsys"
# name -> what the arm runs. "challenger" is the registry alias the daily job registers.
ARM_PRESETS: dict[str, dict[str, Any]] = {
    "champion": {"alias": "champion", "params": {}, "description": "the production model"},
    "challenger": {
        "alias": "challenger",
        "params": {},
        "description": "the daily job's latest model (registry alias 'challenger')",
    },
    "no_ranker": {
        "alias": "champion",
        "params": {"ranker": "none"},
        "description": "champion's candidates in candidate order, no LightGBM (a planted worse arm)",
    },
    "diverse": {
        "alias": "champion",
        "params": {"max_genre_share": 0.2},
        "description": "champion with a tighter genre cap (at most 20% of the list per genre)",
    },
    "no_diversity": {
        "alias": "champion",
        "params": {"diversity": "none"},
        "description": "champion without the genre cap",
    },
}
DEFAULT_ARMS: tuple[str, ...] = ("champion", "challenger")
METRICS: tuple[dict[str, Any], ...] = (
    {"name": "watch_minutes", "covariate": "pre_watch_minutes"},
    {"name": "completion_rate", "kind": "ratio", "numerator": "completions", "denominator": "plays"},
    {"name": "play_rate", "kind": "ratio", "numerator": "plays", "denominator": "impressions"},
    {"name": "latency_ms", "guardrail": True, "margin": 0.5, "higher_is_better": False},
)
# The world a fresh workdir gets (simulated + trained here in ~15 s on 2 cores).
WORLD_SIZE = {"n_users": 2500, "n_items": 300, "days": 24, "seed": 5, "events_per_user": 15.0}
WORLD_TRAIN = TrainConfig(
    train_days=18, label_days=5,
    sources={"als": 60, "ease": 40, "content": 30, "popular": 30, "trending": 10, "new": 10},
    n_estimators=80,
)  # fmt: skip
# The challenger a world gets when its registry has none of its own: fewer trees, no EASE source.
CHALLENGER_CHANGES = {"n_estimators": 15, "drop_sources": ("ease",)}

ATTENTION = 0.85  # play probability decays by this factor per position down the list
PLAY_SHIFT = -0.5
FRACTION_SD = 0.8
SESSIONS = 3.0  # mean sessions per viewer during the test
BATCH = 250  # viewers per RecsysService.recommend_many call
SECONDS_PER_BATCH = 3600  # simulated time between two batches (exposure and outcome timestamps)
K = 10
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)  # probabilists' Gauss-Hermite: E[g(Z)], Z ~ N(0, 1)
_GH_W = _GH_W / _GH_W.sum()


# ---------------------------------------------------------------------------------------------------
# The world: the simulator's hidden truth, as arrays


@dataclass
class World:
    """What the simulated viewers are like (from ``data/truth_*.parquet``), aligned by sorted ids."""

    user_ids: np.ndarray
    taste: np.ndarray  # users x genres
    era: np.ndarray
    sessions: np.ndarray  # lambda_u: expected sessions during the test
    pre_watch_minutes: np.ndarray
    item_ids: np.ndarray
    genre_mask: np.ndarray
    recent: np.ndarray
    quality: np.ndarray
    runtime: np.ndarray  # minutes
    end_ts: int
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path) -> World:
        """Read the simulated data and its truth; a folder without truth is an InputError."""
        import json

        data_dir = Path(data_dir)
        need = ["items.parquet", "users.parquet", "interactions.parquet", "truth_users.parquet",
                "truth_items.parquet"]  # fmt: skip
        missing = [f for f in need if not (data_dir / f).exists()]
        if missing:
            raise InputError("workdir", str(data_dir), f"has no simulated world (missing {missing[0]})",
                             "pass an empty --workdir (a world is simulated there) or one from `mlsd recsys demo`")  # fmt: skip
        meta = json.loads((data_dir / "meta.json").read_text()) if (data_dir / "meta.json").exists() else {}
        items = pd.read_parquet(data_dir / "items.parquet").sort_values("item_id")
        t_items = pd.read_parquet(data_dir / "truth_items.parquet").set_index("item_id").loc[items["item_id"]]
        t_users = pd.read_parquet(data_dir / "truth_users.parquet").sort_values("user_id")
        inter = pd.read_parquet(
            data_dir / "interactions.parquet", columns=["user_id", "item_id", "weight", "event"]
        )
        genres = items["genres"].fillna("").astype(str).str.get_dummies(sep="|")
        bits = np.zeros(len(items), np.int64)
        for g, name in enumerate(GENRES):
            if name in genres:
                bits |= genres[name].to_numpy(np.int64) << g
        item_ids = items["item_id"].to_numpy(np.int64)
        # A title's runtime is part of the world (seeded by the world, not by the experiment).
        runtime = (
            np.random.default_rng(int(meta.get("seed", 0)) + 4242).integers(80, 150, len(items)).astype(float)
        )
        user_ids = t_users["user_id"].to_numpy(np.int64)
        watches = inter[inter["event"].astype(str) == "watch"]
        pos = np.searchsorted(item_ids, watches["item_id"].to_numpy(np.int64))
        minutes = watches["weight"].to_numpy(np.float64) * runtime[pos]
        upos = np.searchsorted(user_ids, watches["user_id"].to_numpy(np.int64))
        pre_minutes = np.bincount(upos, weights=minutes, minlength=len(user_ids))
        pre_events = np.bincount(upos, minlength=len(user_ids)).astype(float)
        sessions = np.clip(SESSIONS * (pre_events + 1.0) / (pre_events.mean() + 1.0), 0.2, 15.0)
        return cls(
            user_ids=user_ids,
            taste=t_users[[f"taste_{g}" for g in GENRES]].to_numpy(np.float64),
            era=t_users["era"].to_numpy(np.float64),
            sessions=sessions,
            pre_watch_minutes=pre_minutes,
            item_ids=item_ids,
            genre_mask=bits,
            recent=(items["year"].to_numpy() >= 2015).astype(np.float64),
            quality=t_items["quality"].to_numpy(np.float64),
            runtime=runtime,
            end_ts=int(meta.get("end_ts", 0)),
            meta=meta,
        )

    def _pos(self, users: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        upos = np.searchsorted(self.user_ids, users)
        ok = lists >= 0
        ipos = np.searchsorted(self.item_ids, np.where(ok, lists, self.item_ids[0]))
        return upos, ipos, ok

    def affinity(self, users: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """``z`` for every (viewer, shown title): ``lists`` is (units, k) item ids, -1 padding (NaN)."""
        upos, ipos, ok = self._pos(users, lists)
        mask = self.genre_mask[ipos]
        n_g = np.zeros(lists.shape)
        match = np.zeros(lists.shape)
        for g in range(len(GENRES)):  # 18 vectorised passes, as in the simulator
            has = (mask >> g & 1).astype(bool)
            n_g += has
            match += np.where(has, self.taste[upos, g][:, None], 0.0)
        aff = match / np.maximum(n_g, 1) * len(GENRES)
        era_match = 1.0 - np.abs(self.era[upos][:, None] - self.recent[ipos])
        z = -0.8 + 1.1 * np.log(aff + 0.05) + era_match + 0.6 * self.quality[ipos]
        return np.where(ok, z, np.nan)

    def _per_play(self, users: np.ndarray, lists: np.ndarray):
        z = self.affinity(users, lists)
        ok = ~np.isnan(z)
        zz = np.where(ok, z, 0.0)
        attention = ATTENTION ** np.arange(lists.shape[1])
        p_play = np.where(ok, attention * special.expit(zz + PLAY_SHIFT), 0.0)
        return z, zz, ok, p_play

    def expected(self, users: np.ndarray, lists: np.ndarray) -> dict[str, np.ndarray]:
        """Expected outcomes per viewer of showing ``lists`` (no sampling): impressions, plays,
        completions, watch_minutes."""
        users = np.asarray(users, np.int64)
        _, zz, ok, p_play = self._per_play(users, lists)
        lam = self.sessions[np.searchsorted(self.user_ids, users)]
        mean_f = (special.expit(zz[..., None] + FRACTION_SD * _GH_X) * _GH_W).sum(axis=-1)
        p_done = stats.norm.sf((special.logit(LABEL_THRESHOLD) - zz) / FRACTION_SD)
        _, ipos, _ = self._pos(users, lists)
        runtime = np.where(ok, self.runtime[ipos], 0.0)
        return {
            "impressions": lam * ok.sum(axis=1),
            "plays": lam * p_play.sum(axis=1),
            "completions": lam * (p_play * p_done).sum(axis=1),
            "watch_minutes": lam * (p_play * mean_f * runtime).sum(axis=1),
        }

    def sample(self, users: np.ndarray, lists: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One draw of what the viewers did with ``lists`` (same keys as :meth:`expected`)."""
        users = np.asarray(users, np.int64)
        _, zz, ok, p_play = self._per_play(users, lists)
        n = len(users)
        sessions = rng.poisson(self.sessions[np.searchsorted(self.user_ids, users)])
        plays = rng.binomial(np.repeat(sessions, lists.shape[1]).reshape(lists.shape), p_play)
        _, ipos, _ = self._pos(users, lists)
        flat = plays.ravel()
        fraction = special.expit(np.repeat(zz.ravel(), flat) + FRACTION_SD * rng.standard_normal(flat.sum()))
        unit = np.repeat(np.repeat(np.arange(n), lists.shape[1]), flat)
        minutes = fraction * np.repeat(self.runtime[ipos].ravel(), flat)
        return {
            "impressions": (sessions * ok.sum(axis=1)).astype(float),
            "plays": plays.sum(axis=1).astype(float),
            "completions": np.bincount(unit, weights=fraction > LABEL_THRESHOLD, minlength=n),
            "watch_minutes": np.bincount(unit, weights=minutes, minlength=n),
        }


# ---------------------------------------------------------------------------------------------------
# Building (or reusing) a world in a workdir


def _registry_aliases(registry_root: Path) -> dict[str, int]:
    from mlsd.platform.registry import ModelRegistry
    from mlsd.recsys.pipeline import MODEL_NAME

    reg = ModelRegistry(registry_root)
    return reg.aliases(MODEL_NAME) if MODEL_NAME in reg.names() else {}


def ensure_world(
    workdir: Path,
    *,
    aliases: Sequence[str] = ("champion",),
    size: dict | None = None,
    train: TrainConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Make sure ``workdir`` holds simulated data and a registry with every alias in ``aliases``.

    Reuses what is there. Missing data is simulated (``size``, default :data:`WORLD_SIZE`); a missing
    champion is trained by the daily job (``train``, default :data:`WORLD_TRAIN`). When a
    ``challenger`` is needed and the registry has none distinct from the champion (the first daily
    run makes its model both), one is trained with fewer trees and no EASE source and registered as
    ``challenger`` only: its test is the online experiment. Returns what was built."""
    from mlsd.recsys.pipeline import train_daily
    from mlsd.recsys.simulate import load, save, simulate

    workdir = Path(workdir)
    data_dir, registry = workdir / "data", workdir / "registry"
    built: dict[str, Any] = {"simulated": False, "trained": []}
    if not (data_dir / "items.parquet").exists():
        if progress:
            print(f"recsys experiment: simulating a world in {data_dir}", file=sys.stderr)
        dataset, truth = simulate(**{**WORLD_SIZE, **(size or {})})
        save(dataset, truth, data_dir)
        built["simulated"] = True
    dataset = None
    current = _registry_aliases(registry)
    if train is None and "champion" in current:
        from mlsd.platform.registry import ModelRegistry
        from mlsd.recsys.pipeline import MODEL_NAME
        from mlsd.recsys.schedule import config_from_params

        # The challenger varies the champion's own job (same window, same label days).
        train = config_from_params(ModelRegistry(registry).get(MODEL_NAME, current["champion"]).params)
    train = train or WORLD_TRAIN
    if "champion" not in current:
        dataset = load(data_dir)
        if progress:
            print("recsys experiment: training the champion", file=sys.stderr)
        report = train_daily(dataset, registry, train, progress=False)
        built["trained"].append({"alias": "champion", "version": report["version"]})
        current = _registry_aliases(registry)
    unknown = sorted(set(aliases) - {"champion", "challenger"} - set(current))
    if unknown:
        raise InputError("--arms", unknown[0], "names a registry alias this workdir does not have",
                         f"use arms whose aliases exist: {sorted(current)}")  # fmt: skip
    if "challenger" in aliases and current.get("challenger", current["champion"]) == current["champion"]:
        dataset = dataset or load(data_dir)
        sources = {
            s: n for s, n in (train.sources or {}).items() if s not in CHALLENGER_CHANGES["drop_sources"]
        }
        cfg = replace(train, n_estimators=CHALLENGER_CHANGES["n_estimators"], sources=sources or None)
        if progress:
            print("recsys experiment: training a challenger (fewer trees, no EASE)", file=sys.stderr)
        report = train_daily(dataset, registry, cfg, progress=False, gate=False)
        built["trained"].append({"alias": "challenger", "version": report["version"]})
    return built


def world_service_config() -> RecsysConfig:
    """The service as the world runs it: no exploration (deterministic lists, exact truth), a deadline
    no busy machine can hit (the path must not depend on load), no registry polling."""
    return RecsysConfig(
        budgets=Budgets(deadline_ms=60_000.0),
        rerank=RerankConfig(epsilon=0.0),
        service=ServiceConfig(reload_poll_s=0),
    )


# ---------------------------------------------------------------------------------------------------
# One experiment


class _LossyLog:
    """An exposure log with a planted bug: the exposures of ``dropped`` units never arrive."""

    def __init__(self, inner, dropped: set[str]) -> None:
        self.inner = inner
        self.dropped = dropped

    def log(self, experiment: str, unit_ids: Any, arms: Any, ts: Any = None) -> np.ndarray:
        ids = np.asarray(unit_ids).astype(str)
        keep = ~np.isin(ids, list(self.dropped)) if self.dropped else np.ones(len(ids), bool)
        new = np.zeros(len(ids), dtype=bool)
        if keep.any():
            arms = np.asarray(arms)
            new[keep] = self.inner.log(experiment, ids[keep], arms[keep], ts)
        return new

    def exposures(self, experiment: str) -> pd.DataFrame:
        return self.inner.exposures(experiment)


class _SimClock:
    """The simulated time: exposures are stamped with it, outcomes happen at it."""

    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class ExperimentRun:
    """Everything one simulated experiment produced (the report is built from it)."""

    name: str
    client: Any
    outcomes: pd.DataFrame  # one row per viewer: unit, ts, outcome columns, pre_watch_minutes
    covariates: pd.DataFrame
    truth: dict[str, dict[str, float]]
    expected: dict[str, dict[str, float]]  # arm -> metric -> true value over all viewers
    timings: dict[str, list[float]]
    world: dict[str, Any]
    served_features: pd.DataFrame | None
    seconds: float


def _metric_values(e: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "watch_minutes": float(np.mean(e["watch_minutes"])),
        "completion_rate": float(e["completions"].sum() / max(e["plays"].sum(), 1e-12)),
        "play_rate": float(e["plays"].sum() / max(e["impressions"].sum(), 1e-12)),
    }


def simulate_experiment(
    workdir: Path,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    lose_exposures: float = 0.0,
    k: int = K,
    size: dict | None = None,
    train: TrainConfig | None = None,
    progress: bool = True,
) -> ExperimentRun:
    """Run one experiment through the real service and return its raw material (see module doc)."""
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.experiments.exposures import MemoryExposureLog
    from mlsd.platform.experiments.online import arms_from_presets, make_experiment
    from mlsd.platform.experiments.online import lose_exposures as lose_mask
    from mlsd.platform.monitoring.sample import ServingSample
    from mlsd.recsys.service import RecsysService

    started = time.perf_counter()
    if isinstance(units, bool) or not isinstance(units, int | np.integer) or units < 10:
        raise InputError("--units", units, "must be a whole number >= 10", "use e.g. --units 2000")
    arm_objs = arms_from_presets(ARM_PRESETS, list(arms or DEFAULT_ARMS))
    lose_mask(np.zeros(1, np.int64), lose_exposures)  # validates the fraction before any work
    workdir = Path(workdir)
    built = ensure_world(workdir, aliases=[a.alias or "champion" for a in arm_objs], size=size, train=train,
                         progress=progress)  # fmt: skip
    world = World.load(workdir / "data")
    if units > len(world.user_ids):
        raise InputError("--units", units, f"this world has {len(world.user_ids)} viewers",
                         f"pass --units {len(world.user_ids)} or less, or a fresh --workdir")  # fmt: skip
    rng = np.random.default_rng([seed, 17])
    users = np.sort(rng.choice(world.user_ids, size=units, replace=False))
    users = users[rng.permutation(units)]  # arrival order

    config = make_experiment(SYSTEM, arm_objs, list(METRICS))
    name = config.layers[0].experiments[0].name
    clock = _SimClock(world.end_ts)
    probe = ExperimentClient(config, registry=False)
    arm_idx = probe.assign(name, users)
    keep = lose_mask(arm_idx, lose_exposures, seed)
    log = _LossyLog(MemoryExposureLog(clock=clock), set(users[~keep].astype(str)))
    client = ExperimentClient(config, log=log)
    sample = ServingSample(max_rows=20_000, seed=seed)
    service = RecsysService(
        workdir / "registry",
        config=world_service_config(),
        experiments=client,
        feature_sample=sample,
        watch=False,
    )
    # Arms that run the same variant (A/A) share one list per viewer: their truth is exactly 0.
    key_of = [(a.alias or "champion", tuple(sorted(dict(a.params).items()))) for a in arm_objs]
    keys = list(dict.fromkeys(key_of))
    lists = {kk: np.full((units, k), -1, np.int64) for kk in keys}
    latency = np.zeros(units)
    ts = np.zeros(units, np.int64)
    timings: dict[str, list[float]] = {}
    from tqdm import tqdm

    try:
        batches = range(0, units, BATCH)
        for b0 in tqdm(batches, desc="recsys experiment", file=sys.stderr, disable=not progress):
            part = slice(b0, min(b0 + BATCH, units))
            clock.now = world.end_ts + (b0 // BATCH) * SECONDS_PER_BATCH
            ts[part] = clock.now
            served = service.recommend_many(users[part], k)
            for row, out in zip(range(part.start, part.stop), served, strict=True):
                ids = [it["item_id"] for it in out["items"]]
                lists[key_of[int(arm_idx[row])]][row, : len(ids)] = ids
                latency[row] = out["total_ms"]
                for stage, ms in out["timings_ms"].items():
                    timings.setdefault(stage, []).append(ms)
            for other in keys:  # the counterfactual lists: the same viewers under the other arms
                rows = np.flatnonzero([key_of[int(a)] != other for a in arm_idx[part]]) + b0
                if len(rows) == 0:
                    continue
                alt = service.preview_many(users[rows], k, alias=other[0], params=dict(other[1]))
                for row, out in zip(rows, alt, strict=True):
                    ids = [it["item_id"] for it in out["items"]]
                    lists[other][row, : len(ids)] = ids
    finally:
        service.close()

    # Outcomes: what each viewer did with the list of the arm she was in.
    draw_rng = np.random.default_rng([seed, 29])
    served = np.full((units, k), -1, np.int64)
    for a, kk in enumerate(key_of):
        rows = arm_idx == a
        served[rows] = lists[kk][rows]
    drawn = world.sample(users, served, draw_rng)
    pre = world.pre_watch_minutes[np.searchsorted(world.user_ids, users)]
    outcomes = pd.DataFrame(
        {"unit": users.astype(str), "ts": ts, **drawn, "latency_ms": latency, "pre_watch_minutes": pre}
    )
    covariates = pd.DataFrame({"unit": users.astype(str), "pre_watch_minutes": pre})

    # Counterfactual truth: every viewer under every arm, expected outcomes.
    expected = {
        arm.name: _metric_values(world.expected(users, lists[key_of[a]])) for a, arm in enumerate(arm_objs)
    }
    control = arm_objs[0].name
    truth = {
        m: {arm.name: expected[arm.name][m] - expected[control][m] for arm in arm_objs[1:]}
        for m in ("watch_minutes", "completion_rate", "play_rate")
    }
    info = {
        "data": str(workdir / "data"),
        "registry": str(workdir / "registry"),
        "viewers": int(len(world.user_ids)),
        "titles": int(len(world.item_ids)),
        "k": k,
        "arms": {a.name: {"alias": a.alias, "params": dict(a.params)} for a in arm_objs},
        "model_versions": _registry_aliases(workdir / "registry"),
        "lose_exposures": lose_exposures,
        "units_dropped_from_log": int((~keep).sum()),
        "built": built,
        "viewer_model": {
            "attention": ATTENTION,
            "play_shift": PLAY_SHIFT,
            "fraction_sd": FRACTION_SD,
            "mean_sessions": SESSIONS,
            "completion": f"watched fraction > {LABEL_THRESHOLD}",
        },  # fmt: skip
        "expected": expected,
    }
    return ExperimentRun(
        name=name, client=client, outcomes=outcomes, covariates=covariates, truth=truth, expected=expected,
        timings=timings, world=info, served_features=sample.frame() if len(sample) else None,
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def run_experiment(
    workdir: Path,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    looks: int = 10,
    lose_exposures: float = 0.0,
    progress: bool = True,
    k: int = K,
    save_served: bool = True,
) -> dict[str, Any]:
    """Simulate one A/B test through the service and return the analysed report with the known truth.

    The report is :meth:`ExperimentClient.analyze`'s (SRM, per-metric comparisons with CUPED/delta
    method, guardrails, verdict, ``looks`` points of the confidence sequence) plus ``truth``,
    ``truth_covered``, ``world`` (what was simulated), ``units`` and ``seconds``. ``save_served``
    writes the served feature sample to ``workdir/monitoring/served_features.parquet`` (the "current"
    window of :func:`mlsd.recsys.monitoring.drift_report`).
    """
    from mlsd.platform.experiments.online import with_truth

    run = simulate_experiment(workdir, units=units, arms=arms, seed=seed, lose_exposures=lose_exposures, k=k,
                              progress=progress)  # fmt: skip
    report = run.client.analyze(run.name, run.outcomes, covariates=run.covariates, looks=looks)
    report = with_truth(report, run.truth)
    if save_served and run.served_features is not None:
        from mlsd.recsys.monitoring import save_served

        save_served(Path(workdir), run.served_features, source=f"experiment {run.name} ({units} viewers)")
    return {**report, "world": run.world, "units": units, "seconds": round(run.seconds, 2)}


def timings_file(run_timings: dict[str, list[float]]) -> dict[str, Any]:
    """``{"system": "recsys", "stages": {stage: [ms, ...]}}``: what the dashboard reads."""
    return {
        "system": SYSTEM,
        "stages": {s: [round(float(v), 3) for v in ms] for s, ms in run_timings.items()},
    }
