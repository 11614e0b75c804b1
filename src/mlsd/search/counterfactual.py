"""Counterfactual (clipped-IPS) evaluation of a ranker on held-out click logs: the promotion gate that
reads no judgements and no simulator truth.

The estimand: the expected clicks in the top ``k`` when a candidate ranker re-orders the pages that
were logged (each held-out search's shown results). Under the position-based click model
``P(click at rank r) = theta[r] * attraction``, a click logged at position ``p`` says that the item's
attraction is ``click / theta[p]`` in expectation, so shown at the candidate's rank ``r`` it would be
clicked ``theta[r] / theta[p]`` times per logged click. The estimate per search is

    sum over the search's logged clicks of  theta[r_new] * [r_new <= k] / max(theta[p_logged], clip)

with ``theta`` the propensities fitted in training (:mod:`mlsd.search.propensity`, relative to rank 1,
clipped from below at ``clip``: clipped IPS, a little bias for much less variance at deep ranks).
Unbiased when the propensities are right and only over the logged candidates: a ranker is credited
only for items that were shown, so it compares re-orderings of the same pages.

:func:`holdout_split` keeps the log's last searches (by time) out of training; :func:`ranker_scores`
scores held-out rows with the engine's features (each search's own user); :func:`ips_clicks` estimates
one ranker; :func:`compare_ips` two, paired by search (difference and its standard error).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError

__all__ = ["IPS_METRIC", "compare_ips", "holdout_split", "ips_clicks", "ranker_scores"]

IPS_METRIC = "ips_clicks@10"


def holdout_split(impressions: pd.DataFrame, share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, holdout)``: the searches whose time is in the last ``share`` of the log's searches go to
    the holdout, whole (a search is never split). The gate evaluates on traffic after training's.

    Examples:
        >>> log = pd.DataFrame({"search_id": [0, 0, 1, 1, 2, 3, 4], "ts": [1, 1, 2, 2, 3, 4, 5]})
        >>> train, held = holdout_split(log, 0.4)
        >>> train["search_id"].unique().tolist(), held["search_id"].unique().tolist()
        ([0, 1, 2], [3, 4])
    """
    if not 0.0 < share < 1.0:
        raise InputError(
            "holdout_share", share, "must be in (0, 1)", "use e.g. 0.2 (the last 20% of searches)"
        )
    first_ts = impressions.groupby("search_id", sort=False)["ts"].min().sort_values(kind="stable")
    n_held = int(round(share * len(first_ts)))
    if n_held < 1 or n_held >= len(first_ts):
        raise InputError(
            "clicklog", f"{len(first_ts)} searches", f"too few searches to hold out {share:.0%} of them",
            "log more searches (at least a few dozen) before gating on held-out clicks",
        )  # fmt: skip
    held = impressions["search_id"].isin(first_ts.index[-n_held:]).to_numpy()
    return impressions[~held].reset_index(drop=True), impressions[held].reset_index(drop=True)


def ranker_scores(engine: Any, ranker: Any, holdout: pd.DataFrame) -> np.ndarray:
    """The scores ``ranker`` gives each held-out impression row (query text, product, the search's own
    user for the affinity features, the engine's history features); ``ranker=None`` (a retrieval-only
    version): the fused BM25 + dense order. Products missing from the catalog score ``-inf``."""
    from mlsd.search.engine import FEATURE_NAMES
    from mlsd.search.ltr import retrieval_scores

    texts, qi = np.unique(holdout["query"].astype(str).to_numpy(), return_inverse=True)
    rows = engine.row_of_id_.reindex(holdout["product_id"].to_numpy()).to_numpy()
    known = ~np.isnan(rows)
    scores = np.full(len(holdout), -np.inf)
    if not known.any():
        return scores
    rows_k, qi_k = rows[known].astype(np.int64), qi[known]
    batch, _ = engine.query_batch(list(texts))
    users = holdout["user_id"].astype(str).to_numpy()[known]
    affinity = engine.features_.user_affinity(users, rows_k)
    X = engine.features_.transform(batch, qi_k, rows_k, user_affinity=affinity)
    if ranker is None:
        dense = X[:, FEATURE_NAMES.index("dense_cos")] if engine.dense_ is not None else None
        scores[known] = retrieval_scores(X[:, FEATURE_NAMES.index("bm25")], dense, qi_k)
    else:
        scores[known] = ranker.predict(X)
    return scores


def _per_search(scores: np.ndarray, holdout: pd.DataFrame, propensity: Any, k: int) -> pd.Series:
    """Each held-out search's clipped-IPS estimate of its top-``k`` clicks under ``scores``' order."""
    search = holdout["search_id"].to_numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(search):
        raise InputError("scores", len(scores), f"one score per held-out row is needed ({len(search)})",
                         "score every row of the holdout (ranker_scores)")  # fmt: skip
    # Rank within each search by descending score (ties: the logged order, so equal scores change nothing).
    order = np.lexsort((holdout["position"].to_numpy(), -scores, search))
    sorted_search = search[order]
    starts = np.searchsorted(sorted_search, sorted_search, side="left")
    new_rank = np.empty(len(search), dtype=np.int64)
    new_rank[order] = np.arange(len(search)) - starts + 1
    clicked = holdout["clicked"].to_numpy(np.float64)
    gain = np.where(new_rank <= k, propensity.propensity(new_rank), 0.0)
    contribution = clicked * gain / propensity.propensity(holdout["position"].to_numpy())
    return pd.Series(contribution).groupby(search).sum()


def ips_clicks(scores: np.ndarray, holdout: pd.DataFrame, propensity: Any, k: int = 10) -> dict[str, float]:
    """Clipped-IPS estimate of the top-``k`` clicks per search when ``scores`` re-order the held-out
    pages: ``{"value", "se", "searches"}`` (standard error over searches).

    Examples:
        >>> from mlsd.search.propensity import SwapPropensityEstimator
        >>> theta = SwapPropensityEstimator(clip=0.05)
        >>> theta.propensities_ = 1.0 / np.arange(1, 4)   # (1/rank)^1
        >>> held = pd.DataFrame({"search_id": [0, 0, 0], "position": [1, 2, 3], "clicked": [0, 0, 1]})
        >>> # the item clicked at rank 3 moved to rank 1: 1 click at p=1/3 -> 3 expected clicks
        >>> ips_clicks(np.array([0.0, 1.0, 2.0]), held, theta, k=2)["value"]
        3.0
        >>> ips_clicks(np.array([2.0, 1.0, 0.0]), held, theta, k=2)["value"]   # moved out of the top 2
        0.0
    """
    per = _per_search(scores, holdout, propensity, k)
    n = len(per)
    se = float(per.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"value": float(per.mean()) if n else float("nan"), "se": se, "searches": n}


def compare_ips(
    scores_new: np.ndarray, scores_old: np.ndarray, holdout: pd.DataFrame, propensity: Any, k: int = 10
) -> dict[str, float]:
    """Both rankers' estimates on the same held-out searches and their paired difference (new - old)
    with its standard error: ``{"new", "old", "diff", "se", "searches"}``."""
    new = _per_search(scores_new, holdout, propensity, k)
    old = _per_search(scores_old, holdout, propensity, k)
    diff = new - old
    n = len(diff)
    return {
        "new": float(new.mean()),
        "old": float(old.mean()),
        "diff": float(diff.mean()),
        "se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "searches": n,
    }
