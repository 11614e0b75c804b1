"""Synonym expansion: a curated list plus synonyms mined from the data.

Expansions are *added* to the query (BM25 gives them a lower weight), never substituted, so a
wrong synonym costs a little precision rather than the original intent. Two mining sources:

- :func:`mine_from_embeddings`: catalog terms whose MiniLM vectors are mutual nearest neighbours
  above a cosine threshold ("earbuds" ~ "earphones").
- :func:`mine_from_coclicks`: single-word substitutions between queries that lead to clicks on
  the same products ("couch" and "sofa" both click product 17).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mlsd.search.text import STOPWORDS, stem, tokenize

CURATED: tuple[tuple[str, ...], ...] = (
    ("earbuds", "earphones", "headphones", "headset"),
    ("sofa", "couch", "settee"),
    ("tv", "television"),
    ("laptop", "notebook"),
    ("sneakers", "running shoes", "trainers"),
    ("cellphone", "mobile phone", "smartphone", "cell phone"),
    ("fridge", "refrigerator"),
    ("faucet", "tap"),
    ("bbq", "grill", "barbecue"),
    ("sweater", "jumper", "pullover"),
    ("pants", "trousers"),
    ("rug", "carpet"),
    ("bike", "bicycle"),
    ("tee", "t-shirt", "tshirt"),
    ("jacket", "coat"),
    ("speaker", "soundbar"),
    ("charger", "charging cable"),
    ("phone case", "phone cover"),
    ("frying pan", "skillet"),
    ("blanket", "throw"),
    ("seat cushion", "pillow"),
    ("desk", "table"),
    ("videogames", "video games"),
    ("ps4", "playstation 4"),
    ("hdd", "hard drive"),
    ("firepit", "fire pit"),
)


def _key(phrase: str) -> str:
    return " ".join(stem(t) for t in tokenize(phrase))


class SynonymExpander:
    """Maps a query's words and bigrams to synonyms; ``fit(mined=...)`` adds mined pairs to the curated list."""

    def __init__(self, curated: Sequence[Sequence[str]] = CURATED, max_expansions: int = 4) -> None:
        self.curated = curated
        self.max_expansions = max_expansions

    def fit(self, mined: Mapping[str, Iterable[str]] | None = None) -> SynonymExpander:
        table: dict[str, list[str]] = defaultdict(list)
        for group in self.curated:
            for phrase in group:
                for other in group:
                    if other != phrase and other not in table[_key(phrase)]:
                        table[_key(phrase)].append(other)
        for term, others in (mined or {}).items():
            for other in others:
                for a, b in ((term, other), (other, term)):
                    if b not in table[_key(a)]:
                        table[_key(a)].append(b)
        self.table_ = dict(table)
        return self

    def expand(self, tokens: Sequence[str]) -> list[str]:
        """Synonym phrases for the unigrams and bigrams of ``tokens`` that the query does not already contain."""
        stems = [stem(t) for t in tokens]
        present = set(stems)
        grams = [" ".join(stems[i : i + 2]) for i in range(len(stems) - 1)] + stems
        out: list[str] = []
        for gram in grams:
            for syn in self.table_.get(gram, ()):
                if all(stem(t) in present for t in tokenize(syn)) or syn in out:
                    continue
                out.append(syn)
                if len(out) >= self.max_expansions:
                    return out
        return out


def mine_from_embeddings(
    terms: Sequence[str], vectors: np.ndarray, *, threshold: float = 0.75, max_terms: int = 20_000
) -> dict[str, list[str]]:
    """Mutual nearest neighbours among ``terms`` (embedded as ``vectors``, L2-normalised) above ``threshold``.

    Plural/singular pairs and terms sharing a stem are skipped: the analyser already folds those.
    """
    terms = list(terms)[:max_terms]
    v = np.asarray(vectors[: len(terms)], dtype=np.float32)
    if len(terms) < 2:
        return {}
    sims = v @ v.T
    np.fill_diagonal(sims, -1.0)
    best = sims.argmax(axis=1)
    out: dict[str, list[str]] = {}
    for i, j in enumerate(best.tolist()):
        if best[j] == i and i < j and sims[i, j] >= threshold and stem(terms[i]) != stem(terms[j]):
            out.setdefault(terms[i], []).append(terms[j])
    return out


def mine_from_coclicks(
    query_texts: Sequence[str],
    product_ids: Sequence[int],
    *,
    min_support: int = 2,
) -> dict[str, list[str]]:
    """Single-word substitutions between queries that clicked the same product, seen ``min_support`` times.

    ``query_texts[i]`` clicked ``product_ids[i]`` (one row per click).
    """
    by_product: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    for text, pid in zip(query_texts, product_ids, strict=True):
        toks = tuple(t for t in tokenize(text) if t not in STOPWORDS)
        if toks:
            by_product[int(pid)].add(toks)
    pairs: Counter[tuple[str, str]] = Counter()
    for queries in by_product.values():
        qs = sorted(queries)
        for a_i, a in enumerate(qs):
            for b in qs[a_i + 1 :]:
                if len(a) != len(b):
                    continue
                diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
                if (
                    len(diff) == 1
                    and stem(diff[0][0]) != stem(diff[0][1])
                    and diff[0][0].isalpha()
                    and diff[0][1].isalpha()
                ):
                    pairs[tuple(sorted(diff[0]))] += 1
    out: dict[str, list[str]] = {}
    for (a, b), support in pairs.items():
        if support >= min_support:
            out.setdefault(a, []).append(b)
    return out
