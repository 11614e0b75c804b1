"""Content-based candidates: TF-IDF over title metadata; from a user's recent titles, or from seed titles
(onboarding picks) for a user without history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates.base import History, as_user_array, check_exclude, check_n, top_n_dense
from mlsd.recsys.data import IdMap


def item_documents(items: pd.DataFrame) -> pd.Series:
    """One text per item from its metadata: title words, genres, decade, and optional cast/region."""
    genres = items["genres"].fillna("").astype(str).str.replace(" ", "_").str.replace("|", " g_", regex=False)
    genres = np.where(genres.str.len() > 0, "g_" + genres, "")
    year = pd.to_numeric(items["year"], errors="coerce").fillna(-1).astype(int)
    decade = np.where(year > 0, "decade_" + (year // 10 * 10).astype(str), "")
    title = items["title"].fillna("").astype(str).str.replace(r"\(\d{4}\)", " ", regex=True)
    doc = title + " " + pd.Series(genres, index=items.index) + " " + pd.Series(decade, index=items.index)
    for col in ("cast", "region", "age_rating"):
        if col in items.columns:
            doc = doc + " " + items[col].fillna("").astype(str).str.replace("|", " ", regex=False)
    return doc


class ContentCandidates:
    """TF-IDF over item metadata; a user's profile is the mean vector of their ``recent`` items.

    :meth:`from_seeds` serves cold-start users from onboarding/browsing items instead of history.
    """

    def __init__(self, recent: int = 20, max_features: int = 20_000) -> None:
        self.recent = recent
        self.max_features = max_features

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> ContentCandidates:
        from sklearn.feature_extraction.text import TfidfVectorizer

        hist = History.build(data, users, items)
        if hist.items_frame is None:
            raise InputError(
                "data", "interactions", "content candidates need item metadata", "pass a RecsysDataset"
            )
        self.users_, self.items_ = hist.users, hist.items
        frame = hist.items_frame.set_index("item_id").reindex(self.items_.ids).reset_index()
        frame["title"] = frame["title"].fillna("")
        frame["genres"] = frame["genres"].fillna("")
        frame["year"] = frame["year"].fillna(-1)
        vec = TfidfVectorizer(
            max_features=self.max_features, token_pattern=r"(?u)\b\w[\w']+\b", sublinear_tf=True
        )
        self.tfidf_ = sp.csr_matrix(vec.fit_transform(item_documents(frame)), dtype=np.float32)
        # The user's most recent items (by timestamp) form the profile: tastes drift.
        inter = hist.interactions
        u = self.users_.index(inter["user_id"].to_numpy())
        i = self.items_.index(inter["item_id"].to_numpy())
        ts = inter["timestamp"].to_numpy()
        keep = (u >= 0) & (i >= 0)
        u, i, ts = u[keep], i[keep], ts[keep]
        order = np.lexsort((-ts, u))
        u, i = u[order], i[order]
        start = np.searchsorted(u, u, side="left")
        pos = np.arange(len(u)) - start
        recent = pos < self.recent
        prof = sp.csr_matrix(
            (np.ones(recent.sum(), np.float32), (u[recent], i[recent])),
            shape=(len(self.users_), len(self.items_)),
        )
        prof.data[:] = 1.0
        self.recent_ = prof
        self.__dict__.pop("_row_cache", None)  # rows of an earlier fit
        return self

    def _profile(self, seeds: sp.csr_matrix) -> np.ndarray:
        prof = seeds @ self.tfidf_
        norms = np.sqrt(np.asarray(prof.multiply(prof).sum(axis=1))).ravel()
        norms[norms == 0] = 1.0
        return sp.diags(1.0 / norms) @ prof

    def _dense_from_seeds(self, seeds: sp.csr_matrix) -> np.ndarray:
        # A serving request needs one user's row twice (content candidates, then the content-score
        # feature): a few one-row results are kept, keyed by the seed row, and handed out as copies
        # (callers write into them). Batches are not kept (1,024 rows x 50K titles = 200 MB).
        if seeds.shape[0] != 1:
            return self._dense_from_seeds_uncached(seeds)
        seeds = sp.csr_matrix(seeds)
        key = (seeds.indices.tobytes(), seeds.data.tobytes())
        cache = self.__dict__.setdefault("_row_cache", {})
        row = cache.get(key)
        if row is None:
            row = self._dense_from_seeds_uncached(seeds)
            if len(cache) >= 8:
                cache.clear()
            cache[key] = row
        return row.copy()

    def _dense_from_seeds_uncached(self, seeds: sp.csr_matrix) -> np.ndarray:
        # items x terms (sparse) @ terms x users (dense), then transpose: `profile @ tfidf_.T` made scipy
        # convert the whole TF-IDF matrix (CSC -> CSR) on every call, ~30 ms per request at 50K titles.
        dense_profile = np.asarray(self._profile(seeds).T.todense(), dtype=np.float32)
        return np.ascontiguousarray(np.asarray(self.tfidf_ @ dense_profile, dtype=np.float32).T)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_row_cache"}

    def _seed_rows(self, user_ids) -> tuple[sp.csr_matrix, np.ndarray]:
        rows = self.users_.index(as_user_array(user_ids))
        known = rows >= 0
        seeds = sp.csr_matrix((len(rows), len(self.items_)), dtype=np.float32)
        if known.any():
            take = sp.csr_matrix(
                (np.ones(known.sum(), np.float32), (np.flatnonzero(known), rows[known])),
                shape=(len(rows), len(self.users_)),
            )
            seeds = take @ self.recent_
        return seeds, known

    def candidates(self, user_ids, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = as_user_array(user_ids)
        n = check_n(n)
        exclude = check_exclude(exclude, len(user_ids), len(self.items_))
        seeds, known = self._seed_rows(user_ids)
        dense = self._dense_from_seeds(seeds)
        dense[~known] = -np.inf
        dense[dense <= 0] = -np.inf  # nothing in common: not a content candidate
        return top_n_dense(dense, n, exclude)

    def seed_matrix(self, seed_items: list) -> sp.csr_matrix:
        """(u, items) 0/1 matrix from a list (one entry per user) of raw seed item ids."""
        lengths = np.array([len(s) for s in seed_items], dtype=np.int64)
        flat = (
            np.concatenate([np.asarray(s, dtype=np.int64) for s in seed_items])
            if lengths.sum()
            else np.zeros(0, np.int64)
        )
        cols = self.items_.index(flat)
        rows = np.repeat(np.arange(len(seed_items)), lengths)
        ok = cols >= 0
        mat = sp.csr_matrix(
            (np.ones(ok.sum(), np.float32), (rows[ok], cols[ok])), shape=(len(seed_items), len(self.items_))
        )
        mat.data[:] = 1.0
        return mat

    def from_seeds(self, seed_items: list, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Items most similar to each user's seed items (raw ids; unknown ids ignored): cold start."""
        n = check_n(n)
        seeds = self.seed_matrix(seed_items)
        exclude = check_exclude(exclude, len(seed_items), len(self.items_))
        exclude = seeds if exclude is None else (exclude + seeds).tocsr()
        dense = self._dense_from_seeds(seeds)
        dense[dense <= 0] = -np.inf
        return top_n_dense(dense, n, exclude)

    def score_dense(self, user_ids, seeds: sp.csr_matrix | None = None) -> np.ndarray:
        """(u, n_items) cosine similarity of each user's profile (or ``seeds`` rows) to every item."""
        if seeds is None:
            seeds, _ = self._seed_rows(user_ids)
        return self._dense_from_seeds(seeds)

    def score(self, user_ids, item_idx, seeds: sp.csr_matrix | None = None) -> np.ndarray:
        """Cosine similarity of the user's profile (or ``seeds`` rows) to each item."""
        item_idx = np.asarray(item_idx, dtype=np.int64)
        if seeds is None:
            seeds, _ = self._seed_rows(user_ids)
        prof = self._profile(seeds)
        vecs = self.tfidf_[np.clip(item_idx, 0, None).ravel()]
        rows = np.repeat(np.arange(item_idx.shape[0]), item_idx.shape[1])
        out = np.asarray(prof[rows].multiply(vecs).sum(axis=1)).reshape(item_idx.shape).astype(np.float32)
        out[item_idx < 0] = np.nan
        return out


# --- popularity ----------------------------------------------------------------------------------
