"""Simulator: schema, determinism, query noise, ground truth and the position-biased click model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.search.data import TEXT_FIELDS
from mlsd.search.simulate import (
    ClickModel,
    Simulation,
    simulate,
    simulate_catalog,
    true_grades,
    true_propensity,
)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(2000, 6000, seed=3, n_queries=200, n_users=300)


def test_catalog_schema_and_ranges(sim: Simulation) -> None:
    p = sim.products
    for col in (
        "product_id",
        *TEXT_FIELDS,
        "price",
        "rating",
        "review_count",
        "reviews_90d",
        "last_review_ts",
        "return_rate",
        "stock",
        "margin",
        "promoted",
        "color",
        "material",
        "size",
    ):
        assert col in p.columns, col
    assert p["product_id"].is_unique
    assert (p["price"] > 0).all() and p["rating"].between(1, 5).all()
    assert p["return_rate"].between(0, 0.6).all() and (p["stock"] >= 0).all()
    assert (p["reviews_90d"] <= p["review_count"]).all()
    assert 0.02 < (p["stock"] == 0).mean() < 0.15  # some out of stock, for the rules to drop
    assert p["category"].astype(str).str.count(" / ").eq(2).all()  # three-level hierarchy
    # Titles carry brand and colour; the attribute string the retrieval schema wants is there.
    first = p.iloc[0]
    assert str(first["brand"]) in str(first["title"]) and str(first["color"]).title() in str(first["title"])
    assert f"color: {first['color']}" in str(first["attributes"])


def test_catalog_is_deterministic_and_titles_finite() -> None:
    a, _ = simulate_catalog(5000, seed=1)
    b, _ = simulate_catalog(5000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    c, _ = simulate_catalog(5000, seed=2)
    assert not np.array_equal(a["price"].to_numpy(), c["price"].to_numpy())
    # Templates: far fewer distinct titles than products once the catalog is large.
    big, _ = simulate_catalog(30_000, seed=0)
    assert big["title"].nunique() < 0.7 * len(big)


def test_too_small_catalog_is_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        simulate_catalog(10)
    assert err.value.field == "--products"


def test_query_stream_has_the_noise_asked_for(sim: Simulation) -> None:
    q = sim.queries
    assert q["text"].is_unique
    assert set(q["intent"]) >= {"category", "brand", "brand_category", "color_category", "price_category"}
    assert (q["lang"] == "es").sum() >= 5 and q["typo"].sum() >= 5 and q["synonym"].sum() >= 5
    priced = q[q["intent"] == "price_category"]
    assert (priced["price_max"].notna() | priced["price_min"].notna()).all()
    assert priced["text"].str.contains(r"\$|dollars").all()
    assert (
        q.loc[q["lang"] == "es", "text"]
        .str.contains(
            "auriculares|altavoz|silla|mochila|menos de|camiseta|reloj|zapatillas|mesa|sartén|manta|botas|chaqueta|funda|cargador|teclado|ratón|cámara|lámpara|cojín|cuchillos|esterilla|tienda|casco|portátil|sofá|sofa"
        )
        .all()
    )
    assert np.isclose(q["weight"].sum(), 1.0)


def test_true_grades_known_answers() -> None:
    products, truth = simulate_catalog(500, seed=0)
    p0 = products.iloc[0]
    queries = pd.DataFrame(
        {
            "leaf_id": [int(p0["leaf_id"]), int(p0["leaf_id"]), int(p0["leaf_id"]), -1, int(p0["leaf_id"])],
            "brand_id": [-1, int(p0["brand_id"]), (int(p0["brand_id"]) + 1) % 32, int(p0["brand_id"]), -1],
            "color_id": [-1, -1, -1, -1, -1],
            "price_min": [np.nan] * 5,
            "price_max": [np.nan, np.nan, np.nan, np.nan, float(p0["price"]) - 1.0],
        }
    )
    truth.loc[0, "quality"] = 0.0  # not top quality: grade 2 where everything matches
    grades = true_grades(queries, np.arange(5), products, truth, np.zeros(5, dtype=np.int64))
    assert grades.tolist() == [2, 2, 1, 2, 1]  # match, brand match, wrong brand, brand query, over budget
    truth.loc[0, "quality"] = 2.0
    assert true_grades(queries, np.array([0]), products, truth, np.array([0]))[0] == 3
    other_leaf = int(np.flatnonzero(products["leaf_id"].to_numpy() != p0["leaf_id"])[0])
    assert true_grades(queries, np.array([0]), products, truth, np.array([other_leaf]))[0] == 0


def test_click_log_is_position_biased_with_swaps(sim: Simulation) -> None:
    imp = sim.impressions
    k = sim.click_model.page_size
    assert imp.groupby("search_id").size().eq(k).all()
    assert set(imp["position"].unique()) == set(range(1, k + 1))
    # Funnel: purchase => cart => click; order value only with a purchase.
    assert not (imp["purchased"] & ~imp["added_to_cart"]).any()
    assert not (imp["added_to_cart"] & ~imp["clicked"]).any()
    assert ((imp["order_value"] > 0) == imp["purchased"]).all()
    # Randomised swaps: the logged top result shown lower in about swap_rate of the searches.
    swapped = imp[(imp["logged_position"] == 1) & (imp["position"] > 1)]["search_id"].nunique()
    assert 0.1 < swapped / imp["search_id"].nunique() < 0.3
    ctr = imp.groupby("position")["clicked"].mean()
    assert ctr.iloc[0] > 2 * ctr.iloc[4] > 0


def test_true_propensity_curve() -> None:
    np.testing.assert_allclose(true_propensity(np.array([1, 2, 4]), 1.0), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(true_propensity(np.array([1, 4]), 0.5), [1.0, 0.5])


def test_save_load_roundtrip(tmp_path, sim: Simulation) -> None:
    sim.save(tmp_path)
    back = Simulation.load(tmp_path)
    assert len(back.impressions) == len(sim.impressions) and back.click_model == sim.click_model
    with pytest.raises(InputError):
        Simulation.load(tmp_path / "nope")


def test_click_model_settings_are_used() -> None:
    flat = simulate(
        800, 2000, seed=0, n_queries=50, n_users=50, click_model=ClickModel(eta=0.0, swap_rate=0.0)
    )
    assert (flat.impressions["position"] == flat.impressions["logged_position"]).all()
    np.testing.assert_allclose(flat.true_propensities(5), np.ones(5))
