"""The pipeline: parse -> retrieve -> features -> LTR -> rules under a deadline; training and registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.search.clicklog import ClickLog
from mlsd.search.config import SearchConfig
from mlsd.search.pipeline import (
    GroupedDenseIndex,
    SearchEngine,
    load_engine,
    train_and_register,
    train_ranker,
)
from mlsd.search.simulate import simulate

FAST = {"intent_queries": 300}


@pytest.fixture(scope="module")
def world():
    sim = simulate(1500, 8000, seed=2, n_queries=120, n_users=200)
    imp = sim.impressions.assign(user_id=sim.impressions["user_id"].astype(str))
    cfg = SearchConfig.from_dict({"ltr": {"n_estimators": 40}, "rules": {"max_per_brand": 2}})
    engine = SearchEngine(cfg, dense=False, parser_options=FAST).fit(
        sim.products, query_log=sim.queries["text"].tolist()
    )
    ranker, _ = train_ranker(engine, imp)
    engine.refit_history(imp, engine.propensity_).set_ranker(ranker, 1)
    return sim, engine


def test_search_answers_with_parsed_query_timings_and_rules(world) -> None:
    sim, engine = world
    out = engine.search("headphones under $50", "3", k=20)
    assert out["ranked_by"] == "ltr" and out["model_version"] == 1
    assert 0 < len(out["results"]) <= 20
    assert [r["position"] for r in out["results"]] == list(range(1, len(out["results"]) + 1))
    p = out["parsed"]
    assert p["entities"]["price_max"] == 50 and "corrected" in p and "expansions" in p and "intent" in p
    for r in out["results"]:
        assert r["price"] <= 50 and r["stock"] > 0
    brands = pd.Series([r["brand"] for r in out["results"][:10]])
    assert brands.value_counts().max() <= 2  # configured max_per_brand
    assert {"parse", "bm25", "fuse", "features", "ltr", "rules"} <= set(out["timings_ms"])
    assert {"stage": "dense", "reason": "disabled"} in out["skipped"]
    scores = [r["score"] for r in out["results"]]
    assert all(np.isfinite(scores))


def test_typo_and_spanish_queries_find_the_category(world) -> None:
    _, engine = world
    for q in ("wireles earbuds", "auriculares"):
        out = engine.search(q, "", k=10)
        assert out["results"], q
        cats = [r["category"] for r in out["results"]]
        assert sum("Headphones" in c for c in cats) >= 7, (q, cats)


def test_deadline_degrades_and_reports_what_was_skipped(world) -> None:
    _, engine = world
    out = engine.search("sofa", "", k=10, budget_ms=1e-6)
    skipped = {s["stage"] for s in out["skipped"]}
    assert "ltr" in skipped and out["ranked_by"] == "bm25" and out["results"]
    assert "deadline" in next(s["reason"] for s in out["skipped"] if s["stage"] == "ltr")
    assert "ltr" not in out["timings_ms"] and "rules" in out["timings_ms"]


def test_grouped_dense_index_expands_titles_to_products() -> None:
    products = pd.DataFrame(
        {"product_id": [1, 2, 3, 4, 5], "title": ["a", "b", "a", "c", "a"], "review_count": [5, 0, 50, 1, 7]}
    )
    vectors = np.eye(3, dtype=np.float32)  # titles a, b, c in first-seen order
    index = GroupedDenseIndex().fit(products, embeddings=vectors)
    assert index.n_groups == 3
    qv = np.array([[1.0, 0.0, 0.0], [0.0, 0.2, 0.9]], dtype=np.float32)
    cands = index.retrieve(["x", "y"], k=4, query_vectors=qv)
    assert cands.product_ids[0].tolist()[:3] == [3, 5, 1]  # title "a", most reviewed first
    assert cands.product_ids[1].tolist()[0] == 4
    np.testing.assert_allclose(index.cosine(qv, np.array([0, 1]), np.array([2, 1])), [1.0, 0.2], rtol=1e-6)


def test_train_register_promote_and_load(tmp_path) -> None:
    sim = simulate(800, 4000, seed=4, n_queries=60, n_users=100)
    data = tmp_path / "data"
    sim.save(data)
    ClickLog(data / "clicklog").append_impressions(sim.impressions)
    cfg = SearchConfig.from_dict({"ltr": {"n_estimators": 20}})
    report = train_and_register(data, tmp_path / "reg", config=cfg, dense=False, parser_options=FAST)
    assert report["version"] == 1 and report["promoted"]
    m = report["metrics"]
    assert 0 < m["truth_ndcg@10"] <= 1 and 0 < m["raw_clicks_truth_ndcg@10"] <= 1
    assert report["propensity"]["method"] == "SwapPropensityEstimator"
    engine = load_engine(data, tmp_path / "reg", config=cfg, dense=False, parser_options=FAST)
    assert engine.ranker_version_ == 1
    assert engine.search("lamp", "1", k=5)["ranked_by"] == "ltr"


def test_pinned_product_is_served_first_even_when_not_retrieved(world) -> None:
    sim, engine = world
    in_stock = sim.products[
        (sim.products["stock"] > 0) & sim.products["category"].astype(str).str.contains("Lamps")
    ]
    pid = int(in_stock["product_id"].iloc[0])
    pinned = SearchEngine(
        SearchConfig.from_dict({"rules": {"pinned": {"zzqx lamp": [pid]}}}), dense=False, parser_options=FAST
    )
    pinned.__dict__.update({k: v for k, v in engine.__dict__.items() if k not in ("config", "rules_")})
    from mlsd.search.rules import BusinessRules

    pinned.rules_ = BusinessRules(pinned.config.rules).fit(engine.products_)
    out = pinned.search("zzqx lamp", "", k=5)
    assert out["results"][0]["product_id"] == pid and out["rules"]["pinned"] == [pid]
    assert all(r["score"] is None or np.isfinite(r["score"]) for r in out["results"])
