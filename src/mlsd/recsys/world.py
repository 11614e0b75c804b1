"""The recommender's simulated world: the data generator and the online experiment world, with a known
truth. Production code (engine, service, training, monitoring) never imports this module; the world
drives that code, in-process, the way a platform and its viewers would.

**Part 1, the data.** ``simulate(n_users, n_items, days=60, seed=0)`` returns a
:class:`~mlsd.recsys.data.RecsysDataset` in the internal schema plus the ground truth that generated
it (:func:`simulate_into` writes both to ``W/recsys/data``, the dataset through the import,
:func:`mlsd.recsys.importing.import_tables`, so it meets the data contract like any imported data):

* **titles**: 1-3 genres (the first is the primary one), a cast drawn from actors who specialise in
  the primary genre, year and release date (a few percent are released *during* the window, a few
  are still upcoming), the regions where the title may be shown, an age rating that follows its
  genres, a licensing window (most cover the whole period; some expire or start inside it), and a
  latent quality that drives both popularity and how often it is finished;
* **users**: a latent taste (a sparse Dirichlet mixture over genres: its argmax is the *true taste
  genre*), a preferred era (recent vs. classic titles), region, age and activity level; 5% are
  brand-new, signed up in the last week, with only onboarding picks or browsing;
* **events** over ``days`` days: *watch* events (``weight`` = watched fraction, the label is
  ``weight > 0.7``; 15% carry a 1-5 ``rating``), *browse* events (a title page opened, ``weight`` 0.1)
  and *onboarding* picks (``weight`` 0.3: interest, not a watch). An ``event`` column names the kind.

**Planted structure**: a user picks a genre from her taste and then a title of that genre by
popularity (plus a trending share of recent releases); whether she finishes it depends on how well
the title's genres and era match her taste and on its quality. So popularity alone is a fair
baseline, but a model that learns a user's genres and era beats it on held-out days, and the true
taste genre is recoverable from the watch history (tests check both).

Every title she watches was allowed when she watched it: released, inside its licensing window, shown
in her region and allowed for her age (rejection sampling, vectorised). Everything is numpy over whole
arrays (chunked where an ``events x genres`` temporary would be large); 1M users x 50K titles generate
in well under two minutes.

**Sizes** (:data:`SIZES`, ``mlsd recsys simulate --size``): ``tiny`` (tests, a few seconds), ``demo``
(``mlsd demo``) and ``default``; each names the training job that fits its calendar, written to the
data's ``meta.json`` (``train``) so that ``mlsd recsys train`` needs no world knowledge.

**Part 2, the online world.** ``run_experiment(dirs, units=2000, arms=("champion", "challenger"))``
reuses (or builds) a simulated platform in a :class:`~mlsd.platform.system.SystemDir` (``dirs.data``
from part 1, sized for ``units`` viewers; ``dirs.registry`` with the aliases the arms name), starts
the serving engine (:class:`~mlsd.recsys.engine.RecsysEngine`) in-process with an
:class:`~mlsd.platform.experiments.client.ExperimentClient`, and sends one request per simulated
viewer, in batches of :data:`BATCH` (:meth:`RecsysEngine.handle`: one candidate frame and one
LightGBM call per arm and batch, ~4x cheaper than one request at a time). The engine assigns the
viewers, serves their arms and logs the exposures; each viewer then reacts to the list she was shown,
following the simulator's hidden truth (her taste, each title's quality).

**Viewer model** (per viewer ``u`` and shown title ``i`` at position ``p``, 0-based):

* affinity ``z = -0.8 + 1.1 ln(genre affinity + 0.05) + era match + 0.6 quality`` -- the planted
  preference of :func:`_watched_fraction`, without its noise;
* sessions ``N_u ~ Poisson(lambda_u)`` during the test, ``lambda_u`` proportional to her watch events
  in the data (heavy viewers come back more: what CUPED's pre-period covariate explains);
* per session she plays the title with probability ``0.85^p * sigmoid(z - 0.5)`` (attention decays
  down the list), and watches a fraction ``f = sigmoid(z + e)``, ``e ~ N(0, 0.8)``, of its runtime;
  a play is *completed* when ``f > 0.7`` (the data's label threshold).

Every expectation is exact: ``E[plays] = lambda_u * sum_p 0.85^p sigmoid(z - 0.5)``,
``P(f > 0.7) = Phi((z - logit 0.7) / 0.8)``, and ``E[f]`` by 40-point Gauss-Hermite quadrature. So the
**counterfactual truth** is computed, not estimated: every viewer's list is also produced under every
other arm (:meth:`RecsysEngine.preview`: the same serving path, no assignment or exposure), and the true effect is the
difference of expected outcomes over all viewers. Exploration is off in the world (``epsilon = 0``) and
the deadline generous, so each arm's list is a deterministic function of the viewer.

Metrics: ``watch_minutes`` per viewer (the primary one; CUPED on ``pre_watch_minutes``),
``completion_rate`` = completions / plays and ``play_rate`` = plays / impressions (ratios, delta method),
and a ``latency_ms`` guardrail (the viewer's share of her batch's real wall time in-process; no
truth, since it is not simulated).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir
from mlsd.recsys import data as recsys_data
from mlsd.recsys.config import (
    AGE_RATINGS,
    REGIONS,
    Budgets,
    RecsysConfig,
    RerankConfig,
    ServiceConfig,
    TrainConfig,
)
from mlsd.recsys.data import LABEL_THRESHOLD, RecsysDataset, validate

GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Family", "Fantasy",
    "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "Kids",
)  # fmt: skip
KIDS_GENRES = ("Animation", "Family", "Kids")
ADULT_GENRES = ("Horror", "Thriller", "Crime", "War")
RATING_NAMES = tuple(AGE_RATINGS)  # G, PG, PG-13, R, NC-17
DAY_S = 86_400
# The simulated period ends at 2026-03-01 00:00 UTC (a fixed date keeps runs reproducible).
DEFAULT_END_TS = 1_772_323_200
BROWSE_WEIGHT = 0.1
ONBOARDING_WEIGHT = 0.3


@dataclass
class SimulationTruth:
    """What generated the data: per-user taste and era, per-title quality; for tests and diagnostics."""

    users: pd.DataFrame  # user_id, true_genre, era, is_new, taste_<genre>...
    items: pd.DataFrame  # item_id, quality, primary_genre
    start_ts: int
    end_ts: int


# ------------------------------------------------------------------------------------------------
# Titles


def _bitmask_to_names(
    masks: np.ndarray, names: tuple[str, ...], order_first: np.ndarray | None = None
) -> np.ndarray:
    """'A|B' strings for integer bit masks; loops over the distinct masks only (hundreds, not rows)."""
    first = np.full(len(masks), -1) if order_first is None else order_first
    key = masks.astype(np.int64) * 64 + (first + 1)
    uniq, inverse = np.unique(key, return_inverse=True)
    labels = []
    for value in uniq:
        mask, head = int(value) // 64, int(value) % 64 - 1
        parts = [names[head]] if head >= 0 else []
        parts += [n for i, n in enumerate(names) if mask >> i & 1 and i != head]
        labels.append("|".join(parts))
    return np.asarray(labels, dtype=object)[inverse]


def _simulate_items(
    n_items: int, start_ts: int, end_ts: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, dict]:
    n_genres = len(GENRES)
    genre_prior = rng.dirichlet(np.full(n_genres, 4.0))
    primary = rng.choice(n_genres, size=n_items, p=genre_prior)
    genre_mask = (1 << primary).astype(np.int64)
    for share in (0.6, 0.25):
        extra = rng.random(n_items) < share
        genre_mask[extra] |= 1 << rng.integers(0, n_genres, size=int(extra.sum()))
    quality = rng.normal(0.0, 1.0, n_items)
    popularity = np.exp(0.9 * quality + rng.normal(0.0, 0.8, n_items))

    # Years: mostly recent, a long classic tail; release date inside the year.
    year = np.clip(2025 - rng.exponential(12.0, n_items).astype(np.int64), 1930, 2025)
    year_start = (
        pd.to_datetime(pd.Series(year.astype(str)) + "-01-01").to_numpy("datetime64[s]").astype(np.int64)
    )
    release_ts = year_start + rng.integers(0, 365 * DAY_S, n_items)
    release_ts = np.minimum(release_ts, start_ts - DAY_S)
    # New releases inside the window (they trend), and a few upcoming ones (not watchable yet).
    fresh = rng.random(n_items) < 0.05
    release_ts[fresh] = rng.integers(start_ts, end_ts, int(fresh.sum()))
    upcoming = rng.random(n_items) < 0.01
    release_ts[upcoming] = end_ts + rng.integers(DAY_S, 60 * DAY_S, int(upcoming.sum()))
    year = np.where(fresh | upcoming, pd.to_datetime(release_ts, unit="s").year, year)

    # Regions: a home region plus each other region with probability 0.6.
    home = rng.choice(len(REGIONS), size=n_items, p=[0.35, 0.25, 0.15, 0.15, 0.10])
    regions = (1 << home) | (rng.random((n_items, len(REGIONS))) < 0.6) @ (1 << np.arange(len(REGIONS)))

    # Age rating follows the genres: kids' titles lean G/PG, horror/thriller lean R.
    kids = (genre_mask & sum(1 << GENRES.index(g) for g in KIDS_GENRES)) != 0
    adult = (genre_mask & sum(1 << GENRES.index(g) for g in ADULT_GENRES)) != 0
    base = rng.choice(len(RATING_NAMES), size=n_items, p=[0.15, 0.25, 0.33, 0.22, 0.05])
    rating_idx = np.where(kids & ~adult, np.minimum(base, 1), np.where(adult, np.maximum(base, 2), base))

    # Licensing windows [license_start, license_end): most cover the period; some end or begin in it.
    license_start = np.minimum(release_ts, start_ts - rng.integers(DAY_S, 900 * DAY_S, n_items))
    license_end = end_ts + rng.integers(30 * DAY_S, 3 * 365 * DAY_S, n_items)
    kind = rng.random(n_items)
    expiring, arriving = kind < 0.08, (kind >= 0.08) & (kind < 0.15)
    license_end[expiring] = rng.integers(start_ts + DAY_S, end_ts, int(expiring.sum()))
    license_start[arriving] = np.maximum(
        release_ts[arriving], rng.integers(start_ts, end_ts, int(arriving.sum()))
    )
    # A window is never empty (an upcoming title's window opens at its release).
    license_end = np.maximum(license_end, license_start + 30 * DAY_S)

    # Cast: three actors who specialise in the primary genre (content similarity is real signal).
    n_actors = max(60, n_items // 4)
    actor_genre = np.sort(rng.integers(0, n_genres, n_actors))
    block_start = np.searchsorted(actor_genre, np.arange(n_genres))
    block_len = np.diff(np.r_[block_start, n_actors])
    cast_ids = []
    for _ in range(3):
        specialist = rng.random(n_items) < 0.8
        in_block = block_start[primary] + (rng.random(n_items) * np.maximum(block_len[primary], 1)).astype(
            np.int64
        )
        cast_ids.append(
            np.where(specialist & (block_len[primary] > 0), in_block, rng.integers(0, n_actors, n_items))
        )
    cast = pd.Series(["a"] * n_items)
    cast = "a" + pd.Series(cast_ids[0]).astype(str) + "|a" + pd.Series(cast_ids[1]).astype(str)
    cast = cast + "|a" + pd.Series(cast_ids[2]).astype(str)

    genres = _bitmask_to_names(genre_mask, GENRES, primary)
    item_id = np.arange(1, n_items + 1, dtype=np.int64)
    title = pd.Series(np.asarray(GENRES, dtype=object)[primary]) + " title " + pd.Series(item_id).astype(str)
    items = pd.DataFrame(
        {
            "item_id": item_id,
            "title": title.to_numpy(object),
            "genres": genres,
            "year": year.astype(np.int64),
            "release_ts": release_ts.astype(np.int64),
            "region": _bitmask_to_names(regions.astype(np.int64), REGIONS),
            "age_rating": np.asarray(RATING_NAMES, dtype=object)[rating_idx],
            "license_start": license_start.astype(np.int64),
            "license_end": license_end.astype(np.int64),
            "cast": cast.to_numpy(object),
        }
    )
    arrays = {
        "primary": primary,
        "genre_mask": genre_mask,
        "quality": quality,
        "popularity": popularity,
        "release_ts": release_ts,
        "license_start": license_start,
        "license_end": license_end,
        "regions": regions.astype(np.int64),
        "min_age": np.asarray([AGE_RATINGS[r] for r in RATING_NAMES])[rating_idx],
        "recent": (year >= 2015).astype(np.float64),
    }
    return items, arrays


# ------------------------------------------------------------------------------------------------
# Users


def _simulate_users(n_users: int, start_ts: int, end_ts: int, new_share: float, rng: np.random.Generator):
    n_genres = len(GENRES)
    taste = rng.standard_gamma(0.25, size=(n_users, n_genres)).astype(np.float32) + 1e-4
    taste /= taste.sum(axis=1, keepdims=True)
    region = rng.choice(len(REGIONS), size=n_users, p=[0.35, 0.25, 0.15, 0.15, 0.10])
    age = np.clip(13 + rng.gamma(3.0, 8.0, n_users), 13, 85).astype(np.int64)
    # Kids' taste leans to kids' genres (and the rules keep adult titles from them anyway).
    era = rng.random(n_users)  # 1 = likes recent titles, 0 = likes classics
    activity = rng.lognormal(0.0, 0.7, n_users)
    is_new = rng.random(n_users) < new_share
    signup_ts = start_ts - rng.integers(DAY_S, 3 * 365 * DAY_S, n_users)
    signup_ts[is_new] = end_ts - rng.integers(DAY_S // 2, 7 * DAY_S, int(is_new.sum()))
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "age": age,
            "region": np.asarray(REGIONS, dtype=object)[region],
            "signup_ts": signup_ts.astype(np.int64),
        }
    )
    return users, {
        "taste": taste,
        "region": region,
        "age": age,
        "era": era,
        "activity": activity,
        "is_new": is_new,
    }


# ------------------------------------------------------------------------------------------------
# Events


class _TitlePicker:
    """Vectorised draws of titles: by genre and popularity, or among recent releases by popularity."""

    def __init__(self, it: dict) -> None:
        n_genres = len(GENRES)
        pop = it["popularity"]
        members, segment = [], []
        for g in range(n_genres):  # 18 genres, not per title
            # By primary genre: the genre she chose is the title's main genre.
            idx = np.flatnonzero(it["primary"] == g)
            if len(idx) == 0:  # a genre no title has as primary: fall back to any title carrying it
                idx = np.flatnonzero(it["genre_mask"] >> g & 1)
            if len(idx) == 0:
                idx = np.arange(len(pop))
            members.append(idx)
            cdf = np.cumsum(pop[idx])
            segment.append(g + cdf / cdf[-1] * (1 - 1e-9))
        self.members = np.concatenate(members)
        self.cdf = np.concatenate(segment)
        by_release = np.argsort(it["release_ts"], kind="stable")
        self.release_order = by_release
        self.release_sorted = it["release_ts"][by_release]
        self.release_cum = np.r_[0.0, np.cumsum(pop[by_release])]

    def by_genre(self, genre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self.cdf, genre + rng.random(len(genre)))
        return self.members[np.minimum(pos, len(self.members) - 1)]

    def trending(self, ts: np.ndarray, rng: np.random.Generator, window_s: int = 30 * DAY_S) -> np.ndarray:
        """A title released in the 30 days before ``ts``, drawn by popularity (-1 when none)."""
        lo = np.searchsorted(self.release_sorted, ts - window_s)
        hi = np.searchsorted(self.release_sorted, ts, side="right")
        target = self.release_cum[lo] + rng.random(len(ts)) * (self.release_cum[hi] - self.release_cum[lo])
        pos = np.clip(
            np.searchsorted(self.release_cum, target, side="right") - 1, 0, len(self.release_order) - 1
        )
        return np.where(hi > lo, self.release_order[pos], -1)


def _draw_genres(taste_cdf: np.ndarray, users: np.ndarray, rng: np.random.Generator, chunk: int = 1_000_000):
    """One genre per event from its user's taste; chunked so events x genres stays small."""
    out = np.empty(len(users), dtype=np.int64)
    for s in range(0, len(users), chunk):
        u = users[s : s + chunk]
        r = rng.random(len(u)).astype(np.float32)
        out[s : s + chunk] = (taste_cdf[u] < r[:, None]).sum(axis=1)
    return np.minimum(out, taste_cdf.shape[1] - 1)


def _event_times(n: int, start_ts: int, end_ts: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform days, evening-peaked hours of the day."""
    day = rng.integers(0, (end_ts - start_ts) // DAY_S, n)
    hour = np.clip(rng.normal(20.0, 3.5, n), 0, 23.99)
    return start_ts + day * DAY_S + (hour * 3600).astype(np.int64)


def _allowed(items: np.ndarray, users: np.ndarray, ts: np.ndarray, it: dict, us: dict) -> np.ndarray:
    ok = items >= 0
    i = np.where(ok, items, 0)
    ok &= it["release_ts"][i] <= ts
    ok &= (it["license_start"][i] <= ts) & (ts < it["license_end"][i])
    ok &= (it["regions"][i] >> us["region"][users] & 1) == 1
    ok &= it["min_age"][i] <= us["age"][users]
    return ok


def _pick_titles(users, ts, it, us, picker, taste_cdf, rng, trending_share: float, rounds: int = 8):
    """Titles for events (user, time): rejection-sample until every title is allowed (or give up: -1)."""
    items = np.full(len(users), -1, dtype=np.int64)
    todo = np.arange(len(users))
    for _ in range(rounds):
        if len(todo) == 0:
            break
        genre = _draw_genres(taste_cdf, users[todo], rng)
        draw = picker.by_genre(genre, rng)
        trend = rng.random(len(todo)) < trending_share
        if trend.any():
            t = picker.trending(ts[todo][trend], rng)
            draw[trend] = np.where(t >= 0, t, draw[trend])
        ok = _allowed(draw, users[todo], ts[todo], it, us)
        items[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return items


def _watched_fraction(users, items, it, us, rng) -> np.ndarray:
    """The planted preference: genre match (vs. the user's taste), era match and quality."""
    taste = us["taste"]
    mask = it["genre_mask"][items]
    n_g = np.zeros(len(items))
    match = np.zeros(len(items))
    for g in range(len(GENRES)):  # 18 vectorised passes
        has = (mask >> g & 1).astype(bool)
        n_g += has
        match += np.where(has, taste[users, g], 0.0)
    affinity = match / np.maximum(n_g, 1) * len(GENRES)  # 1.0 = what a uniform taste gives
    era_match = 1.0 - np.abs(us["era"][users] - it["recent"][items])
    z = -0.8 + 1.1 * np.log(affinity + 0.05) + 1.0 * era_match + 0.6 * it["quality"][items]
    z += rng.normal(0.0, 0.8, len(items))
    return np.clip(1.0 / (1.0 + np.exp(-z)) + rng.normal(0.0, 0.05, len(items)), 0.01, 1.0)


def _one_per_second(interactions: pd.DataFrame) -> np.ndarray:
    """The timestamps with a repeat of (viewer, title, second) moved a second later per repeat: the
    contract's key is ``(user_id, item_id, timestamp)`` (a second event on a title in the same second
    is a re-watch that began a moment later). No random draw, so the rest of the world is unchanged."""
    ts = interactions["timestamp"].to_numpy(np.int64).copy()
    users, items = interactions["user_id"].to_numpy(), interactions["item_id"].to_numpy()
    while True:  # a moved event may meet another of the same pair a second later: rare, a round or two
        key = pd.DataFrame({"u": users, "i": items, "t": ts})
        repeat = key.groupby(["u", "i", "t"], sort=False).cumcount().to_numpy()
        if not repeat.any():
            return ts
        ts += repeat


def simulate(
    n_users: int = 2_000,
    n_items: int = 500,
    days: int = 60,
    seed: int = 0,
    *,
    events_per_user: float = 25.0,
    new_user_share: float = 0.05,
    end_ts: int = DEFAULT_END_TS,
) -> tuple[RecsysDataset, SimulationTruth]:
    """Simulate ``days`` days of a platform with ``n_users`` users and ``n_items`` titles.

    Returns the dataset (internal schema, with an extra ``event`` column in the interactions and
    ``signup_ts`` in users) and the ground truth. Deterministic for a given ``seed``.
    """
    for name, value, low in (("users", n_users, 10), ("items", n_items, 20), ("days", days, 2)):
        if int(value) < low:
            raise InputError(name, value, f"must be at least {low}", f"pass --{name} {low} or more")
    if not 0 < events_per_user <= 10_000:
        raise InputError("events_per_user", events_per_user, "must be in (0, 10000]", "use e.g. 25")
    rng = np.random.default_rng(seed)
    start_ts = end_ts - days * DAY_S
    items, it = _simulate_items(n_items, start_ts, end_ts, rng)
    users, us = _simulate_users(n_users, start_ts, end_ts, new_user_share, rng)
    taste_cdf = np.cumsum(us["taste"], axis=1)
    picker = _TitlePicker(it)
    user_ix = np.arange(n_users)
    old = ~us["is_new"]

    # Watches by established users.
    n_watch = rng.poisson(events_per_user * us["activity"] * old)
    w_user = np.repeat(user_ix, n_watch)
    w_ts = _event_times(len(w_user), start_ts, end_ts, rng)
    w_item = _pick_titles(w_user, w_ts, it, us, picker, taste_cdf, rng, trending_share=0.12)
    keep = w_item >= 0
    w_user, w_ts, w_item = w_user[keep], w_ts[keep], w_item[keep]
    fraction = _watched_fraction(w_user, w_item, it, us, rng)
    rated = rng.random(len(w_user)) < 0.15
    rating = np.where(
        rated, np.clip(np.rint(1 + 4 * fraction + rng.normal(0, 0.6, len(w_user))), 1, 5), np.nan
    )

    # Browsing: title pages opened without watching, for established users and half the new ones.
    new_ix = user_ix[us["is_new"]]
    browse_new = new_ix[rng.random(len(new_ix)) < 0.5]
    n_browse = rng.poisson(0.4 * events_per_user * us["activity"] * old)
    n_browse[browse_new] = rng.integers(2, 7, len(browse_new))
    b_user = np.repeat(user_ix, n_browse)
    b_ts = _event_times(len(b_user), start_ts, end_ts, rng)
    is_new_b = us["is_new"][b_user]
    signup = users["signup_ts"].to_numpy()[b_user]
    b_ts[is_new_b] = signup[is_new_b] + rng.integers(60, DAY_S // 2, int(is_new_b.sum()))
    b_ts = np.minimum(b_ts, end_ts - 1)
    b_item = _pick_titles(b_user, b_ts, it, us, picker, taste_cdf, rng, trending_share=0.3)
    keep = b_item >= 0
    b_user, b_ts, b_item = b_user[keep], b_ts[keep], b_item[keep]

    # Onboarding: the other new users pick 3-5 titles from their taste at signup.
    onboard = np.setdiff1d(new_ix, browse_new)
    n_on = np.zeros(n_users, dtype=np.int64)
    n_on[onboard] = rng.integers(3, 6, len(onboard))
    o_user = np.repeat(user_ix, n_on)
    o_ts = users["signup_ts"].to_numpy()[o_user] + rng.integers(1, 600, len(o_user))
    o_item = _pick_titles(o_user, o_ts, it, us, picker, taste_cdf, rng, trending_share=0.0)
    keep = o_item >= 0
    o_user, o_ts, o_item = o_user[keep], o_ts[keep], o_item[keep]

    n_w, n_b, n_o = len(w_user), len(b_user), len(o_user)
    interactions = pd.DataFrame(
        {
            "user_id": np.concatenate([w_user, b_user, o_user]) + 1,
            "item_id": np.concatenate([w_item, b_item, o_item]) + 1,
            "timestamp": np.concatenate([w_ts, b_ts, o_ts]).astype(np.int64),
            "rating": np.concatenate([rating, np.full(n_b + n_o, np.nan)]),
            # Browsing and onboarding carry a weak implicit weight (interest, not a watch): below the
            # 0.7 label threshold, but positive so matrix models do not read them as stored zeros.
            "weight": np.concatenate(
                [fraction, np.full(n_b, BROWSE_WEIGHT), np.full(n_o, ONBOARDING_WEIGHT)]
            ),
            "event": pd.Categorical.from_codes(
                np.repeat(np.array([0, 1, 2], dtype=np.int8), [n_w, n_b, n_o]),
                ["watch", "browse", "onboarding"],
            ),
        }
    )
    interactions["timestamp"] = _one_per_second(interactions)
    interactions = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    dataset = RecsysDataset(
        interactions,
        items,
        users,
        name=f"simulated-{n_users}x{n_items}-seed{seed}",
        meta={
            "start_ts": int(start_ts),
            "end_ts": int(end_ts),
            "days": days,
            "seed": seed,
            "genres": list(GENRES),
        },
    )
    truth_users = pd.DataFrame(
        {
            "user_id": users["user_id"],
            "true_genre": np.asarray(GENRES, dtype=object)[us["taste"].argmax(axis=1)],
            "era": us["era"],
            "is_new": us["is_new"],
        }
    )
    for g, name in enumerate(GENRES):
        truth_users[f"taste_{name}"] = us["taste"][:, g]
    truth_items = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "quality": it["quality"],
            "primary_genre": np.asarray(GENRES)[it["primary"]],
        }
    )
    return validate(dataset), SimulationTruth(truth_users, truth_items, int(start_ts), int(end_ts))


# ------------------------------------------------------------------------------------------------
# Sizes, and the data folder of a workdir


@dataclass(frozen=True)
class WorldSize:
    """A world to simulate (:func:`simulate`'s arguments) and the training job that fits its calendar."""

    n_users: int
    n_items: int
    days: int
    seed: int
    events_per_user: float
    train: TrainConfig

    def simulate_args(self, **overrides: Any) -> dict[str, Any]:
        args = {k: v for k, v in asdict(self).items() if k != "train"}
        return {**args, **overrides}


SIZES: dict[str, WorldSize] = {
    # tests and smoke runs: simulated and trained in a few seconds
    "tiny": WorldSize(400, 120, 16, 2, 20.0, TrainConfig(
        train_days=12, label_days=4, n_estimators=30,
        sources={"als": 40, "content": 30, "popular": 20, "trending": 10, "new": 10},
    )),
    # mlsd demo: about half a minute
    "demo": WorldSize(1500, 400, 35, 7, 25.0, TrainConfig(
        train_days=28, label_days=7, n_estimators=120,
        sources={"als": 120, "ease": 80, "content": 60, "popular": 40, "trending": 20, "new": 15},
    )),
    # a platform worth the name: 20K viewers, 2K titles, two months (mlsd recsys simulate's default)
    "default": WorldSize(20_000, 2_000, 60, 0, 25.0, TrainConfig()),
}  # fmt: skip


def contract_tables(dataset: RecsysDataset) -> dict[str, pd.DataFrame]:
    """The dataset as the data contract's tables (:mod:`mlsd.recsys.contract`): what the import reads."""
    return {"items": dataset.items, "users": dataset.users, "interactions": dataset.interactions}


def save_world(dataset: RecsysDataset, truth: SimulationTruth, out: str | Path,
               train: TrainConfig | None = None) -> Path:  # fmt: skip
    """Write the dataset through the import (:func:`mlsd.recsys.importing.import_tables`: the
    contract's validation, types, order and summary, into a fresh folder that replaces ``out``), the
    truth beside it (``truth_*.parquet``) and, in ``meta.json``, the world's calendar and the training
    job that fits it (``train``). ``out`` then holds what an import of :func:`contract_tables` gives."""
    from mlsd.platform.data import replace_folder
    from mlsd.platform.jsonio import write_json
    from mlsd.recsys.importing import import_tables

    def build(folder: Path) -> None:
        import_tables(folder, contract_tables(dataset), name=dataset.name)
        meta = json.loads((folder / "meta.json").read_text())
        meta.update({"name": dataset.name, **dataset.meta})
        if train is not None:
            meta["train"] = asdict(train)
        write_json(folder / "meta.json", meta)
        truth.users.to_parquet(folder / "truth_users.parquet", index=False)
        truth.items.to_parquet(folder / "truth_items.parquet", index=False)

    out = Path(out)
    replace_folder(out, build)
    return out


def _keep_imported(dirs: SystemDir) -> None:
    """A simulated world replaces an earlier one; imported data is never replaced by a simulation."""
    if (dirs.data / "interactions.parquet").exists() and not (dirs.data / "truth_users.parquet").exists():
        raise InputError(
            "--workdir", str(dirs.root), f"{dirs.data} holds imported data: simulating would replace it",
            "simulate into a fresh --workdir (or move that folder away first)",
        )  # fmt: skip


def simulate_into(
    dirs: SystemDir,
    size: str = "default",
    seed: int | None = None,
    *,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Simulate the world ``size`` (one of :data:`SIZES`; ``overrides`` change :func:`simulate`'s
    arguments) into ``dirs.data``, replacing an earlier simulated world (imported data is refused:
    an InputError, nothing written); returns a summary."""
    if size not in SIZES:
        raise InputError("--size", size, "unknown size", f"use one of {', '.join(SIZES)}")
    _keep_imported(dirs)
    started = time.perf_counter()
    spec = SIZES[size]
    args = spec.simulate_args(**({} if seed is None else {"seed": seed}), **overrides)
    if progress:
        print(f"recsys: simulating {args['n_users']:,} viewers x {args['n_items']:,} titles x "
              f"{args['days']} days ({size}) ...", file=sys.stderr)  # fmt: skip
    dataset, truth = simulate(**args)
    train = spec.train.fit(int(args["days"]))
    dirs.create()
    save_world(dataset, truth, dirs.data, train)
    inter = dataset.interactions
    return {
        "data": str(dirs.data),
        "size": size,
        "users": len(dataset.users),
        "items": len(dataset.items),
        "events": len(inter),
        "by_event": {str(k): int(v) for k, v in inter["event"].value_counts().items()},
        "new_users": int(truth.users["is_new"].sum()),
        "start_ts": truth.start_ts,
        "end_ts": truth.end_ts,
        "train": asdict(train),
        "seconds": round(time.perf_counter() - started, 2),
    }


# ===================================================================================================
# Part 2: the online world

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
# The world a fresh workdir gets for up to 2,000 viewers (simulated + trained in ~15 s on 2 cores);
# more units get more viewers (:func:`world_size`), the same titles, calendar and training job.
WORLD = WorldSize(2500, 300, 24, 5, 15.0, TrainConfig(
    train_days=18, label_days=5,
    sources={"als": 60, "ease": 40, "content": 30, "popular": 30, "trending": 10, "new": 10},
    n_estimators=80,
))  # fmt: skip
VIEWERS_PER_UNIT = 1.25  # a world holds this many viewers per unit asked for (units are drawn from them)
MAX_UNITS = 200_000
# The challenger a world gets when its registry has none of its own: fewer trees, no EASE source.
CHALLENGER_CHANGES = {"n_estimators": 15, "drop_sources": ("ease",)}

ATTENTION = 0.85  # play probability decays by this factor per position down the list
PLAY_SHIFT = -0.5
FRACTION_SD = 0.8
SESSIONS = 3.0  # mean sessions per viewer during the test
BATCH = 250  # viewers per RecsysEngine.handle call
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
        data_dir = Path(data_dir)
        need = ["items.parquet", "users.parquet", "interactions.parquet", "truth_users.parquet",
                "truth_items.parquet"]  # fmt: skip
        missing = [f for f in need if not (data_dir / f).exists()]
        if missing:
            raise InputError("--workdir", str(data_dir), f"has no simulated world (missing {missing[0]})",
                             "pass an empty --workdir (a world is simulated there) or one from `mlsd recsys demo` "
                             "or `mlsd recsys simulate`")  # fmt: skip
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
    from mlsd.recsys.training import MODEL_NAME

    if not (Path(registry_root) / "registry.sqlite").is_file():
        return {}
    reg = ModelRegistry(registry_root)
    return reg.aliases(MODEL_NAME) if MODEL_NAME in reg.names() else {}


def world_size(units: int) -> WorldSize:
    """The world for ``units`` viewers: :data:`WORLD`, with :data:`VIEWERS_PER_UNIT` viewers per unit
    when that is more (the titles, the calendar and the training job stay the same)."""
    return replace(WORLD, n_users=max(WORLD.n_users, math.ceil(units * VIEWERS_PER_UNIT)))


def ensure_world(
    dirs: SystemDir,
    *,
    units: int | None = None,
    aliases: Sequence[str] = ("champion",),
    size: dict | None = None,
    train: TrainConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Make sure ``dirs`` holds simulated data and a registry with every alias in ``aliases``.

    Reuses what is there. Missing data is simulated: :func:`world_size` for ``units`` viewers, with
    ``size`` (``simulate``'s arguments) overriding it. A missing champion is trained by the daily job
    (``train``; default: the job the data's ``meta.json`` names, else :data:`WORLD`'s). When a
    ``challenger`` is needed and the registry has none distinct from the champion (the first daily run
    makes its model both), one is trained with fewer trees and no EASE source and registered as
    ``challenger`` only: its test is the online experiment. Returns what was built."""
    from mlsd.recsys.training import config_for, config_from_params, train_daily

    built: dict[str, Any] = {"simulated": False, "trained": []}
    _refuse_imported(dirs)
    if not (dirs.data / "items.parquet").exists():
        spec = world_size(units or 0)
        args = spec.simulate_args(**(size or {}))
        if progress:
            print(f"recsys world: simulating {args['n_users']:,} viewers in {dirs.data}", file=sys.stderr)
        dataset, truth = simulate(**args)
        dirs.create()
        save_world(dataset, truth, dirs.data, train or spec.train.fit(int(args["days"])))
        built["simulated"] = True
    dataset = None
    current = _registry_aliases(dirs.registry)
    if train is None and "champion" in current:
        from mlsd.platform.registry import ModelRegistry
        from mlsd.recsys.training import MODEL_NAME

        # The challenger varies the champion's own job (same window, same label days).
        train = config_from_params(ModelRegistry(dirs.registry).get(MODEL_NAME, current["champion"]).params)
    if "champion" not in current:
        dataset = recsys_data.load(dirs.data)
        train = train or config_for(dataset)
        if progress:
            print("recsys world: training the champion", file=sys.stderr)
        dirs.create()
        report = train_daily(dataset, dirs.registry, train, progress=False)
        built["trained"].append({"alias": "champion", "version": report["version"]})
        current = _registry_aliases(dirs.registry)
    unknown = sorted(set(aliases) - {"champion", "challenger"} - set(current))
    if unknown:
        raise InputError("--arms", unknown[0], "names a registry alias this workdir does not have",
                         f"use arms whose aliases exist: {sorted(current)}")  # fmt: skip
    if "challenger" in aliases and current.get("challenger", current["champion"]) == current["champion"]:
        dataset = dataset or recsys_data.load(dirs.data)
        train = train or config_for(dataset)
        sources = {
            s: n for s, n in (train.sources or {}).items() if s not in CHALLENGER_CHANGES["drop_sources"]
        }
        cfg = replace(train, n_estimators=CHALLENGER_CHANGES["n_estimators"], sources=sources or None)
        if progress:
            print("recsys world: training a challenger (fewer trees, no EASE)", file=sys.stderr)
        report = train_daily(dataset, dirs.registry, cfg, progress=False, gate=False)
        built["trained"].append({"alias": "challenger", "version": report["version"]})
    return built


def _refuse_imported(dirs: SystemDir) -> None:
    """An experiment needs the simulator's viewers; imported data has none (and no exposure log to
    replay): say so, and what the data does support, before anything is trained or written."""
    if (dirs.data / "interactions.parquet").exists() and not (dirs.data / "truth_users.parquet").exists():
        raise InputError(
            "--workdir", str(dirs.root),
            f"holds imported data ({dirs.data}), not a simulated world: an online experiment needs "
            "viewers who react to the list each arm shows them, and the data has no exposure log (the "
            "lists shown, with their propensities) to replay or to weight (IPS) either",
            f"compare models offline on your data: `mlsd pipeline run daily --workdir {dirs.root}` gates "
            "the challenger on the last week's held-out interactions (nDCG@10), `mlsd recsys evaluate` "
            "compares the models on a dataset; or run the experiment on a simulated world: "
            "`mlsd experiment run recsys` (a new workdir)",
        )  # fmt: skip


def world_service_config() -> RecsysConfig:
    """The engine as the world runs it: no exploration (deterministic lists, exact truth), a deadline
    no busy machine can hit (the path must not depend on load), no registry polling."""
    return RecsysConfig(
        budgets=Budgets(deadline_ms=60_000.0),
        rerank=RerankConfig(epsilon=0.0),
        service=ServiceConfig(reload_poll_s=0),
    )


# ---------------------------------------------------------------------------------------------------
# One experiment


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
    dirs: SystemDir,
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
    """Run one experiment through the real engine and return its raw material (see module doc)."""
    from tqdm import tqdm

    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.experiments.exposures import MemoryExposureLog
    from mlsd.platform.experiments.online import LossyExposureLog, arms_from_presets, make_experiment
    from mlsd.platform.experiments.online import lose_exposures as lose_mask
    from mlsd.platform.monitoring.sample import ServingSample
    from mlsd.recsys.engine import RecsysEngine

    started = time.perf_counter()
    if isinstance(units, bool) or not isinstance(units, int | np.integer) or not 10 <= units <= MAX_UNITS:
        raise InputError(
            "--units", units, f"must be a whole number in 10..{MAX_UNITS:,}", "use e.g. --units 2000"
        )
    arm_objs = arms_from_presets(ARM_PRESETS, list(arms or DEFAULT_ARMS))
    lose_mask(np.zeros(1, np.int64), lose_exposures)  # validates the fraction before any work
    built = ensure_world(dirs, units=units, aliases=[a.alias or "champion" for a in arm_objs], size=size,
                         train=train, progress=progress)  # fmt: skip
    world = World.load(dirs.data)
    if units > len(world.user_ids):
        raise InputError("--units", units, f"the world in {dirs.data} has {len(world.user_ids)} viewers",
                         f"pass --units {len(world.user_ids)} or less, or a fresh --workdir (a world is "
                         f"simulated there for {units} units)")  # fmt: skip
    rng = np.random.default_rng([seed, 17])
    users = np.sort(rng.choice(world.user_ids, size=units, replace=False))
    users = users[rng.permutation(units)]  # arrival order

    config = make_experiment(SYSTEM, arm_objs, list(METRICS))
    name = config.layers[0].experiments[0].name
    clock = _SimClock(world.end_ts)
    probe = ExperimentClient(config, registry=False)
    arm_idx = probe.assign(name, users)
    keep = lose_mask(arm_idx, lose_exposures, seed)
    log = LossyExposureLog(MemoryExposureLog(clock=clock), lost_units=users[~keep].astype(str))
    client = ExperimentClient(config, log=log)
    sample = ServingSample(max_rows=20_000, seed=seed)
    engine = RecsysEngine(
        dirs.registry, config=world_service_config(), experiments=client, feature_sample=sample, watch=False
    )
    # Arms that run the same variant (A/A) share one list per viewer: their truth is exactly 0.
    key_of = [(a.alias or "champion", tuple(sorted(dict(a.params).items()))) for a in arm_objs]
    keys = list(dict.fromkeys(key_of))
    lists = {kk: np.full((units, k), -1, np.int64) for kk in keys}
    latency = np.zeros(units)
    ts = np.zeros(units, np.int64)
    timings: dict[str, list[float]] = {}

    def bodies(rows: np.ndarray) -> list[dict[str, Any]]:
        return [{"user_id": str(u), "k": k} for u in users[rows]]

    try:
        for b0 in tqdm(
            range(0, units, BATCH), desc="recsys experiment", file=sys.stderr, disable=not progress
        ):
            part = np.arange(b0, min(b0 + BATCH, units))
            clock.now = world.end_ts + (b0 // BATCH) * SECONDS_PER_BATCH
            ts[part] = clock.now
            for row, out in zip(part, engine.handle(bodies(part)), strict=True):
                ids = [it["item_id"] for it in out["items"]]
                lists[key_of[int(arm_idx[row])]][row, : len(ids)] = ids
                latency[row] = out["total_ms"]
                for stage, ms in out["timings_ms"].items():
                    timings.setdefault(stage, []).append(ms)
            for other in keys:  # the counterfactual lists: the same viewers under the other arms
                rows = part[[key_of[int(a)] != other for a in arm_idx[part]]]
                if len(rows) == 0:
                    continue
                alt = engine.preview(bodies(rows), alias=other[0], params=dict(other[1]))
                for row, out in zip(rows, alt, strict=True):
                    ids = [it["item_id"] for it in out["items"]]
                    lists[other][row, : len(ids)] = ids
    finally:
        engine.close()

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
        "data": str(dirs.data),
        "registry": str(dirs.registry),
        "viewers": int(len(world.user_ids)),
        "titles": int(len(world.item_ids)),
        "k": k,
        "arms": {a.name: {"alias": a.alias, "params": dict(a.params)} for a in arm_objs},
        "model_versions": _registry_aliases(dirs.registry),
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
    dirs: SystemDir,
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
    """Simulate one A/B test through the engine and return the analysed report with the known truth.

    ``dirs`` (a :class:`~mlsd.platform.system.SystemDir`) holds the world: one is simulated there,
    sized for ``units`` viewers, when ``dirs.data`` is empty. The report is
    :meth:`ExperimentClient.analyze`'s (SRM, per-metric comparisons with CUPED/delta method,
    guardrails, verdict, ``looks`` points of the confidence sequence) plus ``truth``,
    ``truth_covered``, ``world`` (what was simulated), ``units`` and ``seconds``. ``save_served``
    writes the served feature sample to ``dirs.monitoring`` (the "current" window of
    :func:`mlsd.recsys.monitoring.drift_report`).
    """
    from mlsd.platform.experiments.online import with_truth

    run = simulate_experiment(dirs, units=units, arms=arms, seed=seed, lose_exposures=lose_exposures, k=k,
                              progress=progress)  # fmt: skip
    report = run.client.analyze(run.name, run.outcomes, covariates=run.covariates, looks=looks)
    report = with_truth(report, run.truth)
    if save_served and run.served_features is not None:
        from mlsd.recsys.monitoring import save_served

        save_served(dirs, run.served_features, source=f"experiment {run.name} ({units} viewers)")
    return {**report, "world": run.world, "units": units, "seconds": round(run.seconds, 2)}


def timings_file(run_timings: dict[str, list[float]]) -> dict[str, Any]:
    """``{"system": "recsys", "stages": {stage: [ms, ...]}}``: what the dashboard reads."""
    return {
        "system": SYSTEM,
        "stages": {s: [round(float(v), 3) for v in ms] for s, ms in run_timings.items()},
    }
