"""Re-ranking: genre caps, MMR, freshness, and exact epsilon-greedy propensities in the exposure log."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlsd.recsys.config import RerankConfig
from mlsd.recsys.rerank import DAY_S, ExposureLog, Reranker

NOW = 1_772_323_200


def catalogue(n: int = 40) -> pd.DataFrame:
    # Items 1..20 are Drama (the high scorers), 21..40 alternate Comedy/Horror.
    genres = ["Drama"] * 20 + ["Comedy|Drama", "Horror"] * 10
    return pd.DataFrame(
        {
            "item_id": np.arange(1, n + 1),
            "genres": genres[:n],
            "release_ts": np.full(n, NOW - 1000 * DAY_S),
        }
    )


def scores_desc(n: int = 40) -> np.ndarray:
    return np.linspace(1.0, 0.0, n)


def test_genre_cap_limits_each_primary_genre():
    rr = Reranker(
        RerankConfig(diversity="genre_cap", max_genre_share=0.3, epsilon=0.0, freshness_weight=0)
    ).fit(catalogue())
    ids = np.arange(1, 41)
    out = rr.rerank(ids, scores_desc(), 10, now=NOW, rng=np.random.default_rng(0))
    # cap = ceil(0.3 * 10) = 3 per genre: 3 Drama, 3 Comedy, 3 Horror in score order, then the best overflow.
    assert out.item_ids.tolist() == [1, 2, 3, 21, 22, 23, 24, 25, 26, 4]
    assert np.all(out.propensity == 1.0) and not out.explored.any()
    # Without diversity the ten best are all Drama.
    plain = Reranker(RerankConfig(diversity="none", epsilon=0.0, freshness_weight=0)).fit(catalogue())
    assert plain.rerank(
        ids, scores_desc(), 10, now=NOW, rng=np.random.default_rng(0)
    ).item_ids.tolist() == list(range(1, 11))


def test_genre_cap_fills_with_overflow_when_one_genre_is_all_there_is():
    rr = Reranker(RerankConfig(max_genre_share=0.2, epsilon=0.0, freshness_weight=0)).fit(catalogue())
    out = rr.rerank(np.arange(1, 11), scores_desc(10), 5, now=NOW, rng=np.random.default_rng(0))
    assert out.item_ids.tolist() == [
        1,
        2,
        3,
        4,
        5,
    ]  # all Drama: the cap cannot be met, the list is still full


def test_mmr_prefers_dissimilar_titles():
    rr = Reranker(RerankConfig(diversity="mmr", mmr_lambda=0.5, epsilon=0.0, freshness_weight=0)).fit(
        catalogue()
    )
    out = rr.rerank(np.arange(1, 41), scores_desc(), 3, now=NOW, rng=np.random.default_rng(0))
    # 1 (Drama) first; then a Horror title (similarity 0) beats the next Dramas (similarity 1).
    assert out.item_ids[0] == 1
    assert catalogue().set_index("item_id").loc[out.item_ids[1], "genres"] == "Horror"
    assert len(set(out.item_ids)) == 3


def test_freshness_boost_lifts_a_new_release():
    items = catalogue()
    items.loc[items["item_id"] == 30, "release_ts"] = NOW - 2 * DAY_S
    cfg = RerankConfig(diversity="none", epsilon=0.0, freshness_weight=1.0, freshness_half_life_days=30)
    rr = Reranker(cfg).fit(items)
    out = rr.rerank(np.arange(1, 41), scores_desc(), 5, now=NOW, rng=np.random.default_rng(0))
    assert out.item_ids[0] == 30
    no_boost = Reranker(RerankConfig(diversity="none", epsilon=0.0, freshness_weight=0.0)).fit(items)
    assert (
        30
        not in no_boost.rerank(
            np.arange(1, 41), scores_desc(), 5, now=NOW, rng=np.random.default_rng(0)
        ).item_ids
    )


def test_epsilon_greedy_propensities_are_exact():
    """Empirical frequency of each (item, slot) over 5,000 requests matches the logged propensity."""
    eps, k, pool = 0.3, 5, 10
    rr = Reranker(RerankConfig(diversity="none", epsilon=eps, explore_pool=pool, freshness_weight=0)).fit(
        catalogue()
    )
    rng = np.random.default_rng(1)
    n = 5_000
    counts = np.zeros((41, k))
    props = {}
    for _ in range(n):
        out = rr.rerank(np.arange(1, 41), scores_desc(), k, now=NOW, rng=rng)
        assert len(set(out.item_ids.tolist())) == k
        counts[out.item_ids, np.arange(k)] += 1
        for item, slot, p in zip(out.item_ids, range(k), out.propensity, strict=True):
            props[(int(item), slot)] = p
    # Exploited: item s+1 at slot s with probability 1 - eps; explored: a pool item with eps / pool.
    for slot in range(k):
        assert counts[slot + 1, slot] / n == pytest.approx(1 - eps, abs=0.025)  # ~4 sigma
        assert props[(slot + 1, slot)] == pytest.approx(1 - eps)
    explored_items = range(k + 1, k + pool + 1)
    for slot in range(k):
        freq = counts[list(explored_items), slot] / n
        assert freq == pytest.approx(np.full(pool, eps / pool), abs=0.01)  # ~4 sigma
    assert props[(k + 1, 0)] == pytest.approx(eps / pool)
    assert counts[k + pool + 1 :].sum() == 0  # never beyond the pool


def test_exposure_log_memory_and_jsonl(tmp_path):
    log = ExposureLog(tmp_path / "exposures.jsonl")
    log.log("r1", "7", np.array([5, 3]), np.array([0.95, 0.005]), np.array([False, True]), NOW)
    log.log("r2", "8", np.array([1]), np.array([1.0]), np.array([False]), NOW + 1)
    frame = log.to_frame()
    assert frame[["request_id", "user_id", "item_id", "position"]].values.tolist() == [
        ["r1", "7", 5, 0],
        ["r1", "7", 3, 1],
        ["r2", "8", 1, 0],
    ]
    assert len(log) == 3
    lines = [json.loads(x) for x in (tmp_path / "exposures.jsonl").read_text().splitlines()]
    assert lines[1] == {
        "request_id": "r1",
        "user_id": "7",
        "item_id": 3,
        "position": 1,
        "propensity": 0.005,
        "explored": True,
        "ts": NOW,
    }
    assert ExposureLog().to_frame().empty


def test_short_candidate_lists():
    rr = Reranker(RerankConfig(epsilon=0.5)).fit(catalogue())
    out = rr.rerank(np.array([4, 2]), np.array([0.1, 0.9]), 10, now=NOW, rng=np.random.default_rng(0))
    assert sorted(out.item_ids.tolist()) == [2, 4] and np.all(out.propensity == 1.0)
    empty = rr.rerank(np.array([], dtype=np.int64), np.array([]), 10, now=NOW, rng=np.random.default_rng(0))
    assert len(empty.item_ids) == 0
