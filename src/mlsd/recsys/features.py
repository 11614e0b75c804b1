"""Ranking features for (user, candidate) pairs, computed ONLY from the history the caller passes.

:class:`FeatureBuilder` is fitted on a history frame (events strictly before a cutoff) and turns a
candidate frame (from :class:`~mlsd.recsys.candidates.CandidateGenerator`) into a numeric matrix:

* user: activity (events, active days, recency), rating mean/std, mainstreamness (mean popularity
  of what they watched), history-embedding norm, demographics when present, habitual time of day;
* item: popularity (all-time, recent), rating mean/count, year, first/last event, genre flags;
* cross: user-genre affinity, candidate source flags/ranks/scores, CF scores (ALS, EASE), content
  similarity, and the item's activity inside the user's active period;
* side information (``side_info=True``): the user's genre lift (her share of a genre over the
  catalogue's) and cosine with the title's genres, the title's year against her history's years
  (z-score, percentile) and its age against the age of what she watches; and a sequence signal, her
  last ``recent_k`` events' genres and years against the candidate's. Titles without genres or
  year (imported catalogues may have neither) get NaN there: LightGBM's missing value, neutral.

Point-in-time correctness is structural: :func:`build_training_rows` slices the events once —
``timestamp < cutoff`` for everything the model sees (candidate models and features) and
``[cutoff, cutoff + label_days)`` for labels only — so no feature can read a future event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.recsys.data import IdMap, RecsysDataset

DAY = 86_400
MAX_GENRES = 24
YEAR_SECONDS = 365.25 * DAY
# Prior weight (in events) that shrinks a user's genre share towards the catalogue's before the lift:
# a user with three events is not "ten times into Westerns" because one of them was.
LIFT_PRIOR = 10.0
SIDE_FEATURES = (
    "u_year_std",
    "u_watch_age",
    "x_genre_lift",
    "x_genre_cosine",
    "x_year_z",
    "x_year_pct",
    "x_age_gap",
    "x_recent_genre_share",
    "x_recent_year_gap",
)


def _genre_matrix(items_frame: pd.DataFrame | None, items: IdMap, genres: list[str] | None = None):
    """(n_items, n_genres) 0/1 matrix from the '|'-separated genres column, plus the genre names."""
    if items_frame is None or "genres" not in items_frame.columns:
        return sp.csr_matrix((len(items), 0), dtype=np.float32), []
    frame = items_frame.set_index("item_id").reindex(items.ids)
    exploded = frame["genres"].fillna("").astype(str).str.split("|").explode()
    exploded = exploded[exploded != ""]
    if genres is None:
        genres = exploded.value_counts().index[:MAX_GENRES].tolist()
    col = pd.Index(genres).get_indexer(exploded.to_numpy())
    row = items.index(exploded.index.to_numpy())
    ok = (col >= 0) & (row >= 0)
    mat = sp.csr_matrix(
        (np.ones(ok.sum(), np.float32), (row[ok], col[ok])), shape=(len(items), len(genres)), dtype=np.float32
    )
    mat.data[:] = 1.0
    return mat, list(genres)


def _last_k_mask(u: np.ndarray, ts: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of each user's ``k`` latest events (ties in time: the later row counts as later)."""
    order = np.lexsort((np.arange(len(u)), ts, u))
    su = u[order]
    # position counted from each user's last event: 0 = latest
    ends = np.r_[np.flatnonzero(su[1:] != su[:-1]), len(su) - 1] if len(su) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[-1, ends])
    from_end = np.repeat(ends, counts) - np.arange(len(su))
    mask = np.zeros(len(u), bool)
    mask[order] = from_end < k
    return mask


def _codes(values: pd.Series, categories: list) -> np.ndarray:
    return pd.Categorical(values.astype(str), categories=categories).codes.astype(np.float32)


def _per_user_best_and_rank(values: np.ndarray, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the best value of the row's user (NaN-skipping max) and the row's 1-based rank within
    its user (descending, ties in order of appearance, NaN stays NaN): pandas' group-by ``max`` and
    ``rank(ascending=False, method="first")``. One user (a serving request) takes a numpy path with
    the same values: the group-bys cost ~1 ms each per request."""
    s = pd.Series(values)
    if len(values) == 0 or not (user_ids == user_ids[0]).all():
        best = s.groupby(user_ids).transform("max").to_numpy()
        return best, s.groupby(user_ids).rank(ascending=False, method="first").to_numpy(np.float32)
    valid = np.flatnonzero(~np.isnan(values))
    best = np.full(len(values), values[valid].max() if len(valid) else np.nan, dtype=s.dtype)
    rank = np.full(len(values), np.nan, np.float32)
    rank[valid[np.argsort(-values[valid], kind="stable")]] = np.arange(1, len(valid) + 1)
    return best, rank


@dataclass
class FeatureBuilder:
    """Fitted on a history (events before a cutoff); ``transform(candidates, models)`` -> features.

    ``cutoff`` defaults to one second after the last history event. ``window_days`` sets the
    "recent popularity" window; ``around_days`` pads the user's active period when counting the
    item's activity inside it.
    """

    window_days: float = 30.0
    around_days: float = 7.0
    # Counts per 100K history events, and model scores only as ranks / relative to the user's best:
    # the ranker is trained on a shorter history than the one it scores with, and raw counts or
    # raw CF scores would shift between the two (seen on the inner validation split).
    scale_free: bool = True
    # Side information and sequence features (SIDE_FEATURES); recent_k = how many of the user's latest
    # events make up her "recent" genre and year profile.
    side_info: bool = True
    recent_k: int = 10
    feature_names_: list[str] = field(default_factory=list)

    def fit(
        self,
        history: pd.DataFrame,
        users: IdMap,
        items: IdMap,
        items_frame: pd.DataFrame | None = None,
        users_frame: pd.DataFrame | None = None,
        cutoff: int | None = None,
    ) -> FeatureBuilder:
        ts = history["timestamp"].to_numpy(np.int64)
        self.count_scale_ = 1e5 / max(len(history), 1) if self.scale_free else 1.0
        self.cutoff_ = int(cutoff if cutoff is not None else (ts.max() + 1 if len(ts) else 0))
        if len(ts) and ts.max() >= self.cutoff_:
            raise InputError(
                "history",
                int(ts.max()),
                f"has events at or after the cutoff {self.cutoff_}",
                "pass only earlier events",
            )
        self.users_, self.items_ = users, items
        nu, ni = len(users), len(items)
        u = users.index(history["user_id"].to_numpy())
        i = items.index(history["item_id"].to_numpy())
        keep = (u >= 0) & (i >= 0)
        u, i, ts = u[keep], i[keep], ts[keep]
        rating = history["rating"].to_numpy(np.float64)[keep]
        weight = history["weight"].to_numpy(np.float64)[keep]
        has_r = ~np.isnan(rating)
        r0 = np.where(has_r, rating, 0.0)

        # item statistics
        i_cnt = np.bincount(i, minlength=ni).astype(np.float64)
        i_w = np.bincount(i, weights=weight, minlength=ni)
        i_rc = np.bincount(i, weights=has_r, minlength=ni)
        i_rs = np.bincount(i, weights=r0, minlength=ni)
        recent = ts >= self.cutoff_ - self.window_days * DAY
        i_recent = np.bincount(i[recent], minlength=ni).astype(np.float64)
        i_first = np.full(ni, np.nan)
        i_last = np.full(ni, np.nan)
        if len(i):
            first = np.full(ni, np.iinfo(np.int64).max)
            last = np.full(ni, np.iinfo(np.int64).min)
            np.minimum.at(first, i, ts)
            np.maximum.at(last, i, ts)
            seen = i_cnt > 0
            i_first[seen], i_last[seen] = first[seen], last[seen]
        global_mean = float(r0.sum() / max(has_r.sum(), 1))
        pop_rank = pd.Series(i_cnt).rank(pct=True).to_numpy()
        item = {
            "i_pop": i_cnt * self.count_scale_,
            "i_pop_log": np.log1p(i_cnt * self.count_scale_),
            "i_pop_pct": pop_rank,
            "i_pop_share": i_cnt / max(i_cnt.max(), 1.0),
            "i_weight_mean": np.divide(i_w, i_cnt, out=np.full(ni, np.nan), where=i_cnt > 0),
            "i_recent_share": np.divide(i_recent, i_cnt, out=np.full(ni, np.nan), where=i_cnt > 0),
            "i_recent_pct": pd.Series(i_recent).rank(pct=True).to_numpy(),
            # shrunk towards the global mean so a single 5-star rating is not "the best film"
            "i_rating_mean": (i_rs + 10 * global_mean) / (i_rc + 10),
            "i_rating_count": i_rc * self.count_scale_,
            "i_first_days": (self.cutoff_ - i_first) / DAY,
            "i_last_days": (self.cutoff_ - i_last) / DAY,
        }
        self.genre_mat_, self.genres_ = _genre_matrix(items_frame, items)
        if items_frame is not None:
            frame = items_frame.set_index("item_id").reindex(items.ids)
            year = pd.to_numeric(frame["year"], errors="coerce").to_numpy(np.float64)
            year[year <= 0] = np.nan
            item["i_year"] = year
            item["i_n_genres"] = np.asarray(self.genre_mat_.sum(axis=1)).ravel()
            if "release_ts" in frame.columns:
                item["i_release_days"] = (self.cutoff_ - frame["release_ts"].astype(float).to_numpy()) / DAY
        genre_dense = self.genre_mat_.toarray()
        for g in range(len(self.genres_)):  # by position: genre names may hold any character
            item[f"i_genre_{g}"] = genre_dense[:, g]
        self.item_table_ = pd.DataFrame(item).astype(np.float32)

        # user statistics
        u_cnt = np.bincount(u, minlength=nu).astype(np.float64)
        u_rc = np.bincount(u, weights=has_r, minlength=nu)
        u_rs = np.bincount(u, weights=r0, minlength=nu)
        u_rss = np.bincount(u, weights=r0**2, minlength=nu)
        u_mean = np.divide(u_rs, u_rc, out=np.full(nu, np.nan), where=u_rc > 0)
        u_std = np.sqrt(
            np.maximum(np.divide(u_rss, u_rc, out=np.full(nu, np.nan), where=u_rc > 0) - u_mean**2, 0)
        )
        u_first = np.full(nu, np.nan)
        u_last = np.full(nu, np.nan)
        if len(u):
            first = np.full(nu, np.iinfo(np.int64).max)
            last = np.full(nu, np.iinfo(np.int64).min)
            np.minimum.at(first, u, ts)
            np.maximum.at(last, u, ts)
            seen = u_cnt > 0
            u_first[seen], u_last[seen] = first[seen], last[seen]
        u_main = np.divide(
            np.bincount(u, weights=pop_rank[i], minlength=nu), u_cnt, out=np.full(nu, np.nan), where=u_cnt > 0
        )
        hour = (ts % DAY) / 3600.0
        ang = 2 * np.pi * hour / 24
        u_sin = np.divide(
            np.bincount(u, weights=np.sin(ang), minlength=nu), u_cnt, out=np.full(nu, np.nan), where=u_cnt > 0
        )
        u_cos = np.divide(
            np.bincount(u, weights=np.cos(ang), minlength=nu), u_cnt, out=np.full(nu, np.nan), where=u_cnt > 0
        )
        u_year = np.full(nu, np.nan)
        if "i_year" in item:
            yr = item["i_year"][i]
            ok = ~np.isnan(yr)
            u_year = np.divide(
                np.bincount(u[ok], weights=yr[ok], minlength=nu),
                np.bincount(u[ok], minlength=nu),
                out=np.full(nu, np.nan),
                where=np.bincount(u[ok], minlength=nu) > 0,
            )
        user = {
            "u_events": u_cnt * self.count_scale_,
            "u_events_pct": pd.Series(u_cnt).rank(pct=True).to_numpy(),
            "u_rating_mean": u_mean,
            "u_rating_std": u_std,
            "u_active_days": (u_last - u_first) / DAY,
            "u_recency_days": (self.cutoff_ - u_last) / DAY,
            "u_mainstream": u_main,
            "u_hour_sin": u_sin,
            "u_hour_cos": u_cos,
            "u_year_mean": u_year,
        }
        if users_frame is not None:
            uf = users_frame.set_index("user_id").reindex(users.ids)
            if "age" in uf.columns:
                user["u_age"] = pd.to_numeric(uf["age"], errors="coerce").to_numpy(np.float64)
            self.categories_ = {}
            for col in ("gender", "occupation", "region"):
                if col in uf.columns:
                    cats = sorted(uf[col].dropna().astype(str).unique().tolist())
                    self.categories_[col] = cats
                    user[f"u_{col}"] = _codes(uf[col], cats)
        self.user_table_ = pd.DataFrame(user).astype(np.float32)
        self.u_first_, self.u_last_ = u_first, u_last

        # user x genre affinity: share of the user's events in each genre
        X = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(nu, ni))
        ug = (X @ self.genre_mat_).toarray() if self.genre_mat_.shape[1] else np.zeros((nu, 0), np.float32)
        self.user_genre_ = (ug / np.maximum(u_cnt, 1.0)[:, None]).astype(np.float32)
        # ratings per genre (explicit feedback), centred on the user's mean
        Xr = sp.csr_matrix((r0 - np.nan_to_num(u_mean[u]), (u, i)), shape=(nu, ni))
        ug_r = (Xr @ self.genre_mat_).toarray() if self.genre_mat_.shape[1] else np.zeros((nu, 0))
        self.user_genre_rating_ = np.divide(ug_r, np.maximum(ug, 1.0)).astype(np.float32)
        if self.side_info:
            self._fit_side_info(u, i, ts, nu, ni, u_cnt, items_frame)

        # item activity per time, searchable by (item, time) in one sorted key array
        order = np.lexsort((ts, i))
        self.item_time_key_ = i[order].astype(np.int64) * (1 << 34) + ts[order]
        return self

    def _fit_side_info(self, u, i, ts, nu, ni, u_cnt, items_frame) -> None:
        """Per-user tables for the side-information and sequence features (all bincounts and sorts)."""
        if self.recent_k < 1:
            raise InputError("recent_k", self.recent_k, "must be at least 1", "use e.g. 10")
        year = np.full(ni, np.nan)
        if items_frame is not None and "year" in items_frame.columns:
            frame = items_frame.set_index("item_id").reindex(self.items_.ids)
            year = pd.to_numeric(frame["year"], errors="coerce").to_numpy(np.float64)
            year[year <= 0] = np.nan
        self.item_year_ = year.astype(np.float32)
        self.genre_dense_ = self.genre_mat_.toarray().astype(np.float32)
        genre_events = np.asarray(self.genre_dense_[i].sum(axis=0)).ravel() if len(i) else np.zeros(0)
        self.genre_share_ = (genre_events / max(len(i), 1)).astype(np.float32)
        self.u_cnt_ = u_cnt.astype(np.float32)
        # years of what each user watched: std, and the film's age when she watched it
        yr = year[i]
        ok = ~np.isnan(yr)
        n_y = np.bincount(u[ok], minlength=nu).astype(np.float64)
        s1 = np.bincount(u[ok], weights=yr[ok], minlength=nu)
        s2 = np.bincount(u[ok], weights=yr[ok] ** 2, minlength=nu)
        mean = np.divide(s1, n_y, out=np.full(nu, np.nan), where=n_y > 0)
        self.u_year_mean_ = mean.astype(np.float32)
        var = np.divide(s2, n_y, out=np.full(nu, np.nan), where=n_y > 0) - mean**2
        self.u_year_std_ = np.sqrt(np.maximum(var, 0.0)).astype(np.float32)
        watch_age = 1970.0 + ts[ok] / YEAR_SECONDS - yr[ok]
        self.u_watch_age_ = np.divide(
            np.bincount(u[ok], weights=watch_age, minlength=nu), n_y, out=np.full(nu, np.nan), where=n_y > 0
        ).astype(np.float32)
        self.cutoff_year_ = 1970.0 + self.cutoff_ / YEAR_SECONDS
        # one sorted (user, year) key: the candidate's percentile among her years by two searchsorted
        key = u[ok].astype(np.int64) * 4096 + np.clip(yr[ok] - 1000, 0, 4095).astype(np.int64)
        self.user_year_key_ = np.sort(key)
        self.u_year_n_ = n_y.astype(np.float32)
        # the sequence profile: genres and mean year of each user's last recent_k events
        last = _last_k_mask(u, ts, self.recent_k)
        ul, il = u[last], i[last]
        n_last = np.bincount(ul, minlength=nu).astype(np.float32)
        recent = np.zeros((nu, self.genre_dense_.shape[1]), np.float32)
        if self.genre_dense_.shape[1]:
            X = sp.csr_matrix((np.ones(len(ul), np.float32), (ul, il)), shape=(nu, ni))
            recent = np.asarray(X @ self.genre_dense_, dtype=np.float32)
        self.recent_genre_ = recent / np.maximum(n_last, 1.0)[:, None]
        yl = year[il]
        okl = ~np.isnan(yl)
        n_yl = np.bincount(ul[okl], minlength=nu)
        self.recent_year_ = np.divide(
            np.bincount(ul[okl], weights=yl[okl], minlength=nu), n_yl, out=np.full(nu, np.nan), where=n_yl > 0
        ).astype(np.float32)

    def _side_features(self, item_idx: np.ndarray, ur: np.ndarray, known: np.ndarray) -> dict:
        """SIDE_FEATURES for candidate rows: dense (rows x genres) gathers, NaN where the user is
        unknown, the title has no genres / year, or the catalogue has none at all."""
        nan = np.float32(np.nan)
        out: dict[str, np.ndarray] = {}
        out["u_year_std"] = np.where(known, self.u_year_std_[ur], nan)
        out["u_watch_age"] = np.where(known, self.u_watch_age_[ur], nan)
        iy = self.item_year_[item_idx].astype(np.float64)
        if self.genre_dense_.shape[1]:
            g = self.genre_dense_[item_idx]
            n_g = g.sum(axis=1)
            has_g = known & (n_g > 0)
            ug = self.user_genre_[ur]
            cnt = self.u_cnt_[ur][:, None]
            prior = np.maximum(self.genre_share_, 1e-6)[None, :]
            lift = np.log((ug * cnt + LIFT_PRIOR * prior) / (cnt + LIFT_PRIOR) / prior)
            n_safe = np.maximum(n_g, 1.0)
            out["x_genre_lift"] = np.where(has_g, (g * lift).sum(axis=1) / n_safe, nan)
            norm = np.sqrt(n_g) * np.sqrt((ug * ug).sum(axis=1))
            cos = (g * ug).sum(axis=1) / np.where(norm > 0, norm, 1.0)
            out["x_genre_cosine"] = np.where(has_g, cos, nan)
            out["x_recent_genre_share"] = np.where(has_g, (g * self.recent_genre_[ur]).sum(axis=1) / n_safe, nan)
        else:
            for name in ("x_genre_lift", "x_genre_cosine", "x_recent_genre_share"):
                out[name] = np.full(len(item_idx), nan)
        mean, std = self.u_year_mean_[ur], self.u_year_std_[ur]
        out["x_year_z"] = np.where(known, (iy - mean) / np.maximum(std, 1.0), nan)
        yk = np.clip(np.nan_to_num(iy, nan=0.0) - 1000, 0, 4095).astype(np.int64)
        base = ur.astype(np.int64) * 4096
        below = np.searchsorted(self.user_year_key_, base + yk, "left") - np.searchsorted(
            self.user_year_key_, base, "left"
        )
        equal = np.searchsorted(self.user_year_key_, base + yk, "right") - np.searchsorted(
            self.user_year_key_, base + yk, "left"
        )
        n_y = self.u_year_n_[ur]
        pct = (below + 0.5 * equal) / np.maximum(n_y, 1.0)
        out["x_year_pct"] = np.where(known & (n_y > 0) & ~np.isnan(iy), pct, nan)
        out["x_age_gap"] = np.where(known, (self.cutoff_year_ - iy) - self.u_watch_age_[ur], nan)
        out["x_recent_year_gap"] = np.where(known, iy - self.recent_year_[ur], nan)
        return out

    def _item_values(self) -> np.ndarray:
        """The item table as one array, built once (not per request) and never pickled."""
        return self._values("item_table_")

    def _user_values(self) -> np.ndarray:
        """The user table as one array, built once: per request it cost 5 ms at 1M users (a copy of the
        whole table); a table of a request's users only (the online store's rows) is built per request."""
        return self._values("user_table_")

    def _values(self, table: str) -> np.ndarray:
        key = f"_{table}values_cache"
        frame = getattr(self, table)
        cached = self.__dict__.get(key)
        if cached is None or cached[0] is not frame:  # a refit (or a request's own table) is a new frame
            cached = self.__dict__[key] = (frame, frame.to_numpy())
        return cached[1]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.endswith("values_cache")}

    def _one_user_genre(self, item_idx: np.ndarray, user_row: int):
        """The genre cross features of one user's candidates with numpy gathers instead of ~10 scipy
        matrices per request; the same float32 sums (in the matrix's index order) and maxima as the
        sparse batch code: (affinity sum, affinity max, rating sum, genres per item)."""
        mat = self.genre_mat_
        starts, counts = mat.indptr[item_idx], np.diff(mat.indptr)[item_idx]
        total = int(counts.sum())
        seg = np.cumsum(counts) - counts  # where each item's genres start in the gathered arrays
        pos = np.arange(total) - np.repeat(seg - starts, counts)
        cols, data = mat.indices[pos], mat.data[pos]
        has = counts > 0

        def row_sums(values: np.ndarray) -> np.ndarray:
            # Left to right in float32, one genre position at a time (<= 24 steps): exactly the sparse
            # mat-vec's order; np.add.reduceat may pair the terms differently (last-bit differences).
            out = np.zeros(len(item_idx), np.float32)
            for j in range(int(counts.max()) if total else 0):
                rows = np.flatnonzero(counts > j)
                out[rows] += values[seg[rows] + j]
            return out

        aff_vals = data * self.user_genre_[user_row][cols]
        aff_max = np.zeros(len(item_idx), np.float32)
        if total:
            aff_max[has] = np.maximum.reduceat(aff_vals, seg[has])
        # a row with fewer genres than columns has implicit zeros, which the sparse max counts
        aff_max = np.where(counts < mat.shape[1], np.maximum(aff_max, 0), aff_max)
        n_g = np.maximum(row_sums(data), 1.0)
        rating = row_sums(data * self.user_genre_rating_[user_row][cols])
        return row_sums(aff_vals), aff_max, rating, n_g

    def _item_events_between(self, item_idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        base = item_idx.astype(np.int64) * (1 << 34)
        lo_k = base + np.clip(lo, 0, (1 << 34) - 1).astype(np.int64)
        hi_k = base + np.clip(hi, 0, (1 << 34) - 1).astype(np.int64)
        return (
            np.searchsorted(self.item_time_key_, hi_k, "right")
            - np.searchsorted(self.item_time_key_, lo_k, "left")
        ).astype(np.float32)

    def transform(self, candidates: pd.DataFrame, models: dict | None = None) -> pd.DataFrame:
        """Feature frame, one row per candidate row (same order).

        ``candidates`` needs ``user_id`` and ``item_idx`` (and may carry ``in_/rank_/score_<source>``
        columns from the generator); ``models`` maps a name to a fitted source whose
        ``score_dense`` gives the pair's score under that model (e.g. ``{"als": ..., "ease": ...}``).
        """
        for col in ("user_id", "item_idx"):
            if col not in candidates.columns:
                raise InputError(
                    "candidates",
                    list(candidates.columns),
                    f"lacks column {col!r}",
                    "pass the generator's frame",
                )
        user_ids = candidates["user_id"].to_numpy(np.int64)
        item_idx = candidates["item_idx"].to_numpy(np.int64)
        urow = self.users_.index(user_ids)
        known = urow >= 0
        ur = np.where(known, urow, 0)
        out: dict[str, np.ndarray] = {}
        uvals = self._user_values()[ur]
        uvals[~known] = np.nan
        for j, name in enumerate(self.user_table_.columns):
            out[name] = uvals[:, j]
        ivals = self._item_values()[item_idx]
        for j, name in enumerate(self.item_table_.columns):
            out[name] = ivals[:, j]
        if self.genre_mat_.shape[1] and len(ur) and (ur == ur[0]).all():
            aff, aff_max, rating, n_g = self._one_user_genre(item_idx, int(ur[0]))
            out["x_genre_affinity"] = np.where(known, aff / n_g, np.nan)
            out["x_genre_affinity_max"] = np.where(known, aff_max, np.nan)
            out["x_genre_rating"] = np.where(known, rating / n_g, np.nan)
        elif self.genre_mat_.shape[1]:
            g_items = self.genre_mat_[item_idx]
            n_g = np.maximum(np.asarray(g_items.sum(axis=1)).ravel(), 1.0)
            ug = self.user_genre_[ur]
            aff = np.asarray(g_items.multiply(ug).sum(axis=1)).ravel()
            out["x_genre_affinity"] = np.where(known, aff / n_g, np.nan)
            masked = g_items.multiply(ug).tocsr()
            out["x_genre_affinity_max"] = np.where(known, masked.max(axis=1).toarray().ravel(), np.nan)
            out["x_genre_rating"] = np.where(
                known,
                np.asarray(g_items.multiply(self.user_genre_rating_[ur]).sum(axis=1)).ravel() / n_g,
                np.nan,
            )
        if "i_year" in out:
            out["x_year_gap"] = out["i_year"] - out["u_year_mean"]
        if self.side_info and "item_year_" in self.__dict__:  # a builder pickled before these features lacks it
            out.update(self._side_features(item_idx, ur, known))
        # Was the title around while the user was active? (items appear over time; users leave)
        u_first, u_last = self.u_first_[ur], self.u_last_[ur]
        pad = self.around_days * DAY
        lo = np.nan_to_num(u_first - pad, nan=0.0)
        hi = np.nan_to_num(u_last + pad, nan=0.0)
        inside = self._item_events_between(item_idx, lo, hi)
        out["x_item_events_in_user_window"] = np.where(known, inside * self.count_scale_, np.nan)
        out["x_item_share_in_user_window"] = np.where(
            known,
            inside / np.maximum(self.item_table_["i_pop"].to_numpy()[item_idx] / self.count_scale_, 1.0),
            np.nan,
        )
        out["x_item_first_after_user_last_days"] = np.where(
            known, (self.cutoff_ - out["i_first_days"] * DAY - u_last) / DAY, np.nan
        )
        for col in candidates.columns:
            if self.scale_free and col.startswith("score_"):
                continue  # raw source scores: their scale moves with the history's size
            if col.startswith(("in_", "rank_", "score_")) or col == "n_sources":
                values = candidates[col].to_numpy(np.float32)
                if col.startswith("rank_"):
                    values = np.where(values > 0, values, np.nan)  # absent from that source
                out[f"c_{col}"] = values
        for name, model in (models or {}).items():
            out[f"m_{name}"] = self.model_scores(model, user_ids, item_idx)
            # the same score relative to the user's best candidate: comparable across users
            best, rank = _per_user_best_and_rank(out[f"m_{name}"], user_ids)
            out[f"m_{name}_rel"] = (out[f"m_{name}"] / np.where(best > 0, best, np.nan)).astype(np.float32)
            out[f"m_{name}_rank"] = rank
            if self.scale_free:
                del out[f"m_{name}"]
        # One float32 block filled column by column (the same float64 -> float32 rounding as
        # ``DataFrame(out).astype``): a per-column frame cost ~3 ms per request in the service.
        names = list(out)
        values = np.empty((len(candidates), len(names)), np.float32)
        for j, name in enumerate(names):
            values[:, j] = out[name]
        self.feature_names_ = names
        return pd.DataFrame(values, columns=names, copy=False)

    @staticmethod
    def model_scores(model, user_ids: np.ndarray, item_idx: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Pair scores from ``model.score_dense`` per unique user, in chunks (bounded memory)."""
        uniq, inv = np.unique(user_ids, return_inverse=True)
        out = np.empty(len(user_ids), np.float32)
        for start in range(0, len(uniq), chunk):
            block = uniq[start : start + chunk]
            dense = model.score_dense(block)
            sel = (inv >= start) & (inv < start + len(block))
            out[sel] = dense[inv[sel] - start, item_idx[sel]]
        return out


@dataclass
class TrainingRows:
    """Candidate pairs with features and labels; ``group`` = rows per user (in order) for lambdarank."""

    candidates: pd.DataFrame
    X: pd.DataFrame
    y: np.ndarray
    group: np.ndarray
    cutoff: int | None = None
    meta: dict = field(default_factory=dict)


def positives(labels: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Label events that count as a positive (weight above ``threshold``, e.g. watched > 70%)."""
    return labels.loc[labels["weight"].to_numpy() > threshold, ["user_id", "item_id"]].drop_duplicates()


def label_rows(
    history: RecsysDataset,
    label_events: pd.DataFrame,
    generator,
    builder: FeatureBuilder | None = None,
    *,
    score_models: tuple[str, ...] = ("als", "ease", "rp3", "content"),
    threshold: float = 0.7,
    users: IdMap | None = None,
    items: IdMap | None = None,
    cutoff: int | None = None,
    keep_users_without_positive: bool = False,
) -> TrainingRows:
    """Fit ``generator`` and ``builder`` on ``history`` only, generate candidates for the users who
    have label events, and label each candidate 1 if it is among that user's positive events.

    Users whose positives were not retrieved at all are dropped (they carry no ranking signal)."""
    from mlsd.recsys.candidates import History
    from mlsd.recsys.data import binary_matrix

    hist = History.build(history, users, items)
    generator.fit(hist)
    builder = builder if builder is not None else FeatureBuilder()
    builder.fit(history.interactions, hist.users, hist.items, history.items, history.users, cutoff=cutoff)
    pos = positives(label_events, threshold)
    label_users = np.unique(pos["user_id"].to_numpy())
    label_users = label_users[hist.users.index(label_users) >= 0]  # need history to be personalised
    seen = binary_matrix(history.interactions, hist.users, hist.items)[hist.users.index(label_users)]
    cand = generator.candidates(label_users, exclude=seen)
    key = cand["user_id"].to_numpy() * (1 << 32) + cand["item_id"].to_numpy()
    pos_key = pos["user_id"].to_numpy() * (1 << 32) + pos["item_id"].to_numpy()
    y = np.isin(key, pos_key).astype(np.float32)
    if not keep_users_without_positive:
        has = pd.Series(y).groupby(cand["user_id"].to_numpy()).transform("max").to_numpy() > 0
        cand, y = cand[has].reset_index(drop=True), y[has]
    models = {m: generator.models_[m] for m in score_models if m in generator.models_}
    X = builder.transform(cand, models)
    group = cand.groupby("user_id", sort=False).size().to_numpy()
    return TrainingRows(
        cand,
        X,
        y,
        group,
        cutoff,
        {"n_label_users": len(label_users), "recall": float(y.sum() / max(len(pos), 1))},
    )


def build_training_rows(
    interactions: pd.DataFrame | RecsysDataset,
    cutoff: int,
    label_days: float,
    *,
    generator=None,
    threshold: float = 0.7,
    items_frame: pd.DataFrame | None = None,
    users_frame: pd.DataFrame | None = None,
) -> TrainingRows:
    """Point-in-time training rows: features and candidates from events ``< cutoff``, labels from
    events in ``[cutoff, cutoff + label_days)``. Events after the label window are never read."""
    from mlsd.recsys.candidates import CandidateGenerator

    if isinstance(interactions, RecsysDataset):
        items_frame = interactions.items if items_frame is None else items_frame
        users_frame = interactions.users if users_frame is None else users_frame
        interactions = interactions.interactions
    if label_days <= 0:
        raise InputError("label_days", label_days, "must be positive", "use e.g. 1 (the next day)")
    ts = interactions["timestamp"].to_numpy()
    # The ONLY two slices any later code sees: the past and the label window.
    past = interactions[ts < cutoff].reset_index(drop=True)
    window = interactions[(ts >= cutoff) & (ts < cutoff + label_days * DAY)].reset_index(drop=True)
    if past.empty:
        raise InputError("cutoff", cutoff, "leaves no events before it", "pick a later cutoff")
    if items_frame is None:
        items_frame = pd.DataFrame(
            {"item_id": np.unique(interactions["item_id"]), "title": "", "genres": "", "year": -1}
        )
    if users_frame is None:
        users_frame = pd.DataFrame({"user_id": np.unique(interactions["user_id"])})
    history = RecsysDataset(past, items_frame, users_frame, name="history")
    users = IdMap(past["user_id"].to_numpy())
    items = IdMap(items_frame["item_id"].to_numpy())
    generator = generator if generator is not None else CandidateGenerator()
    return label_rows(
        history, window, generator, threshold=threshold, users=users, items=items, cutoff=cutoff
    )
