"""Entity extraction: price constraints, brand, colour and category from the query text.

Prices are found by patterns that need a price word or a currency sign, so sizes ("18x18",
"6 1/2 foot") never become prices: "under $50", "below 50", "between 20 and 40", "$20-$40", "$100+",
"over 200 dollars", and Spanish / German forms ("menos de 50", "unter 50"). The matched span is
removed from the text handed to retrieval. Brands and categories are looked up as 1-3 word
n-grams (plural-folded) in dictionaries built from the catalog; colours from a fixed list plus
common abbreviations ("blk" -> black, without rewriting the query).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd

from mlsd.search.data import CATEGORY_SEPARATOR
from mlsd.search.text import fold, stem, tokenize

COLORS: tuple[str, ...] = (
    "black", "white", "red", "blue", "green", "gray", "grey", "silver", "pink", "brown", "beige", "navy",
    "gold", "yellow", "orange", "purple", "ivory", "tan", "teal", "charcoal", "cream", "bronze", "clear",
)  # fmt: skip
COLOR_ALIASES: dict[str, str] = {
    "blk": "black",
    "wht": "white",
    "gry": "gray",
    "grey": "gray",
    "brn": "brown",
    "navy blue": "navy",
    "rose": "pink",
}

_NUM = r"\$?\s?(\d+(?:[.,]\d{1,2})?)\s?(?:\$|usd|dol+a*r+s?\b|bucks|euros?\b|eur\b|€)?"
_PRICE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "range",
        re.compile(
            r"\b(?:between|from|entre|de|zwischen|von)\s+" + _NUM + r"\s+(?:and|to|-|y|a|und|bis)\s+" + _NUM
        ),
    ),
    ("range", re.compile(r"\$\s?(\d+(?:\.\d{1,2})?)\s?-\s?\$?\s?(\d+(?:\.\d{1,2})?)")),
    (
        "max",
        re.compile(
            r"\b(?:under|below|less than|cheaper than|max|at most|up to|no more than|"
            r"menos de|por debajo de|hasta|unter|bis zu|weniger als|maximal)\s+" + _NUM
        ),
    ),
    (
        "min",
        re.compile(
            r"\b(?:over|above|more than|at least|min|starting at|mas de|desde|uber|ueber|"
            r"mehr als|ab)\s+" + _NUM
        ),
    ),
    ("min", re.compile(r"\$\s?(\d+(?:\.\d{1,2})?)\s?\+")),
    ("min", re.compile(r"\b(\d+(?:\.\d{1,2})?)\s?(?:\$|dol+a*r+s?\b|usd|euros?\b|eur\b|€)\s?\+")),
)


@dataclass
class Entities:
    """What the query asks for beyond its words. ``None`` = not asked."""

    category: str | None = None
    brand: str | None = None
    color: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _num(text: str) -> float:
    return float(text.replace(",", "."))


def extract_price(text: str) -> tuple[float | None, float | None, str]:
    """``(price_min, price_max, text without the price phrase)`` from folded text."""
    lo = hi = None
    for kind, pattern in _PRICE_PATTERNS:
        m = pattern.search(text)
        if not m:
            continue
        if kind == "range":
            a, b = _num(m.group(1)), _num(m.group(2))
            lo, hi = min(a, b), max(a, b)
        elif kind == "max":
            hi = _num(m.group(1))
        else:
            lo = _num(m.group(1))
        text = (text[: m.start()] + " " + text[m.end() :]).strip()
        if lo is not None and hi is not None:
            break
    return lo, hi, re.sub(r"\s+", " ", text)


def _stem_phrase(phrase: str) -> tuple[str, ...]:
    return tuple(stem(t) for t in tokenize(phrase))


class EntityExtractor:
    """``fit(products)`` learns brands and categories from the catalog; ``extract(text)`` finds them."""

    def __init__(
        self,
        max_ngram: int = 3,
        category_synonyms: Sequence[tuple[str, str]] = (),
        mine_category_terms: bool = True,
        min_share: float = 0.95,
        min_coverage: float = 0.3,
        sample: int = 200_000,
    ) -> None:
        self.max_ngram = max_ngram
        self.category_synonyms = category_synonyms
        self.mine_category_terms = mine_category_terms
        self.min_share = min_share
        self.min_coverage = min_coverage
        self.sample = sample

    def _mine_category_terms(self, products: pd.DataFrame) -> dict[tuple[str, ...], str]:
        """Title words and bigrams that name a category: nearly all their uses are in that category
        and they occur in a good share of its titles ("knife set" -> Knives, "mouse" -> Mice)."""
        pairs = products.loc[products["category"].astype(str).str.len() > 0, ["title", "category"]]
        pairs = pairs.astype(str).drop_duplicates()
        if len(pairs) > self.sample:
            pairs = pairs.sample(self.sample, random_state=0)
        if pairs.empty:
            return {}
        per_cat: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
        total: Counter[tuple[str, ...]] = Counter()
        titles_per_cat: Counter[str] = Counter()
        brand_terms = {t for key in self.brands_ for t in key}
        for title, cat in zip(pairs["title"].tolist(), pairs["category"].tolist(), strict=True):
            stems = [stem(t) for t in tokenize(title) if t.isalpha()]
            grams = {(t,) for t in stems if t not in brand_terms}
            grams |= {tuple(stems[i : i + 2]) for i in range(len(stems) - 1)}
            per_cat[cat].update(grams)
            total.update(grams)
            titles_per_cat[cat] += 1
        out: dict[tuple[str, ...], str] = {}
        for cat, counts in per_cat.items():
            for gram, c in counts.items():
                if (
                    c >= self.min_coverage * titles_per_cat[cat]
                    and c >= self.min_share * total[gram]
                    and c >= 3
                ):
                    out[gram] = cat
        return out

    def fit(self, products: pd.DataFrame) -> EntityExtractor:
        brands = products["brand"].dropna().astype(str) if "brand" in products else pd.Series([], dtype=str)
        self.brands_: dict[tuple[str, ...], str] = {}
        for brand in brands.unique():
            key = _stem_phrase(brand)
            if key:
                self.brands_[key] = brand
        self.categories_: dict[tuple[str, ...], str] = {}
        paths = products["category"].dropna().astype(str).unique() if "category" in products else []
        for path in paths:
            parts = [p.strip() for p in path.split(CATEGORY_SEPARATOR.strip()) if p.strip()]
            for depth in range(len(parts)):
                key = _stem_phrase(parts[depth])
                # The deepest (most specific) path wins for a name that appears at several depths.
                prefix = CATEGORY_SEPARATOR.join(parts[: depth + 1])
                if key and (
                    key not in self.categories_
                    or depth + 1 > self.categories_[key].count(CATEGORY_SEPARATOR) + 1
                ):
                    self.categories_[key] = prefix
        if self.mine_category_terms:
            for key, path in self._mine_category_terms(products).items():
                self.categories_.setdefault(key, path)
        for synonym, name in self.category_synonyms:
            target = self.categories_.get(_stem_phrase(name))
            if target:
                self.categories_.setdefault(_stem_phrase(synonym), target)
        self.colors_: dict[tuple[str, ...], str] = {_stem_phrase(c): COLOR_ALIASES.get(c, c) for c in COLORS}
        for alias, color in COLOR_ALIASES.items():
            self.colors_[_stem_phrase(alias)] = color
        self.brand_terms_ = frozenset(t for key in self.brands_ for t in key)
        self.category_terms_ = frozenset(t for key in self.categories_ for t in key)
        self.color_terms_ = frozenset(t for key in self.colors_ for t in key)
        return self

    def _lookup(self, stems: list[str], table: dict[tuple[str, ...], str]) -> str | None:
        for n in range(min(self.max_ngram, len(stems)), 0, -1):
            for i in range(len(stems) - n + 1):
                hit = table.get(tuple(stems[i : i + n]))
                if hit is not None:
                    return hit
        return None

    def extract(self, text: str) -> tuple[Entities, str]:
        """Entities of one query and the query text with the price phrase removed."""
        lo, hi, rest = extract_price(fold(text))
        stems = [stem(t) for t in tokenize(rest)]
        return Entities(
            category=self._lookup(stems, self.categories_),
            brand=self._lookup(stems, self.brands_),
            color=self._lookup(stems, self.colors_),
            price_min=lo,
            price_max=hi,
        ), rest
