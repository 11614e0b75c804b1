"""Intent classifier: trained on queries synthesised from a catalog, accuracy measured on held-out ones."""

from __future__ import annotations

import pytest

from mlsd.platform.errors import InputError
from mlsd.search.entities import EntityExtractor
from mlsd.search.intent import IntentClassifier, synthesize_intent_queries


@pytest.fixture(scope="module")
def classifier(tiny_catalog):
    products = tiny_catalog
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


def test_rejects_unknown_labels(tiny_catalog):
    products = tiny_catalog
    with pytest.raises(InputError, match="unknown intent"):
        IntentClassifier().fit(["a", "b"], ["product", "shopping"], EntityExtractor().fit(products))
