"""A seeded, vectorised payment simulator with five labelled fraud scenarios and delayed labels.

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
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError

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
