"""What every candidate source shares: the protocol, the history index, and the batch helpers.

Every source follows one protocol (:class:`CandidateSource`)::

    source.fit(dataset_or_interactions, users=None, items=None) -> source
    source.candidates(user_ids, n, exclude=None) -> (item_idx (u, n) int64, scores (u, n) float32)
    source.score(user_ids, item_idx) -> scores (u, m)   # the source's score for given pairs (a feature)
    source.score_dense(user_ids) -> scores (u, n_items)  # every item (NaN rows: unknown users)

``user_ids`` are raw ids; ``item_idx`` are dense indices into ``source.items_`` (an
:class:`~mlsd.recsys.data.IdMap`). ``exclude`` is a sparse matrix with one row per requested user
and one column per item (non-zero = never return it), typically the titles the user already saw.
Rows are padded with item -1 / score -inf when a source has fewer than ``n`` items for a user
(unknown users get an all-padding row from the personalised sources).
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


def check_exclude(exclude, n_users: int, n_items: int) -> sp.csr_matrix | None:
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


def is_excluded(exclude: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
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
    return pad(np.where(np.isfinite(top), idx, -1), top, n)


def pad(idx: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(idx >= 0, scores, -np.inf).astype(np.float32)
    if idx.shape[1] < n:
        extra = n - idx.shape[1]
        idx = np.hstack([idx, np.full((idx.shape[0], extra), -1, np.int64)])
        scores = np.hstack([scores, np.full((scores.shape[0], extra), -np.inf, np.float32)])
    return idx, scores


def empty_rows(u: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((u, n), -1, np.int64), np.full((u, n), -np.inf, np.float32)


def gather(dense: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """dense[(u, items)] at item_idx (u, m); padding (-1) gives NaN."""
    item_idx = np.asarray(item_idx, dtype=np.int64)
    out = np.take_along_axis(dense, np.clip(item_idx, 0, None), axis=1).astype(np.float32)
    out[item_idx < 0] = np.nan
    return out


class DenseScored:
    """A source that scores every item at once: :meth:`candidates` and :meth:`score` follow from its
    ``score_dense(user_ids) -> (u, n_items)`` (NaN rows for unknown users) and ``items_``."""

    def candidates(self, user_ids, n: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = as_user_array(user_ids)
        n = check_n(n)
        exclude = check_exclude(exclude, len(user_ids), len(self.items_))  # type: ignore[attr-defined]
        dense = self.score_dense(user_ids)  # type: ignore[attr-defined]
        dense[np.isnan(dense)] = -np.inf
        return top_n_dense(dense, n, exclude)

    def score(self, user_ids, item_idx) -> np.ndarray:
        return gather(self.score_dense(user_ids), item_idx)  # type: ignore[attr-defined]
