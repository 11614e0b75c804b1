"""Re-ranking: freshness boost, diversity (genre caps or MMR) and epsilon-greedy exploration.

The ranker orders titles by how likely each one is to be watched; the page shown to a user also has
to be varied, surface new releases, and keep learning. :class:`Reranker` does that on one request's
ranked candidates in three steps:

1. **freshness**: scores are min-max normalised within the request and a title released ``d`` days
   ago gains ``freshness_weight * 0.5 ** (d / half_life)``;
2. **diversity**: ``genre_cap`` keeps at most ``ceil(max_genre_share * k)`` titles of the same primary
   genre ahead of the rest (vectorised: a within-genre rank from one stable sort); ``mmr`` is maximal
   marginal relevance over genre vectors (k vectorised steps);
3. **exploration**: epsilon-greedy per slot. Each of the k slots independently (probability epsilon)
   shows a title drawn uniformly, without replacement, from the next ``explore_pool`` candidates.
   The propensity of what is shown is exact: ``1 - epsilon`` for an exploited slot, ``epsilon / M`` for
   an explored one (M = pool size, by symmetry of the draw). Every shown title goes to the
   :class:`ExposureLog` with that propensity, so later off-policy estimates (IPS) are unbiased.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform.jsonio import dumps
from mlsd.recsys.config import RerankConfig

DAY_S = 86_400


@dataclass
class RerankResult:
    """One request's final list: ids, adjusted scores, propensities, and which slots explored."""

    item_ids: np.ndarray
    scores: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray


class Reranker:
    """Freshness, diversity and exploration over one request's ranked candidates."""

    def __init__(self, config: RerankConfig | None = None) -> None:
        self.config = config or RerankConfig()

    def fit(self, items: pd.DataFrame) -> Reranker:
        """Read ``item_id``, ``genres`` (``"Action|Drama"``) and, when present, ``release_ts``."""
        ids = items["item_id"].to_numpy(np.int64)
        order = np.argsort(ids, kind="stable")
        self.ids_ = ids[order]
        genres = items["genres"].fillna("").astype(str) if "genres" in items else pd.Series([""] * len(items))
        primary = genres.str.split("|").str[0]
        self.genre_names_, codes = np.unique(primary.to_numpy(str), return_inverse=True)
        self.primary_genre_ = codes.astype(np.int32)[order]
        # Multi-hot genre vectors, L2-normalised, for MMR similarity.
        dummies = genres.str.get_dummies(sep="|").to_numpy(np.float32)
        norms = np.linalg.norm(dummies, axis=1, keepdims=True)
        self.genre_vectors_ = (dummies / np.maximum(norms, 1e-9))[order]
        self.release_ts_ = (
            items["release_ts"].fillna(np.iinfo(np.int64).min // 2).to_numpy(np.int64)[order]
            if "release_ts" in items
            else np.full(len(items), np.iinfo(np.int64).min // 2, np.int64)
        )
        return self

    def _positions(self, item_ids: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(self.ids_, item_ids), len(self.ids_) - 1)
        # Unknown ids get position 0's attributes; they never reach here (rules drop them first).
        return np.where(self.ids_[pos] == item_ids, pos, 0)

    # -- steps ------------------------------------------------------------------------------------
    def freshness(self, item_ids: np.ndarray, scores: np.ndarray, now: int) -> np.ndarray:
        """Normalised scores plus the freshness boost."""
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) == 0:
            return scores
        lo, hi = scores.min(), scores.max()
        norm = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
        cfg = self.config
        if cfg.freshness_weight == 0:
            return norm
        age_days = (now - self.release_ts_[self._positions(item_ids)]) / DAY_S
        boost = np.where(
            age_days >= 0, 0.5 ** (np.clip(age_days, 0, None) / cfg.freshness_half_life_days), 0.0
        )
        return norm + cfg.freshness_weight * boost

    def diversify(self, item_ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """Return an ordering (indices into the inputs) whose first ``k`` are diverse; the rest follow."""
        order = np.argsort(-scores, kind="stable")
        method = self.config.diversity
        if method == "none" or len(order) <= 1:
            return order
        if method == "genre_cap":
            cap = max(1, math.ceil(self.config.max_genre_share * k))
            genre = self.primary_genre_[self._positions(item_ids[order])]
            # Rank of each title within its genre, in score order: one stable sort by genre.
            by_genre = np.argsort(genre, kind="stable")
            sorted_genre = genre[by_genre]
            starts = np.r_[0, np.flatnonzero(np.diff(sorted_genre)) + 1]
            run_start = np.repeat(starts, np.diff(np.r_[starts, len(sorted_genre)]))
            rank_in_genre = np.empty(len(order), dtype=np.int64)
            rank_in_genre[by_genre] = np.arange(len(order)) - run_start
            # Titles within their genre's cap first (score order), then the overflow (score order).
            return order[np.argsort(rank_in_genre >= cap, kind="stable")]
        # MMR: k greedy steps, each vectorised over the remaining candidates.
        vectors = self.genre_vectors_[self._positions(item_ids)]
        lam = self.config.mmr_lambda
        rel = scores.astype(np.float64)
        chosen: list[int] = []
        max_sim = np.zeros(len(rel))
        available = np.ones(len(rel), dtype=bool)
        for _ in range(min(k, len(rel))):
            value = np.where(available, lam * rel - (1 - lam) * max_sim, -np.inf)
            best = int(np.argmax(value))
            chosen.append(best)
            available[best] = False
            max_sim = np.maximum(max_sim, vectors @ vectors[best])
        rest = order[available[order]]
        return np.r_[np.array(chosen, dtype=np.int64), rest]

    def explore(
        self, ranked: np.ndarray, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Epsilon-greedy over slots: (shown indices into ``ranked``, propensities, explored flags)."""
        k = min(k, len(ranked))
        eps = self.config.epsilon
        shown = np.arange(k)
        pool = np.arange(k, min(len(ranked), k + self.config.explore_pool))
        explored = np.zeros(k, dtype=bool)
        propensity = np.full(k, 1.0 - eps if len(pool) else 1.0)
        if eps > 0 and len(pool):
            slots = np.flatnonzero(rng.random(k) < eps)[: len(pool)]
            picks = rng.choice(pool, size=len(slots), replace=False)
            shown[slots] = picks
            explored[slots] = True
            propensity[slots] = eps / len(pool)
        return ranked[shown], propensity, explored

    def rerank(
        self,
        item_ids: np.ndarray,
        scores: np.ndarray,
        k: int,
        *,
        now: int,
        rng: np.random.Generator,
    ) -> RerankResult:
        """All three steps for one request; ``item_ids``/``scores`` are the allowed, scored candidates."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        adjusted = self.freshness(item_ids, scores, now)
        ranked = self.diversify(item_ids, adjusted, k)
        shown, propensity, explored = self.explore(ranked, k, rng)
        return RerankResult(item_ids[shown], adjusted[shown], propensity, explored)


class ExposureLog:
    """What was shown, to whom, where, and with which probability: the record off-policy learning needs.

    Records are kept in memory (a bounded deque of per-request batches) and, when ``path`` is set,
    appended to a JSONL file, one line per shown title:
    ``{"request_id", "user_id", "item_id", "position", "propensity", "explored", "ts"}``.
    """

    def __init__(self, path: str | Path | None = None, max_requests: int = 10_000) -> None:
        self.path = Path(path) if path else None
        self._batches: deque[dict[str, np.ndarray | str | int]] = deque(maxlen=max_requests)
        self._lock = threading.Lock()

    def log(
        self,
        request_id: str,
        user_id: str,
        item_ids: np.ndarray,
        propensity: np.ndarray,
        explored: np.ndarray,
        ts: int,
    ) -> None:
        batch = {
            "request_id": request_id,
            "user_id": user_id,
            "item_id": np.asarray(item_ids, dtype=np.int64),
            "propensity": np.asarray(propensity, dtype=np.float64),
            "explored": np.asarray(explored, dtype=bool),
            "ts": int(ts),
        }
        with self._lock:
            self._batches.append(batch)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                lines = [
                    dumps(
                        {
                            "request_id": request_id,
                            "user_id": user_id,
                            "item_id": int(item),
                            "position": pos,
                            "propensity": float(p),
                            "explored": bool(e),
                            "ts": int(ts),
                        }
                    )
                    for pos, (item, p, e) in enumerate(
                        zip(batch["item_id"], batch["propensity"], batch["explored"], strict=True)
                    )
                ]
                with self.path.open("a") as fh:
                    fh.write("\n".join(lines) + "\n")

    def to_frame(self) -> pd.DataFrame:
        """All records kept in memory, one row per shown title (position counts from 0)."""
        with self._lock:
            batches = list(self._batches)
        if not batches:
            return pd.DataFrame(
                columns=["request_id", "user_id", "item_id", "position", "propensity", "explored", "ts"]
            )
        sizes = [len(b["item_id"]) for b in batches]
        return pd.DataFrame(
            {
                "request_id": np.repeat([b["request_id"] for b in batches], sizes),
                "user_id": np.repeat([b["user_id"] for b in batches], sizes),
                "item_id": np.concatenate([b["item_id"] for b in batches]),
                "position": np.concatenate([np.arange(n) for n in sizes]),
                "propensity": np.concatenate([b["propensity"] for b in batches]),
                "explored": np.concatenate([b["explored"] for b in batches]),
                "ts": np.repeat([b["ts"] for b in batches], sizes),
            }
        )

    def __len__(self) -> int:
        with self._lock:
            return sum(len(b["item_id"]) for b in self._batches)
