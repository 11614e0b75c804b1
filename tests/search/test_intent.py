"""Intent classifier: trained on queries synthesised from a catalog, accuracy measured on held-out ones."""

from __future__ import annotations

import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.search.entities import EntityExtractor
from mlsd.search.intent import IntentClassifier, synthesize_intent_queries


def tiny_catalog() -> pd.DataFrame:
    brands = ["Sonix", "Auralis", "Casara", "Nordhem", "Stridex", "Peakline"]
    leaves = [
        ("Electronics / Audio / Headphones", "Headphones"),
        ("Home / Furniture / Sofas", "Sofa"),
        ("Home / Kitchen / Knives", "Knife Set"),
        ("Fashion / Shoes / Boots", "Boots"),
    ]
    mods = ["Pro", "Classic", "Modern", "Ultra", "Compact"]
    rows = []
    for i in range(240):
        cat, noun = leaves[i % len(leaves)]
        rows.append(
            {
                "product_id": i,
                "title": f"{brands[i % 6]} {mods[i % 5]} {noun} X{i % 7}",
                "brand": brands[i % 6],
                "category": cat,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def classifier():
    products = tiny_catalog()
    extractor = EntityExtractor().fit(products)
    data = synthesize_intent_queries(products, n=800, seed=0, extractor=extractor)
    return IntentClassifier().fit(data["text"], data["intent"], extractor)


def test_accuracy_reported_and_high(classifier):
    assert classifier.n_test_ > 50
    assert classifier.accuracy_ >= 0.9


def test_predicts_each_intent(classifier):
    assert classifier.predict(["auralis", "headphones", "sonix pro headphones x3"]) == [
        "brand",
        "category",
        "product",
    ]
    _, confidence = classifier.predict_proba(["sofa"])
    assert 0.34 < confidence[0] <= 1.0


def test_rejects_unknown_labels():
    products = tiny_catalog()
    with pytest.raises(InputError, match="unknown intent"):
        IntentClassifier().fit(["a", "b"], ["product", "shopping"], EntityExtractor().fit(products))
