"""Query understanding end to end: ParsedQuery fields, guards, other languages, bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.search.query import QueryUnderstanding


@pytest.fixture(scope="module")
def qu(tiny_catalog):
    products = tiny_catalog
    extra = products.iloc[:4].copy()
    extra["product_id"] += 1000
    extra["title"] = [
        "Komfy Seat Cushions 18x18",
        "Sonix Wireless Headphones",
        "Sonix Wireless Earbuds",
        "Casara Couch",
    ]
    extra["category"] = [
        "Home / Decor / Seat Cushions",
        "Electronics / Audio / Headphones",
        "Electronics / Audio / Headphones",
        "Home / Furniture / Sofas",
    ]
    return QueryUnderstanding().fit(pd.concat([products, extra]), query_log=["sofa", "boots"])


def test_typo_price_entities(qu):
    p = qu.parse_one("Sonix wireles headphones under $50")
    assert p.corrected == "sonix wireless headphones"
    assert p.corrections == {"wireles": "wireless"}
    assert p.entities.brand == "Sonix" and p.entities.price_max == 50.0 and p.entities.price_min is None
    assert p.entities.category == "Electronics / Audio / Headphones"
    assert "earbuds" in p.expansions and p.language == "en"
    assert p.to_dict()["entities"]["price_max"] == 50.0


def test_guarded_query_unchanged(qu):
    p = qu.parse_one("blk 18x18 seat cushions")
    assert p.corrected == "blk 18x18 seat cushions" and p.corrections == {}
    assert p.entities.color == "black"


def test_spanish_query(qu):
    p = qu.parse_one("auriculares negros menos de $60")
    assert p.language == "es"
    assert p.corrected == "headphones black"  # the plural "negros" found through its base form "negro"
    assert p.entities.price_max == 60.0 and p.entities.category == "Electronics / Audio / Headphones"


def test_batch_entities_and_cache(qu):
    parsed = qu.parse(["casara", "sofa", "sofa"])
    assert parsed[0].entities.brand == "Casara" and parsed[0].entities.category is None
    assert parsed[1].entities.category == "Home / Furniture / Sofas" and parsed[1].entities.brand is None
    assert parsed[1] is parsed[2]  # cached
    assert "intent" not in parsed[0].to_dict()  # no intent label: measured and removed (docs/search.md)


@pytest.mark.parametrize("bad", ["", "   ", "x" * 10_000, None])
def test_bad_queries(qu, bad):
    with pytest.raises(InputError) as err:
        qu.parse_one(bad)
    assert err.value.field == "q"
    if isinstance(bad, str) and len(bad) > 100:
        assert err.value.status == 413 and len(str(err.value)) < 400


def test_understanding_report_on_simulated_queries():
    from mlsd.search.query import understanding_report
    from mlsd.search.world import simulate_catalog, simulate_queries

    products, _ = simulate_catalog(600, seed=1)
    queries = simulate_queries(products, 150, seed=1)
    report = understanding_report(products, queries.head(120), seed=1)
    assert report["queries"] == 120
    assert report["language_accuracy"] > 0.9 and 0 < report["parse_ms_p50"] <= report["parse_ms_p99"]
    assert report["clean_queries_changed"] <= 0.02  # guards: clean queries are (almost) never rewritten


def test_synonyms_curated_and_mined():
    import numpy as np

    from mlsd.search.synonyms import SynonymExpander, mine_from_coclicks, mine_from_embeddings

    mined = mine_from_coclicks(
        ["red couch", "red sofa", "blue couch", "blue sofa", "red lamp", "red light"],
        [1, 1, 2, 2, 3, 4],
        min_support=2,
    )
    assert mined == {"couch": ["sofa"]}  # lamp/light co-clicked no product, so no pair
    vectors = np.array([[1, 0, 0], [0.95, 0.31, 0], [0, 0, 1], [0, 0.2, 0.98]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert mine_from_embeddings(["earbuds", "earphones", "rug", "carpets"], vectors, threshold=0.9) == {
        "earbuds": ["earphones"],
        "rug": ["carpets"],
    }
    expander = SynonymExpander(curated=[("tv", "television")], max_expansions=3).fit({"settee": ["couch"]})
    assert expander.expand(["settee"]) == ["couch"]
    assert expander.expand(["couch"]) == ["settee"]
    assert expander.expand(["tv", "television"]) == []  # nothing the query already says
