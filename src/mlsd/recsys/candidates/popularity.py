"""Non-personalised candidates: popular, trending (recent popularity) and new releases."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates.base import (
    DAY,
    History,
    as_user_array,
    check_exclude,
    check_n,
    gather,
    is_excluded,
    pad,
)
from mlsd.recsys.data import IdMap


class PopularityCandidates:
    """Non-personalised lists: ``popular`` (all-time weight), ``trending`` (last ``window_days``),
    ``new`` (newest releases, by ``release_ts`` or ``year``, ties by popularity)."""

    KINDS = ("popular", "trending", "new")

    def __init__(self, kind: str = "popular", window_days: float = 7.0) -> None:
        self.kind = kind
        self.window_days = window_days

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> PopularityCandidates:
        if self.kind not in self.KINDS:
            raise InputError("kind", self.kind, f"must be one of {self.KINDS}", "pick a popularity kind")
        hist = History.build(data, users, items)
        self.users_, self.items_ = hist.users, hist.items
        popular = np.asarray(hist.matrix.sum(axis=0)).ravel()
        inter = hist.interactions
        if self.kind == "popular":
            item_scores = popular
        elif self.kind == "trending":
            ts = inter["timestamp"].to_numpy()
            now = ts.max() if len(ts) else 0
            recent = inter[ts >= now - self.window_days * DAY]
            i = self.items_.index(recent["item_id"].to_numpy())
            ok = i >= 0
            trend = np.bincount(i[ok], weights=recent["weight"].to_numpy()[ok], minlength=len(self.items_))
            # Trending = recent weight, ties (and quiet windows) broken by all-time popularity.
            item_scores = trend + popular / (popular.max() + 1.0)
        else:
            item_scores = self._newness(hist) + popular / (popular.max() + 1.0)
        self.item_scores_ = item_scores.astype(np.float32)
        self.order_ = np.argsort(-self.item_scores_, kind="stable").astype(np.int64)
        return self

    def _newness(self, hist: History) -> np.ndarray:
        frame = hist.items_frame
        if frame is None:
            # No catalogue: an item's first event stands in for its release.
            inter = hist.interactions
            i = self.items_.index(inter["item_id"].to_numpy())
            first = np.full(len(self.items_), np.inf)
            np.minimum.at(first, i[i >= 0], inter["timestamp"].to_numpy()[i >= 0].astype(float))
            first[~np.isfinite(first)] = (
                np.nanmin(first[np.isfinite(first)]) if np.isfinite(first).any() else 0
            )
            return (first - first.min()) / DAY
        frame = frame.set_index("item_id").reindex(self.items_.ids)
        if "release_ts" in frame.columns and frame["release_ts"].notna().any():
            rel = frame["release_ts"].astype(float)
            return ((rel - rel.min()) / DAY).fillna(-1).to_numpy()
        return pd.to_numeric(frame["year"], errors="coerce").fillna(-1).to_numpy(dtype=float)

    def candidates(self, user_ids, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = as_user_array(user_ids)
        n = check_n(n)
        exclude = check_exclude(exclude, len(user_ids), len(self.items_))
        extra = int(np.diff(exclude.indptr).max()) if exclude is not None and exclude.nnz else 0
        k = min(n + extra, len(self.items_))
        idx = np.broadcast_to(self.order_[:k], (len(user_ids), k)).copy()
        if extra:
            hit = is_excluded(exclude, idx)
            idx = np.where(hit, -1, idx)
            idx = np.take_along_axis(idx, np.argsort(idx < 0, axis=1, kind="stable"), axis=1)
        idx = idx[:, :n]
        scores = np.where(idx >= 0, self.item_scores_[np.clip(idx, 0, None)], -np.inf)
        return pad(idx, scores, n)

    def score_dense(self, user_ids) -> np.ndarray:
        return np.broadcast_to(self.item_scores_, (len(as_user_array(user_ids)), len(self.items_))).copy()

    def score(self, user_ids, item_idx) -> np.ndarray:
        return gather(
            np.broadcast_to(self.item_scores_, (len(as_user_array(user_ids)), len(self.items_))), item_idx
        )
