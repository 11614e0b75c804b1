"""Language detection (lexical, brands neutral) and lexicon translation into English."""

from __future__ import annotations

from mlsd.search.language import LanguageDetector, translate_tokens
from mlsd.search.text import tokenize

VOCAB = {"wireless", "headphones", "black", "sofa", "leather", "chair", "under", "desk", "lamp"}


def detector():
    return LanguageDetector().fit(VOCAB, neutral={"sonix"})


def test_detects_spanish_german_english():
    d = detector()
    assert d.detect(
        [
            tokenize("auriculares inalámbricos negros"),
            tokenize("kabellose Kopfhörer schwarz"),
            tokenize("wireless headphones black"),
            tokenize("sonix silla"),
        ]
    ) == ["es", "de", "en", "es"]
    # a word shared by both languages ("sofa") is no evidence: English wins ties
    assert d.detect_tokens(["sofa"]) == "en"
    assert d.detect_tokens(["18x18"]) == "en"


def test_translation_keeps_brands_and_numbers():
    assert translate_tokens(tokenize("tienda de campaña sonix 2 personas"), "es") == [
        "tent",
        "sonix",
        "2",
        "personas",
    ]
    assert translate_tokens(["silla", "de", "madera"], "es") == ["chair", "wood"]
    assert translate_tokens(["kabellose", "kopfhorer"], "de") == ["wireless", "headphones"]
    assert translate_tokens(["wireless"], "en") == ["wireless"]


def test_inflected_forms_translate_through_their_base_form():
    from mlsd.search.language import lexicon_forms, translate_tokens

    assert translate_tokens(["auriculares", "negros"], "es") == ["headphones", "black"]
    assert translate_tokens(["lamparas", "rojas"], "es") == ["lamp", "red"]
    assert translate_tokens(["schwarze"], "de") == ["black"]
    assert "color" in lexicon_forms("colores", "es") and "rojo" in lexicon_forms("rojas", "es")
    # brands, numbers and short words pass through untouched
    assert translate_tokens(["sonix", "18x18", "gas"], "es") == ["sonix", "18x18", "gas"]
