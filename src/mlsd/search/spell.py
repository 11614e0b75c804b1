"""Spell correction with SymSpell over a dictionary built from the catalog and the query log.

Guards (the reason this is more than a SymSpell call): a token is never rewritten when it

- contains a digit (numbers, sizes, model numbers: "18x18", "d125", "cr123"),
- is shorter than ``min_length`` (abbreviations such as "blk", "qt", "pk" are not typos),
- is a known word (any catalog term, or a query-log term seen ``min_query_count`` times),
- is protected (known brands, abbreviations, foreign-language lexicon terms).

So "wireles" -> "wireless" while "blk 18x18 seat cushions" stays as it is. Results are cached per
token: a query costs a few dictionary look-ups.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from mlsd.search.text import has_digit, tokenize

ABBREVIATIONS: frozenset[str] = frozenset(
    [
        "blk",
        "wht",
        "gry",
        "brn",
        "bk",
        "wh",
        "pk",
        "pcs",
        "pc",
        "qt",
        "gal",
        "oz",
        "lb",
        "lbs",
        "ft",
        "in",
        "cm",
        "mm",
        "kg",
        "xl",
        "xxl",
        "xs",
        "sm",
        "med",
        "lg",
        "led",
        "usb",
        "hdmi",
        "tv",
    ]
)


class SpellCorrector:
    """SymSpell-backed corrector; ``fit(catalog_texts, query_log, protected)`` then ``correct(texts)``."""

    def __init__(
        self,
        max_edit_distance: int = 2,
        min_length: int = 4,
        min_query_count: int = 3,
        prefix_length: int = 7,
    ) -> None:
        self.max_edit_distance = max_edit_distance
        self.min_length = min_length
        self.min_query_count = min_query_count
        self.prefix_length = prefix_length

    def fit(
        self, catalog_texts: Iterable[str], query_log: Iterable[str] = (), protected: Iterable[str] = ()
    ) -> SpellCorrector:
        from symspellpy import SymSpell

        catalog = Counter(t for text in catalog_texts for t in tokenize(text) if t.isalpha())
        queries = Counter(t for text in query_log for t in tokenize(text) if t.isalpha())
        self.symspell_ = SymSpell(
            max_dictionary_edit_distance=self.max_edit_distance, prefix_length=self.prefix_length
        )
        for term, count in catalog.items():
            if len(term) >= 2:
                self.symspell_.create_dictionary_entry(term, count)
        # Query-log words enter the dictionary only when frequent (rare query words are where typos
        # live) and not one edit away from a catalog word: a repeated typo stays a typo.
        from symspellpy import Verbosity

        counts = Counter(catalog)
        for term, count in queries.items():
            if count < self.min_query_count or term in catalog or len(term) < 2:
                continue
            near = (
                self.symspell_.lookup(term, Verbosity.CLOSEST, max_edit_distance=1)
                if len(term) >= self.min_length
                else []
            )
            if near:
                continue
            counts[term] += count
            self.symspell_.create_dictionary_entry(term, count)
        self.known_ = frozenset(counts)
        self.catalog_known_ = frozenset(catalog)
        self.protected_ = frozenset(p.lower() for p in protected) | ABBREVIATIONS
        self._cache: dict[str, str] = {}
        return self

    def add_protected(self, terms: Iterable[str]) -> None:
        """Protect more terms (e.g. brands learned later) from correction."""
        self.protected_ = self.protected_ | frozenset(t.lower() for t in terms)
        self._cache.clear()

    def correct_token(self, token: str) -> str:
        """The correction of one lower-case token (itself when guarded or nothing is close)."""
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        out = token
        if (
            len(token) >= self.min_length
            and token.isalpha()
            and not has_digit(token)
            and token not in self.known_
            and token not in self.protected_
        ):
            from symspellpy import Verbosity

            distance = 1 if len(token) <= 5 else self.max_edit_distance
            suggestions = self.symspell_.lookup(
                token, Verbosity.CLOSEST, max_edit_distance=distance, transfer_casing=False
            )
            if suggestions:
                out = suggestions[0].term
        if len(self._cache) < 500_000:
            self._cache[token] = out
        return out

    def correct_tokens(self, tokens: list[str]) -> list[str]:
        return [self.correct_token(t) for t in tokens]

    def correct(self, texts: list[str]) -> list[str]:
        """Corrected texts: tokens joined by single spaces (guarded tokens unchanged)."""
        return [" ".join(self.correct_tokens(tokenize(t))) for t in texts]
