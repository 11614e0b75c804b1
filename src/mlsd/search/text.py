"""Text normalisation and tokenisation shared by spell correction, BM25 and features.

One analyser for catalog and queries, so a query token and a product token match exactly when
they should. Tokens keep sizes and fractions whole ("18x18", "5/16", "4.2") because splitting
them turns a model number or a size into noise that matches everything.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

_TAG_RE = re.compile(r"<[^>]{0,200}>")
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[./][a-z0-9]+)*")
_HAS_DIGIT_RE = re.compile(r"\d")
# Batch analysis joins many texts into one string with NUL between them: NUL is never part of a token,
# so one findall over the join yields every text's tokens in order, each text closed by a lone NUL.
_SEP = "\x00"
_BATCH_RE = re.compile(_TOKEN_RE.pattern + "|" + _SEP)
# Texts where fold() is more than lower(): non-ASCII (accents), HTML entities or tags, or a stray NUL.
_NEEDS_FOLD_RE2 = r"[^\x01-\x7f]|[&<]"
_BATCH_CHUNK = 100_000  # distinct texts per findall: bounds the transient token list

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
    """:func:`analyze` over many texts, one call per text (the reference for :func:`analyze_batch`)."""
    return [analyze(t) for t in texts]


@dataclass
class AnalyzedTexts:
    """Index terms of a batch of texts, stored once per distinct text (see :func:`analyze_batch`).

    ``text_codes[i]`` is the distinct text of input ``i``; the terms of distinct text ``j`` are
    ``term_codes[offsets[j]:offsets[j + 1]]``, ids into ``terms``. Term ids follow first appearance in
    the input (so a vocabulary built from ``terms`` has the order a row-by-row pass would give).
    """

    text_codes: np.ndarray  # (n_texts,) int64
    offsets: np.ndarray  # (n_distinct + 1,) int64
    term_codes: np.ndarray  # (n_terms_total,) int64
    terms: list[str]

    def lists(self) -> list[list[str]]:
        """Per input text, its terms as strings: equal to :func:`analyze_many` of the same texts."""
        terms = np.asarray(self.terms, dtype=object)
        bounds = zip(self.offsets[:-1], self.offsets[1:], strict=True)
        per_distinct = [terms[self.term_codes[lo:hi]].tolist() for lo, hi in bounds]
        return [per_distinct[c] for c in self.text_codes]


def _fold_distinct(texts: np.ndarray) -> list[str]:
    """:func:`fold` of distinct texts with no NUL left: ASCII texts without ``&``/``<`` are only lower-cased,
    in one call over their join; the rest take the full per-text fold."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        needs_fold = pc.match_substring_regex(pa.array(texts, type=pa.large_string()), _NEEDS_FOLD_RE2)
        needs_fold = needs_fold.to_numpy(zero_copy_only=False)
    except (pa.ArrowException, UnicodeError):  # e.g. a lone surrogate Arrow cannot encode: fold them all
        needs_fold = np.ones(len(texts), dtype=bool)
    out = np.empty(len(texts), dtype=object)
    plain = np.flatnonzero(~needs_fold)
    # ASCII lower() maps each character to one character, so the join splits back at the same NULs.
    out[plain] = _SEP.join(texts[plain].tolist()).lower().split(_SEP) if len(plain) else []
    rare = np.flatnonzero(needs_fold)
    # A NUL (original or from an entity) separates tokens exactly as a space does.
    out[rare] = [fold(t).replace(_SEP, " ") for t in texts[rare].tolist()]
    return out.tolist()


def analyze_batch(texts: Sequence[str] | pd.Series) -> AnalyzedTexts:
    """:func:`analyze` of many texts at once, for catalog indexing: the same terms, in the same order.

    Distinct texts are analysed once (catalog fields repeat: brands, categories, templated titles); plain
    ASCII texts are lower-cased and tokenised by one regex pass per chunk over their join (only texts with
    accents, HTML or NUL take the per-text :func:`fold`), and stop words and plurals are resolved once per
    distinct token. Non-string values raise ``TypeError`` as :func:`analyze` does.
    """
    if isinstance(texts, pd.Series):
        values = texts.to_numpy(dtype=object)
    else:
        values = np.asarray(list(texts), dtype=object)
    if len(values):  # None / NaN stay values of their own, so fold() rejects them as analyze() would
        text_codes, distinct = pd.factorize(values, use_na_sentinel=False)
    else:
        text_codes, distinct = np.zeros(0, np.int64), values
    distinct = np.asarray(distinct, dtype=object)
    raw_ids: dict[str, int] = {_SEP: 0}  # every distinct raw token (and the separator), first-seen order
    codes_parts = []
    for start in range(0, len(distinct), _BATCH_CHUNK):
        folded = _fold_distinct(distinct[start : start + _BATCH_CHUNK])
        tokens = _BATCH_RE.findall(_SEP.join(folded) + _SEP)
        chunk_codes, chunk_tokens = pd.factorize(np.asarray(tokens, dtype=object))
        # One dict lookup per distinct token of the chunk, not per token.
        to_global = np.fromiter(
            (raw_ids.setdefault(t, len(raw_ids)) for t in chunk_tokens), np.int64, len(chunk_tokens)
        )
        codes_parts.append(to_global[chunk_codes])
    raw_codes = np.concatenate(codes_parts) if codes_parts else np.zeros(0, np.int64)
    # Raw ids are in first-appearance order, so assigning term ids in raw-id order keeps terms first-seen.
    term_ids: dict[str, int] = {}
    term_of_raw = np.full(len(raw_ids), -1, dtype=np.int64)
    for raw, i in raw_ids.items():
        if raw != _SEP and raw not in STOPWORDS:
            term_of_raw[i] = term_ids.setdefault(stem(raw), len(term_ids))
    is_sep = raw_codes == 0
    text_of_token = np.cumsum(is_sep) - is_sep  # the separator closes its text
    keep = term_of_raw[raw_codes] >= 0
    counts = np.bincount(text_of_token[keep], minlength=len(distinct))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return AnalyzedTexts(
        np.asarray(text_codes, dtype=np.int64), offsets, term_of_raw[raw_codes[keep]], list(term_ids)
    )
