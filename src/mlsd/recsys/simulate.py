"""A simulator of a streaming platform: the recommender's embedded default data, with a known answer.

``simulate(n_users, n_items, days=60, seed=0)`` returns a :class:`~mlsd.recsys.data.RecsysDataset` in
the internal schema plus the ground truth that generated it:

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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.recsys.config import AGE_RATINGS, REGIONS
from mlsd.recsys.data import RecsysDataset, validate

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
LABEL_THRESHOLD = 0.7
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
# Files: one Parquet per table plus meta.json; ``load`` reads them back into the schema.

TABLES = ("interactions", "items", "users")


def save(dataset: RecsysDataset, truth: SimulationTruth | None, out: str | Path) -> Path:
    """Write ``interactions/items/users.parquet`` (+ ``truth_users.parquet``, ``meta.json``) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        getattr(dataset, name).to_parquet(out / f"{name}.parquet", index=False)
    if truth is not None:
        truth.users.to_parquet(out / "truth_users.parquet", index=False)
        truth.items.to_parquet(out / "truth_items.parquet", index=False)
    (out / "meta.json").write_text(json.dumps({"name": dataset.name, **dataset.meta}, indent=2))
    return out


def load(path: str | Path) -> RecsysDataset:
    """Read a folder written by :func:`save` (or ``mlsd recsys simulate``) back into a RecsysDataset."""
    path = Path(path)
    missing = [f"{n}.parquet" for n in TABLES if not (path / f"{n}.parquet").exists()]
    if missing:
        raise InputError(
            "data", str(path), f"is not a simulated dataset folder (missing {', '.join(missing)})",
            "create one with: mlsd recsys simulate --out DIR",
        )  # fmt: skip
    meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
    frames = {n: pd.read_parquet(path / f"{n}.parquet") for n in TABLES}
    return validate(RecsysDataset(**frames, name=meta.pop("name", path.name), meta=meta))
