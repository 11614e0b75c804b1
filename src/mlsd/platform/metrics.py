"""Ranking and classification metrics: one tested, vectorised implementation of each.

Ranking metrics are batch-first. ``recommended`` is an int array ``(n_users, width)`` of item ids in rank
order, padded with ``-1`` where a user got fewer items; ``relevant`` is a sequence of ``n_users`` int
arrays (ids of the items that count as hits; ``-1`` entries are ignored, so a padded 2-D array works too),
or for :func:`graded_ndcg_at_k` a sequence of ``{item: gain}`` dicts.

Conventions (the Microsoft Recommenders benchmark's, so our numbers compare with its published table):

* ``k`` defaults to the width of ``recommended``; a ``k`` larger than the width pads with misses, and
  precision@k always divides by ``k`` (a short list is penalised, not excused).
* **Users with no relevant item are excluded** from every mean (their recall and nDCG are undefined);
  when no user has a relevant item the metric is ``0.0``. Pass ``per_user=True`` to get the per-user
  values instead (``nan`` for excluded users), e.g. for confidence intervals or A/B analysis.
* nDCG is binary (gain 1 per hit, discount ``1/log2(rank + 1)``), ideal DCG from ``min(k, n_relevant)``
  hits; :func:`graded_ndcg_at_k` uses gain ``2**g - 1`` with the ideal from all judged gains.
* MAP@k sums precision@rank over the hits in the top k and divides by the **number of relevant items**
  (not by ``min(k, n_relevant)``).
* A row must not repeat an item (that would count a hit twice); it raises :class:`InputError`.

The classification metrics (:func:`roc_auc`, :func:`average_precision`, :func:`precision_at_top_k`,
:func:`recall_at_fpr`) take ``y_true`` (0/1) and ``y_score`` arrays; ties are handled the way
scikit-learn handles them (average ranks for AUC, one threshold per distinct score for AP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from mlsd.platform.errors import InputError

ArrayLike = Any

# ---------------------------------------------------------------------------------------------------
# Shared preparation: the (n_users, k) hit matrix, computed once with one sort, no per-user loop.


def _prepare_recommended(recommended: ArrayLike, k: int | None) -> np.ndarray:
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise InputError(
            "recommended",
            f"shape {rec.shape}",
            "must be a 2-D array (n_users, k)",
            "stack the lists, pad with -1",
        )
    if rec.size and not np.issubdtype(rec.dtype, np.integer):
        raise InputError(
            "recommended", str(rec.dtype), "must hold integer item ids", "map items to int ids first"
        )
    rec = rec.astype(np.int64, copy=False)
    width = rec.shape[1]
    if k is None:
        k = width
    if not isinstance(k, int | np.integer) or k < 1:
        raise InputError("k", k, "must be a positive integer", "pass k >= 1")
    k = int(k)
    if k <= width:
        rec = rec[:, :k]
    else:  # a k beyond the list counts the missing slots as misses
        rec = np.concatenate([rec, np.full((rec.shape[0], k - width), -1, dtype=np.int64)], axis=1)
    if k > 1 and rec.size:
        ordered = np.sort(rec, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if repeated.any():
            row = int(np.flatnonzero(repeated.any(axis=1))[0])
            raise InputError(
                "recommended",
                f"row {row}",
                "repeats an item, which would count one hit twice",
                "de-duplicate each row",
            )
    return rec


def _flatten_relevant(relevant: Sequence[ArrayLike], n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(user index, item id) pairs of all relevant items, -1 padding dropped."""
    if len(relevant) != n_users:
        raise InputError(
            "relevant",
            f"{len(relevant)} users",
            f"must have one entry per row of recommended ({n_users})",
            "align them",
        )
    arrays = [np.asarray(r, dtype=np.int64).ravel() for r in relevant]
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=n_users)
    items = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    keep = items >= 0
    return users[keep], items[keep]


def _hits(
    recommended: ArrayLike, relevant: Sequence[ArrayLike], k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hits ``(n_users, k)`` and the number of distinct relevant items per user."""
    rec = _prepare_recommended(recommended, k)
    n_users = rec.shape[0]
    users, items = _flatten_relevant(relevant, n_users)
    # One int64 key per (user, item) pair lets a single np.isin answer every membership question.
    base = int(max(rec.max(initial=0), items.max(initial=0))) + 1
    rel_keys = np.unique(users * base + items)
    n_relevant = np.bincount(rel_keys // base, minlength=n_users)
    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * base + rec
    hits = np.isin(rec_keys, rel_keys) & (rec >= 0)
    return hits, n_relevant


def _reduce(values: np.ndarray, included: np.ndarray, per_user: bool) -> float | np.ndarray:
    if per_user:
        return np.where(included, values, np.nan)
    if not included.any():
        return 0.0
    return float(values[included].mean())


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------
# Ranking metrics.


def precision_at_k(
    recommended: ArrayLike, relevant: Sequence[ArrayLike], k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """Mean over users of (hits in the top k) / k.

    Examples:
        >>> import numpy as np
        >>> recommended = np.array([[1, 2, 3], [4, 5, -1], [6, 7, 8]])   # user 1 got two items
        >>> relevant = [[1, 3], [5], []]   # user 2 has no relevant item: excluded from the mean
        >>> precision_at_k(recommended, relevant)   # (2/3 + 1/3) / 2: the short list still divides by 3
        0.5
        >>> precision_at_k(recommended, relevant, per_user=True).round(4).tolist()
        [0.6667, 0.3333, nan]
    """
    hits, n_rel = _hits(recommended, relevant, k)
    return _reduce(hits.sum(axis=1) / hits.shape[1], n_rel > 0, per_user)


def recall_at_k(
    recommended: ArrayLike, relevant: Sequence[ArrayLike], k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """Mean over users of (hits in the top k) / (number of relevant items).

    Examples:
        >>> import numpy as np
        >>> recommended = np.array([[1, 2, 3], [4, 5, -1], [6, 7, 8]])   # user 1 got two items
        >>> relevant = [[1, 3], [5], []]   # user 2 has no relevant item: excluded from the mean
        >>> recall_at_k(recommended, relevant), recall_at_k(recommended, relevant, k=1)   # k=1: (1/2 + 0) / 2
        (1.0, 0.25)
    """
    hits, n_rel = _hits(recommended, relevant, k)
    return _reduce(hits.sum(axis=1) / np.maximum(n_rel, 1), n_rel > 0, per_user)


def ndcg_at_k(
    recommended: ArrayLike, relevant: Sequence[ArrayLike], k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """Binary nDCG@k: DCG of the hits over the DCG of ``min(k, n_relevant)`` hits at the top.

    Examples:
        >>> import numpy as np
        >>> recommended = np.array([[1, 2, 3], [4, 5, -1], [6, 7, 8]])   # user 1 got two items
        >>> relevant = [[1, 3], [5], []]   # user 2 has no relevant item: excluded from the mean
        >>> # user 0: (1 + 1/log2(4)) / (1 + 1/log2(3)) = 0.9197; user 1: (1/log2(3)) / 1 = 0.6309
        >>> ndcg_at_k(recommended, relevant, per_user=True).round(4).tolist()
        [0.9197, 0.6309, nan]
        >>> round(ndcg_at_k(recommended, relevant), 4)
        0.7753
    """
    hits, n_rel = _hits(recommended, relevant, k)
    width = hits.shape[1]
    discounts = _discounts(width)
    dcg = hits @ discounts
    ideal_prefix = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_prefix[np.minimum(n_rel, width)]
    return _reduce(dcg / np.where(idcg > 0, idcg, 1.0), n_rel > 0, per_user)


def map_at_k(
    recommended: ArrayLike, relevant: Sequence[ArrayLike], k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """MAP@k as in Microsoft Recommenders: sum of precision@rank over hits, divided by n_relevant.

    Examples:
        >>> import numpy as np
        >>> recommended = np.array([[1, 2, 3], [4, 5, -1], [6, 7, 8]])   # user 1 got two items
        >>> relevant = [[1, 3], [5], []]   # user 2 has no relevant item: excluded from the mean
        >>> # user 0: (1/1 + 2/3) / 2 = 0.8333; user 1: (1/2) / 1 = 0.5
        >>> map_at_k(recommended, relevant, per_user=True).round(4).tolist()
        [0.8333, 0.5, nan]
    """
    hits, n_rel = _hits(recommended, relevant, k)
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    precision_at_rank = np.cumsum(hits, axis=1) / ranks
    return _reduce((precision_at_rank * hits).sum(axis=1) / np.maximum(n_rel, 1), n_rel > 0, per_user)


def coverage_at_k(recommended: ArrayLike, catalog: int | ArrayLike, k: int | None = None) -> float:
    """Distinct items recommended in anyone's top k, over the catalogue size.

    ``catalog`` is the number of items, or the array of catalogue item ids (then only recommended items
    that belong to it count).

    Examples:
        >>> import numpy as np
        >>> recommended = np.array([[1, 2, 3], [4, 5, -1], [6, 7, 8]])
        >>> coverage_at_k(recommended, 10), coverage_at_k(recommended, 10, k=1)   # 8 and 3 of 10 items
        (0.8, 0.3)
        >>> coverage_at_k(recommended, np.arange(1, 7))   # items 7 and 8 are not in this catalogue
        1.0
    """
    rec = _prepare_recommended(recommended, k)
    shown = np.unique(rec[rec >= 0])
    if np.ndim(catalog) == 0:
        n_items = int(catalog)
    else:
        items = np.unique(np.asarray(catalog, dtype=np.int64))
        shown = shown[np.isin(shown, items)]
        n_items = items.size
    if n_items <= 0:
        raise InputError("catalog", catalog, "the catalogue is empty", "pass the number of items (> 0)")
    return float(shown.size / n_items)


def graded_ndcg_at_k(
    recommended: ArrayLike,
    relevant: Sequence[Mapping[int, float]],
    k: int | None = None,
    *,
    per_user: bool = False,
) -> float | np.ndarray:
    """nDCG@k with graded judgements: gain ``2**g - 1``; the ideal ranks all judged gains, best first.

    Unjudged items have gain 0. Users whose judgements are all 0 have no ideal DCG and are excluded.

    Examples:
        >>> import numpy as np
        >>> # gains 2**1 - 1 = 1 (item 1) and 2**3 - 1 = 7 (item 2): (1 + 7/log2(3)) / (7 + 1/log2(3))
        >>> round(graded_ndcg_at_k(np.array([[1, 2, 9]]), [{2: 3, 1: 1}]), 4)
        0.7098
        >>> graded_ndcg_at_k(np.array([[2, 1]]), [{2: 3, 1: 1}])   # best first: the ideal order
        1.0
    """
    rec = _prepare_recommended(recommended, k)
    n_users, width = rec.shape
    if len(relevant) != n_users:
        raise InputError(
            "relevant",
            f"{len(relevant)} users",
            f"must have one entry per row of recommended ({n_users})",
            "align them",
        )
    lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=n_users)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    items = np.fromiter((i for r in relevant for i in r), dtype=np.int64, count=int(lengths.sum()))
    grades = np.fromiter(
        (g for r in relevant for g in r.values()), dtype=np.float64, count=int(lengths.sum())
    )
    if (grades < 0).any() or not np.isfinite(grades).all():
        raise InputError("relevant", "gains", "gains must be finite and >= 0", "use grades like 0, 1, 2, 3")
    gains = np.exp2(grades) - 1.0
    discounts = _discounts(width)

    # Gain of each recommended item: look its (user, item) key up in the sorted judged keys.
    base = int(max(rec.max(initial=0), items.max(initial=0))) + 1
    keys = users * base + items
    order = np.argsort(keys, kind="stable")
    keys, sorted_gains = keys[order], gains[order]
    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * base + rec
    pos = np.clip(np.searchsorted(keys, rec_keys), 0, max(keys.size - 1, 0))
    found = (keys.size > 0) & (rec >= 0)
    if keys.size:
        found &= keys[pos] == rec_keys
    rec_gains = np.where(found, sorted_gains[pos] if keys.size else 0.0, 0.0)
    dcg = rec_gains @ discounts

    # Ideal: each user's gains sorted descending, the first k discounted.
    by_user_desc = np.lexsort((-gains, users))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rank = np.arange(users.size) - starts[users[by_user_desc]]
    top = rank < width
    ideal_users = users[by_user_desc][top]
    idcg = np.bincount(
        ideal_users, weights=gains[by_user_desc][top] * discounts[rank[top]], minlength=n_users
    )
    included = idcg > 0
    return _reduce(dcg / np.where(included, idcg, 1.0), included, per_user)


def ranking_metrics(
    recommended: ArrayLike, relevant: Sequence[ArrayLike], k: int, catalog: int | ArrayLike
) -> dict[str, float]:
    """The five numbers an evaluate command reports: ``{"ndcg@k", "precision@k", "recall@k", "map@k", "coverage@k"}``.

    Examples:
        >>> import numpy as np
        >>> recommended = np.array([[1, 2, 3], [4, 5, -1], [6, 7, 8]])   # user 1 got two items
        >>> relevant = [[1, 3], [5], []]   # user 2 has no relevant item: excluded from the mean
        >>> {name: round(value, 4) for name, value in ranking_metrics(recommended, relevant, 3, 10).items()}
        {'ndcg@3': 0.7753, 'precision@3': 0.5, 'recall@3': 1.0, 'map@3': 0.6667, 'coverage@3': 0.8}
    """
    hits_args = (recommended, relevant, k)
    return {
        f"ndcg@{k}": ndcg_at_k(*hits_args),
        f"precision@{k}": precision_at_k(*hits_args),
        f"recall@{k}": recall_at_k(*hits_args),
        f"map@{k}": map_at_k(*hits_args),
        f"coverage@{k}": coverage_at_k(recommended, catalog, k),
    }


# ---------------------------------------------------------------------------------------------------
# Classification metrics.


def _binary(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InputError(
            "y_score", f"{s.size} scores", f"must match y_true ({y.size} labels)", "pass one score per label"
        )
    if not np.isin(y, (0, 1)).all():
        raise InputError("y_true", "labels", "must be 0/1 (or bool)", "binarise the labels")
    if not np.isfinite(s).all():
        raise InputError("y_score", "scores", "contains NaN or infinity", "fix the model output")
    y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InputError(
            "y_true",
            f"{n_pos} positives of {y.size}",
            "needs both classes",
            "evaluate on data with both labels",
        )
    return y, s


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Examples:
        >>> # 3 of the 4 (positive, negative) pairs are ordered right: 0.35 < 0.4 is the one wrong
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
        >>> roc_auc([0, 1], [0.5, 0.5])   # a tie counts one half
        0.5
    """
    y, s = _binary(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    ranks = rankdata(s)  # average ranks: a tied positive/negative pair counts one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = last_of_tie + 1 - tps
    return tps.astype(np.float64), fps.astype(np.float64)


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """AP = sum over thresholds of (recall step) x precision, one threshold per distinct score (as sklearn).

    Examples:
        >>> # the positives come at ranks 1 and 3: (1/1 + 2/3) / 2
        >>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
        0.8333
    """
    y, s = _binary(y_true, y_score)
    tps, fps = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def precision_at_top_k(y_true: ArrayLike, y_score: ArrayLike, k: int) -> float:
    """Share of positives among the k highest scores (e.g. the alerts a review team can look at).

    Examples:
        >>> y_true, y_score = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
        >>> precision_at_top_k(y_true, y_score, 1), precision_at_top_k(y_true, y_score, 2)
        (1.0, 0.5)
    """
    y, s = _binary(y_true, y_score)
    if k < 1:
        raise InputError("k", k, "must be a positive integer", "pass k >= 1")
    top = np.argsort(-s, kind="mergesort")[: min(k, y.size)]
    return float(y[top].sum() / min(k, y.size))


def recall_at_fpr(y_true: ArrayLike, y_score: ArrayLike, max_fpr: float) -> float:
    """Highest recall reachable by a score threshold whose false-positive rate stays <= ``max_fpr``.

    Examples:
        >>> y_true, y_score = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
        >>> recall_at_fpr(y_true, y_score, 0.0), recall_at_fpr(y_true, y_score, 0.5)   # 0.4 is a false alarm
        (0.5, 1.0)
    """
    y, s = _binary(y_true, y_score)
    if not 0.0 <= max_fpr <= 1.0:
        raise InputError("max_fpr", max_fpr, "must be a rate in [0, 1]", "pass e.g. 0.01 for 1%")
    tps, fps = _curve(y, s)
    n_pos, n_neg = tps[-1], fps[-1]
    allowed = fps / n_neg <= max_fpr
    return float(tps[allowed].max() / n_pos) if allowed.any() else 0.0
