"""Online A/B world simulator for search: simulated shoppers drive the real engine through the router.

A **unit** is a user (the experiment's ``unit="user_id"``) who issues a few searches (``1 + Poisson``
of a per-user activity rate, so heavy and light users differ, as in real traffic). Each search draws a
query from the simulated query stream (Zipf weights) and is answered by the real
:class:`~mlsd.search.pipeline.SearchEngine` through :class:`~mlsd.search.routing.SearchRouter` under
the unit's arm, which also logs the exposure. The shopper's reaction comes from the simulator's truth
(:mod:`mlsd.search.simulate`): position-based examination ``(1/rank)**eta``, attraction by the true
grade tilted by brand taste and price sensitivity, add-to-cart by grade and quality, purchase, order
value = price x quantity.

Because the truth is known, every search is also *evaluated* under every arm: the ranked list that arm
would have shown (the served response for the unit's own arm, the engine's answer under the other
arms' variants otherwise) gives the expected clicks, purchases and revenue with no sampling noise.
The true effect of a metric is the difference of those expectations over all units, which
:func:`~mlsd.platform.experiments.online.with_truth` puts next to the estimate.

Metrics (:data:`METRICS`): clicks per search (primary), conversions per search and revenue per search
(ratios over searches, delta method), revenue per user (mean, CUPED on the user's pre-period search
count), and a latency guardrail (mean served latency per search must not grow by more than 50%).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.search.simulate import (
    ATTRACT_BY_GRADE,
    BUY_GIVEN_CART,
    CART_BY_GRADE,
    DAY,
    DEPARTMENTS,
    EPOCH_END,
    TAXONOMY,
    ClickModel,
    true_grades,
    true_propensity,
)

ARM_PRESETS: dict[str, dict[str, Any]] = {
    "ltr": {
        "alias": "champion",
        "params": {"ranker": "ltr"},
        "description": "champion LambdaMART over hybrid (BM25 + dense) retrieval: the production path",
    },
    "bm25": {
        "alias": None,
        "params": {"ranker": "bm25"},
        "description": "BM25 only: lexical retrieval order, no dense retrieval, no LTR",
    },
    "hybrid": {
        "alias": None,
        "params": {"ranker": "hybrid"},
        "description": "retrieval fusion (BM25 + dense, RRF) without LTR",
    },
    "dense": {
        "alias": None,
        "params": {"ranker": "dense"},
        "description": "dense retrieval order only (needs an engine with the MiniLM index)",
    },
    "challenger": {
        "alias": "challenger",
        "params": {"ranker": "ltr"},
        "description": "the registry's challenger LambdaMART (registered by `mlsd pipeline run daily`)",
    },
}
DEFAULT_ARMS: tuple[str, ...] = ("ltr", "bm25")  # the issue's LambdaMART vs BM25-only

METRICS: tuple[dict[str, Any], ...] = (
    {"name": "clicks_per_search", "kind": "ratio", "numerator": "clicks", "denominator": "searches"},
    {"name": "conversions_per_search", "kind": "ratio", "numerator": "purchases", "denominator": "searches"},
    {"name": "revenue_per_search", "kind": "ratio", "numerator": "revenue", "denominator": "searches"},
    {"name": "revenue_per_user", "column": "revenue", "covariate": "pre_searches"},
    {
        "name": "latency_ms_per_search",
        "kind": "ratio",
        "numerator": "latency_ms",
        "denominator": "searches",
        "guardrail": True,
        "margin": 0.5,
        "higher_is_better": False,
    },
)
# Outcome column -> the expectation it has under an arm (what the truth is computed from).
_EXPECTED = {"clicks": "e_clicks", "purchases": "e_purchases", "revenue": "e_revenue"}
MEAN_QUANTITY = 1.15  # the simulator buys 2 units in 15% of purchases
WORLD = {"products": 1500, "sessions": 20_000, "queries": 100, "users": 500, "seed": 0}
FAST_PARSER = {"intent_queries": 200}


# --------------------------------------------------------------------------------------------------
# The world: simulated truth + a trained engine


@dataclass
class SearchWorld:
    """The simulator's truth (catalog, hidden quality, queries, users, click model) and a served engine."""

    products: pd.DataFrame
    truth: pd.DataFrame
    queries: pd.DataFrame
    users: pd.DataFrame
    click_model: ClickModel
    engine: Any
    registry_dir: Path | None = None
    description: dict[str, Any] | None = None


def load_world(
    workdir: Path,
    *,
    dense: bool | None = None,
    progress: bool = True,
    parser_options: dict[str, Any] | None = None,
) -> SearchWorld:
    """Reuse the simulated world trained in ``workdir`` (``data/`` from the simulator + ``registry/``
    with a champion), or simulate and train a small one there (:data:`WORLD`, ~5 s without dense).

    ``dense``: serve with the MiniLM index (default: as the champion was trained; a new world: False).
    """
    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.pipeline import MODEL_NAME, default_cache_dir, load_engine, train_and_register
    from mlsd.search.simulate import Simulation

    workdir = Path(workdir)
    data_dir, registry_dir = workdir / "data", workdir / "registry"
    say = print if progress else (lambda *_: None)
    started = time.perf_counter()
    champion = None
    if registry_dir.exists():
        reg = ModelRegistry(registry_dir)
        champion = reg.alias(MODEL_NAME) if MODEL_NAME in reg.names() else None
    if not (data_dir / "simulation.json").exists():
        if (data_dir / "products.parquet").exists():  # real data: never overwrite it with a simulation
            raise InputError(
                "--workdir", str(workdir), "its data/ is not a simulated world (no simulation.json)",
                "the online simulator needs the simulator's truth: use a fresh --workdir",
            )  # fmt: skip
        ensure_data(data_dir, progress=progress)
        champion = None
    sim = Simulation.load(data_dir)
    if champion is None:
        say(f"training a champion in {registry_dir}")
        _, engine = train_and_register(
            data_dir, registry_dir, dense=bool(dense), cache_dir=default_cache_dir(), compare_raw=False,
            parser_options=parser_options or FAST_PARSER, return_engine=True,
        )  # fmt: skip
        source = "simulated and trained here"
    else:
        use_dense = bool(champion.params.get("dense", False)) if dense is None else dense
        engine = load_engine(
            data_dir, registry_dir, dense=use_dense, cache_dir=default_cache_dir(),
            parser_options=parser_options or FAST_PARSER,
        )  # fmt: skip
        source = f"reused (champion v{champion.version})"
    return SearchWorld(
        sim.products, sim.truth, sim.queries, sim.users, sim.click_model, engine, registry_dir,
        {
            "source": source,
            "products": len(sim.products),
            "queries": len(sim.queries),
            "logged_searches": int(sim.impressions["search_id"].nunique()),
            "examination": f"(1/rank)^{sim.click_model.eta:g}",
            "dense": engine.dense_ is not None,
            "champion_version": engine.ranker_version_,
            "build_s": round(time.perf_counter() - started, 2),
        },
    )  # fmt: skip


def world_from_simulation(sim: Any, engine: Any, registry_dir: Path | None = None) -> SearchWorld:
    """A :class:`SearchWorld` over an in-memory :class:`~mlsd.search.simulate.Simulation` and a served
    engine (the demo's, which already has both)."""
    return SearchWorld(
        sim.products, sim.truth, sim.queries, sim.users.copy(), sim.click_model, engine, registry_dir,
        {
            "source": "the demo's world",
            "products": len(sim.products),
            "queries": len(sim.queries),
            "logged_searches": int(sim.impressions["search_id"].nunique()),
            "examination": f"(1/rank)^{sim.click_model.eta:g}",
            "dense": engine.dense_ is not None,
            "champion_version": engine.ranker_version_,
        },
    )  # fmt: skip


def summary_lines(report: dict[str, Any]) -> list[str]:
    """2-3 printable lines: arm means, lift with CI and truth, verdict, SRM."""
    primary = report.get("primary_metric") or next(iter(report["metrics"]))
    lines = []
    for comp in report["metrics"][primary]:
        arm = comp.get("treatment")
        truth = report.get("truth", {}).get(primary, {}).get(arm)
        covered = report.get("truth_covered", {}).get(primary, {}).get(arm)
        lines.append(
            f"{report['experiment']}: {primary} control {comp['mean_control']:.3f} vs {arm} "
            f"{comp['mean_treatment']:.3f}; diff {comp['diff']:+.3f} [{comp['diff_low']:+.3f}, "
            f"{comp['diff_high']:+.3f}], relative {comp['relative']:+.1%}"
            + (
                f"; true diff {truth:+.3f} ({'covered' if covered else 'NOT covered'})"
                if truth is not None
                else ""
            )
        )
    srm = report.get("srm", {})
    verdicts = report.get("verdict")
    lines.append(
        f"verdict {verdicts}; SRM p={srm.get('p_value', float('nan')):.3g} "
        f"({'FLAGGED' if srm.get('flagged') else 'ok'}); {report['units']} units, {report['seconds']} s"
    )
    return lines


def ensure_data(data_dir: Path, *, progress: bool = False) -> Path:
    """Simulate the default world (:data:`WORLD`, seed 0: deterministic) into ``data_dir`` if absent."""
    from mlsd.search.clicklog import ClickLog
    from mlsd.search.simulate import simulate

    data_dir = Path(data_dir)
    if (data_dir / "simulation.json").exists():
        return data_dir
    if progress:
        print(f"simulating the default search world into {data_dir}")
    sim = simulate(
        WORLD["products"], WORLD["sessions"], seed=WORLD["seed"], n_queries=WORLD["queries"],
        n_users=WORLD["users"],
    )  # fmt: skip
    sim.save(data_dir)
    ClickLog(data_dir / "clicklog").append_impressions(sim.impressions)
    return data_dir


# --------------------------------------------------------------------------------------------------
# Expected and sampled shopper behaviour on a ranked page


def page_outcomes(
    world: SearchWorld, query_index: np.ndarray, user_rows: np.ndarray, pages: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-position probabilities of click and purchase, and the price, for a batch of result pages.

    ``pages``: ``(n, k)`` product ids in shown order, -1 padding. Returns ``p_click``, ``p_buy`` and
    ``price`` of shape ``(n, k)`` (0 where padded): the simulator's click model, vectorised.
    """
    n, k = pages.shape
    valid = pages >= 0
    pid = np.where(valid, pages, 0)
    qi = np.repeat(np.asarray(query_index, np.int64), k)
    grade = true_grades(world.queries, qi, world.products, world.truth, pid.ravel()).reshape(n, k)
    p = world.products
    dept = p["department"].cat.codes.to_numpy()[pid]
    fav = world.users[[f"fav_brand_{d.lower()}" for d in DEPARTMENTS]].to_numpy()[user_rows]
    likes_brand = np.take_along_axis(fav, dept, axis=1) == p["brand_id"].to_numpy()[pid]
    price = p["price"].to_numpy()[pid]
    median = np.array([t[5] for t in TAXONOMY])[p["leaf_id"].to_numpy()[pid]]
    sensitivity = world.users["price_sensitivity"].to_numpy()[user_rows][:, None]
    pricey = np.clip(np.log(price / median), 0, 2) * sensitivity
    attract = np.clip(ATTRACT_BY_GRADE[grade] * np.where(likes_brand, 1.4, 1.0) * (1 - 0.3 * pricey), 0, 0.97)
    exam = true_propensity(np.arange(1, k + 1), world.click_model.eta)[None, :]
    quality = world.truth["quality"].to_numpy()[pid]
    cart = CART_BY_GRADE[grade] * (0.7 + 0.3 / (1 + np.exp(-quality))) * (1 - 0.3 * pricey)
    p_click = np.where(valid, exam * attract, 0.0)
    return {
        "p_click": p_click,
        "p_cart": np.where(valid, cart, 0.0),
        "p_buy": p_click * np.where(valid, cart, 0.0) * BUY_GIVEN_CART,
        "price": np.where(valid, price, 0.0),
    }


def expected(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expected clicks, purchases and revenue per page (no sampling)."""
    return {
        "e_clicks": out["p_click"].sum(axis=1),
        "e_purchases": out["p_buy"].sum(axis=1),
        "e_revenue": (out["p_buy"] * out["price"]).sum(axis=1) * MEAN_QUANTITY,
    }


def sample(out: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One draw of clicks, purchases and revenue per page from the same probabilities."""
    clicked = rng.random(out["p_click"].shape) < out["p_click"]
    bought = clicked & (rng.random(clicked.shape) < out["p_cart"] * BUY_GIVEN_CART)
    qty = 1 + (rng.random(clicked.shape) < MEAN_QUANTITY - 1)
    return {
        "clicks": clicked.sum(axis=1).astype(np.float64),
        "purchases": bought.sum(axis=1).astype(np.float64),
        "revenue": np.round((bought * out["price"] * qty).sum(axis=1), 2),
    }


def _pages(responses: Sequence[dict[str, Any]], k: int) -> np.ndarray:
    pages = np.full((len(responses), k), -1, dtype=np.int64)
    for i, resp in enumerate(responses):  # per response: the engine answers one query at a time
        ids = [r["product_id"] for r in resp["results"][:k]]
        pages[i, : len(ids)] = ids
    return pages


# --------------------------------------------------------------------------------------------------
# Units and their searches


def simulate_units(world: SearchWorld, units: int, seed: int = 0, searches_per_unit: float = 2.5) -> dict:
    """Unit ids, taste rows, pre-period search counts and the experiment's searches (query, unit, ts).

    Users ``0..len(world.users)-1`` are the world's (with click-log history, so LTR personalises for
    them); further units are new users with freshly drawn tastes.
    """
    from mlsd.search.simulate import simulate_users

    if units < 2:
        raise InputError("--units", units, "too few units for an experiment", "use at least 2 (e.g. 2000)")
    rng = np.random.default_rng([seed, 4242])
    extra = max(0, units - len(world.users))
    if extra:
        fresh = simulate_users(extra, seed + 1000).assign(user_id=lambda f: f["user_id"] + len(world.users))
        world.users = pd.concat([world.users, fresh], ignore_index=True)
    unit_ids = np.arange(units).astype(str)
    # Activity differs between users (gamma rates): the pre-period count is the CUPED covariate.
    rate = rng.gamma(2.0, max(searches_per_unit - 1, 0.05) / 2.0, units)
    n_search = 1 + rng.poisson(rate)
    pre = rng.poisson(2 * rate)
    unit_of = np.repeat(np.arange(units), n_search)
    q = rng.choice(len(world.queries), size=len(unit_of), p=world.queries["weight"].to_numpy())
    start = EPOCH_END + DAY
    return {
        "unit_ids": unit_ids,
        "pre_searches": pre,
        "search_unit": unit_of,
        "search_query": q,
        "search_ts": start + unit_of.astype(np.int64),  # unit i arrives at second i of the experiment
    }


class _LossyExposureLog:
    """An exposure log that silently loses the exposures of chosen units (the planted logging bug)."""

    def __init__(self, inner: Any, lost_units: Sequence[str]) -> None:
        self.inner = inner
        self.lost = set(map(str, lost_units))

    def log(self, experiment: str, unit_ids: Any, arms: Any, ts: Any = None) -> np.ndarray:
        ids = np.asarray([str(u) for u in np.asarray(unit_ids).reshape(-1)], dtype=object)
        keep = np.fromiter((u not in self.lost for u in ids), dtype=bool, count=len(ids))
        arms = np.asarray(arms).reshape(-1)
        ts_k = None if ts is None else np.broadcast_to(np.asarray(ts), arms.shape)[keep]
        out = np.zeros(len(ids), dtype=bool)
        if keep.any():
            out[keep] = self.inner.log(experiment, ids[keep], arms[keep], ts_k)
        return out

    def exposures(self, experiment: str) -> pd.DataFrame:
        return self.inner.exposures(experiment)


# --------------------------------------------------------------------------------------------------
# The experiment


def simulate_experiment(
    world: SearchWorld,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    lose_exposures: float = 0.0,
    searches_per_unit: float = 2.5,
    k: int | None = None,
    batch: int = 512,
    progress: bool = False,
) -> dict[str, Any]:
    """Drive the router for ``units`` users; return the client, experiment name, outcomes, covariates and
    the true effects (what :func:`run_experiment` analyses; tests use the pieces, e.g. for A/A)."""
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.experiments.exposures import MemoryExposureLog
    from mlsd.platform.experiments.online import arms_from_presets, make_experiment
    from mlsd.platform.experiments.online import lose_exposures as lose_mask
    from mlsd.search.routing import SearchRouter

    names = list(arms) if arms is not None else list(DEFAULT_ARMS)
    arm_objs = arms_from_presets(ARM_PRESETS, names)
    config = make_experiment("search", arm_objs, list(METRICS))
    name = next(iter(config.experiments))
    k = k or world.click_model.page_size
    pop = simulate_units(world, units, seed, searches_per_unit)
    unit_ids = pop["unit_ids"]
    probe = ExperimentClient(config, registry=False)
    assigned = probe.assign(name, unit_ids)
    keep = lose_mask(assigned, lose_exposures, seed)
    client = ExperimentClient(config, log=_LossyExposureLog(MemoryExposureLog(), unit_ids[~keep]))
    router = SearchRouter(world.engine, client, registry_dir=world.registry_dir)
    variants = router.variants_[name]

    s_unit, s_query, s_ts = pop["search_unit"], pop["search_query"], pop["search_ts"]
    texts = world.queries["text"].to_numpy()
    n = len(s_unit)
    arm_of = assigned[s_unit]
    expected_by_arm = {v.arm: {c: np.zeros(n) for c in _EXPECTED.values()} for v in variants}
    sampled = {c: np.zeros(n) for c in ("clicks", "purchases", "revenue")}
    latency = np.zeros(n)
    stages: dict[str, list[float]] = {}
    cache: dict[tuple[int, str, int], np.ndarray] = {}  # (query, user or "", arm) -> page
    rng = np.random.default_rng([seed, 31337])
    started = time.perf_counter()
    for lo in range(0, n, batch):
        sl = slice(lo, min(lo + batch, n))
        users = unit_ids[s_unit[sl]]
        responses = router.search_many(texts[s_query[sl]].tolist(), users.tolist(), k, ts=s_ts[sl])
        served = _pages(responses, k)
        latency[sl] = [r["total_ms"] for r in responses]
        for r in responses:
            for stage, ms in r["timings_ms"].items():
                stages.setdefault(stage, []).append(ms)
        rows = s_unit[sl]
        for a, v in enumerate(variants):
            # The page arm `a` shows: the served one for units in it, the engine's answer otherwise
            # (cached: a variant without LTR does not depend on the user).
            pages = served.copy()
            for j in np.flatnonzero(arm_of[sl] != a):
                qq, uu = int(s_query[lo + j]), users[j] if v.ranking == "ltr" else ""
                key = (qq, uu, a)
                if key not in cache:
                    resp = world.engine.search(texts[qq], uu, k, ranking=v.ranking, model=v.model)
                    cache[key] = _pages([resp], k)[0]
                pages[j] = cache[key]
            out = page_outcomes(world, s_query[sl], rows, pages)
            for col, val in expected(out).items():
                expected_by_arm[v.arm][col][sl] = val
            mine = arm_of[sl] == a
            if mine.any():
                draw = sample({key: val[mine] for key, val in out.items()}, rng)
                for col, val in draw.items():
                    sampled[col][np.flatnonzero(mine) + lo] = val
        if progress:
            print(f"  {min(lo + batch, n):,}/{n:,} searches ({time.perf_counter() - started:.1f} s)")

    outcomes = pd.DataFrame(
        {
            "unit": unit_ids[s_unit],
            "ts": s_ts,
            "searches": 1.0,
            **sampled,
            "latency_ms": latency,
        }
    )
    covariates = pd.DataFrame({"unit": unit_ids, "pre_searches": pop["pre_searches"].astype(np.float64)})
    truth = _truth(expected_by_arm, s_unit, units, [v.arm for v in variants])
    return {
        "client": client,
        "experiment": name,
        "outcomes": outcomes,
        "covariates": covariates,
        "truth": truth,
        "expected": {
            arm: {c: float(v.sum() / n) for c, v in cols.items()} for arm, cols in expected_by_arm.items()
        },
        "searches": n,
        "engine_calls": n + len(cache),
        "drive_s": round(time.perf_counter() - started, 2),
        "stages": stages,
    }


def _truth(
    expected_by_arm: dict[str, dict[str, np.ndarray]], s_unit: np.ndarray, units: int, arms: list[str]
) -> dict[str, dict[str, float]]:
    """True differences (treatment - control) of every metric over all units, from expectations."""
    searches = len(s_unit)

    def per_search(arm: str, col: str) -> float:
        return float(expected_by_arm[arm][col].sum() / searches)

    def per_user(arm: str, col: str) -> float:
        return float(np.bincount(s_unit, expected_by_arm[arm][col], minlength=units).mean())

    control = arms[0]
    truth: dict[str, dict[str, float]] = {
        "clicks_per_search": {},
        "conversions_per_search": {},
        "revenue_per_search": {},
        "revenue_per_user": {},
    }
    for arm in arms[1:]:
        truth["clicks_per_search"][arm] = per_search(arm, "e_clicks") - per_search(control, "e_clicks")
        truth["conversions_per_search"][arm] = per_search(arm, "e_purchases") - per_search(
            control, "e_purchases"
        )
        truth["revenue_per_search"][arm] = per_search(arm, "e_revenue") - per_search(control, "e_revenue")
        truth["revenue_per_user"][arm] = per_user(arm, "e_revenue") - per_user(control, "e_revenue")
    return truth


def run_experiment(
    workdir: Path,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    looks: int = 10,
    lose_exposures: float = 0.0,
    progress: bool = True,
    world: SearchWorld | None = None,
    searches_per_unit: float = 2.5,
    keep_stages: bool = False,
) -> dict[str, Any]:
    """Run one online experiment of search arms (:data:`ARM_PRESETS`, default :data:`DEFAULT_ARMS`) on
    ``units`` simulated users through the real engine; return the analysis with the true effects.

    ``world``: an already loaded :class:`SearchWorld` (the demo passes its own); otherwise the world in
    ``workdir`` is reused or created (:func:`load_world`). ``lose_exposures``: share of treatment units
    whose exposure is lost (planted SRM). ``keep_stages``: add ``report["stages_ms"]`` (per-stage
    latencies of every served search; the demo writes them to ``monitoring/timings.json``).
    """
    from mlsd.platform.experiments.online import arms_from_presets, with_truth

    started = time.perf_counter()
    arms_from_presets(ARM_PRESETS, list(arms or DEFAULT_ARMS))  # a bad arm fails before any simulation
    world = world or load_world(Path(workdir), progress=progress)
    sim = simulate_experiment(
        world, units=units, arms=arms, seed=seed, lose_exposures=lose_exposures,
        searches_per_unit=searches_per_unit, progress=progress,
    )  # fmt: skip
    report = sim["client"].analyze(
        sim["experiment"], sim["outcomes"], covariates=sim["covariates"], looks=looks
    )
    report = with_truth(report, sim["truth"])
    report.update(
        experiment=sim["experiment"],
        system="search",
        world={
            **(world.description or {}),
            "searches": sim["searches"],
            "engine_calls": sim["engine_calls"],
            "searches_per_unit": round(sim["searches"] / units, 3),
            "expected_per_search": sim["expected"],
            "lose_exposures": lose_exposures,
            "seed": seed,
        },
        units=units,
        seconds=round(time.perf_counter() - started, 2),
    )
    if keep_stages:
        report["stages_ms"] = sim["stages"]
    return report
