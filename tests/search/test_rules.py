"""Business rules: property tests over random candidate lists -- the rules are never violated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.search.config import RuleConfig
from mlsd.search.rules import BusinessRules, _rank_within_group


def _catalog(rng: np.random.Generator, n: int = 300, brands: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": rng.permutation(np.arange(1000, 1000 + n)),
            "brand": rng.choice([f"B{i}" for i in range(brands)], n),
            "price": rng.uniform(5, 200, n).round(2),
            "stock": np.where(rng.random(n) < 0.2, 0, rng.integers(1, 50, n)),
        }
    )


def test_rank_within_group_matches_pandas() -> None:
    codes = np.random.default_rng(0).integers(0, 5, 200)
    expected = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    np.testing.assert_array_equal(_rank_within_group(codes), expected)


@pytest.mark.parametrize("seed", range(40))
def test_rules_are_never_violated(seed: int) -> None:
    rng = np.random.default_rng(seed)
    products = _catalog(rng, brands=int(rng.integers(1, 8)))
    cap = int(rng.integers(1, 4))
    pinned_ids = tuple(
        int(x) for x in rng.choice(products["product_id"], int(rng.integers(0, 3)), replace=False)
    )
    cfg = RuleConfig(max_per_brand=cap, pinned={"q": pinned_ids})
    rules = BusinessRules(cfg).fit(products)
    rows = rng.permutation(len(products))[: int(rng.integers(0, 250))]
    lo = float(rng.uniform(0, 80)) if rng.random() < 0.5 else None
    hi = float(rng.uniform(100, 200)) if rng.random() < 0.5 else None
    k = int(rng.integers(1, 60))
    out, report = rules.apply(
        rows, price_min=lo, price_max=hi, query="Q " if rng.random() < 0.5 else "x", k=k
    )
    sub = products.iloc[out]
    assert len(out) <= k and len(set(out.tolist())) == len(out)
    assert (sub["stock"] > 0).all()  # never out of stock, pinned or not
    if lo is not None:
        assert (sub["price"] >= lo).all()
    if hi is not None:
        assert (sub["price"] <= hi).all()
    assert set(out.tolist()) <= set(rows.tolist()) | set(
        rules.row_of_id_.reindex(pinned_ids).dropna().astype(int)
    )
    # Pins come first (when shown at all), in configured order.
    n_pins = len(report.pinned)
    assert products.iloc[out[:n_pins]]["product_id"].tolist() == report.pinned[: len(out[:n_pins])]
    # Brand cap in the top 10 whenever the candidates allow it (pins are exempt, but count).
    eligible = products.iloc[[r for r in rows if r in set(out.tolist())]]
    top = sub.iloc[:10]
    fillable = eligible.groupby("brand").size().clip(upper=cap).sum()
    if fillable >= min(10, len(out)) and n_pins == 0:
        assert top["brand"].value_counts().max() <= cap
    # Everything that passed the filters is kept (up to k): diversity reorders, never drops.
    survivors = products.iloc[rows]
    survivors = survivors[
        (survivors["stock"] > 0) & (survivors["price"] >= (lo or -1)) & (survivors["price"] <= (hi or 1e9))
    ]
    assert len(out) == min(k, len(set(survivors.index) | set(out.tolist())))


def test_diversity_is_off_for_brand_queries_and_keeps_order_otherwise() -> None:
    products = pd.DataFrame(
        {"product_id": range(12), "brand": ["A"] * 8 + ["B"] * 4, "price": 10.0, "stock": 1}
    )
    rules = BusinessRules(RuleConfig(max_per_brand=3)).fit(products)
    out, rep = rules.apply(np.arange(12))
    assert out.tolist() == [0, 1, 2, 8, 9, 10, 3, 4, 5, 6, 7, 11]  # 3 per brand first, then score order
    assert rep.demoted_for_diversity > 0
    default, _ = BusinessRules(RuleConfig(k_max_results=5)).fit(products).apply(np.arange(12))
    assert len(default) == 5  # top 48 by default; here configured to 5
    same, rep2 = rules.apply(np.arange(12), brand_in_query=True)
    assert same.tolist() == list(range(12)) and not rep2.diversity_applied


def test_pins_respect_hard_rules_and_padding_is_ignored() -> None:
    products = pd.DataFrame(
        {"product_id": [1, 2, 3, 4], "brand": list("ABCD"), "price": [10, 20, 30, 40], "stock": [1, 0, 1, 1]}
    )
    rules = BusinessRules(RuleConfig(pinned={"lamp": (4, 2, 99)})).fit(products)
    out, rep = rules.apply(np.array([0, 1, 2, -1, -1]), query="Lamp", price_max=35)
    assert rep.pinned == [] and out.tolist() == [0, 2]  # 4 over budget, 2 out of stock, 99 unknown
    out, rep = rules.apply(np.array([0, 2]), query="lamp")
    assert rep.pinned == [4] and out.tolist() == [3, 0, 2]
    assert rep.dropped_out_of_stock == 0


@pytest.mark.parametrize("seed", range(10))
def test_category_named_in_the_query_comes_first(seed: int) -> None:
    rng = np.random.default_rng(seed)
    products = _catalog(rng)
    products["category"] = rng.choice(
        ["Home / Decor / Lamps", "Home / Furniture / Chairs", "Fashion / Shoes"], len(products)
    )
    rules = BusinessRules(RuleConfig(diversity_top=0)).fit(products)
    rows = rng.permutation(len(products))[:150]
    out, rep = rules.apply(rows, category="Home / Decor", k=100)
    in_cat = products.iloc[out]["category"].str.startswith("Home / Decor").to_numpy()
    assert rep.category_first == "Home / Decor"
    # never an in-category result after an off-category one
    assert not (np.diff(in_cat.astype(int)) > 0).any()
    # Within each side the score order is kept.
    kept = [r for r in rows if products.iloc[r]["stock"] > 0]
    in_order = [r for r in kept if products.iloc[r]["category"].startswith("Home / Decor")]
    assert out[: len(in_order)].tolist() == in_order[:100]


def test_a_catalog_without_prices_skips_the_price_filter_and_says_so() -> None:
    rng = np.random.default_rng(1)
    with_prices = _catalog(rng, n=50)
    rows = np.arange(50)
    final, report = BusinessRules(RuleConfig()).fit(with_prices).apply(rows, price_max=20.0)
    assert report.price_filter_skipped is None and report.dropped_price > 0
    assert (with_prices["price"].to_numpy()[final] <= 20.0).all()
    no_prices = with_prices.assign(price=np.nan, stock=np.ones(50, dtype=np.int64))
    final, report = BusinessRules(RuleConfig()).fit(no_prices).apply(rows, price_max=20.0, k=48)
    assert report.price_filter_skipped == "the catalog has no prices" and report.dropped_price == 0
    assert len(final) == 48
