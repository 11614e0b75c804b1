"""Entity parser: prices in many phrasings, brand, colour, category; sizes never become prices."""

from __future__ import annotations

import pandas as pd
import pytest

from mlsd.search.entities import EntityExtractor, extract_price


@pytest.mark.parametrize(
    ("text", "lo", "hi", "rest"),
    [
        ("headphones under $50", None, 50.0, "headphones"),
        ("sofa between 20 and 40", 20.0, 40.0, "sofa"),
        ("tv $100+", 100.0, None, "tv"),
        ("lamp $20-$40", 20.0, 40.0, "lamp"),
        ("chair over 200 dollars", 200.0, None, "chair"),
        ("desk below 99.99", None, 99.99, "desk"),
        ("auriculares menos de $60", None, 60.0, "auriculares"),
        ("lampe unter 50 euro", None, 50.0, "lampe"),
        ("mouse between 10 and 20 dolars", 10.0, 20.0, "mouse"),
        ("blk 18x18 seat cushions", None, None, "blk 18x18 seat cushions"),
        ("6 1/2 foot prelit christmas trees", None, None, "6 1/2 foot prelit christmas trees"),
        ("32 * 80 door", None, None, "32 * 80 door"),
    ],
)
def test_price(text, lo, hi, rest):
    assert extract_price(text) == (lo, hi, rest)


@pytest.fixture(scope="module")
def extractor():
    products = pd.DataFrame(
        {
            "product_id": range(7),
            "title": [
                "Sonix Pro Headphones, Black",
                "Sonix Wireless Headphones",
                "Casara Modern Sofa",
                "Casara Rustic Sofa",
                "Nordhem Knife Set",
                "Nordhem Classic Knife Set",
                "Nordhem Chef Knife Set",
            ],
            "brand": ["Sonix", "Sonix", "Casara", "Casara", "Nordhem", "Nordhem", "Nordhem"],
            "category": ["Electronics / Audio / Headphones"] * 2
            + ["Home / Furniture / Sofas"] * 2
            + ["Home / Kitchen / Knives"] * 3,
        }
    )
    return EntityExtractor(category_synonyms=[("couch", "sofa")]).fit(products)


def test_brand_color_category(extractor):
    e, rest = extractor.extract("Sonix black headphones under $80")
    assert (e.brand, e.color, e.category, e.price_max) == (
        "Sonix",
        "black",
        "Electronics / Audio / Headphones",
        80.0,
    )
    assert rest == "sonix black headphones"
    e, _ = extractor.extract("blk couch")
    assert (e.color, e.category, e.brand) == ("black", "Home / Furniture / Sofas", None)
    # "knife set" is mined from titles (the category is called Knives)
    assert extractor.extract("knife set")[0].category == "Home / Kitchen / Knives"
    assert extractor.extract("audio")[0].category == "Electronics / Audio"
    assert extractor.extract("garden hose")[0] == type(e)()
