"""The fraud world: a seeded payment simulator and the online shadow experiment run through it.

Nothing in production (engine, service, training, monitoring) imports this module: it is the
system's embedded world, what ``mlsd fraud simulate``, ``mlsd experiment run fraud`` (``System.world()``),
the demo and the bench use in place of a real payment network.

**The simulator** (:func:`simulate`).
The world: cities; cards (= customer accounts) living in a city with a spending profile (mean
amount, payments per day), a primary and a spare device, a home IP and an email; terminals in a
city with a merchant category. Genuine payments happen mostly at terminals of the home city during
the day. Frauds, each tagged with its ``scenario``:

1. large amounts - a random payment's amount replaced by a large one;
2. compromised terminals - every payment at a terminal is fraudulent for ``terminal_days`` days;
3. compromised cards - a third of a card's payments for ``card_days`` days have amounts x5;
4. account takeover - a burst of payments within an hour, from a never-seen device and IP, at a
   terminal in a distant city;
5. fraud rings - synthetic accounts that share a few devices, IPs and emails and pay at a handful
   of colluding terminals.

Labels arrive late: a share of frauds is caught by review the same day (``label_ts`` a few hours
after the payment), the rest by chargebacks 30-90 days later. Genuine payments mature when the
chargeback window closes (``label_ts = ts + 90 days``). Everything is numpy; one million payments
take a few seconds.

:data:`SIZES` are the sizes ``mlsd fraud simulate --size`` offers (``tiny`` for tests, ``demo``,
``default``); :func:`world_for` sizes a world for an experiment of ``units`` cards.

**The online experiment** (:func:`run_experiment`).
``run_experiment(dirs, units=2000, arms=["champion", "challenger"])``:

1. **World** -- ``dirs.data/transactions.parquet`` (a world sized for ``units`` cards by
   :func:`world_for`, written once, deterministically, when absent, through the import
   (:func:`simulate_into`); :func:`ensure_data` refuses imported data, which has no such truth), the registry
   in ``dirs.registry`` and the label store in ``dirs.features``. The **live period** is the data's
   last ``LIVE_DAYS`` days. Every arm's model comes from the registry by alias, reused when it was trained on this very data (its lineage fingerprint matches)
   and before the live period (no leakage); otherwise it is trained here: ``champion`` at the cut-off a
   week before the live period, ``challenger`` = the weekly retrain at the live period's start (labels
   known then, never promoted), ``no_velocity`` = the planted worse model (same cut-off as the champion,
   trained without any ``card_*`` feature: blind to card velocity and history).
2. **Serve** -- the live period's payments stream through the real pipeline in micro-batches (labels
   reach the feature windows when they arrive, as in production). The experiment is
   ``mode="shadow"``, ``unit="card_id"``: the champion decides every payment; the pipeline scores every
   other arm for the cards in the experiment, derives the decision that arm *would* have taken (same
   rules, same thresholds unless the arm's ``params`` set others) and logs the exposures.
3. **Outcomes** -- per payment and arm, from the simulator's final labels (``fraud``): ``fraud_loss``
   (amount of fraud *approved*; a reviewed fraud counts as caught), ``false_declines`` (legitimate
   payments blocked) and ``reviews``. The experiment uses the final labels, i.e. the truth as it will
   be known once every chargeback arrived (30-90 days): real monitoring has to wait for it (see
   :mod:`mlsd.fraud.monitoring`, performance by label age).
4. **Truth** -- the experiment covers a hash-chosen sample of ``units`` cards out of every card active
   in the live period (the population). A second pass over the same payments (fed the feature rows
   the served pass computed, :class:`RecordedFeatures`, so every payment gets the very same features
   by construction, whatever the window store does with a replayed event) scores
   every arm for *every* card: the true effect is the population's mean paired difference per card,
   exactly, with no sampling noise. The report's interval is for the sample; the test checks it covers
   the population value.

``lose_exposures``: a shadow experiment has no split to mismatch -- every unit is scored by every arm
-- so no sample-ratio mismatch can be planted. Here it drops the challenger logs (the exposures) of
that share of the experiment's cards, as a shadow logger that loses writes would: those cards leave
the paired analysis. Random loss costs power, not validity (pairing is within a card); the report's
``lost_exposures`` says how many were dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.fraud.engine import FraudDirs, load_engine
from mlsd.fraud.monitoring import live_start
from mlsd.platform.errors import InputError
from mlsd.platform.jsonio import write_json
from mlsd.platform.system import SystemDir

DAY = 86_400
DEFAULT_START = 1_767_225_600  # 2026-01-01 00:00:00 UTC
CATEGORIES = np.array(
    ["grocery", "fuel", "restaurant", "electronics", "travel", "fashion", "online", "pharmacy"]
)
CATEGORY_SCALE = np.array([0.8, 1.0, 0.9, 2.5, 3.0, 1.5, 1.2, 0.6])


def _check(name: str, value: int, low: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise InputError(name, value, f"must be an integer >= {low}", f"pass {name} >= {low}")
    return int(value)


def simulate(
    n_cards: int = 2_000,
    n_terminals: int = 500,
    days: int = 30,
    seed: int = 0,
    *,
    start: int = DEFAULT_START,
    tx_per_card_day: float = 1.5,
    n_cities: int = 30,
    large_amount_rate: float = 0.001,
    terminals_per_day: float = 0.001,
    terminal_days: int = 7,
    cards_per_day: float = 0.001,
    card_days: int = 14,
    takeovers_per_day: float = 0.0005,
    rings: int | None = None,
    ring_size: int = 8,
    review_share: float = 0.3,
) -> pd.DataFrame:
    """Simulate ``days`` of payments; return a frame in the :mod:`mlsd.fraud.data` schema, sorted by ts.

    Rates are per card (or terminal) per day, so the fraud mix stays stable across sizes.
    ``rings`` defaults to one ring per 2,000 cards (at least one).
    """
    n_cards = _check("n_cards", n_cards, 1)
    n_terminals = _check("n_terminals", n_terminals, 1)
    days = _check("days", days, 1)
    seed = _check("seed", seed, 0)
    rng = np.random.default_rng(seed)
    n_cities = min(n_cities, n_terminals)

    # The world. Cities spread over Europe; terminals belong to a city (every city has at least one).
    city_lat = rng.uniform(36.0, 60.0, n_cities)
    city_lon = rng.uniform(-9.0, 30.0, n_cities)
    term_city = np.concatenate([np.arange(n_cities), rng.integers(0, n_cities, n_terminals - n_cities)])
    term_city = np.sort(term_city)  # terminals grouped by city: city c owns a contiguous id range
    city_first = np.searchsorted(term_city, np.arange(n_cities))
    city_count = np.bincount(term_city, minlength=n_cities)
    term_lat = city_lat[term_city] + rng.normal(0, 0.05, n_terminals)
    term_lon = city_lon[term_city] + rng.normal(0, 0.05, n_terminals)
    term_cat = rng.integers(0, len(CATEGORIES), n_terminals)

    card_city = rng.integers(0, n_cities, n_cards)
    card_mean = rng.uniform(5.0, 100.0, n_cards)
    card_rate = rng.uniform(0.2, 2.0 * tx_per_card_day, n_cards)
    card_ip = np.arange(n_cards)
    household = rng.random(n_cards) < 0.05  # some households share an IP: rings are not just shared IPs
    card_ip[household] = rng.integers(0, n_cards, household.sum())

    # Genuine payments: Poisson per card-day, daytime-heavy clock, mostly in the home city.
    counts = rng.poisson(np.repeat(card_rate, days))
    card = np.repeat(np.repeat(np.arange(n_cards), days), counts)
    day = np.repeat(np.tile(np.arange(days), n_cards), counts)
    n = card.size
    secs = np.mod(rng.normal(13.5 * 3600, 4.5 * 3600, n).astype(np.int64), DAY)
    ts = start + day.astype(np.int64) * DAY + secs
    city = np.where(rng.random(n) < 0.95, card_city[card], rng.integers(0, n_cities, n))
    terminal = city_first[city] + (rng.random(n) * city_count[city]).astype(np.int64)
    amount = np.round(
        np.maximum(0.5, rng.gamma(2.0, card_mean[card] / 2.0) * CATEGORY_SCALE[term_cat[terminal]]), 2
    )
    device = np.where(rng.random(n) < 0.9, 2 * card, 2 * card + 1)
    ip = np.where(rng.random(n) < 0.85, card_ip[card], n_cards + rng.integers(0, 50 * n_cities, n))
    scenario = np.zeros(n, dtype=np.int8)
    cols = {"card": card, "ts": ts, "terminal": terminal, "amount": amount, "device": device, "ip": ip}

    # (1) large amounts
    large = rng.random(n) < large_amount_rate
    amount[large] = np.round(rng.uniform(300.0, 3000.0, large.sum()), 2)
    scenario[large] = 1

    # (2) compromised terminals: all payments there for terminal_days days
    n_comp_t = rng.poisson(terminals_per_day * n_terminals * days)
    comp_t = rng.integers(0, n_terminals, n_comp_t)
    comp_t_start = start + rng.integers(0, days, n_comp_t).astype(np.int64) * DAY
    scenario = _mark_periods(
        terminal, ts, comp_t, comp_t_start, terminal_days * DAY, scenario, 2, n_terminals
    )

    # (3) compromised cards: a third of the payments for card_days days, amounts x5
    n_comp_c = rng.poisson(cards_per_day * n_cards * days)
    comp_c = rng.integers(0, n_cards, n_comp_c)
    comp_c_start = start + rng.integers(0, days, n_comp_c).astype(np.int64) * DAY
    hit = _mark_periods(card, ts, comp_c, comp_c_start, card_days * DAY, np.zeros(n, np.int8), 3, n_cards)
    hit = (hit == 3) & (scenario == 0) & (rng.random(n) < 1 / 3)
    amount[hit] = np.round(amount[hit] * 5, 2)
    scenario[hit] = 3

    # (4) account takeover: bursts appended as new rows
    n_ato = rng.poisson(takeovers_per_day * n_cards * days)
    burst = rng.integers(3, 9, n_ato)
    ato_card = np.repeat(rng.integers(0, n_cards, n_ato), burst)
    ato_t0 = np.repeat(start + rng.integers(0, days * DAY - 3600, n_ato), burst)
    ato_ts = ato_t0 + rng.integers(0, 3600, ato_card.size)
    far_city = (card_city[ato_card] + rng.integers(1, max(n_cities, 2), ato_card.size)) % n_cities
    ato_terminal = city_first[far_city] + (rng.random(ato_card.size) * city_count[far_city]).astype(np.int64)
    ato_id = np.repeat(np.arange(n_ato), burst)
    ato = {
        "card": ato_card,
        "ts": ato_ts,
        "terminal": ato_terminal,
        "amount": np.round(rng.uniform(50.0, 900.0, ato_card.size), 2),
        "device": 2 * n_cards + ato_id,  # a device never seen before
        "ip": n_cards + 50 * n_cities + ato_id,  # and an IP never seen before
    }

    # (5) fraud rings: new accounts sharing a few devices/IPs/emails, paying at colluding terminals
    n_rings = max(1, n_cards // 2000) if rings is None else rings
    ring_parts = [
        _ring(rng, r, ring_size, n_cards, n_cities, n_terminals, days, start) for r in range(n_rings)
    ]

    parts = [pd.DataFrame(cols | {"scenario": scenario}), pd.DataFrame(ato | {"scenario": np.int8(4)})]
    parts += [pd.DataFrame(p | {"scenario": np.int8(5)}) for p in ring_parts]
    df = pd.concat(parts, ignore_index=True)
    df = df.sort_values("ts", kind="stable", ignore_index=True)
    m = len(df)
    card_all = df["card"].to_numpy()
    group = df["email_group"].fillna(0).to_numpy() if "email_group" in df else np.zeros(m)
    email_id = np.where(card_all < n_cards, card_all, group.astype(np.int64))
    fraud = (df["scenario"].to_numpy() > 0).astype(np.int8)
    ts_all = df["ts"].to_numpy().astype(np.int64)
    review = rng.random(m) < review_share
    delay = np.where(
        review,
        rng.integers(3600, 6 * 3600, m),  # review-detected: within hours, same day
        rng.integers(30 * DAY, 90 * DAY, m),  # chargeback: 30-90 days
    )
    label_ts = np.where(fraud == 1, ts_all + delay, ts_all + 90 * DAY)
    term = df["terminal"].to_numpy().astype(np.int64)
    out = pd.DataFrame(
        {
            "tx_id": np.arange(m, dtype=np.int64),
            "ts": ts_all,
            "card_id": card_all.astype(np.int64),
            "terminal_id": term,
            "amount": df["amount"].to_numpy().astype(np.float64),
            "device_id": "d" + pd.Series(df["device"].to_numpy().astype(np.int64)).astype(str),
            "ip": _ip_strings(df["ip"].to_numpy().astype(np.int64)),
            "email": "u" + pd.Series(email_id.astype(np.int64)).astype(str) + "@mail.example",
            "lat": np.round(term_lat[term], 5),
            "lon": np.round(term_lon[term], 5),
            "mcc": CATEGORIES[term_cat[term]],
            "currency": "EUR",
            "fraud": fraud,
            "scenario": df["scenario"].to_numpy().astype(np.int8),
            "label_ts": label_ts.astype(np.int64),
        }
    )
    return out


def _mark_periods(
    entity: np.ndarray,
    ts: np.ndarray,
    targets: np.ndarray,
    starts: np.ndarray,
    length: int,
    scenario: np.ndarray,
    code: int,
    n_entities: int,
) -> np.ndarray:
    """Mark genuine rows of ``entity`` inside any [start, start+length) compromise period of that entity."""
    scenario = scenario.copy()
    if targets.size == 0:
        return scenario
    # Per entity the union of periods is small; sort periods by entity and test each row against its
    # entity's periods through a padded (n_entities, max_periods) table - no Python loop over rows.
    order = np.argsort(targets, kind="stable")
    targets, starts = targets[order], starts[order]
    per = np.bincount(targets, minlength=n_entities)
    width = per.max()
    slot = np.arange(targets.size) - np.repeat(np.cumsum(per) - per, per)
    table = np.full((n_entities, width), np.iinfo(np.int64).min // 2, dtype=np.int64)
    table[targets, slot] = starts
    rel = ts[:, None] - table[entity]
    inside = ((rel >= 0) & (rel < length)).any(axis=1)
    scenario[inside & (scenario == 0)] = code
    return scenario


def _ring(rng, r, size, n_cards, n_cities, n_terminals, days, start) -> dict[str, np.ndarray]:
    """One fraud ring: ``size`` synthetic accounts sharing 2 devices, 2 IPs and 3 emails."""
    accounts = 10_000_000 + r * 1000 + np.arange(size)  # synthetic card ids, far from genuine ones
    per_account = rng.integers(2, 6, size)
    acc = np.repeat(accounts, per_account)
    k = acc.size
    colluding = rng.integers(0, n_terminals, 3)
    base = 20_000_000 + r * 10
    return {
        "card": acc,
        "ts": start + rng.integers(0, days * DAY, k),
        "terminal": colluding[rng.integers(0, 3, k)],
        "amount": np.round(rng.uniform(80.0, 600.0, k), 2),
        "device": base + rng.integers(0, 2, k),
        "ip": base + rng.integers(0, 2, k),
        "email_group": base + rng.integers(0, 3, k),
    }


def _ip_strings(codes: np.ndarray) -> pd.Series:
    """Deterministic dotted-quad strings for integer IP codes (10.x.y.z)."""
    s = pd.Series
    return (
        "10."
        + s((codes >> 16) & 255).astype(str)
        + "."
        + s((codes >> 8) & 255).astype(str)
        + "."
        + s(codes & 255).astype(str)
    )


# ---------------------------------------------------------------------------------------------------
# The online experiment world

# `mlsd fraud simulate --size`: tiny trains in seconds (tests), demo is the demo's, default ~200k payments
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"cards": 300, "terminals": 60, "days": 30},
    "demo": {"cards": 800, "terminals": 200, "days": 40},
    "default": {"cards": 3000, "terminals": 600, "days": 42},
}
WORLD: dict[str, int] = {**SIZES["default"], "seed": 0}
LGBM_PARAMS: dict[str, Any] = {"n_estimators": 60}  # a small model: the world trains in seconds
# an experiment world: enough cards that `units` of them are active in the live period, and never so
# few that the champion has too few frauds to learn from
MIN_WORLD_CARDS = 600
NO_VELOCITY_DROP = ("card_*",)

ARM_PRESETS: dict[str, dict[str, Any]] = {
    "champion": {
        "alias": "champion",
        "params": {},
        "description": "the model in production (trained a week before the live period)",
    },
    "challenger": {
        "alias": "challenger",
        "params": {},
        "description": "the weekly retrain: same recipe, labels known at the live period's start",
    },
    "no_velocity": {
        "alias": "no_velocity",
        "params": {},
        "description": "planted worse model: the champion's cut-off, trained without any card_* feature",
    },
    "lenient": {
        "alias": "champion",
        "params": {"thresholds": {"block": 0.995, "review": 0.99}},
        "description": "planted worse policy: the champion's model with far higher thresholds",
    },
}
DEFAULT_ARMS = ("champion", "challenger")
METRICS: tuple[dict[str, Any], ...] = (
    {"name": "fraud_loss", "higher_is_better": False},  # EUR of fraud approved, per card
    {"name": "false_declines", "higher_is_better": False},  # legitimate payments blocked, per card
    # reviews per payment scored: a ratio over the shared denominator (both arms see the same payments)
    {"name": "review_load", "kind": "ratio", "numerator": "reviews", "denominator": "payments",
     "higher_is_better": False},
)  # fmt: skip
OUTCOME_COLUMNS = ("fraud_loss", "false_declines", "reviews")
TRUTH_COLUMNS = ("fraud", "scenario", "label_ts")


# ---------------------------------------------------------------------------------------------------
# The world: data and the models the arms need


def world_for(units: int, seed: int = 0) -> dict[str, int]:
    """A world for an experiment of ``units`` cards: almost every card pays during a 7-day live
    period, so ``units`` cards (5% spare) and a terminal per 5 cards; 35 days (champion, challenger
    and a matured evaluation week before the live period) up to 2,000 cards, 42 above."""
    cards = max(MIN_WORLD_CARDS, int(np.ceil(int(units) * 1.05)))
    return {
        "cards": cards,
        "terminals": max(60, cards // 5),
        "days": 35 if cards <= 2000 else 42,
        "seed": seed,
    }


def contract_tables(tx: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The simulated payments as the data contract's tables (:mod:`mlsd.fraud.contract`) and the time
    they are exported at: ``(payments, labels, as_of)``. The labels are the fraud label events (source
    ``review`` when known within a day, else ``chargeback``; a legitimate payment has none), as of
    the last payment: later events are the simulated future the world's truth keeps."""
    payments = tx.drop(columns=["fraud", "label_ts"])
    frauds = tx.loc[tx["fraud"].to_numpy() == 1]
    label_ts = frauds["label_ts"].to_numpy(np.int64)
    labels = pd.DataFrame({
        "tx_id": frauds["tx_id"].to_numpy(np.int64),
        "label": np.ones(len(frauds), np.int8),
        "label_ts": label_ts,
        "source": np.where(label_ts - frauds["ts"].to_numpy(np.int64) < DAY, "review", "chargeback").astype(object),
    })  # fmt: skip
    return payments, labels, int(tx["ts"].max())


def simulate_into(dirs: SystemDir, world: Mapping[str, int]) -> pd.DataFrame:
    """Simulate ``world`` (``cards, terminals, days, seed``) and write it through the import
    (:func:`mlsd.fraud.contract.import_tables` into a fresh folder that replaces ``dirs.data``):
    ``dirs.data`` holds what an import of :func:`contract_tables` gives. Returns the stored payments."""
    from mlsd.fraud.contract import SIMULATION_FILE, import_tables
    from mlsd.platform.data import replace_folder

    w = {**WORLD, **dict(world)}
    tx = simulate(n_cards=w["cards"], n_terminals=w["terminals"], days=w["days"], seed=w["seed"])
    payments, labels, as_of = contract_tables(tx)
    name = f"simulated-{w['cards']}x{w['terminals']}x{w['days']}d-seed{w['seed']}"

    def build(folder: Path) -> None:
        import_tables(folder, payments, labels, name=name, as_of=as_of)
        write_json(folder / SIMULATION_FILE, {"name": name, "world": w, "as_of": as_of})

    replace_folder(dirs.data, build)
    return pd.read_parquet(FraudDirs(dirs).transactions_path)


def simulate_size(
    dirs: SystemDir, size: str = "default", *, seed: int = 0, progress: bool = False, **overrides: int
) -> dict[str, Any]:
    """``mlsd fraud simulate`` (``System.simulate``): the world of :data:`SIZES` ``size`` (``cards``,
    ``terminals``, ``days`` overridable) into ``dirs.data``; returns what was written."""
    from mlsd.fraud.contract import is_simulated

    if size not in SIZES:
        raise InputError("--size", size, "unknown size", f"use one of {', '.join(SIZES)}")
    if FraudDirs(dirs).transactions_path.exists() and not is_simulated(dirs.data):
        raise InputError(  # a simulated world replaces an earlier one, never imported payments
            "--workdir", str(dirs.root), f"{dirs.data} holds imported payments: simulating would replace them",
            "simulate into a fresh --workdir (or move that folder away first)",
        )  # fmt: skip
    started = time.perf_counter()
    tx = simulate_into(dirs, {**SIZES[size], **overrides, "seed": seed})
    summary = {
        "path": str(FraudDirs(dirs).transactions_path),
        "size": size,
        "payments": int(len(tx)),
        "frauds": int(tx["fraud"].sum()),
        "days": int((int(tx["ts"].max()) - int(tx["ts"].min())) // DAY + 1),
        "by_scenario": {str(k): int(v) for k, v in tx["scenario"].value_counts().sort_index().items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if progress:
        print(
            f"fraud: simulated {summary['payments']:,} payments ({summary['frauds']} frauds) into {dirs.data}"
        )
    return summary


def ensure_data(dirs: SystemDir, world: Mapping[str, int] | None = None) -> pd.DataFrame:
    """``dirs.data/transactions.parquet``, simulated once (seeded, so the same world every time)."""
    from mlsd.fraud.contract import is_simulated, read_manifest

    path = FraudDirs(dirs).transactions_path
    if path.exists() and not is_simulated(dirs.data):
        as_of = (read_manifest(dirs.data) or {}).get("as_of")
        known = f" (known to {_day(as_of)})" if as_of else ""
        raise InputError(
            "--workdir", str(dirs.root),
            f"holds imported payments ({dirs.data}), not a simulated world: the experiment replays a "
            "live period through each arm and needs every payment's truth, future chargebacks "
            f"included; imported data has only the labels reported by its export{known}",
            f"compare models offline on your labels: `mlsd pipeline run weekly --workdir {dirs.root}` "
            "gates the challenger on the latest matured week (average precision), and `mlsd monitor "
            f"report --system fraud --workdir {dirs.root}` reports performance by label age; or run the "
            "experiment on a simulated world: `mlsd experiment run fraud` (a new workdir)",
        )  # fmt: skip
    if path.exists():
        return pd.read_parquet(path)
    return simulate_into(dirs, {**WORLD, **(world or {})})


def _trained_on(mv: Any, tx: pd.DataFrame) -> bool:
    """Was ``mv`` trained on this data (lineage fingerprint of the rows up to its cut-off)?"""
    from mlsd.platform.registry import fingerprint

    cutoff = mv.params.get("cutoff")
    if cutoff is None:
        return False
    rows = tx.loc[tx["ts"] <= cutoff, ["tx_id", "ts", "amount"]]
    return mv.data_fingerprint == fingerprint(rows)


@dataclass
class World:
    """What the simulator serves: the data, the fraud state and the live period's first second."""

    tx: pd.DataFrame
    state: FraudDirs
    live_start: int
    models: dict[str, dict[str, Any]]


def ensure_world(
    dirs: SystemDir,
    aliases: Sequence[str],
    *,
    world: Mapping[str, int] | None = None,
    lgbm_params: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> World:
    """Data + a model for every alias in ``aliases`` (reused or trained, see the module docstring)."""
    from mlsd.fraud.training import train_version

    tx = ensure_data(dirs, world)
    dirs.create()
    start = live_start(tx)
    ws = FraudDirs(dirs)
    ws.ingest_labels(tx, known_at=start)  # idempotent: the label events known when the live period starts
    recipes = {
        "champion": {"cutoff": start - 7 * DAY},
        "challenger": {"cutoff": start},
        "no_velocity": {"cutoff": start - 7 * DAY, "drop_features": NO_VELOCITY_DROP},
    }
    models: dict[str, dict[str, Any]] = {}
    ordered = ["champion", *[a for a in dict.fromkeys(aliases) if a != "champion"]]
    for alias in ordered:
        mv = ws.model_version(alias)
        reuse = mv is not None and mv.params.get("cutoff", start + 1) <= start and _trained_on(mv, tx)
        if not reuse:
            if alias not in recipes:
                raise InputError(
                    "--arms", alias, "no model under this alias and no recipe to train one",
                    f"register a model as {alias!r} in {dirs.registry} or use {sorted(recipes)}",
                )  # fmt: skip
            recipe = recipes[alias]
            t = time.perf_counter()
            if progress:
                print(f"fraud: training {alias} (cut-off {_day(recipe['cutoff'])})", flush=True)
            result = train_version(
                tx.loc[tx["ts"] <= recipe["cutoff"]],
                ws,
                cutoff=recipe["cutoff"],
                sequence=False,
                lgbm_params={**LGBM_PARAMS, **(lgbm_params or {})},
                alias=alias,
                compete=False,  # the world's roles are fixed: the weekly gate is training.retrain's
                drop_features=tuple(recipe.get("drop_features", ())),
            )
            if alias == "champion" and result["suggested_thresholds"] is not None:
                # the live thresholds, tuned with the champion on its matured week (FPR < 1%, review
                # capacity), as `mlsd fraud tune-thresholds` would: every arm decides with them
                write_json(ws.thresholds_path, result["suggested_thresholds"])
                ws.close()
                ws = FraudDirs(dirs)
            mv = ws.model_version(alias)
            models[alias] = {"version": mv.version, "trained_s": round(time.perf_counter() - t, 1)}
        else:
            models[alias] = {"version": mv.version, "reused": True}
        models[alias].update(
            cutoff=_day(mv.params["cutoff"]),
            ap_eval=(mv.metrics.get("eval") or {}).get("average_precision"),
            drop_features=mv.params.get("drop_features", []),
        )
    models["thresholds"] = {"block": ws.config.thresholds.block, "review": ws.config.thresholds.review}
    return World(tx, ws, start, models)


def _day(ts: int) -> str:
    return pd.Timestamp(int(ts), unit="s").strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------------
# Serving the live period


def warm_features(engine: Any, history: pd.DataFrame, known: pd.DataFrame) -> int:
    """Feed ``history`` through the online feature windows with fraud labels as ``known`` says
    (``labels_known_at`` of the live period's start): the windows a service has when it starts."""
    from mlsd.fraud.features import replay

    warm = history.drop(columns=list(TRUTH_COLUMNS), errors="ignore")
    fraud_ts = known.loc[known["label"] == 1].set_index("tx_id")["label_ts"]
    label_ts = warm["tx_id"].astype(str).map(fraud_ts)
    warm["fraud"] = label_ts.notna().astype(np.int8).to_numpy()
    warm["label_ts"] = label_ts.to_numpy(np.float64)
    if hasattr(engine, "presize"):  # size the windows once: no growth copies while serving
        engine.presize(warm)
    replay(engine, warm, batch_size=2000)
    return len(warm)


@dataclass
class ServedPeriod:
    """What serving a period produced: per-payment outcome events of the experiment's units, stage
    timings per batch, and a sample of served feature rows with the champion's score."""

    outcomes: pd.DataFrame
    timings: dict[str, list[float]]
    served: pd.DataFrame
    payments: int
    seconds: float


class RecordedFeatures:
    """A feature engine that passes every batch to ``engine`` and keeps each payment's feature row.

    :meth:`replay` returns an engine that answers the same payments with the same rows and touches no
    window state: the truth pass scores every arm on exactly what the served pass saw. Rows are kept
    per batch (one matrix and its tx ids), so recording costs one reference per batch.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.feature_names = list(engine.feature_names)
        self._ids: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []

    def update_matrix(self, tx: pd.DataFrame) -> np.ndarray:
        matrix = self.engine.update_matrix(tx)
        self._ids.append(tx["tx_id"].to_numpy())
        self._rows.append(matrix)
        return matrix

    def __getattr__(self, name: str) -> Any:  # add_labels, config, ...: the live engine's
        return getattr(self.engine, name)

    def replay(self) -> _ReplayedFeatures:
        return _ReplayedFeatures(self.feature_names, self._ids, self._rows)


class _ReplayedFeatures:
    """The recorded rows, looked up by ``tx_id`` (one sorted search per batch)."""

    def __init__(self, names: list[str], ids: list[np.ndarray], rows: list[np.ndarray]) -> None:
        self.feature_names = names
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        self._order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[self._order]
        self._rows = np.concatenate(rows) if rows else np.zeros((0, len(names)))

    def update_matrix(self, tx: pd.DataFrame) -> np.ndarray:
        wanted = tx["tx_id"].to_numpy()
        at = np.searchsorted(self._ids, wanted)
        found = (at < len(self._ids)) & (self._ids[np.minimum(at, len(self._ids) - 1)] == wanted)
        if not found.all():
            raise InputError(
                "tx_id", wanted[~found][:5].tolist(), "was not served in the recorded pass",
                "replay only the payments the served pass scored",
            )  # fmt: skip
        return self._rows[self._order[at]]

    def add_labels(self, frame: pd.DataFrame) -> int:  # the rows are fixed: labels change nothing
        return 0


def serve_period(
    pipeline: Any,
    live: pd.DataFrame,
    experiment: str,
    *,
    batch_size: int = 500,
    sample_rows: int = 20_000,
    seed: int = 0,
    feed_labels: bool = True,
) -> ServedPeriod:
    """Stream ``live`` (with the simulator's truth columns) through ``pipeline`` as the stream would:
    payments in micro-batches without their labels, fraud labels into the feature windows when they
    arrive. Returns the outcome events of the units in ``experiment`` (one row per payment, columns
    ``unit, ts, payments`` and ``<outcome>@<arm>``), per-batch stage timings and a served sample."""
    from mlsd.fraud.decision import APPROVE, BLOCK, REVIEW
    from mlsd.fraud.features import replay_events
    from mlsd.platform.monitoring.sample import ServingSample

    events, timings = [], {}
    served = ServingSample(max_rows=sample_rows, seed=seed)
    truth = live.set_index("tx_id")
    t0 = time.perf_counter()
    n = 0
    # without labels to feed, no label arrival splits the micro-batches
    stream = live if feed_labels else live.assign(fraud=np.int8(0))  # truth still comes from `live`
    for kind, chunk in replay_events(stream, batch_size):
        if kind == "labels":
            if feed_labels:
                pipeline.features.add_labels(chunk[["tx_id", "terminal_id", "label_ts", "fraud"]])
            continue
        batch = pipeline.score(chunk.drop(columns=list(TRUTH_COLUMNS), errors="ignore"))
        n += len(chunk)
        for stage, ms in batch.timer.timings_ms.items():
            timings.setdefault(stage, []).append(round(float(ms), 3))
        if sample_rows and batch.features is not None and not batch.decisions.rules_only:
            keep = batch.features.copy()
            keep["prediction"] = batch.decisions.probability
            keep["model_version"] = str(batch.model_version)
            keep["tx_id"] = batch.tx_id
            keep["ts"] = chunk["ts"].to_numpy()
            keep["decision"] = batch.decisions.labels
            served.add(keep)
        result = batch.experiments.get(experiment)
        if result is None:
            continue
        inside = np.flatnonzero(result.arm >= 0)
        if inside.size == 0:
            continue
        rows = truth.loc[batch.tx_id[inside]]
        fraud = rows["fraud"].to_numpy() == 1
        amount = rows["amount"].to_numpy(np.float64)
        frame = {
            "unit": rows["card_id"].astype(str).to_numpy(),
            "ts": rows["ts"].to_numpy(np.int64),
            "payments": np.ones(inside.size),
        }
        for arm, decision in result.decision.items():
            d = decision[inside]
            frame[f"fraud_loss@{arm}"] = np.where(fraud & (d == APPROVE), amount, 0.0)
            frame[f"false_declines@{arm}"] = (~fraud & (d == BLOCK)).astype(np.float64)
            frame[f"reviews@{arm}"] = (d == REVIEW).astype(np.float64)
        events.append(pd.DataFrame(frame))
    seconds = time.perf_counter() - t0
    outcomes = pd.concat(events, ignore_index=True) if events else pd.DataFrame(columns=["unit", "ts"])
    return ServedPeriod(outcomes, timings, served.frame(), n, seconds)


def per_unit_means(outcomes: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Per-unit totals of every outcome under every arm (the quantities the paired analysis averages)."""
    cols = ["payments", *[f"{c}@{a}" for c in OUTCOME_COLUMNS for a in arms]]
    return outcomes.groupby("unit", sort=True)[cols].sum()


def true_effects(per_unit: pd.DataFrame, arms: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{metric: {arm: mean over units of (metric@arm - metric@control)}}`` for the arms after the first."""
    out: dict[str, dict[str, float]] = {}
    for spec in METRICS:
        col = spec.get("numerator") or spec.get("column") or spec["name"]
        # a ratio over the shared denominator: mean numerator difference / mean denominator
        scale = float(per_unit[spec["denominator"]].mean()) if spec.get("kind") == "ratio" else 1.0
        out[spec["name"]] = {
            arm: float((per_unit[f"{col}@{arm}"] - per_unit[f"{col}@{arms[0]}"]).mean()) / scale
            for arm in arms[1:]
        }
    return out


def experiment_client(
    arm_names: Sequence[str], *, seed: int = 0, coverage: float = 1.0, log: Any = None, registry: Any = None
) -> Any:
    """The fraud shadow experiment (card_id units) over the named presets, as an ExperimentClient."""
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.experiments.online import arms_from_presets, make_experiment

    arms = arms_from_presets(ARM_PRESETS, arm_names)
    name = f"fraud-{'-vs-'.join(a.name for a in arms)}"
    config = make_experiment(
        "fraud", arms, list(METRICS), name=name, mode="shadow", unit="card_id", salt=f"{name}:{seed}"
    )
    if coverage < 1.0:  # a sample of the population: the rest is the truth's reference population
        layer = config.layers[0]
        exp = replace(layer.experiments[0], coverage=float(coverage))
        config = replace(config, layers=(replace(layer, experiments=(exp,)),))
    return ExperimentClient(config, log=log, registry=registry)


# ---------------------------------------------------------------------------------------------------
# The experiment


def run_experiment(
    dirs: SystemDir,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    looks: int = 10,
    lose_exposures: float = 0.0,
    progress: bool = True,
    world: Mapping[str, int] | None = None,
    lgbm_params: Mapping[str, Any] | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Run the fraud shadow experiment in ``dirs`` (``W/fraud``) and return the report with its truth.

    ``units``: cards in the experiment (a hash-chosen sample of the cards active in the live period;
    all of them when there are fewer). Without data in ``dirs.data`` a world sized for ``units`` is
    simulated (:func:`world_for`; an existing world is reused as it is). ``arms``: preset names,
    control first (default champion, challenger); a name given twice is an A/A test. ``world``:
    override the world's size (``cards``, ``terminals``, ``days``, ``seed``) when there is no data yet.
    """
    from prometheus_client import CollectorRegistry

    from mlsd.platform.experiments.exposures import MemoryExposureLog
    from mlsd.platform.experiments.online import LossyExposureLog, with_truth
    from mlsd.platform.experiments.online import lose_exposures as lose_mask

    started = time.perf_counter()
    arm_names = list(arms or DEFAULT_ARMS)
    if isinstance(units, bool) or not isinstance(units, int | np.integer) or units < 2:
        raise InputError("--units", units, "must be an integer >= 2", "use e.g. 2000")
    if not 0.0 <= lose_exposures < 1.0:
        raise InputError("--lose-exposures", lose_exposures, "must be in [0, 1)", "use e.g. 0.1")
    probe = experiment_client(arm_names, seed=seed)  # validates the arm names before any training
    aliases = [a.alias for a in probe.config.layers[0].experiments[0].arms if a.alias]
    sized = {**world_for(int(units), seed), **(world or {})}
    w = ensure_world(dirs, aliases, world=sized, lgbm_params=lgbm_params, progress=progress)
    tx, ws = w.tx, w.state
    history = tx.loc[tx["ts"] < w.live_start].reset_index(drop=True)
    live = tx.loc[tx["ts"] >= w.live_start].reset_index(drop=True)
    population = np.unique(live["card_id"].to_numpy())
    coverage = min(1.0, units / len(population))

    # the experiment's cards, and the planted logging bug (which of them lose their exposure writes)
    registry = CollectorRegistry()  # the simulation's Prometheus metrics stay out of the service's
    probe = experiment_client(arm_names, seed=seed, coverage=coverage)
    name = next(iter(probe.config.experiments))
    in_exp = population[probe.assign(name, population) >= 0].astype(str)
    keep = lose_mask(np.ones(len(in_exp), np.int64), lose_exposures, seed)
    dropped = set(in_exp[~keep].tolist())
    client = experiment_client(
        arm_names,
        seed=seed,
        coverage=coverage,
        log=LossyExposureLog(MemoryExposureLog(), dropped),
        registry=registry,
    )
    pipeline = load_engine(ws, review=False, shadow=False, experiments=client, metrics_registry=registry)
    t = time.perf_counter()
    warmed = warm_features(pipeline.features, history, ws.labels.labels_known_at(w.live_start))
    pipeline.features = RecordedFeatures(pipeline.features)  # the served pass keeps every feature row
    warm_s = time.perf_counter() - t
    if progress:
        print(
            f"fraud: windows warmed on {warmed:,} payments in {warm_s:.1f} s; serving {len(live):,} live "
            f"payments of {len(population):,} cards ({len(in_exp):,} in the experiment)",
            flush=True,
        )
    period = serve_period(pipeline, live, name, batch_size=batch_size, seed=seed)
    arm_labels = list(client.config.experiment(name).arm_names)

    # truth: every arm for every card of the population, on the very same features (replayed)
    oracle = experiment_client(arm_names, seed=seed, coverage=1.0, registry=False)
    truth_pipe = load_engine(
        ws, review=False, shadow=False, experiments=oracle, features=pipeline.features.replay()
    )
    truth_pipe.metrics_registry = registry
    full = serve_period(truth_pipe, live, name, batch_size=2000, sample_rows=0, feed_labels=False)
    population_units = per_unit_means(full.outcomes, arm_labels)
    truth = true_effects(population_units, arm_labels)

    report = client.analyze(name, period.outcomes, looks=looks)
    report = with_truth(report, truth)
    exposed = client.exposures(name)["unit"].nunique()
    report["units"] = int(exposed)
    report["lost_exposures"] = {
        "fraction": lose_exposures,
        "units_in_experiment": int(len(in_exp)),
        "units_dropped": int(len(dropped)),
        "note": "shadow mode: every card is scored by every arm, so there is no split to mismatch (no "
        "SRM); lost challenger logs only remove those cards from the paired comparison",
    }
    report["truth_population"] = {
        "units": int(len(population_units)),
        "what": "every card active in the live period, every arm, same features: the exact mean paired "
        "difference per card (the experiment's cards are a hash-chosen sample of them)",
    }
    report["world"] = {
        "payments": int(len(tx)),
        "cards": int(tx["card_id"].nunique()),
        "frauds": int(tx["fraud"].sum()),
        "live_period": [_day(w.live_start), _day(int(live["ts"].max()))],
        "live_payments": int(len(live)),
        "live_frauds": int(live["fraud"].sum()),
        "coverage": round(coverage, 4),
        "models": w.models,
        "labels": "final (simulator truth, incl. chargebacks that arrive after the live period)",
        "served_tx_per_s": round(period.payments / max(period.seconds, 1e-9)),
        "warmup_payments": warmed,
    }
    report["arm_presets"] = {a: ARM_PRESETS[a]["description"] for a in dict.fromkeys(arm_names)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["world"]["size"] = {k: sized[k] for k in ("cards", "terminals", "days", "seed")}
    write_monitoring(dirs, period)
    ws.close()
    return report


def write_monitoring(dirs: SystemDir, period: ServedPeriod) -> None:
    """The served sample (drift's "current") and the stage timings, under ``dirs.monitoring``."""
    out = dirs.monitoring
    out.mkdir(parents=True, exist_ok=True)
    if len(period.served):
        period.served.to_parquet(out / "served.parquet", index=False)
    write_json(out / "timings.json", {"system": "fraud", "stages": period.timings})
