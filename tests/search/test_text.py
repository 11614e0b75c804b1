"""Batch analysis (catalog indexing) gives exactly the per-text analyser's terms, in the same order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.search import text as text_mod
from mlsd.search.text import analyze_batch, analyze_many

TRICKY = [
    "Cámara Réflex 18x18 Boxes",
    "Pillow Covers 18x18, Set of 4 (18X18)",
    "5/16 in. Drill Bits & Batteries; 4.2 V",
    "AT&T phones &amp; chargers &lt;new&gt; <b>Bold</b> Glasses",
    "a < b > c",
    "",
    "   ",
    "...///",
    "a..b//c. v1.2.3/x trailing. /lead",
    "The Shoes of the Year",
    "STRASSE Straße ﬁlter café ＡＢＣ １８ İstanbul",
    "tab\tnew\nline\x00nul",
    "Watches, Glasses, Dresses, Buses, Status, Analysis, Batteries, Boxes",
    "&#233;t&eacute; &#x41;B &bogus; &amp",
    "Cámara Réflex 18x18 Boxes",  # duplicate of the first: analysed once, returned twice
    "",
    "ñandú — “quotes” 1½ 3×4",
]


def test_known_answer():
    got = analyze_batch(["Cámara 18x18 Boxes", "the Shoes of 5/16", ""]).lists()
    assert got == [["camara", "18x18", "box"], ["shoe", "5/16"], []]


def test_batch_equals_per_text_on_tricky_text():
    batch = analyze_batch(TRICKY)
    reference = analyze_many(TRICKY)
    assert batch.lists() == reference
    # term ids follow first appearance over texts, then tokens
    assert batch.terms == list(dict.fromkeys(t for doc in reference for t in doc))
    assert batch.text_codes[0] == batch.text_codes[14] and batch.text_codes[5] == batch.text_codes[15]
    assert len(batch.offsets) == len(set(TRICKY)) + 1


def test_batch_equals_per_text_on_random_text(monkeypatch):
    # Small chunks so tokens, ids and texts cross chunk boundaries.
    monkeypatch.setattr(text_mod, "_BATCH_CHUNK", 7)
    rng = np.random.default_rng(0)
    alphabet = list("abcxyzSEIT0189 ./-,&;#<>éÉßﬁ\t\x00") + [
        "&amp;",
        "&#233;",
        "<i>",
        "ies",
        "es",
        "the ",
        "s ",
    ]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 25))) for _ in range(600)]
    texts += texts[:50]  # duplicates
    batch = analyze_batch(pd.Series(texts))
    assert batch.lists() == analyze_many(texts)
    assert batch.terms == list(dict.fromkeys(t for doc in analyze_many(texts) for t in doc))


def test_empty_and_all_stopwords():
    assert analyze_batch([]).lists() == []
    batch = analyze_batch(["the of and", "", "to be"])
    assert batch.lists() == [[], [], []] and batch.terms == [] and batch.offsets.tolist() == [0, 0, 0, 0]


def test_non_string_rejected():
    with pytest.raises(TypeError):
        analyze_batch(["fine text", None])
