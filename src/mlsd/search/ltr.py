"""LambdaMART (LightGBM lambdarank) trained on the click log, with or without position-bias correction.

Training data, in data-flow order:

1. :func:`pair_labels` aggregates the impressions of a label window per (query, product): examination-
   corrected rates ``sum(outcome / propensity(rank)) / impressions`` for clicks, purchases and revenue
   (inverse propensity scoring, clipped), or the same sums with propensity 1 for the raw-click baseline.
   Per pair, not per impression: one click at rank 18 weighted 18x is noise, a pair's average over its
   impressions is an unbiased estimate of "clicked / bought when looked at".
2. The gain is the configured blend (default 0.6 x conversion + 0.3 x revenue + 0.1 x CTR, see
   :class:`~mlsd.search.config.ObjectiveConfig`), quantised to ``grade_levels`` integer labels whose
   ``label_gain`` is linear in the blend, so lambdarank optimises nDCG with the blend as gain.
3. Features come from :class:`~mlsd.search.features.SearchFeatures` fitted on the log *before* the label
   window (point in time).

:func:`ground_truth_ndcg` scores a ranker against the simulator's true grades on the full candidate pool
of each query (shown and never-shown products), the known answer that says whether debiasing worked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.search.config import LTRConfig, ObjectiveConfig
from mlsd.search.features import FEATURE_NAMES, normalize_queries


def pair_labels(
    impressions: pd.DataFrame,
    propensity: Any | None,
    objective: ObjectiveConfig | None = None,
    *,
    shrink: float = 2.0,
) -> pd.DataFrame:
    """Per (query, product) examination-corrected outcome rates and the blended ``gain``.

    ``propensity``: a fitted estimator (``weights(positions)``) for IPS, or None for raw clicks.
    ``shrink`` pseudo-impressions with no outcome pull rarely shown pairs towards 0.
    Returns columns ``query, product_id, impressions, ctr, cvr, revenue, gain, user_ids`` (a list
    of the users who saw the pair, for their mean affinity).
    """
    objective = objective or ObjectiveConfig()
    if len(impressions) == 0:
        raise InputError(
            "clicklog", 0, "no impressions in the training window", "log or simulate searches first"
        )
    pos = impressions["position"].to_numpy(np.int64)
    w = propensity.weights(pos) if propensity is not None else np.ones(len(pos))
    frame = pd.DataFrame(
        {
            "query": normalize_queries(impressions["query"].to_numpy()),
            "product_id": impressions["product_id"].to_numpy(np.int64),
            "impressions": 1.0,
            "ctr": w * impressions["clicked"].to_numpy(np.float64),
            "cvr": w * impressions["purchased"].to_numpy(np.float64),
            "revenue": w * impressions["order_value"].to_numpy(np.float64),
        }
    )
    g = frame.groupby(["query", "product_id"], sort=False).sum().reset_index()
    denom = g["impressions"].to_numpy() + shrink
    for c in ("ctr", "cvr", "revenue"):
        g[c] = g[c] / denom
    g["gain"] = (
        objective.conversion * g["cvr"]
        + objective.revenue * np.minimum(g["revenue"] / objective.revenue_ref, 1.0)
        + objective.ctr * g["ctr"]
    )
    return g


def quantise(gains: np.ndarray, levels: int) -> tuple[np.ndarray, list[float]]:
    """Integer labels 0..levels with a linear ``label_gain``: label j stands for gain j/levels * top,
    ``top`` being the 99th percentile of positive gains (a few outliers do not flatten the rest)."""
    gains = np.asarray(gains, dtype=np.float64)
    positive = gains[gains > 0]
    top = float(np.quantile(positive, 0.99)) if len(positive) else 1.0
    labels = np.clip(np.rint(gains / max(top, 1e-12) * levels), 0, levels).astype(np.int32)
    return labels, [j / levels for j in range(levels + 1)]


class LambdaMARTRanker:
    """LightGBM lambdarank on :data:`FEATURE_NAMES`; ``fit(X, gains, groups)`` with continuous gains."""

    def __init__(
        self, config: LTRConfig | None = None, feature_names: tuple[str, ...] = FEATURE_NAMES
    ) -> None:
        self.config = config or LTRConfig()
        self.feature_names = feature_names

    def fit(self, X: np.ndarray, gains: np.ndarray, groups: np.ndarray) -> LambdaMARTRanker:
        import lightgbm as lgb

        cfg = self.config
        order = np.argsort(groups, kind="stable")
        X, gains, groups = X[order], np.asarray(gains)[order], np.asarray(groups)[order]
        _, sizes = np.unique(groups, return_counts=True)
        labels, label_gain = quantise(gains, cfg.grade_levels)
        self.model_ = lgb.LGBMRanker(
            objective="lambdarank",
            n_estimators=cfg.n_estimators,
            learning_rate=cfg.learning_rate,
            num_leaves=cfg.num_leaves,
            min_child_samples=cfg.min_child_samples,
            subsample=cfg.subsample,
            subsample_freq=1,
            colsample_bytree=cfg.colsample,
            reg_lambda=cfg.l2,
            label_gain=label_gain,
            lambdarank_truncation_level=20,
            random_state=cfg.seed,
            n_jobs=1,  # serving runs one request per core; 2 shared cores make threads slower, not faster
            verbose=-1,
        )
        self.model_.fit(X, labels, group=sizes, feature_name=list(self.feature_names))
        self.booster_ = self.model_.booster_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores (higher = better) for rows of ``X``."""
        return self.booster_.predict(np.asarray(X, dtype=np.float32), num_threads=1)

    def feature_importance(self) -> dict[str, float]:
        gain = self.booster_.feature_importance(importance_type="gain")
        return {
            n: round(float(g), 3)
            for n, g in sorted(zip(self.feature_names, gain, strict=True), key=lambda t: -t[1])
        }

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(path / "model.txt"))
        meta = {"config": asdict(self.config), "feature_names": list(self.feature_names)}
        (path / "ranker.json").write_text(json.dumps(meta, indent=2))
        # The training reference for drift monitoring travels with the model (same registry version).
        if getattr(self, "reference_", None) is not None:
            self.reference_.to_parquet(path / "reference.parquet", index=False)
            (path / "reference.json").write_text(json.dumps(getattr(self, "reference_meta_", {}), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> LambdaMARTRanker:
        import lightgbm as lgb

        path = Path(path)
        meta_file = path / "ranker.json"
        if not meta_file.exists():
            raise InputError(
                "model",
                str(path),
                "not a saved ranker (no ranker.json)",
                "train one with `mlsd search train`",
            )
        meta = json.loads(meta_file.read_text())
        ranker = cls(LTRConfig(**meta["config"]), tuple(meta["feature_names"]))
        ranker.booster_ = lgb.Booster(model_file=str(path / "model.txt"))
        return ranker


def ground_truth_ndcg(
    score: Callable[[list[str], np.ndarray, np.ndarray], np.ndarray],
    queries: pd.DataFrame,
    qrels: pd.DataFrame,
    row_of_id: pd.Series,
    *,
    k: int = 10,
    query_ids: np.ndarray | None = None,
) -> float:
    """Mean graded nDCG@k of ``score`` against the simulator's true grades.

    Each query's candidates are its whole judged pool (shown and never shown). ``score(texts, qi, rows)``
    returns one score per pair (``texts[qi[j]]`` with catalog row ``rows[j]``).
    """
    from mlsd.platform.metrics import graded_ndcg_at_k

    q = qrels if query_ids is None else qrels[qrels["query_id"].isin(query_ids)]
    qids, qi = np.unique(q["query_id"].to_numpy(), return_inverse=True)
    texts = queries.set_index("query_id").loc[qids, "text"].tolist()
    rows = row_of_id.loc[q["product_id"].to_numpy()].to_numpy()
    scores = score(texts, qi, rows)
    order = np.lexsort((-scores, qi))
    ranked_pid = q["product_id"].to_numpy()[order]
    ranked_q = qi[order]
    starts = np.searchsorted(ranked_q, np.arange(len(qids)))
    width = int(np.bincount(qi).max())
    rec = np.full((len(qids), width), -1, dtype=np.int64)
    rank = np.arange(len(order)) - starts[ranked_q]
    rec[ranked_q, rank] = ranked_pid
    judged = [
        dict(zip(g["product_id"].tolist(), g["grade"].astype(float).tolist(), strict=True))
        for _, g in q.groupby(qi)
    ]
    return float(graded_ndcg_at_k(rec, judged, k))


# --------------------------------------------------------------------------------------------------
# A version without a ranker: what `train` registers when the data has no click log

RETRIEVAL_CARD = "retrieval.json"


def save_retrieval_card(path: Path, card: dict[str, Any]) -> Path:
    """A registry artifact that serves BM25 + dense retrieval with no learned ranker: the card says why
    (e.g. no click log to learn from) and what the version serves."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / RETRIEVAL_CARD).write_text(json.dumps({"ranker": None, **card}, indent=2))
    return path


def load_ranker(path: Path) -> LambdaMARTRanker | None:
    """The ranker of a registry artifact; ``None`` for a retrieval-only version (its card, no ranker)."""
    path = Path(path)
    if (path / RETRIEVAL_CARD).exists() and not (path / "ranker.json").exists():
        return None
    return LambdaMARTRanker.load(path)


def retrieval_scores(
    bm25: np.ndarray, dense: np.ndarray | None, qi: np.ndarray, rrf_k: float = 60.0
) -> np.ndarray:
    """What a retrieval-only version ranks a query's candidate pairs by: reciprocal-rank fusion of their
    BM25 and dense ranks within each query (``qi``), as :func:`~mlsd.search.retrieval.rrf_fuse` fuses
    the two retrieved lists when serving."""
    out = np.zeros(len(qi))
    for column in (bm25, dense):
        if column is None:
            continue
        values = np.nan_to_num(np.asarray(column, dtype=np.float64), nan=-np.inf)
        order = np.lexsort((-values, qi))
        starts = np.searchsorted(qi[order], qi[order], side="left")
        rank = np.empty(len(qi), dtype=np.int64)
        rank[order] = np.arange(len(qi)) - starts
        out += 1.0 / (rrf_k + 1.0 + rank)
    return out
