"""Language detection and translation of common product terms into the catalog language (English).

Detection is lexical and fast (microseconds): a query is Spanish or German when more of its words
are in that language's lexicon (product terms, colours, function words) than in the English
catalog vocabulary. ``langdetect`` is only consulted for longer texts that no lexicon explains.
Translation is word/phrase substitution from curated lexicons; unknown words (brands, numbers,
model names) pass through unchanged.

Limits, stated honestly: the lexicons cover a few hundred everyday product terms per language
(the simulator's taxonomy, colours, materials, common modifiers, price words), not open
vocabulary; inflections reach their base form by suffix rules (:func:`lexicon_forms`), word order
is not handled; the dense model (all-MiniLM-L6-v2) was trained on English and only partly recovers
untranslated foreign words through shared sub-words (e.g. "sofa", "camara"), so a non-English query
that the lexicon misses falls back to weak dense matching.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SUPPORTED: tuple[str, ...] = ("en", "es", "de")

ES_EN: dict[str, str] = {
    # simulator taxonomy and frequent catalog nouns
    "auriculares": "headphones",
    "cascos": "headphones",
    "altavoz": "speaker",
    "altavoces": "speakers",
    "portatil": "laptop",
    "ordenador portatil": "laptop",
    "ordenador": "computer",
    "teclado": "keyboard",
    "raton": "mouse",
    "funda": "phone case",
    "carcasa": "phone case",
    "cargador": "charger",
    "camara": "camera",
    "sofa": "sofa",
    "silla": "chair",
    "sillas": "chairs",
    "mesa": "desk",
    "escritorio": "desk",
    "cojin": "seat cushion",
    "cojines": "seat cushions",
    "almohada": "pillow",
    "lampara": "lamp",
    "sarten": "frying pan",
    "cuchillos": "knife set",
    "cuchillo": "knife",
    "manta": "blanket",
    "zapatillas": "running shoes",
    "zapatos": "shoes",
    "botas": "boots",
    "chaqueta": "jacket",
    "abrigo": "coat",
    "camiseta": "t-shirt",
    "mochila": "backpack",
    "reloj": "watch",
    "esterilla de yoga": "yoga mat",
    "esterilla": "mat",
    "tienda de campana": "tent",
    "casco de bicicleta": "bike helmet",
    "casco": "helmet",
    "bicicleta": "bike",
    "telefono": "phone",
    "movil": "phone",
    "television": "tv",
    "televisor": "tv",
    "nevera": "refrigerator",
    "frigorifico": "refrigerator",
    "cafetera": "coffee maker",
    "licuadora": "blender",
    "batidora": "blender",
    "sabanas": "sheets",
    "edredon": "comforter",
    "alfombra": "rug",
    "estanteria": "shelf",
    "cajones": "drawers",
    "gafas de sol": "sunglasses",
    "gafas": "glasses",
    "bolso": "bag",
    "bolsa": "bag",
    "vestido": "dress",
    "vestidos": "dresses",
    "camisa": "shirt",
    "pantalones": "pants",
    "calcetines": "socks",
    "sujetador": "bra",
    "almohadilla": "pad",
    "bateria": "battery",
    "pilas": "batteries",
    "cable": "cable",
    "taladro": "drill",
    "herramientas": "tools",
    "grifo": "faucet",
    "puerta": "door",
    "ventana": "window",
    "baño": "bathroom",
    "bano": "bathroom",
    "cocina": "kitchen",
    "jardin": "garden",
    "luz": "light",
    "bombilla": "light bulb",
    "disco duro": "hard drive",
    "juegos": "games",
    "videojuegos": "video games",
    "botellero": "wine rack",
    # colours
    "negro": "black",
    "negra": "black",
    "blanco": "white",
    "blanca": "white",
    "rojo": "red",
    "roja": "red",
    "azul": "blue",
    "azul marino": "navy",
    "verde": "green",
    "gris": "gray",
    "plateado": "silver",
    "rosa": "pink",
    "marron": "brown",
    "beige": "beige",
    "dorado": "gold",
    "amarillo": "yellow",
    "naranja": "orange",
    "morado": "purple",
    # modifiers and materials
    "inalambrico": "wireless",
    "inalambricos": "wireless",
    "inalambricas": "wireless",
    "portatiles": "portable",
    "impermeable": "waterproof",
    "ligero": "lightweight",
    "plegable": "foldable",
    "moderno": "modern",
    "clasico": "classic",
    "madera": "wood",
    "metal": "metal",
    "cuero": "leather",
    "piel": "leather",
    "algodon": "cotton",
    "acero": "steel",
    "vidrio": "glass",
    "plastico": "plastic",
    "grande": "large",
    "pequeno": "small",
    "barato": "cheap",
    "barata": "cheap",
    "mujer": "women",
    "hombre": "men",
    "ninos": "kids",
    "nino": "kids",
    "para": "",
    "de": "",
    "con": "",
    "sin": "without",
    "y": "",
    "el": "",
    "la": "",
    "los": "",
    "las": "",
    "un": "",
    "una": "",
    "en": "",
}
DE_EN: dict[str, str] = {
    "kopfhorer": "headphones",
    "kopfhoerer": "headphones",
    "lautsprecher": "speaker",
    "tastatur": "keyboard",
    "maus": "mouse",
    "handyhulle": "phone case",
    "hulle": "case",
    "ladegerat": "charger",
    "kamera": "camera",
    "sofa": "sofa",
    "couch": "couch",
    "stuhl": "chair",
    "stuhle": "chairs",
    "schreibtisch": "desk",
    "tisch": "table",
    "kissen": "pillow",
    "sitzkissen": "seat cushion",
    "lampe": "lamp",
    "bratpfanne": "frying pan",
    "pfanne": "pan",
    "messer": "knife",
    "messerset": "knife set",
    "decke": "blanket",
    "laufschuhe": "running shoes",
    "schuhe": "shoes",
    "stiefel": "boots",
    "jacke": "jacket",
    "mantel": "coat",
    "rucksack": "backpack",
    "uhr": "watch",
    "yogamatte": "yoga mat",
    "zelt": "tent",
    "fahrradhelm": "bike helmet",
    "fahrrad": "bike",
    "handy": "phone",
    "fernseher": "tv",
    "kuhlschrank": "refrigerator",
    "kaffeemaschine": "coffee maker",
    "mixer": "blender",
    "bettwasche": "sheets",
    "teppich": "rug",
    "regal": "shelf",
    "sonnenbrille": "sunglasses",
    "tasche": "bag",
    "kleid": "dress",
    "hemd": "shirt",
    "hose": "pants",
    "socken": "socks",
    "bohrer": "drill",
    "werkzeug": "tools",
    "wasserhahn": "faucet",
    "tur": "door",
    "fenster": "window",
    "badezimmer": "bathroom",
    "kuche": "kitchen",
    "garten": "garden",
    "gluhbirne": "light bulb",
    "festplatte": "hard drive",
    "schwarz": "black",
    "schwarze": "black",
    "schwarzer": "black",
    "weiss": "white",
    "weisse": "white",
    "rot": "red",
    "rote": "red",
    "blau": "blue",
    "blaue": "blue",
    "grun": "green",
    "grau": "gray",
    "silber": "silver",
    "rosa": "pink",
    "braun": "brown",
    "gold": "gold",
    "gelb": "yellow",
    "kabellos": "wireless",
    "kabellose": "wireless",
    "kabelloser": "wireless",
    "wasserdicht": "waterproof",
    "leicht": "lightweight",
    "klappbar": "foldable",
    "holz": "wood",
    "leder": "leather",
    "baumwolle": "cotton",
    "stahl": "steel",
    "glas": "glass",
    "damen": "women",
    "herren": "men",
    "kinder": "kids",
    "fur": "",
    "mit": "with",
    "ohne": "without",
    "und": "",
    "der": "",
    "die": "",
    "das": "",
    "ein": "",
    "eine": "",
}
LEXICONS: dict[str, dict[str, str]] = {"es": ES_EN, "de": DE_EN}
# Words that mark a language even when they are not product terms.
MARKERS: dict[str, frozenset[str]] = {
    "en": frozenset(
        [
            "the",
            "for",
            "with",
            "and",
            "of",
            "under",
            "over",
            "between",
            "to",
            "in",
            "on",
            "women",
            "men",
            "kids",
        ]
    ),
    "es": frozenset(
        [
            "para",
            "de",
            "con",
            "sin",
            "y",
            "el",
            "la",
            "los",
            "las",
            "un",
            "una",
            "menos",
            "entre",
            "hasta",
            "mas",
            "desde",
            "por",
        ]
    ),
    "de": frozenset(
        [
            "fur",
            "mit",
            "ohne",
            "und",
            "der",
            "die",
            "das",
            "ein",
            "eine",
            "unter",
            "uber",
            "zwischen",
            "bis",
            "ab",
        ]
    ),
}


class LanguageDetector:
    """``fit(english_vocabulary)`` then ``detect(token_lists) -> ['en' | 'es' | 'de', ...]``."""

    def __init__(self, languages: Sequence[str] = ("es", "de"), min_tokens_langdetect: int = 4) -> None:
        self.languages = tuple(languages)
        self.min_tokens_langdetect = min_tokens_langdetect

    def fit(self, english_vocabulary: Iterable[str], neutral: Iterable[str] = ()) -> LanguageDetector:
        """``english_vocabulary``: catalog words; ``neutral``: words that are evidence of no language (brands)."""
        self.neutral_ = frozenset(neutral)
        self.english_ = (frozenset(english_vocabulary) - self.neutral_) | MARKERS["en"]
        self.lexicon_terms_ = {
            lang: frozenset(t for phrase in LEXICONS[lang] for t in phrase.split()) | MARKERS[lang]
            for lang in self.languages
        }
        return self

    def detect_tokens(self, tokens: Sequence[str]) -> str:
        """Language of one tokenised (folded, lower-case) text."""
        words = [t for t in tokens if t.isalpha() and t not in self.neutral_]
        if not words:
            return "en"
        scores = {lang: sum(t in terms for t in words) for lang, terms in self.lexicon_terms_.items()}
        # A word in both the foreign lexicon and the English catalog ("sofa", "mesa") is no evidence.
        english = sum(t in self.english_ for t in words)
        shared = {
            lang: sum(t in self.english_ and t in terms for t in words)
            for lang, terms in self.lexicon_terms_.items()
        }
        best = max(scores, key=lambda lang: (scores[lang] - shared[lang], scores[lang]))
        if scores[best] - shared[best] > english - shared[best] and scores[best] > shared[best]:
            return best
        if scores[best] == 0 and english == 0 and len(words) >= self.min_tokens_langdetect:
            return self._langdetect(" ".join(words))
        return "en"

    def _langdetect(self, text: str) -> str:
        try:
            from langdetect import DetectorFactory, detect

            DetectorFactory.seed = 0  # langdetect is random unless seeded
            lang = detect(text)
        except Exception:  # langdetect raises on text without features; English is the safe default
            return "en"
        return lang if lang in SUPPORTED else "en"

    def detect(self, token_lists: Sequence[Sequence[str]]) -> list[str]:
        return [self.detect_tokens(t) for t in token_lists]


def lexicon_forms(token: str, lang: str) -> list[str]:
    """``token`` and the lexicon forms it may inflect: Spanish plurals and feminines ("negros" -> "negro",
    "lámparas" -> "lámpara", "colores" -> "color", "rojas" -> "rojo"), German adjective endings
    ("schwarze" / "schwarzen" -> "schwarz"). Lexicons list the base form once; a query uses any form."""
    forms = [token]
    if len(token) < 4 or not token.isalpha():
        return forms
    if lang == "es":
        stems = [token[:-2]] if token.endswith("es") else []
        stems += [token[:-1]] if token.endswith("s") else []
        for stem in [token, *stems]:
            forms += [stem] if stem != token else []
            forms += [stem[:-1] + "o"] if stem.endswith("a") else []
    elif lang == "de":
        forms += [token[: -len(end)] for end in ("en", "em", "er", "es", "e") if token.endswith(end)]
    return list(dict.fromkeys(forms))


def translate_tokens(tokens: Sequence[str], lang: str) -> list[str]:
    """Replace lexicon words and two/three-word phrases by English; others (brands, numbers) pass through.
    A single word the lexicon lacks is looked up in its base forms (:func:`lexicon_forms`)."""
    lexicon = LEXICONS.get(lang)
    if not lexicon:
        return list(tokens)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for n in (3, 2, 1):
            phrase = " ".join(tokens[i : i + n])
            if len(tokens) - i >= n and phrase in lexicon:
                if lexicon[phrase]:
                    out.extend(lexicon[phrase].split())
                i += n
                break
        else:
            base = next((f for f in lexicon_forms(tokens[i], lang) if f in lexicon), None)
            if base is None:
                out.append(tokens[i])
            elif lexicon[base]:
                out.extend(lexicon[base].split())
            i += 1
    return out
