"""Item-item collaborative filtering: EASE (closed-form regression), RP3beta (a 3-step random walk with a
popularity penalty) and sequential EASE (co-occurrence within a few positions of a user's time-ordered
history). All three are dense over the catalogue up to ``max_items`` titles; above it EASE and
sequential EASE refuse (their weights come from the inverse of the items x items Gram matrix, which is
dense however sparse the history is), and RP3beta keeps a sparse top-k neighbourhood per title."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates.base import (
    DenseScored,
    History,
    as_user_array,
    check_exclude,
    check_n,
    empty_rows,
)
from mlsd.recsys.data import IdMap


class _ItemItemCandidates(DenseScored):
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
            product = self.X_[rows[known]] @ self.M_
            dense[known] = product.toarray() if sp.issparse(product) else product
        return dense


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

    Up to ``max_items`` titles the items x items matrix is dense. Above it (where a dense matrix no
    longer fits: 50K titles are 10 GB of float32) it is sparse: each title keeps its ``top_k``
    strongest neighbours, computed block by block of ``block`` titles from the sparse history (memory
    bounded by a block's co-occurrences, never the square). A user's score is then the sum of her
    titles' kept neighbour weights: the dense scores with every weight outside a title's top ``top_k``
    set to zero (identical when ``top_k`` >= the number of titles).
    """

    name = "RP3beta"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.5,
        max_items: int = 20_000,
        top_k: int = 200,
        block: int = 512,
    ) -> None:
        self.alpha = alpha
        self.beta = beta
        self.max_items = max_items
        self.top_k = top_k
        self.block = block

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None):
        hist = History.build(data, users, items)
        if len(hist.items) <= self.max_items:
            return super().fit(hist)
        if not isinstance(self.top_k, int | np.integer) or isinstance(self.top_k, bool) or self.top_k < 1:
            raise InputError("top_k", self.top_k, "must be a positive integer", "use e.g. 200")
        self.users_, self.items_ = hist.users, hist.items
        X = hist.matrix.copy().tocsr().astype(np.float32)
        X.data[:] = 1.0
        # float32 like M_: a float64 history would make scipy upcast (copy) all of M_ on every request
        self.X_ = X
        self.M_ = self._sparse_top_k(X)
        return self

    def candidates(self, user_ids, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """The dense form's candidates, or with a sparse neighbourhood the top ``n`` of the user's
        non-zero scores only (no scan of the whole catalogue: titles that never co-occur with hers are
        not candidates, where the dense form would pad with them at score 0)."""
        if not sp.issparse(getattr(self, "M_", None)):
            return super().candidates(user_ids, n, exclude)
        user_ids = as_user_array(user_ids)
        n = check_n(n)
        n_items = len(self.items_)
        exclude = check_exclude(exclude, len(user_ids), n_items)
        rows = self.users_.index(user_ids)
        known = np.flatnonzero(rows >= 0)
        take = sp.csr_matrix(
            (np.ones(len(known), np.float32), (known, rows[known])), shape=(len(rows), len(self.users_))
        )
        S = (take @ self.X_ @ self.M_).tocsr()
        S.sort_indices()
        r = np.repeat(np.arange(S.shape[0], dtype=np.int64), np.diff(S.indptr))
        ok = S.data > 0
        if exclude is not None and exclude.nnz:
            ex = exclude.tocoo()
            ok &= ~np.isin(r * n_items + S.indices, ex.row.astype(np.int64) * n_items + ex.col)
        r, c, v = r[ok], S.indices[ok].astype(np.int64), S.data[ok]
        order = np.lexsort((-v, r))  # per user, best first (ties: lower item index first)
        r, c, v = r[order], c[order], v[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r)
        keep = rank < n
        idx, scores = empty_rows(len(user_ids), n)
        idx[r[keep], rank[keep]] = c[keep]
        scores[r[keep], rank[keep]] = v[keep]
        return idx, scores

    def _degrees(self, X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        u_deg = np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1.0)
        i_deg = np.maximum(np.asarray(X.sum(axis=0)).ravel(), 1.0)
        return u_deg, i_deg

    def _item_item(self, X: sp.csr_matrix) -> np.ndarray:
        u_deg, i_deg = self._degrees(X)
        p_ui = sp.diags(1.0 / u_deg) @ X
        p_iu = sp.diags(1.0 / i_deg) @ X.T
        W = (p_iu @ p_ui).toarray()
        if self.alpha != 1.0:
            W = np.power(W, self.alpha)
        W /= np.power(i_deg, self.beta)[None, :]
        np.fill_diagonal(W, 0.0)
        return W

    def _sparse_top_k(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """The same weights as :meth:`_item_item`, ``top_k`` per row, one block of rows at a time."""
        u_deg, i_deg = self._degrees(X)
        p_ui = (sp.diags(1.0 / u_deg) @ X).tocsr().astype(np.float32)
        p_iu = (sp.diags(1.0 / i_deg) @ X.T).tocsr().astype(np.float32)
        penalty = np.power(i_deg, -self.beta).astype(np.float32)
        n, k = X.shape[1], int(self.top_k)
        rows, cols, vals = [], [], []
        for start in range(0, n, int(self.block)):
            W = (p_iu[start : start + int(self.block)] @ p_ui).tocsr()
            own = np.repeat(np.arange(start, start + W.shape[0]), np.diff(W.indptr))
            W.data[W.indices == own] = 0.0  # a title is not its own neighbour
            W.eliminate_zeros()
            if self.alpha != 1.0:
                W.data = np.power(W.data, self.alpha)
            W.data *= penalty[W.indices]
            lengths = np.diff(W.indptr)
            row = np.repeat(np.arange(W.shape[0]), lengths)
            # per row, the k largest weights: one sort by (row, -weight), then the first k of each row
            order = np.lexsort((-W.data, row))
            rank = np.arange(len(order)) - np.repeat(W.indptr[:-1], lengths)
            keep = order[rank < k]
            rows.append(row[keep] + start)
            cols.append(W.indices[keep])
            vals.append(W.data[keep])
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n, n),
            dtype=np.float32,
        )


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
