"""Query intent: is the shopper looking for a specific product, a brand, or a category?

A logistic regression over the query's words plus entity markers (``__brand__`` when a catalog
brand is named, ``__cat__`` for a category, ``__rest_N`` for the number of words no entity
explains, digits, price and colour markers). The markers let it generalise to brands and
categories it never saw in training. Training data: labelled queries (e.g. the simulator's query
specs, mapped by :data:`SIMULATOR_INTENTS`) or, by default, queries synthesised from the catalog
(:func:`synthesize_intent_queries`). Accuracy is measured on held-out queries and kept in
``accuracy_``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.search.data import CATEGORY_SEPARATOR
from mlsd.search.entities import COLORS, EntityExtractor
from mlsd.search.text import has_digit, stem, tokenize

INTENTS: tuple[str, ...] = ("product", "brand", "category")
# The simulator's query specs -> intents (a brand plus a category is a product search).
SIMULATOR_INTENTS: dict[str, str] = {
    "category": "category",
    "brand": "brand",
    "brand_category": "product",
    "color_category": "category",
    "price_category": "category",
}


def intent_markers(text: str, extractor: EntityExtractor) -> str:
    """``text`` plus entity markers, the input the classifier sees."""
    entities, rest = extractor.extract(text)
    stems = [stem(t) for t in tokenize(rest)]
    known = extractor.brand_terms_ | extractor.category_terms_ | extractor.color_terms_
    unexplained = sum(t not in known for t in stems)
    marks = [f"__rest_{min(unexplained, 3)}", f"__len_{min(len(stems), 4)}"]
    if entities.brand:
        marks.append("__brand__")
    if entities.category:
        marks.append("__cat__")
    if entities.color:
        marks.append("__color__")
    if entities.price_min is not None or entities.price_max is not None:
        marks.append("__price__")
    if any(has_digit(t) for t in stems):
        marks.append("__num__")
    return " ".join([*stems, *marks])


def synthesize_intent_queries(
    products: pd.DataFrame, n: int = 3000, seed: int = 0, extractor: EntityExtractor | None = None
) -> pd.DataFrame:
    """Labelled queries drawn from the catalog: brand names, category names (with colours or price
    words), and product queries (brand + title words, title fragments, model numbers)."""
    rng = np.random.default_rng(seed)
    brands = [b for b in products["brand"].dropna().astype(str).unique() if b.strip()]
    cats = sorted(
        {
            p.strip()
            for path in products["category"].dropna().astype(str).unique()
            for p in path.split(CATEGORY_SEPARATOR.strip())
            if p.strip()
        }
    )
    if extractor is not None:  # also the words that name a category (mined or curated): "knife set"
        cats += sorted({" ".join(key) for key in extractor.categories_})
    titles = products["title"].astype(str).to_numpy()
    # A title fragment made only of category and colour words is a category search, not a product one.
    generic = (extractor.category_terms_ | extractor.color_terms_) if extractor is not None else frozenset()
    rows: list[tuple[str, str]] = []
    for _ in range(n):
        kind = rng.integers(0, 4)
        if kind == 3 and brands and cats:  # a brand within a category names a product line
            b, c = brands[rng.integers(len(brands))].lower(), cats[rng.integers(len(cats))].lower()
            rows.append((f"{b} {c}" if rng.random() < 0.7 else f"{c} {b}", "product"))
        elif kind == 1 and brands:
            b = brands[rng.integers(len(brands))].lower()
            rows.append(
                (b if rng.random() < 0.8 else f"{b} {rng.choice(['store', 'brand', 'products'])}", "brand")
            )
        elif kind == 2 and cats:
            c = cats[rng.integers(len(cats))].lower()
            r = rng.random()
            if r < 0.25:
                c = f"{rng.choice(COLORS)} {c}"
            elif r < 0.45:
                c = f"{c} under ${int(rng.integers(1, 50)) * 10}"
            elif r < 0.55:
                c = f"cheap {c}"
            rows.append((c, "category"))
        else:
            words = tokenize(titles[rng.integers(len(titles))])
            if len(words) >= 2:
                start = int(rng.integers(0, max(1, len(words) - 2)))
                size = int(rng.integers(2, min(6, len(words)) + 1))
                fragment = words[start : start + size]
                if not all(stem(w) in generic for w in fragment):
                    rows.append((" ".join(fragment), "product"))
    frame = pd.DataFrame(rows, columns=["text", "intent"]).drop_duplicates("text")
    return frame.reset_index(drop=True)


class IntentClassifier:
    """TF-IDF over words + entity markers, multinomial logistic regression."""

    def __init__(self, C: float = 4.0, test_size: float = 0.25, seed: int = 0) -> None:
        self.C = C
        self.test_size = test_size
        self.seed = seed

    def fit(
        self, texts: Sequence[str], intents: Sequence[str], extractor: EntityExtractor
    ) -> IntentClassifier:
        """Train; hold out ``test_size`` of the queries to measure ``accuracy_``, then refit on all."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline

        labels = np.asarray(intents, dtype=object)
        unknown = set(labels) - set(INTENTS)
        if unknown:
            raise InputError("intents", sorted(unknown)[0], "unknown intent", f"use {', '.join(INTENTS)}")
        self.extractor_ = extractor
        X = [intent_markers(t, extractor) for t in texts]

        def model():
            return make_pipeline(
                TfidfVectorizer(token_pattern=r"\S+", ngram_range=(1, 2), sublinear_tf=True),
                LogisticRegression(C=self.C, max_iter=2000),
            )

        self.classes_ = sorted(set(labels))
        if len(self.classes_) < 2:
            self.model_, self.accuracy_, self.n_test_ = None, float("nan"), 0
            return self
        Xtr, Xte, ytr, yte = train_test_split(
            X, labels, test_size=self.test_size, random_state=self.seed, stratify=labels
        )
        held_out = model().fit(Xtr, ytr)
        self.accuracy_ = float((held_out.predict(Xte) == yte).mean())
        self.n_test_ = len(yte)
        self.model_ = model().fit(X, labels)
        return self

    def predict_proba(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """``(intent per text, confidence per text)``."""
        if self.model_ is None:
            return [self.classes_[0] if self.classes_ else "product"] * len(texts), np.ones(len(texts))
        proba = self.model_.predict_proba([intent_markers(t, self.extractor_) for t in texts])
        best = proba.argmax(axis=1)
        classes = self.model_.classes_
        return [str(classes[i]) for i in best], proba[np.arange(len(texts)), best]

    def predict(self, texts: Sequence[str]) -> list[str]:
        return self.predict_proba(texts)[0]
