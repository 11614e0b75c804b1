"""Candidate generation: cheap, batch-first sources whose union the ranker re-orders.

Every source follows one protocol::

    source.fit(dataset_or_interactions, users=None, items=None) -> source
    source.candidates(user_ids, n, exclude=None) -> (item_idx (u, n) int64, scores (u, n) float32)
    source.score(user_ids, item_idx) -> scores (u, m)   # the source's score for given pairs (a feature)
    source.score_dense(user_ids) -> scores (u, n_items)  # every item (NaN rows: unknown users)

``user_ids`` are raw ids; ``item_idx`` are dense indices into ``source.items_`` (an
:class:`~mlsd.recsys.data.IdMap`). ``exclude`` is a sparse matrix with one row per requested user
and one column per item (non-zero = never return it), typically the titles the user already saw.
Rows are padded with item -1 / score -inf when a source has fewer than ``n`` items for a user
(unknown users get an all-padding row from the personalised sources).

Sources: :class:`ALSCandidates` (implicit ALS + FAISS inner product), :class:`EASECandidates`
(closed-form item-item model, strong on small catalogues), :class:`SequentialEASECandidates` (EASE
on co-occurrence within a few positions of a user's time-ordered history), :class:`ContentCandidates` (TF-IDF over
metadata; also from seed items for cold start), :class:`PopularityCandidates` (popular, trending,
new releases). :class:`CandidateGenerator` unions them into one long frame with per-source flags,
ranks and scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.recsys.data import IdMap, RecsysDataset, interaction_matrix

DAY = 86_400


class CandidateSource(Protocol):
    items_: IdMap

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> CandidateSource: ...

    def candidates(
        self, user_ids: np.ndarray, n: int, exclude: sp.spmatrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def score(self, user_ids: np.ndarray, item_idx: np.ndarray) -> np.ndarray: ...

    def score_dense(self, user_ids: np.ndarray) -> np.ndarray: ...


# --- shared helpers ----------------------------------------------------------------------------


@dataclass
class History:
    """Interactions indexed once for all sources: id maps, weight matrix, per-user recency order."""

    interactions: pd.DataFrame
    items_frame: pd.DataFrame | None
    users: IdMap
    items: IdMap
    matrix: sp.csr_matrix  # users x items, summed weights

    @classmethod
    def build(cls, data, users: IdMap | None = None, items: IdMap | None = None) -> History:
        if isinstance(data, History):
            return data
        if isinstance(data, RecsysDataset):
            inter, items_frame = data.interactions, data.items
            item_ids = data.items["item_id"].to_numpy()
        elif isinstance(data, pd.DataFrame):
            inter, items_frame = data, None
            item_ids = data["item_id"].to_numpy()
        else:
            raise InputError(
                "data", type(data).__name__, "is not a RecsysDataset or interactions frame", "pass one"
            )
        users = users if users is not None else IdMap(inter["user_id"].to_numpy())
        items = items if items is not None else IdMap(item_ids)
        matrix = interaction_matrix(inter, users, items, value="weight")
        return cls(inter, items_frame, users, items, matrix)


def as_user_array(user_ids) -> np.ndarray:
    """Validate a batch of raw user ids: 1-D integers."""
    arr = np.asarray(user_ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InputError(
            "user_ids", user_ids, "must be a 1-D array of integer user ids", "pass e.g. np.array([1, 2])"
        )
    return arr.astype(np.int64)


def check_n(n, maximum: int | None = None) -> int:
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n <= 0:
        raise InputError("n", n, "must be a positive integer", "ask for at least 1 candidate")
    if maximum is not None and n > maximum:
        raise InputError("n", n, f"must be at most {maximum}", f"ask for <= {maximum}")
    return int(n)


def _check_exclude(exclude, n_users: int, n_items: int) -> sp.csr_matrix | None:
    if exclude is None:
        return None
    if not sp.issparse(exclude):
        raise InputError(
            "exclude", type(exclude).__name__, "must be a scipy sparse matrix", "pass csr_matrix or None"
        )
    if exclude.shape != (n_users, n_items):
        raise InputError(
            "exclude",
            exclude.shape,
            f"must have shape (len(user_ids), n_items) = {(n_users, n_items)}",
            "align rows",
        )
    return sp.csr_matrix(exclude)


def _is_excluded(exclude: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
    """(u, k) bool: is ``cols[r, j]`` a non-zero of ``exclude`` row r? One sorted membership test on
    (row, column) keys; scipy's element-wise fancy indexing cost ~0.5 ms per source per request."""
    n_cols = exclude.shape[1]
    nonzero = exclude.data != 0
    ex_rows = np.repeat(np.arange(exclude.shape[0], dtype=np.int64), np.diff(exclude.indptr))[nonzero]
    ex_keys = ex_rows * n_cols + exclude.indices[nonzero]
    keys = np.repeat(np.arange(cols.shape[0], dtype=np.int64), cols.shape[1]) * n_cols + cols.ravel()
    return np.isin(keys, ex_keys).reshape(cols.shape)


def top_n_dense(
    scores: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n`` columns per row of a dense (u, items) score matrix, excluded and -inf cells dropped."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None and exclude.nnz:
        rows, cols = exclude.nonzero()
        scores[rows, cols] = -np.inf
    n_items = scores.shape[1]
    k = min(n, n_items)
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_items), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_scores, order, axis=1)
    return _pad(np.where(np.isfinite(top), idx, -1), top, n)


def _pad(idx: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(idx >= 0, scores, -np.inf).astype(np.float32)
    if idx.shape[1] < n:
        extra = n - idx.shape[1]
        idx = np.hstack([idx, np.full((idx.shape[0], extra), -1, np.int64)])
        scores = np.hstack([scores, np.full((scores.shape[0], extra), -np.inf, np.float32)])
    return idx, scores


def _empty(u: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((u, n), -1, np.int64), np.full((u, n), -np.inf, np.float32)


def _gather(dense: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """dense[(u, items)] at item_idx (u, m); padding (-1) gives NaN."""
    item_idx = np.asarray(item_idx, dtype=np.int64)
    out = np.take_along_axis(dense, np.clip(item_idx, 0, None), axis=1).astype(np.float32)
    out[item_idx < 0] = np.nan
    return out


# --- collaborative filtering ---------------------------------------------------------------------


class ALSCandidates:
    """Implicit-feedback ALS embeddings; retrieval is a FAISS exact inner-product search.

    ``alpha`` scales the confidence of each interaction weight (Hu, Koren & Volinsky 2008).
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        random_state: int = 42,
        num_threads: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> ALSCandidates:
        import faiss
        from implicit.cpu.als import AlternatingLeastSquares

        hist = History.build(data, users, items)
        self.users_, self.items_ = hist.users, hist.items
        from threadpoolctl import threadpool_limits

        # implicit parallelises itself; a second BLAS thread pool underneath only oversubscribes
        # (implicit checks, and warns, when the model is built: build it inside the limit too).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=self.num_threads,
                calculate_training_loss=False,
            )
            model.fit(sp.csr_matrix(hist.matrix, dtype=np.float32), show_progress=False)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.index_ = faiss.IndexFlatIP(self.item_factors_.shape[1])
        self.index_.add(self.item_factors_)
        return self

    def __getstate__(self) -> dict:
        # A FAISS index does not pickle; it is rebuilt from the item factors on load.
        return {k: v for k, v in self.__dict__.items() if k != "index_"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "item_factors_" in state:
            import faiss

            self.index_ = faiss.IndexFlatIP(self.item_factors_.shape[1])
            self.index_.add(self.item_factors_)

    def user_vectors(self, user_ids) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (u, f), known mask): unknown users get a zero vector."""
        rows = self.users_.index(as_user_array(user_ids))
        known = rows >= 0
        vec = np.zeros((len(rows), self.user_factors_.shape[1]), np.float32)
        vec[known] = self.user_factors_[rows[known]]
        return vec, known

    def candidates(self, user_ids, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = as_user_array(user_ids)
        n = check_n(n)
        exclude = _check_exclude(exclude, len(user_ids), len(self.items_))
        vec, known = self.user_vectors(user_ids)
        n_items = len(self.items_)
        # Ask FAISS for enough extra items that the excluded ones can be dropped afterwards.
        extra = int(np.diff(exclude.indptr).max()) if exclude is not None and exclude.nnz else 0
        k = min(n + extra, n_items)
        scores, idx = self.index_.search(vec, k)
        idx = idx.astype(np.int64)
        if extra:
            hit = _is_excluded(exclude, np.clip(idx, 0, None))
            idx = np.where(hit, -1, idx)
            order = np.argsort(idx < 0, axis=1, kind="stable")  # keep FAISS order, excluded last
            idx = np.take_along_axis(idx, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        idx, scores = idx[:, :n], scores[:, :n]
        idx[~known] = -1
        return _pad(idx, scores, n)

    def score_dense(self, user_ids) -> np.ndarray:
        """(u, n_items) scores of every item; NaN rows for unknown users."""
        vec, known = self.user_vectors(user_ids)
        out = vec @ self.item_factors_.T
        out[~known] = np.nan
        return out

    def score(self, user_ids, item_idx) -> np.ndarray:
        vec, known = self.user_vectors(user_ids)
        item_idx = np.asarray(item_idx, dtype=np.int64)
        out = np.einsum("uf,umf->um", vec, self.item_factors_[np.clip(item_idx, 0, None)])
        out = out.astype(np.float32)
        out[item_idx < 0] = np.nan
        out[~known] = np.nan
        return out


class _ItemItemCandidates:
    """Shared shape of EASE and RP3beta: binary history X, a dense items x items matrix M, score = X M.

    The dense matrix is why both refuse catalogues above ``max_items``; subclasses only say how M is
    built from X (``_item_item``). Unknown users score NaN (and are never candidates).
    """

    name = "item-item"
    max_items: int

    def _item_item(self, X: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None):
        hist = History.build(data, users, items)
        if len(hist.items) > self.max_items:
            raise InputError(
                "items",
                len(hist.items),
                f"{self.name} needs a dense items^2 matrix; more than {self.max_items} items",
                "use ALSCandidates for large catalogues or raise max_items",
            )
        self.users_, self.items_ = hist.users, hist.items
        X = hist.matrix.copy().tocsr()
        X.data[:] = 1.0
        self.X_ = X
        self.M_ = self._fit_matrix(X, hist).astype(np.float32)
        return self

    def _fit_matrix(self, X: sp.csr_matrix, hist: History) -> np.ndarray:
        # Most item-item models need only the binary matrix; a subclass that needs the event order
        # (SequentialEASECandidates) overrides this instead.
        return self._item_item(X)

    def score_dense(self, user_ids) -> np.ndarray:
        """(u, n_items) scores of every item; NaN rows for unknown users."""
        rows = self.users_.index(as_user_array(user_ids))
        known = rows >= 0
        dense = np.full((len(rows), len(self.items_)), np.nan, np.float32)
        if known.any():
            dense[known] = self.X_[rows[known]] @ self.M_
        return dense

    def candidates(self, user_ids, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = as_user_array(user_ids)
        n = check_n(n)
        exclude = _check_exclude(exclude, len(user_ids), len(self.items_))
        dense = self.score_dense(user_ids)
        dense[np.isnan(dense)] = -np.inf
        return top_n_dense(dense, n, exclude)

    def score(self, user_ids, item_idx) -> np.ndarray:
        return _gather(self.score_dense(user_ids), item_idx)


class EASECandidates(_ItemItemCandidates):
    """EASE (Steck 2019): a closed-form item-item linear model, B = I - P / diag(P), P = (X'X + lam I)^-1.

    On MovieLens-size catalogues it is the strongest single source.
    """

    name = "EASE"

    def __init__(self, lam: float = 300.0, max_items: int = 20_000) -> None:
        self.lam = lam
        self.max_items = max_items

    def _item_item(self, X: sp.csr_matrix) -> np.ndarray:
        gram = (X.T @ X).toarray()
        gram[np.diag_indices_from(gram)] += self.lam
        inv = np.linalg.inv(gram)
        B = inv / (-np.diag(inv))
        B[np.diag_indices_from(B)] = 0.0
        return B


class RP3BetaCandidates(_ItemItemCandidates):
    """RP3beta (Paudel et al. 2017): 3-step random walk user -> item -> user -> item, with each
    target item's score divided by its popularity^beta (so the walk does not just find blockbusters).
    """

    name = "RP3beta"

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, max_items: int = 20_000) -> None:
        self.alpha = alpha
        self.beta = beta
        self.max_items = max_items

    def _item_item(self, X: sp.csr_matrix) -> np.ndarray:
        u_deg = np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1.0)
        i_deg = np.maximum(np.asarray(X.sum(axis=0)).ravel(), 1.0)
        p_ui = sp.diags(1.0 / u_deg) @ X
        p_iu = sp.diags(1.0 / i_deg) @ X.T
        W = (p_iu @ p_ui).toarray()
        if self.alpha != 1.0:
            W = np.power(W, self.alpha)
        W /= np.power(i_deg, self.beta)[None, :]
        np.fill_diagonal(W, 0.0)
        return W


class SequentialEASECandidates(_ItemItemCandidates):
    """EASE fitted on *local* co-occurrence: two titles count as co-watched only when they lie within
    ``window`` positions of each other in a user's time-ordered history (ties in time broken by item
    index, so the result does not depend on the frame's row order).

    Whole-history co-occurrence (plain EASE) mixes a user's tastes of different sessions; titles
    watched next to each other say more about each other (same browsing session, same page of the
    catalogue). Scoring is EASE's: the user's whole binary history times the item-item weights. It
    is weaker than EASE alone but adds a signal the whole-history scorers lack: as a fourth z-scored
    member of the evaluation blend it gained +0.003 nDCG@10 on five inner validation splits (see
    docs/recsys.md "Offline evaluation").

    The gram's diagonal is each item's number of window neighbours divided by ``window`` (about
    twice its event count: one neighbour per side and offset, normalised), plus ``lam``.
    """

    name = "sequential EASE"

    def __init__(self, window: int = 5, lam: float = 50.0, max_items: int = 20_000) -> None:
        self.window = window
        self.lam = lam
        self.max_items = max_items

    def _fit_matrix(self, X: sp.csr_matrix, hist: History) -> np.ndarray:
        if not isinstance(self.window, int | np.integer) or isinstance(self.window, bool) or self.window < 1:
            raise InputError("window", self.window, "must be a positive integer", "use e.g. 5")
        if not self.lam > 0:
            raise InputError(
                "lam", self.lam, "must be positive (it keeps the inverse defined)", "use e.g. 50"
            )
        inter = hist.interactions
        u = hist.users.index(inter["user_id"].to_numpy())
        i = hist.items.index(inter["item_id"].to_numpy())
        t = inter["timestamp"].to_numpy()
        ok = (u >= 0) & (i >= 0)
        u, i, t = u[ok], i[ok], t[ok]
        order = np.lexsort((i, t, u))
        u, i = u[order], i[order]
        n = X.shape[1]
        rows, cols = [], []
        # one vectorised pass per offset (window is small): pairs (p, p + off) of the same user
        for off in range(1, min(int(self.window), max(len(u) - 1, 0)) + 1):
            same = u[off:] == u[:-off]
            a, b = i[:-off][same], i[off:][same]
            rows += [a, b]
            cols += [b, a]
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        gram = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n)).toarray()
        np.fill_diagonal(gram, 0.0)  # re-watches of one title are not co-occurrence
        gram[np.diag_indices_from(gram)] = gram.sum(axis=1) / self.window + self.lam
        inv = np.linalg.inv(gram)
        B = inv / (-np.diag(inv))
        B[np.diag_indices_from(B)] = 0.0
        return B


class BlendCandidates:
    """A weighted sum of collaborative scorers, each z-scored over the catalogue per user.

    The scorers' raw scales are unrelated (EASE regression weights, random-walk probabilities, ALS
    inner products); z-scoring each user's row over every item puts them on one scale, and the
    weighted sum is the linear ensemble a ranker has to beat. ``models`` maps a name to a
    configured (unfitted) source, ``weights`` a name to its weight; each is fitted on the same
    history. Like EASE/RP3beta it is dense over items (``max_items`` comes from its members).
    """

    def __init__(self, models: dict | None = None, weights: dict[str, float] | None = None) -> None:
        self.models = models
        self.weights = weights

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> BlendCandidates:
        import copy

        hist = History.build(data, users, items)
        self.users_, self.items_ = hist.users, hist.items
        weights = dict(self.weights or {"ease": 1.0, "rp3": 0.5, "als": 0.5})
        self.members_: dict = {}
        for name in weights:
            model = (self.models or {}).get(name)
            model = copy.deepcopy(model) if model is not None else default_source(name)
            self.members_[name] = model.fit(hist)  # an InputError (catalogue too big) drops the blend
        self.weights_ = weights
        return self

    def score_dense(self, user_ids) -> np.ndarray:
        """(u, n_items) blended z-scores; NaN rows for unknown users."""
        out = np.zeros((len(as_user_array(user_ids)), len(self.items_)), np.float32)
        for name, model in self.members_.items():
            s = model.score_dense(user_ids).astype(np.float32)
            mean = s.mean(axis=1, keepdims=True)
            std = s.std(axis=1, keepdims=True)
            out += self.weights_[name] * (s - mean) / np.where(std > 0, std, 1.0)
        return out

    def candidates(self, user_ids, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = as_user_array(user_ids)
        n = check_n(n)
        exclude = _check_exclude(exclude, len(user_ids), len(self.items_))
        dense = self.score_dense(user_ids)
        dense[np.isnan(dense)] = -np.inf
        return top_n_dense(dense, n, exclude)

    def score(self, user_ids, item_idx) -> np.ndarray:
        return _gather(self.score_dense(user_ids), item_idx)


# --- content -------------------------------------------------------------------------------------


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
        exclude = _check_exclude(exclude, len(user_ids), len(self.items_))
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
        exclude = _check_exclude(exclude, len(seed_items), len(self.items_))
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
        exclude = _check_exclude(exclude, len(user_ids), len(self.items_))
        extra = int(np.diff(exclude.indptr).max()) if exclude is not None and exclude.nnz else 0
        k = min(n + extra, len(self.items_))
        idx = np.broadcast_to(self.order_[:k], (len(user_ids), k)).copy()
        if extra:
            hit = _is_excluded(exclude, idx)
            idx = np.where(hit, -1, idx)
            idx = np.take_along_axis(idx, np.argsort(idx < 0, axis=1, kind="stable"), axis=1)
        idx = idx[:, :n]
        scores = np.where(idx >= 0, self.item_scores_[np.clip(idx, 0, None)], -np.inf)
        return _pad(idx, scores, n)

    def score_dense(self, user_ids) -> np.ndarray:
        return np.broadcast_to(self.item_scores_, (len(as_user_array(user_ids)), len(self.items_))).copy()

    def score(self, user_ids, item_idx) -> np.ndarray:
        return _gather(
            np.broadcast_to(self.item_scores_, (len(as_user_array(user_ids)), len(self.items_))), item_idx
        )


# --- the union -----------------------------------------------------------------------------------

# ~1,000 unique titles per user on a large catalogue (the sources overlap). EASE and RP3beta drop
# out by themselves above 20K titles (dense item-item matrices).
DEFAULT_SOURCES: dict[str, int] = {
    "als": 500,
    "ease": 300,
    "rp3": 200,
    "content": 300,
    "popular": 200,
    "trending": 100,
    "new": 50,
}
# The offline evaluation's smaller union: the ranker only has to fill a top 10, and on MovieLens-size
# catalogues a 1,000-title union is most of the catalogue (slow to rank, no better on inner validation).
# Source settings for MovieLens-size data, chosen on the inner validation split of TRAIN (see
# docs/recsys.md "Offline evaluation"): ALS with 12 factors, EASE lambda 500, RP3beta beta 0.5, and
# their z-score blend weighted EASE 1, RP3beta 0.3, ALS 0.7 (a flat optimum: 0.278-0.280 nearby), plus
# sequential EASE (window 5, lambda 50) at 0.5: +0.003 on five inner splits (a plateau, 0.3-0.7, window 3-10).
EVAL_SOURCE_SETTINGS: dict[str, dict] = {
    "als": {"factors": 12, "regularization": 0.05, "alpha": 2.0},
    "ease": {"lam": 500.0},
    "rp3": {"alpha": 1.0, "beta": 0.5},
    "seq": {"window": 5, "lam": 50.0},
    "blend": {"ease": 1.0, "rp3": 0.3, "als": 0.7, "seq": 0.5},
}
EVAL_SOURCES: dict[str, int] = {
    "blend": 100,
    "als": 100,
    "ease": 100,
    "rp3": 50,
    "content": 30,
    "popular": 30,
    "trending": 20,
    "new": 10,
}


def default_source(name: str):
    """A fresh, unfitted source for a default name."""
    factories = {
        "als": ALSCandidates,
        "ease": EASECandidates,
        "rp3": RP3BetaCandidates,
        "seq": SequentialEASECandidates,
        "blend": BlendCandidates,
        "content": ContentCandidates,
        "popular": lambda: PopularityCandidates("popular"),
        "trending": lambda: PopularityCandidates("trending"),
        "new": lambda: PopularityCandidates("new"),
    }
    if name not in factories:
        raise InputError(
            "source", name, f"is not a known candidate source {sorted(factories)}", "pick one of those"
        )
    return factories[name]()


class CandidateGenerator:
    """Union of several sources into one long frame; cold-start users get content (seeds) + popularity.

    ``sources`` maps a name to ``n`` (how many that source contributes) and ``models`` optionally
    maps a name to a configured source instance (defaults from :func:`default_source`). Sources
    that cannot fit the data (EASE on a huge catalogue) are dropped at fit time, with the reason
    kept in ``skipped_``.

    :meth:`candidates` returns columns ``batch_row, user_id, item_idx, item_id, n_sources`` and, per source
    ``s``: ``in_s`` (bool), ``rank_s`` (1-based, 0 when absent) and ``score_s`` (NaN when absent).
    """

    COLD_SOURCES = ("content", "popular", "trending", "new")

    def __init__(self, sources: dict[str, int] | None = None, models: dict | None = None) -> None:
        self.sources = sources
        self.models = models

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> CandidateGenerator:
        hist = History.build(data, users, items)
        self.users_, self.items_ = hist.users, hist.items
        sources = dict(DEFAULT_SOURCES if self.sources is None else self.sources)
        if hist.items_frame is None:
            sources.pop("content", None)
        self.models_: dict = {}
        self.skipped_: dict[str, str] = {}
        for name in sources:
            model = (self.models or {}).get(name) or default_source(name)
            try:
                self.models_[name] = model.fit(hist)
            except InputError as err:
                self.skipped_[name] = str(err)
        self.n_per_source_ = {name: sources[name] for name in self.models_}
        if not self.models_:
            raise InputError(
                "sources", list(sources), "no candidate source could be fitted", "check the data"
            )
        return self

    @property
    def source_names(self) -> list[str]:
        return list(self.models_)

    def candidates(
        self, user_ids, exclude=None, seed_items: list | None = None, n: dict[str, int] | None = None
    ) -> pd.DataFrame:
        """Long frame of unique (user, item) candidates from every source, for a batch of users.

        ``seed_items`` (one list of raw item ids per user) feeds the content source for users
        without history (onboarding picks, browsed titles).
        """
        user_ids = as_user_array(user_ids)
        exclude = _check_exclude(exclude, len(user_ids), len(self.items_))
        if seed_items is not None and len(seed_items) != len(user_ids):
            raise InputError(
                "seed_items", len(seed_items), "must have one list per user", "align with user_ids"
            )
        known = self.users_.index(user_ids) >= 0
        sizes = {**self.n_per_source_, **(n or {})}
        parts = []
        for name, model in self.models_.items():
            k = check_n(sizes[name])
            if name not in self.COLD_SOURCES and not known.any():
                # nobody here has history: skip the work but keep the columns (the ranker needs them)
                parts.append((name, *_empty(len(user_ids), 0)))
                continue
            idx, sc = model.candidates(user_ids, k, exclude)
            if name == "content" and seed_items is not None and (~known).any():
                cold = np.flatnonzero(~known)
                c_ex = exclude[cold] if exclude is not None else None
                idx[cold], sc[cold] = model.from_seeds([seed_items[j] for j in cold], k, c_ex)
            parts.append((name, idx, sc))
        return self._union(user_ids, parts)

    def _union(self, user_ids: np.ndarray, parts) -> pd.DataFrame:
        n_items = len(self.items_)
        keys, srcs, ranks, scores = [], [], [], []
        for s, (_name, idx, sc) in enumerate(parts):
            rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
            flat, flat_sc = idx.ravel(), sc.ravel()
            rank = np.tile(np.arange(1, idx.shape[1] + 1), idx.shape[0])
            ok = flat >= 0
            keys.append(rows[ok] * n_items + flat[ok])
            srcs.append(np.full(ok.sum(), s))
            ranks.append(rank[ok])
            scores.append(flat_sc[ok])
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        src = np.concatenate(srcs) if srcs else np.zeros(0, np.int64)
        rank = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
        score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        uniq, inv = np.unique(key, return_inverse=True)
        row = uniq // n_items
        frame = {
            "batch_row": row.astype(np.int64),  # position of the candidate's user in the request
            "user_id": user_ids[row],
            "item_idx": (uniq % n_items).astype(np.int64),
        }
        frame["item_id"] = self.items_.raw(frame["item_idx"])
        n_src = np.zeros(len(uniq), np.int64)
        for s, (name, _idx, _sc) in enumerate(parts):
            sel = src == s
            flag = np.zeros(len(uniq), bool)
            flag[inv[sel]] = True
            r = np.zeros(len(uniq), np.int64)
            r[inv[sel]] = rank[sel]
            v = np.full(len(uniq), np.nan, np.float32)
            v[inv[sel]] = score[sel]
            frame[f"in_{name}"], frame[f"rank_{name}"], frame[f"score_{name}"] = flag, r, v
            n_src += flag
        frame["n_sources"] = n_src
        return pd.DataFrame(frame)
