"""Spell correction fixes typos and never rewrites numbers, sizes, model numbers or brands."""

from __future__ import annotations

import pytest

from mlsd.search.spell import SpellCorrector

CATALOG = [
    "Sonix wireless headphones black",
    "Sonix wireless earbuds",
    "Komfy seat cushions 18x18 black",
    "Casara leather sofa",
    "John Deere D125 lawn tractor",
    "lithium CR123 battery pack",
    "wireless keyboard",
]


@pytest.fixture(scope="module")
def spell():
    return SpellCorrector().fit(
        CATALOG, query_log=["wireles headphones"] * 2, protected=["sonix", "komfy", "zorbex"]
    )


def test_fixes_typos(spell):
    assert spell.correct(["wireles headphones", "leathr sofa", "keybaord"]) == [
        "wireless headphones",
        "leather sofa",
        "keyboard",
    ]


def test_guards(spell):
    assert spell.correct(["blk 18x18 seat cushions"]) == ["blk 18x18 seat cushions"]
    assert spell.correct(["john deere d125", "cr123 battery", "1/4 hex bolt"]) == [
        "john deere d125",
        "cr123 battery",
        "1/4 hex bolt",
    ]
    # a protected brand one edit away from a catalog word stays
    assert spell.correct_token("zorbex") == "zorbex"


def test_query_log_words_enter_only_when_frequent():
    log = ["fidget spinner"] * 3 + ["wireles headphones"] * 5
    spell = SpellCorrector().fit(CATALOG, query_log=log)
    assert spell.correct_token("spinner") == "spinner"  # a frequent new word is known
    assert "spinner" in spell.known_
    # a repeated typo one edit from a catalog word is still a typo
    assert spell.correct_token("wireles") == "wireless"


def test_unknown_far_word_unchanged(spell):
    assert spell.correct_token("xylophone") == "xylophone"
