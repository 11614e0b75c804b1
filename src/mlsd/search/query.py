"""Query understanding: raw text in, a :class:`ParsedQuery` out, in about a millisecond.

Data flow of :meth:`QueryUnderstanding.parse` (each step a small module):

1. validate (non-empty, at most ``max_chars``) and fold (lower-case, accents, HTML);
2. price phrase out (:mod:`~mlsd.search.entities`, before anything can "correct" a number);
3. language detection and translation of known product terms into English (:mod:`~mlsd.search.language`);
4. spell correction guarded for numbers, sizes, model numbers and brands (:mod:`~mlsd.search.spell`);
5. brand / category / colour entities (:mod:`~mlsd.search.entities`);
6. synonym expansions (:mod:`~mlsd.search.synonyms`), added to retrieval with a lower weight.

No intent label (product / brand / category): a classifier of it was measured and removed, because
nothing downstream gained from it on held-out queries (docs/search.md, "Query understanding"); the
rules read the entities directly.

Parses are cached by raw text (head queries repeat), so the steady-state cost of a popular query is
a dictionary look-up.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.search.data import normalize_products
from mlsd.search.entities import Entities, EntityExtractor, extract_price
from mlsd.search.language import LEXICONS, LanguageDetector, translate_tokens
from mlsd.search.spell import SpellCorrector
from mlsd.search.synonyms import CURATED, SynonymExpander
from mlsd.search.text import fold, tokenize

MAX_QUERY_CHARS = 256
# What ``parser_options`` (a training setting stored with each model version) may set.
PARSER_OPTIONS: tuple[str, ...] = ("spell", "synonyms", "languages", "cache_size")


@dataclass
class ParsedQuery:
    """What the engine understood. ``corrected`` is the text retrieval should use (translated,
    spell-corrected, price phrase removed); ``tokens`` its tokens; ``expansions`` synonym phrases."""

    original: str
    corrected: str
    tokens: list[str]
    expansions: list[str]
    entities: Entities
    language: str
    corrections: dict[str, str] = field(default_factory=dict)  # token -> replacement

    def to_dict(self) -> dict:
        out = asdict(self)
        out["entities"] = self.entities.to_dict()
        return out


def validate_query(text: object, max_chars: int = MAX_QUERY_CHARS, field_name: str = "q") -> str:
    """The query text, or :class:`InputError` when it is not a non-empty string of at most ``max_chars``."""
    if not isinstance(text, str):
        raise InputError(field_name, text, "must be a string", "send the query text")
    if len(text) > max_chars:
        raise InputError(
            field_name,
            text,
            f"is {len(text)} characters long, the limit is {max_chars}",
            f"send at most {max_chars} characters",
            status=413,
        )
    if not text.strip():
        raise InputError(field_name, text, "is empty", "send at least one word")
    return text


class QueryUnderstanding:
    """Fitted on a catalog (and optionally a query log); ``parse(texts)`` is batch-first."""

    def __init__(
        self,
        *,
        max_chars: int = MAX_QUERY_CHARS,
        spell: bool = True,
        synonyms: bool = True,
        languages: Sequence[str] = ("es", "de"),
        cache_size: int = 100_000,
    ) -> None:
        self.max_chars = max_chars
        self.spell = spell
        self.synonyms = synonyms
        self.languages = languages
        self.cache_size = cache_size

    def fit(
        self,
        products: pd.DataFrame,
        query_log: Iterable[str] = (),
        *,
        mined_synonyms: Mapping[str, Iterable[str]] | None = None,
    ) -> QueryUnderstanding:
        """Learn dictionaries from ``products`` (and spelling from ``query_log``)."""
        products = normalize_products(products)
        query_log = list(query_log)
        # A curated synonym of a category name names that category ("couch" -> Sofas).
        category_synonyms = [(a, b) for group in CURATED for a in group for b in group if a != b]
        self.entities_ = EntityExtractor(category_synonyms=category_synonyms).fit(products)
        catalog_text = pd.concat(
            [products[f] for f in ("title", "brand", "category", "attributes")]
            + [products["description"].str.slice(0, 500)],
            ignore_index=True,
        )
        foreign = {t for lexicon in LEXICONS.values() for phrase in lexicon for t in phrase.split()}
        brands = {t for key in self.entities_.brands_ for t in key} | {
            t for b in products["brand"].unique() for t in tokenize(b)
        }
        self.spell_ = SpellCorrector().fit(catalog_text.tolist(), query_log, protected=brands | foreign)
        self.language_ = LanguageDetector(self.languages).fit(self.spell_.catalog_known_, neutral=brands)
        self.synonyms_ = SynonymExpander().fit(mined_synonyms)
        self._cache: OrderedDict[str, ParsedQuery] = OrderedDict()
        return self

    def _parse_uncached(self, text: str) -> ParsedQuery:
        folded = fold(text)
        lo, hi, rest = extract_price(folded)
        language = self.language_.detect_tokens(tokenize(folded))
        tokens = tokenize(rest)
        if language != "en":
            tokens = translate_tokens(tokens, language)
        corrections: dict[str, str] = {}
        if self.spell and language == "en":
            fixed = self.spell_.correct_tokens(tokens)
            corrections = {a: b for a, b in zip(tokens, fixed, strict=True) if a != b}
            tokens = fixed
        corrected = " ".join(tokens)
        entities, _ = self.entities_.extract(corrected)
        entities.price_min, entities.price_max = lo, hi
        expansions = self.synonyms_.expand(tokens) if self.synonyms else []
        return ParsedQuery(
            original=text,
            corrected=corrected,
            tokens=tokens,
            expansions=expansions,
            entities=entities,
            language=language,
            corrections=corrections,
        )

    def parse(self, texts: Sequence[str]) -> list[ParsedQuery]:
        """Parse a batch; raises :class:`InputError` naming the first bad query."""
        for i, t in enumerate(texts):
            validate_query(t, self.max_chars, "q" if len(texts) == 1 else f"queries[{i}]")
        out: list[ParsedQuery | None] = [self._cache.get(t) for t in texts]
        missing = list(dict.fromkeys(t for t, p in zip(texts, out, strict=True) if p is None))
        if missing:
            for text in missing:
                self._cache[text] = self._parse_uncached(text)
            out = [self._cache[t] for t in texts]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [p for p in out if p is not None]

    def parse_one(self, text: str) -> ParsedQuery:
        return self.parse([text])[0]


def understanding_report(products: pd.DataFrame, queries: pd.DataFrame, *, seed: int = 0) -> dict:
    """Accuracy and cost of query understanding against simulated queries whose specs are known.

    ``queries`` needs ``text``, ``lang`` and ``typo`` columns (as made by
    :func:`mlsd.search.world.simulate_queries`). ``seed`` is not used (parsing is deterministic); it
    stays until ``bench.understanding_bench`` stops passing it.
    """
    import time

    import numpy as np

    texts = queries["text"].tolist()
    started = time.perf_counter()
    qu = QueryUnderstanding().fit(products, query_log=texts)
    fit_s = time.perf_counter() - started
    timings = []
    for text in texts:  # one at a time, uncached: the cost a new query pays in the service
        t0 = time.perf_counter()
        qu._parse_uncached(text)
        timings.append((time.perf_counter() - t0) * 1000)
    parsed = qu.parse(texts)
    typo = queries["typo"].to_numpy(bool)
    corrected = np.array([bool(p.corrections) for p in parsed])
    return {
        "queries": len(texts),
        "products": len(products),
        "fit_s": round(fit_s, 2),
        "language_accuracy": round(
            float(np.mean([p.language == lang for p, lang in zip(parsed, queries["lang"], strict=True)])), 4
        ),
        "typo_queries_corrected": round(float(corrected[typo].mean()), 4) if typo.any() else None,
        "clean_queries_changed": round(float(corrected[~typo].mean()), 4) if (~typo).any() else None,
        "parse_ms_p50": round(float(np.percentile(timings, 50)), 3),
        "parse_ms_p99": round(float(np.percentile(timings, 99)), 3),
    }
