"""Collaborative filtering by matrix factorisation: implicit ALS embeddings, FAISS inner-product retrieval."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mlsd.recsys.candidates.base import History, as_user_array, check_exclude, check_n, is_excluded, pad
from mlsd.recsys.data import IdMap


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
        from implicit.cpu.als import AlternatingLeastSquares

        hist = History.build(data, users, items)
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
        self._set_factors(hist.users, hist.items, model.user_factors, model.item_factors)
        return self

    def _set_factors(self, users: IdMap, items: IdMap, user_factors, item_factors) -> None:
        """The fitted state, whichever trainer made the factors: id maps, factors, the FAISS index."""
        self.users_, self.items_ = users, items
        self.user_factors_ = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(item_factors, dtype=np.float32)
        self._build_index()

    def _build_index(self) -> None:
        import faiss

        self.index_ = faiss.IndexFlatIP(self.item_factors_.shape[1])
        self.index_.add(self.item_factors_)

    def __getstate__(self) -> dict:
        # A FAISS index does not pickle; it is rebuilt from the item factors on load.
        return {k: v for k, v in self.__dict__.items() if k != "index_"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "item_factors_" in state:
            self._build_index()

    def export_users(self, store, namespace: str, *, batch: int = 10_000, ttl_s: float | None = None) -> int:
        """Write every user's factor vector to an online store (``{user_id: {"als": float32 vector}}``,
        ``batch`` rows per call); returns how many rows were written. Serving processes read the rows
        of a request's users instead of each holding every user's vector."""
        ids = self.users_.ids
        for start in range(0, len(ids), batch):
            block = self.user_factors_[start : start + batch]
            store.put_many(namespace, dict(zip(map(str, ids[start : start + batch].tolist()),
                                               ({"als": v} for v in block), strict=True)), ttl_s=ttl_s)  # fmt: skip
        return len(ids)

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
        exclude = check_exclude(exclude, len(user_ids), len(self.items_))
        vec, known = self.user_vectors(user_ids)
        n_items = len(self.items_)
        # Ask FAISS for enough extra items that the excluded ones can be dropped afterwards.
        extra = int(np.diff(exclude.indptr).max()) if exclude is not None and exclude.nnz else 0
        k = min(n + extra, n_items)
        scores, idx = self.index_.search(vec, k)
        idx = idx.astype(np.int64)
        if extra:
            hit = is_excluded(exclude, np.clip(idx, 0, None))
            idx = np.where(hit, -1, idx)
            order = np.argsort(idx < 0, axis=1, kind="stable")  # keep FAISS order, excluded last
            idx = np.take_along_axis(idx, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        idx, scores = idx[:, :n], scores[:, :n]
        idx[~known] = -1
        return pad(idx, scores, n)

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
