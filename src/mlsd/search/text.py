"""Text normalisation and tokenisation shared by spell correction, BM25 and features.

One analyser for catalog and queries, so a query token and a product token match exactly when
they should. Tokens keep sizes and fractions whole ("18x18", "5/16", "4.2") because splitting
them turns a model number or a size into noise that matches everything.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

_TAG_RE = re.compile(r"<[^>]{0,200}>")
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[./][a-z0-9]+)*")
_HAS_DIGIT_RE = re.compile(r"\d")

# Function words that carry no retrieval signal; product words ("set", "case", "top") are kept.
STOPWORDS: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "and",
        "the",
        "of",
        "for",
        "with",
        "in",
        "on",
        "to",
        "by",
        "at",
        "or",
        "from",
        "is",
        "are",
        "be",
        "this",
        "that",
        "it",
        "its",
        "your",
        "you",
        "our",
        "as",
    ]
)


def fold(text: str) -> str:
    """Lower-case, unescape HTML entities, drop tags and fold accents ("Cámara" -> "camara")."""
    text = _TAG_RE.sub(" ", html.unescape(text))
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
        text = text.replace("ß", "ss")
    return text.lower()


def tokenize(text: str) -> list[str]:
    """Raw tokens of ``text`` after :func:`fold`, sizes and fractions kept whole."""
    return _TOKEN_RE.findall(fold(text))


def has_digit(token: str) -> bool:
    """True for numbers, sizes and model numbers ("18x18", "d125", "cr123")."""
    return _HAS_DIGIT_RE.search(token) is not None


@lru_cache(maxsize=200_000)
def stem(token: str) -> str:
    """Light English plural stemmer (boxes -> box, batteries -> battery, shoes -> shoe).

    Deliberately weaker than Porter: it only folds plurals, so brand names and model numbers
    survive intact and a human can still read the index.
    """
    if len(token) <= 3 or not token.isalpha():
        return token
    if token.endswith("ies") and len(token) > 4:
        return token[:-3] + "y"
    if token.endswith(("sses", "xes", "zes", "ches", "shes")):
        return token[:-2]
    if token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def analyze(text: str) -> list[str]:
    """Index terms of ``text``: tokens without stop words, plural-stemmed."""
    return [stem(t) for t in _TOKEN_RE.findall(fold(text)) if t not in STOPWORDS]


def analyze_many(texts: Iterable[str]) -> list[list[str]]:
    """:func:`analyze` over many texts (catalog indexing)."""
    return [analyze(t) for t in texts]
