"""The simulated world of search: a catalog, queries, shoppers and their clicks, whose truth is known.

Two halves, in data-flow order. Production code (engine, service, training, monitoring) never imports
this module; the CLI's ``simulate`` and ``demo`` verbs, the bench and the tests do.

**The data generator** (:func:`simulate`, :func:`simulate_into`). Everything is vectorised numpy: a
1M-product catalog takes seconds.

1. **Catalog** (:func:`simulate_catalog`): products of a fixed taxonomy (category path, brand,
   colour, material, size), with price, rating, review counts and dates, return rate, stock, margin and
   a promoted flag. A hidden latent ``quality`` (kept apart, in ``truth``) drives rating, conversion
   and returns. Titles come from a finite set of templates (brand x modifier x noun x colour), so a
   million products share tens of thousands of distinct titles, like a marketplace where many sellers
   list the same item; dense encoders exploit that by encoding unique texts only.
2. **Queries** (:func:`simulate_queries`): each query is drawn from a target product's attributes
   (category, brand, brand+category, colour+category, price-constrained) with realistic noise: typos,
   synonyms (earbuds / earphones / headphones), and a share of the traffic in Spanish. The structured
   spec behind each text is kept, so :func:`true_grades` can grade any (query, product) pair.
3. **Users** with a favourite brand per department.
4. **Sessions** (:func:`simulate_sessions`): an old production ranker (biased towards promoted and
   popular items, plus noise) orders a fixed candidate pool per query; a share of sessions swaps the
   top result with a random rank (the randomised intervention propensity estimation relies on); users
   examine rank r with probability ``(1/r)**eta`` and click, add to cart and buy according to the
   true relevance, their brand taste, and the product's price and quality.

Ground truth: ``grade`` 0..3 per (query, product) (0 wrong category, 1 right category but a requested
brand / colour / price missed, 2 matches everything asked, 3 matches and is a top-quality item) and the
true examination propensities, so debiasing can be checked against the answer. :func:`simulate_into`
writes a world of one of :data:`WORLD_SIZES` into ``W/search/data``: the catalog, queries, users, hidden truth
and judged set as Parquet, and the logged sessions as the click log (``data/clicklog``) that training
reads.

**The online experiment world** (:func:`run_experiment`, what ``System.world()`` returns). A **unit**
is a user (the experiment's ``unit="user_id"``) who issues a few searches (``1 + Poisson`` of a per-user
activity rate, so heavy and light users differ, as in real traffic). Each search draws a query from the
simulated query stream (Zipf weights) and is answered by the real
:class:`~mlsd.search.engine.SearchEngine` through :class:`~mlsd.search.routing.SearchRouter` under the
unit's arm, which also logs the exposure; the searches are sent in batches, each arm's share of a
batch answered by one engine call (the engine's one serving path; each search keeps the deadline it
would have alone). The shopper's reaction comes from the truth above: position-based examination
``(1/rank)**eta``, attraction by the true grade tilted by brand taste and price sensitivity,
add-to-cart by grade and quality, purchase, order value = price x quantity.

Because the truth is known, every search is also *evaluated* under every arm: the ranked list that arm
would have shown (the served response for the unit's own arm, the engine's answer under the other
arms' variants otherwise) gives the expected clicks, purchases and revenue with no sampling noise.
The true effect of a metric is the difference of those expectations over all units, which
:func:`~mlsd.platform.experiments.online.with_truth` puts next to the estimate.

The world lives in a workdir's layout (``W/search/data`` and ``W/search/registry``): a workdir with a
simulated world and a champion is reused, otherwise one sized for the units asked is simulated
(:func:`world_size`: one user per unit, so every unit has click-log history) and trained there.

Metrics (:data:`METRICS`): the seed's **blended** metric (primary; :data:`BLEND_WEIGHTS`,
:func:`blend_values`: ``0.6 x conversion + 0.3 x revenue per click + 0.1 x CTR``, each term relative to
the pre-period click log's level, so its difference is a weighted relative lift), then its components
clicks per search (CTR), conversions per search, revenue per click, revenue per search (ratios, delta
method), revenue per user (mean, CUPED on the user's pre-period search count), and a latency guardrail (mean served latency per search -- each search's share of its batch --
must not grow by more than 50%).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir

# --------------------------------------------------------------------------------------------------
# Taxonomy. (department, group, leaf, English nouns (synonyms), Spanish noun, median price)

TAXONOMY: tuple[tuple[str, str, str, tuple[str, ...], str, float], ...] = (
    ("Electronics", "Audio", "Headphones", ("headphones", "earbuds", "earphones"), "auriculares", 60.0),
    ("Electronics", "Audio", "Speakers", ("speaker", "soundbar"), "altavoz", 80.0),
    ("Electronics", "Computers", "Laptops", ("laptop", "notebook"), "portátil", 700.0),
    ("Electronics", "Computers", "Keyboards", ("keyboard",), "teclado", 45.0),
    ("Electronics", "Computers", "Mice", ("mouse",), "ratón", 25.0),
    ("Electronics", "Phones", "Phone Cases", ("phone case", "phone cover"), "funda", 15.0),
    ("Electronics", "Phones", "Chargers", ("charger", "charging cable"), "cargador", 20.0),
    ("Electronics", "Cameras", "Cameras", ("camera",), "cámara", 400.0),
    ("Home", "Furniture", "Sofas", ("sofa", "couch"), "sofa", 650.0),
    ("Home", "Furniture", "Chairs", ("chair",), "silla", 120.0),
    ("Home", "Furniture", "Desks", ("desk", "table"), "mesa", 220.0),
    ("Home", "Decor", "Seat Cushions", ("seat cushion", "pillow"), "cojín", 25.0),
    ("Home", "Decor", "Lamps", ("lamp",), "lámpara", 55.0),
    ("Home", "Kitchen", "Cookware", ("frying pan", "skillet"), "sartén", 40.0),
    ("Home", "Kitchen", "Knives", ("knife set",), "cuchillos", 70.0),
    ("Home", "Bedding", "Blankets", ("blanket", "throw"), "manta", 35.0),
    ("Fashion", "Shoes", "Running Shoes", ("running shoes", "sneakers"), "zapatillas", 90.0),
    ("Fashion", "Shoes", "Boots", ("boots",), "botas", 110.0),
    ("Fashion", "Clothing", "Jackets", ("jacket", "coat"), "chaqueta", 95.0),
    ("Fashion", "Clothing", "T-Shirts", ("t-shirt", "tee"), "camiseta", 20.0),
    ("Fashion", "Accessories", "Backpacks", ("backpack",), "mochila", 50.0),
    ("Fashion", "Accessories", "Watches", ("watch",), "reloj", 150.0),
    ("Sports", "Fitness", "Yoga Mats", ("yoga mat",), "esterilla de yoga", 30.0),
    ("Sports", "Outdoors", "Tents", ("tent",), "tienda de campaña", 160.0),
    ("Sports", "Cycling", "Bike Helmets", ("bike helmet",), "casco de bicicleta", 55.0),
)
DEPARTMENTS: tuple[str, ...] = ("Electronics", "Home", "Fashion", "Sports")
BRANDS: dict[str, tuple[str, ...]] = {
    "Electronics": ("Sonix", "Auralis", "Voltix", "Pixelon", "Kordia", "Zenbeat", "Nexon", "Tronic"),
    "Home": ("Casara", "Nordhem", "Lumina", "Hearthly", "Oakwell", "Velora", "Komfy", "Bramble"),
    "Fashion": ("Stridex", "Urbano", "Peakline", "Nomada", "Vireo", "Kestrel", "Lunaris", "Mistral"),
    "Sports": ("Trailix", "Summitco", "Ridgeback", "Vantago", "Apexa", "Corefit", "Flowfit", "Pinnaco"),
}
MODIFIERS: dict[str, tuple[str, ...]] = {
    "Electronics": ("wireless", "noise cancelling", "pro", "portable", "compact", "gaming", "ultra", "smart"),
    "Home": ("modern", "classic", "rustic", "ergonomic", "foldable", "premium", "minimalist", "vintage"),
    "Fashion": ("lightweight", "waterproof", "classic", "slim fit", "casual", "premium", "vintage", "trail"),
    "Sports": ("lightweight", "foldable", "pro", "ultralight", "padded", "adjustable", "durable", "compact"),
}
MATERIALS: dict[str, tuple[str, ...]] = {
    "Electronics": ("plastic", "aluminum", "silicone", "steel"),
    "Home": ("wood", "leather", "cotton", "steel", "velvet", "linen", "ceramic"),
    "Fashion": ("leather", "cotton", "wool", "polyester", "nylon", "canvas"),
    "Sports": ("nylon", "foam", "polyester", "steel", "rubber"),
}
SIZES: dict[str, tuple[str, ...]] = {
    "Electronics": ("small", "medium", "large"),
    "Home": ("small", "medium", "large", "18x18", "20x20"),
    "Fashion": ("S", "M", "L", "XL"),
    "Sports": ("small", "medium", "large"),
}
COLORS: tuple[str, ...] = (
    "black", "white", "red", "blue", "green", "grey", "silver", "pink", "brown", "beige", "navy", "gold",
)  # fmt: skip
COLORS_ES: tuple[str, ...] = (
    "negro", "blanco", "rojo", "azul", "verde", "gris", "plateado", "rosa", "marrón", "beige", "azul marino", "dorado",
)  # fmt: skip
CATEGORY_SEPARATOR = " / "  # as in mlsd.search.data

INTENTS: tuple[str, ...] = ("category", "brand", "brand_category", "color_category", "price_category")
INTENT_PROBS: tuple[float, ...] = (0.35, 0.10, 0.20, 0.15, 0.20)

# Click model: P(click | examined) by true grade, and P(add to cart | click), P(purchase | cart).
ATTRACT_BY_GRADE = np.array([0.03, 0.15, 0.45, 0.75])
CART_BY_GRADE = np.array([0.02, 0.10, 0.30, 0.45])
BUY_GIVEN_CART = 0.6
EPOCH_END = 1_767_225_600  # 2026-01-01 UTC: the simulated "now"
DAY = 86_400


def true_propensity(positions: np.ndarray, eta: float) -> np.ndarray:
    """The simulator's examination probability of 1-based rank ``positions``: ``(1/r)**eta``."""
    return np.power(1.0 / np.asarray(positions, dtype=np.float64), eta)


# --------------------------------------------------------------------------------------------------
# Catalog


def _leaf_tables() -> dict[str, np.ndarray]:
    dept_index = {d: i for i, d in enumerate(DEPARTMENTS)}
    return {
        "dept": np.array([dept_index[t[0]] for t in TAXONOMY]),
        "median_price": np.array([t[5] for t in TAXONOMY]),
        "n_nouns": np.array([len(t[3]) for t in TAXONOMY]),
    }


def _render(codes: np.ndarray, make) -> pd.Categorical:
    """Render text for integer ``codes`` by formatting each *distinct* code once: a 1M catalog has
    tens of thousands of distinct titles, so the Python formatting cost is per template, not per row."""
    uniq, inverse = np.unique(codes, return_inverse=True)
    texts = [make(int(c)) for c in uniq]
    cats, cat_codes = np.unique(np.array(texts, dtype=object), return_inverse=True)
    return pd.Categorical.from_codes(cat_codes[inverse], categories=list(cats))


def simulate_catalog(n_products: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(products, truth)``: the catalog in the :mod:`mlsd.search.data` schema plus extras,
    and the hidden per-product ``quality`` the click model uses."""
    if n_products < 100:
        raise InputError("--products", n_products, "too few products to simulate", "use at least 100")
    rng = np.random.default_rng(seed)
    leaves = _leaf_tables()
    n = int(n_products)
    leaf = rng.integers(0, len(TAXONOMY), n)
    dept = leaves["dept"][leaf]
    brand_local = rng.integers(0, 8, n)
    brand = dept * 8 + brand_local
    modifier = rng.integers(0, 8, n)
    noun = (rng.random(n) * leaves["n_nouns"][leaf]).astype(np.int64)
    color = rng.integers(0, len(COLORS), n)
    mat_counts = np.array([len(MATERIALS[d]) for d in DEPARTMENTS])
    size_counts = np.array([len(SIZES[d]) for d in DEPARTMENTS])
    material = (rng.random(n) * mat_counts[dept]).astype(np.int64)
    size = (rng.random(n) * size_counts[dept]).astype(np.int64)
    quality = rng.standard_normal(n)
    # Brands have a price level of their own; better items cost a little more.
    brand_price = np.exp(rng.normal(0.0, 0.25, len(DEPARTMENTS) * 8))
    price = (
        leaves["median_price"][leaf] * brand_price[brand] * np.exp(rng.normal(0.0, 0.45, n) + 0.12 * quality)
    )
    price = np.maximum(np.floor(price) + 0.99, 1.99)
    rating = np.clip(np.round(3.9 + 0.5 * quality + rng.normal(0.0, 0.35, n), 1), 1.0, 5.0)
    listed_days = rng.integers(1, 3 * 365, n)
    review_count = np.floor(
        rng.lognormal(2.5 + 0.3 * quality, 1.3, n) * np.minimum(listed_days, 365) / 365
    ).astype(np.int64)
    # Review dates: listing-age-bounded; a product still selling gets recent reviews.
    last_review_days = np.where(
        review_count > 0, rng.integers(0, np.maximum(listed_days, 1)) * rng.random(n), -1
    )
    reviews_90d = rng.binomial(review_count, np.clip(90.0 / np.maximum(listed_days, 90), 0, 1))
    dept_return = np.array([0.04, 0.06, 0.15, 0.07])[dept]
    return_rate = np.clip(dept_return - 0.03 * quality + rng.normal(0.0, 0.02, n), 0.0, 0.6)
    stock = np.where(rng.random(n) < 0.07, 0, rng.poisson(40, n))
    margin = np.round(rng.uniform(0.05, 0.45, n), 3)
    promoted = rng.random(n) < 0.05

    n_mod, n_col = 8, len(COLORS)
    title_code = ((leaf * 32 + brand_local) * n_mod + modifier) * 4 * n_col + noun * n_col + color

    def make_title(code: int) -> str:
        rest, c = divmod(code, n_col)
        rest, nn = divmod(rest, 4)
        rest, m = divmod(rest, n_mod)
        lf, b = divmod(rest, 32)
        d = TAXONOMY[lf][0]
        return f"{BRANDS[d][b]} {MODIFIERS[d][m].title()} {TAXONOMY[lf][3][nn].title()}, {COLORS[c].title()}"

    attr_code = (dept * 16 + material) * 16 * n_col + size * n_col + color

    def make_attr(code: int) -> str:
        rest, c = divmod(code, n_col)
        rest, s = divmod(rest, 16)
        d, m = divmod(rest, 16)
        dn = DEPARTMENTS[d]
        return f"color: {COLORS[c]}; material: {MATERIALS[dn][m]}; size: {SIZES[dn][s]}"

    desc_code = (title_code * 16 + material) * 16 + size

    def make_desc(code: int) -> str:
        rest, s = divmod(code, 16)
        tcode, m = divmod(rest, 16)
        lf = tcode // (32 * n_mod * 4 * n_col)
        d = TAXONOMY[lf][0]
        return f"{make_title(tcode)}. Made of {MATERIALS[d][m]}, size {SIZES[d][s]}. {TAXONOMY[lf][2]} by {BRANDS[d][(tcode // (n_mod * 4 * n_col)) % 32]}."

    category_names = [CATEGORY_SEPARATOR.join(t[:3]) for t in TAXONOMY]
    brand_names = [b for d in DEPARTMENTS for b in BRANDS[d]]
    products = pd.DataFrame(
        {
            "product_id": np.arange(n, dtype=np.int64),
            "title": _render(title_code, make_title),
            "brand": pd.Categorical.from_codes(brand, categories=brand_names),
            "category": pd.Categorical.from_codes(leaf, categories=category_names),
            "attributes": _render(attr_code, make_attr),
            "description": _render(desc_code, make_desc),
            "price": price,
            "department": pd.Categorical.from_codes(dept, categories=list(DEPARTMENTS)),
            "leaf_id": leaf.astype(np.int16),
            "brand_id": brand.astype(np.int16),
            "color": pd.Categorical.from_codes(color, categories=list(COLORS)),
            "rating": rating,
            "review_count": review_count,
            "reviews_90d": reviews_90d.astype(np.int64),
            "last_review_ts": np.where(
                last_review_days >= 0, EPOCH_END - last_review_days.astype(np.int64) * DAY, 0
            ),
            "listed_ts": EPOCH_END - listed_days.astype(np.int64) * DAY,
            "return_rate": np.round(return_rate, 4),
            "stock": stock.astype(np.int64),
            "margin": margin,
            "promoted": promoted,
        }
    )
    # Material and size as plain categoricals (names can repeat across departments).
    mat_names = [m for d in DEPARTMENTS for m in MATERIALS[d]]
    products["material"] = pd.Categorical(
        np.array(mat_names, dtype=object)[material + np.concatenate([[0], np.cumsum(mat_counts)[:-1]])[dept]]
    )
    size_names = [s for d in DEPARTMENTS for s in SIZES[d]]
    products["size"] = pd.Categorical(
        np.array(size_names, dtype=object)[size + np.concatenate([[0], np.cumsum(size_counts)[:-1]])[dept]]
    )
    truth = pd.DataFrame({"product_id": products["product_id"].to_numpy(), "quality": quality})
    return products, truth


# --------------------------------------------------------------------------------------------------
# Queries


def _typo(word: str, rng: np.random.Generator) -> str:
    """One edit (drop, swap, double or substitute a letter) inside a word of 5+ letters."""
    if len(word) < 5 or not word.isalpha():
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    keyboard_neighbour = "qwertyuiopasdfghjklzxcvbnm"
    j = keyboard_neighbour.find(word[i])
    return word[:i] + keyboard_neighbour[(j + 1) % 26] + word[i + 1 :]


def simulate_queries(
    products: pd.DataFrame,
    n_queries: int = 2000,
    seed: int = 0,
    *,
    typo_rate: float = 0.12,
    spanish_rate: float = 0.10,
) -> pd.DataFrame:
    """Distinct query texts with the structured spec each was drawn from.

    Columns: ``query_id``, ``text``, ``lang`` (en/es), ``intent`` (one of :data:`INTENTS`), ``leaf_id``
    (-1 = any), ``brand_id`` (-1 = any), ``color_id`` (-1 = any), ``price_min``, ``price_max`` (NaN =
    none), ``typo``, ``synonym`` (a noun other than the target's title noun), ``weight`` (Zipf traffic share).
    """
    rng = np.random.default_rng(seed + 1)
    m = int(n_queries * 1.6) + 50  # oversample: different specs can render to the same text
    target = rng.integers(0, len(products), m)
    leaf = products["leaf_id"].to_numpy()[target].astype(np.int64)
    brand = products["brand_id"].to_numpy()[target].astype(np.int64)
    color = products["color"].cat.codes.to_numpy()[target].astype(np.int64)
    price = products["price"].to_numpy()[target]
    intent = rng.choice(len(INTENTS), size=m, p=INTENT_PROBS)
    lang_es = rng.random(m) < spanish_rate
    typo = rng.random(m) < typo_rate
    noun_pick = rng.random(m)
    price_form = rng.integers(0, 3, m)
    brand_names = [b for d in DEPARTMENTS for b in BRANDS[d]]
    rows = []
    for i in range(m):  # a few thousand specs: formatting text per query is fine here
        t = TAXONOMY[leaf[i]]
        nouns = t[3]
        noun = nouns[int(noun_pick[i] * len(nouns))]
        it = INTENTS[intent[i]]
        es = bool(lang_es[i]) and it != "brand"
        spec = {
            "leaf_id": int(leaf[i]),
            "brand_id": -1,
            "color_id": -1,
            "price_min": np.nan,
            "price_max": np.nan,
        }
        noun_text = t[4] if es else noun
        if it == "category":
            words = [noun_text]
        elif it == "brand":
            spec["leaf_id"] = -1
            spec["brand_id"] = int(brand[i])
            words = [brand_names[brand[i]]]
        elif it == "brand_category":
            spec["brand_id"] = int(brand[i])
            words = [brand_names[brand[i]], noun_text]
        elif it == "color_category":
            spec["color_id"] = int(color[i])
            words = [noun_text, COLORS_ES[color[i]]] if es else [COLORS[color[i]], noun_text]
        else:  # price_category: a limit around the target's price, in round numbers
            limit = float(max(10, np.round(price[i] * 1.2 / 10) * 10))
            form = int(price_form[i])
            if es:
                spec["price_max"] = limit
                words = [noun_text, f"menos de ${limit:.0f}"]
            elif form == 0:
                spec["price_max"] = limit
                words = [noun_text, f"under ${limit:.0f}"]
            elif form == 1:
                low = float(max(0, np.round(limit / 2 / 10) * 10))
                spec["price_min"], spec["price_max"] = low, limit
                words = [noun_text, f"between {low:.0f} and {limit:.0f} dollars"]
            else:
                low = float(max(0, np.round(price[i] * 0.8 / 10) * 10))
                spec["price_min"] = low
                words = [noun_text, f"${low:.0f}+"]
        text = " ".join(words).lower()
        if typo[i] and not es:
            # Typos hit the product words, never the brand: brands are guarded by the spell corrector.
            parts = text.split(" ")
            cand = [
                j for j, w in enumerate(parts) if len(w) >= 5 and w.isalpha() and w.title() not in brand_names
            ]
            if cand:
                j = cand[int(rng.integers(0, len(cand)))]
                parts[j] = _typo(parts[j], rng)
                text = " ".join(parts)
        rows.append(
            {
                "text": text,
                "lang": "es" if es else "en",
                "intent": it,
                **spec,
                "typo": bool(typo[i] and not es),
                "synonym": noun != nouns[0],
            }
        )
    queries = pd.DataFrame(rows).drop_duplicates("text").head(n_queries).reset_index(drop=True)
    queries.insert(0, "query_id", np.arange(len(queries), dtype=np.int64))
    # Zipf traffic: a few head queries, a long tail (ranks shuffled so head != first generated).
    ranks = rng.permutation(len(queries)) + 1
    weight = 1.0 / np.power(ranks, 1.05)
    queries["weight"] = weight / weight.sum()
    return queries


# --------------------------------------------------------------------------------------------------
# Ground truth


def true_grades(
    queries: pd.DataFrame,
    query_index: np.ndarray,
    products: pd.DataFrame,
    truth: pd.DataFrame,
    product_ids: np.ndarray,
) -> np.ndarray:
    """Ground-truth grade 0..3 of each (``queries.iloc[query_index[i]]``, ``product_ids[i]``) pair.

    0: wrong category (or wrong brand for a brand query); 1: right category but a requested brand,
    colour or price bound is missed; 2: matches everything asked; 3: matches and is top-quality.
    """
    qi = np.asarray(query_index)
    pid = np.asarray(product_ids)
    q_leaf = queries["leaf_id"].to_numpy()[qi]
    q_brand = queries["brand_id"].to_numpy()[qi]
    q_color = queries["color_id"].to_numpy()[qi]
    q_min = queries["price_min"].to_numpy(dtype=np.float64)[qi]
    q_max = queries["price_max"].to_numpy(dtype=np.float64)[qi]
    p_leaf = products["leaf_id"].to_numpy()[pid]
    p_brand = products["brand_id"].to_numpy()[pid]
    p_color = products["color"].cat.codes.to_numpy()[pid]
    p_price = products["price"].to_numpy()[pid]
    quality = truth["quality"].to_numpy()[pid]
    cat_ok = (q_leaf < 0) | (q_leaf == p_leaf)
    brand_ok = (q_brand < 0) | (q_brand == p_brand)
    color_ok = (q_color < 0) | (q_color == p_color)
    price_ok = ~(p_price < q_min) & ~(p_price > q_max)  # NaN bounds compare False: no constraint
    all_ok = cat_ok & brand_ok & color_ok & price_ok
    grade = np.where(all_ok, 2, np.where(cat_ok & (q_leaf >= 0), 1, 0))
    grade = np.where(all_ok & (quality > 0.6), 3, grade)
    return grade.astype(np.int8)


# --------------------------------------------------------------------------------------------------
# Users and sessions


def simulate_users(n_users: int, seed: int = 0) -> pd.DataFrame:
    """Users with a favourite brand per department and a price sensitivity."""
    rng = np.random.default_rng(seed + 2)
    fav = rng.integers(0, 8, (n_users, len(DEPARTMENTS))) + np.arange(len(DEPARTMENTS)) * 8
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int64)})
    for d, name in enumerate(DEPARTMENTS):
        users[f"fav_brand_{name.lower()}"] = fav[:, d].astype(np.int16)
    users["price_sensitivity"] = np.round(rng.uniform(0.0, 1.0, n_users), 3)
    return users


def _candidate_pools(
    queries: pd.DataFrame, products: pd.DataFrame, truth: pd.DataFrame, pool: int, rng: np.random.Generator
) -> np.ndarray:
    """A fixed candidate pool per query (the old system's retrieval): mostly matching products, some
    right-category misses, a few random ones. Shape ``(n_queries, pool)``."""
    n = len(products)
    pools = np.empty((len(queries), pool), dtype=np.int64)
    leaf = products["leaf_id"].to_numpy()
    brand = products["brand_id"].to_numpy()
    by_leaf = [np.flatnonzero(leaf == lf) for lf in range(len(TAXONOMY))]
    by_brand = [np.flatnonzero(brand == b) for b in range(len(DEPARTMENTS) * 8)]
    q_leaf = queries["leaf_id"].to_numpy()
    q_brand = queries["brand_id"].to_numpy()
    for i in range(len(queries)):  # per distinct query, not per session
        base = by_leaf[q_leaf[i]] if q_leaf[i] >= 0 else by_brand[q_brand[i]]
        sample = base[rng.integers(0, len(base), min(len(base), 4 * pool))] if len(base) else base
        grades = true_grades(queries, np.full(len(sample), i), products, truth, sample)
        good = np.unique(sample[grades >= 2])
        near = np.unique(sample[grades == 1])
        take_good = rng.permutation(good)[: int(pool * 0.6)]
        take_near = rng.permutation(near)[: pool - len(take_good) - pool // 10]
        chosen = np.unique(np.concatenate([take_good, take_near]))
        filler = rng.integers(0, n, pool * 2)
        chosen = np.concatenate([chosen, pd.unique(filler[~np.isin(filler, chosen)])])[:pool]
        pools[i] = chosen
    return pools


@dataclass
class ClickModel:
    """Settings of the position-biased user model (defaults match the docs)."""

    eta: float = 1.0  # examination propensity (1/rank)**eta
    page_size: int = 20
    pool: int = 60
    swap_rate: float = 0.2  # share of sessions with a randomised swap of rank 1 and a random rank
    # The old production ranker: relevance seen weakly and through noise, with a bias towards promoted
    # and popular (many-reviewed) items -- what raw clicks learn to imitate, and IPS corrects.
    logger_relevance: float = 0.5
    logger_noise: float = 1.0
    logger_promoted_bias: float = 1.5
    logger_popularity_bias: float = 1.0


def simulate_sessions(
    products: pd.DataFrame,
    truth: pd.DataFrame,
    queries: pd.DataFrame,
    users: pd.DataFrame,
    n_sessions: int,
    seed: int = 0,
    model: ClickModel | None = None,
    start_ts: int = EPOCH_END - 30 * DAY,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(impressions, qrels)``.

    ``impressions``: one row per shown result: ``search_id, ts, user_id, query_id, query, product_id,
    position`` (1-based, as shown), ``logged_position`` (the old ranker's rank before a randomised swap),
    ``clicked, added_to_cart, purchased, order_value``. ``qrels``: ``query_id, product_id, grade`` for
    every pooled pair (the ground truth the debiasing is checked against).
    """
    model = model or ClickModel()
    rng = np.random.default_rng(seed + 3)
    k, pool = model.page_size, model.pool
    pools = _candidate_pools(queries, products, truth, pool, rng)
    nq = len(queries)
    qidx = np.repeat(np.arange(nq), pool)
    grades = true_grades(queries, qidx, products, truth, pools.ravel()).reshape(nq, pool)
    # The old ranker: relevance seen through noise and its business/popularity bias, fixed per (q, p).
    review = np.log1p(products["review_count"].to_numpy()[pools])
    review = (review - review.mean()) / (review.std() + 1e-9)
    promoted = products["promoted"].to_numpy()[pools].astype(np.float64)
    logger_score = (
        model.logger_relevance * grades
        + model.logger_promoted_bias * promoted
        + model.logger_popularity_bias * review
        + rng.normal(0.0, model.logger_noise, grades.shape)
    )
    # Sessions: Zipf-distributed queries, uniform users, increasing timestamps.
    s_query = rng.choice(nq, size=n_sessions, p=queries["weight"].to_numpy())
    s_user = rng.integers(0, len(users), n_sessions)
    s_ts = np.sort(rng.integers(start_ts, start_ts + 30 * DAY, n_sessions))
    session_score = logger_score[s_query] + rng.normal(0.0, 0.3, (n_sessions, pool))
    shown_col = np.argsort(-session_score, axis=1)[:, :k]  # (S, k) columns into the pool
    logged_rank = np.broadcast_to(np.arange(1, k + 1), (n_sessions, k)).copy()
    # Randomised intervention: swap rank 1 with a uniformly drawn rank 2..k.
    swap = rng.random(n_sessions) < model.swap_rate
    swap_to = rng.integers(2, k + 1, n_sessions)
    rows = np.flatnonzero(swap)
    position = logged_rank.copy()
    position[rows, 0] = swap_to[rows]
    position[rows, swap_to[rows] - 1] = 1
    shown_pid = np.take_along_axis(pools[s_query], shown_col, axis=1)
    shown_grade = np.take_along_axis(grades[s_query], shown_col, axis=1)
    # User model: brand taste and price sensitivity tilt attraction; quality and price drive purchase.
    dept = products["department"].cat.codes.to_numpy()[shown_pid]
    fav = users[[f"fav_brand_{d.lower()}" for d in DEPARTMENTS]].to_numpy()[s_user]
    likes_brand = np.take_along_axis(fav, dept, axis=1) == products["brand_id"].to_numpy()[shown_pid]
    price = products["price"].to_numpy()[shown_pid]
    median = np.array([t[5] for t in TAXONOMY])[products["leaf_id"].to_numpy()[shown_pid]]
    pricey = np.clip(np.log(price / median), 0, 2) * users["price_sensitivity"].to_numpy()[s_user][:, None]
    attract = np.clip(
        ATTRACT_BY_GRADE[shown_grade] * np.where(likes_brand, 1.4, 1.0) * (1 - 0.3 * pricey), 0, 0.97
    )
    examined = rng.random(position.shape) < true_propensity(position, model.eta)
    clicked = examined & (rng.random(position.shape) < attract)
    quality = truth["quality"].to_numpy()[shown_pid]
    cart_p = CART_BY_GRADE[shown_grade] * (0.7 + 0.3 / (1 + np.exp(-quality))) * (1 - 0.3 * pricey)
    carted = clicked & (rng.random(position.shape) < cart_p)
    purchased = carted & (rng.random(position.shape) < BUY_GIVEN_CART)
    qty = 1 + (rng.random(position.shape) < 0.15)
    order_value = np.where(purchased, price * qty, 0.0)

    impressions = pd.DataFrame(
        {
            "search_id": np.repeat(np.arange(n_sessions, dtype=np.int64), k),
            "ts": np.repeat(s_ts.astype(np.int64), k),
            "user_id": np.repeat(s_user.astype(np.int64), k),
            "query_id": np.repeat(s_query.astype(np.int64), k),
            "product_id": shown_pid.ravel(),
            "position": position.ravel().astype(np.int16),
            "logged_position": logged_rank.ravel().astype(np.int16),
            "clicked": clicked.ravel(),
            "added_to_cart": carted.ravel(),
            "purchased": purchased.ravel(),
            "order_value": np.round(order_value.ravel(), 2),
        }
    )
    impressions.insert(
        4, "query", pd.Categorical.from_codes(impressions["query_id"], queries["text"].tolist())
    )
    qrels = pd.DataFrame(
        {
            "query_id": qidx.astype(np.int64),
            "product_id": pools.ravel(),
            "grade": grades.ravel().astype(np.int8),
        }
    )
    return impressions, qrels


# --------------------------------------------------------------------------------------------------
# Everything at once, saved to / loaded from a folder


@dataclass
class Simulation:
    """A simulated world: catalog, hidden truth, queries, users, the click log and the ground truth."""

    products: pd.DataFrame
    truth: pd.DataFrame
    queries: pd.DataFrame
    users: pd.DataFrame
    impressions: pd.DataFrame
    qrels: pd.DataFrame
    click_model: ClickModel = field(default_factory=ClickModel)
    seed: int = 0

    def true_propensities(self, max_position: int | None = None) -> np.ndarray:
        """Examination probability of ranks 1..max_position (index 0 is rank 1)."""
        k = max_position or self.click_model.page_size
        return true_propensity(np.arange(1, k + 1), self.click_model.eta)

    def dataset(self):
        """The :class:`~mlsd.search.data.SearchDataset` view (products, queries, graded judgements)."""
        from mlsd.search.data import SearchDataset

        return SearchDataset(
            name="simulated",
            products=self.products,
            queries=self.queries[["query_id", "text"]],
            judgements=self.qrels,
            max_grade=3.0,
        )

    def save(self, out: Path, *, world: dict[str, Any] | None = None, frames: str = ".") -> Path:
        """Every frame as Parquet (in ``out / frames``) plus ``out/simulation.json`` (seed, click model,
        where the frames are and ``world``: the sizes asked for, which :func:`simulate_into` compares
        before reusing a folder)."""
        out = Path(out)
        (out / frames).mkdir(parents=True, exist_ok=True)
        for name in ("products", "truth", "queries", "users", "impressions", "qrels"):
            getattr(self, name).to_parquet(out / frames / f"{name}.parquet", index=False)
        meta = {"seed": self.seed, "click_model": self.click_model.__dict__, "n_products": len(self.products),
                "world": world, "frames": frames}  # fmt: skip
        (out / "simulation.json").write_text(json.dumps(meta, indent=2))
        return out

    def contract_tables(self) -> dict[str, pd.DataFrame]:
        """The simulation as the data contract's tables (:mod:`mlsd.search.contract`): the catalog, the
        judged queries with their graded judgements, and the logged searches as click-log events.
        Columns beyond the contract stay with the simulation's own frames (its truth)."""
        from mlsd.search.clicklog import impressions_to_events
        from mlsd.search.contract import CATALOG

        text = self.queries.set_index("query_id")["text"]
        tables = {
            "catalog": self.products[[c for c in self.products.columns if c in CATALOG.names]],
            "queries": self.queries[["text"]],
            "judgements": pd.DataFrame(
                {
                    "query": text.reindex(self.qrels["query_id"]).to_numpy(),
                    "product_id": self.qrels["product_id"].to_numpy(),
                    "grade": self.qrels["grade"].to_numpy(np.float64),
                }
            ),  # fmt: skip
        }
        if len(self.impressions):
            tables["events"] = impressions_to_events(self.impressions)
        return tables

    @classmethod
    def load(cls, path: Path) -> Simulation:
        path = Path(path)
        meta_path = path / "simulation.json"
        if not meta_path.exists():
            raise InputError(
                "--workdir",
                str(path),
                "not a simulated dataset folder (no simulation.json)",
                "run `mlsd search simulate --workdir W` first",
            )
        meta = json.loads(meta_path.read_text())
        folder = path / meta.get("frames", ".")
        frames = {
            n: pd.read_parquet(folder / f"{n}.parquet")
            for n in ("products", "truth", "queries", "users", "impressions", "qrels")
        }
        return cls(**frames, click_model=ClickModel(**meta["click_model"]), seed=int(meta["seed"]))


def simulate(
    n_products: int = 20_000,
    n_sessions: int = 50_000,
    seed: int = 0,
    *,
    n_queries: int = 2000,
    n_users: int = 5000,
    click_model: ClickModel | None = None,
    spanish_rate: float = 0.10,
) -> Simulation:
    """Simulate a catalog, queries, users and ``n_sessions`` logged searches."""
    if n_sessions < 0:
        raise InputError("--sessions", n_sessions, "must be >= 0", "use 0 for a catalog only")
    model = click_model or ClickModel()
    products, truth = simulate_catalog(n_products, seed)
    queries = simulate_queries(products, n_queries, seed, spanish_rate=spanish_rate)
    users = simulate_users(n_users, seed)
    impressions, qrels = simulate_sessions(products, truth, queries, users, n_sessions, seed, model)
    return Simulation(products, truth, queries, users, impressions, qrels, model, seed)


# The sizes of `mlsd search simulate --size` (and of System.simulate): tiny for tests (seconds), demo for
# `mlsd demo` and the experiment world (100 query texts and 500 users: ~200 logged searches per query,
# enough impressions per (query, product) for IPS to pay off; with ~130 per query and 1,000 users it
# only ties raw clicks, see docs/search.md), default for the figures in the docs.
WORLD_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"products": 800, "sessions": 4000, "queries": 60, "users": 100},
    "demo": {"products": 1500, "sessions": 20_000, "queries": 100, "users": 500},
    "default": {"products": 20_000, "sessions": 50_000, "queries": 2000, "users": 5000},
}

# Where simulate_into keeps the simulation's own frames (its truth) inside W/search/data: the tables
# of the data contract beside them are the import's, as for imported data.
WORLD_FRAMES = "world"


def simulate_into(
    dirs: SystemDir,
    *,
    size: str = "default",
    seed: int = 0,
    reuse: bool = False,
    progress: bool = False,
    **counts: int | None,
) -> dict[str, Any]:
    """Simulate a world of ``size`` (:data:`WORLD_SIZES`; ``counts`` -- ``products``, ``sessions``,
    ``queries``, ``users`` -- override it) into ``dirs.data``; returns a summary.

    Written through the import (:func:`mlsd.search.contract.import_tables` of
    :meth:`Simulation.contract_tables`, into a fresh folder swapped in for ``dirs.data``): the catalog,
    judged queries and judgements are what an import of those tables gives, and the logged sessions
    become the click log ``dirs.data/clicklog`` (the one training reads and the service appends to);
    the simulation's own frames (its truth) lie beside them in ``dirs.data/world``. A data folder that already holds something is never overwritten: with
    ``reuse`` a world simulated with the same sizes and seed is kept as it is (``"reused": True``);
    anything else is an :class:`InputError` naming the folder.
    """
    from mlsd.platform.data import replace_folder
    from mlsd.search.contract import import_tables

    if size not in WORLD_SIZES:
        raise InputError("--size", size, "unknown size", f"use one of {', '.join(WORLD_SIZES)}")
    world = {
        **WORLD_SIZES[size],
        **{k: int(v) for k, v in counts.items() if v is not None},
        "seed": int(seed),
    }
    unknown = sorted(set(world) - {*WORLD_SIZES[size], "seed"})
    if unknown:
        raise InputError(unknown[0], counts[unknown[0]], "unknown size setting",
                         f"use {', '.join(WORLD_SIZES[size])}")  # fmt: skip
    meta_file = dirs.data / "simulation.json"
    if dirs.data.is_dir() and any(dirs.data.iterdir()):
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        if reuse and meta.get("world") == world:
            return {"data": str(dirs.data), "reused": True, **world}
        raise InputError("--workdir", str(dirs.root), f"{dirs.data} already holds data",
                         "simulate into a fresh --workdir (or delete that folder first)")  # fmt: skip
    started = time.perf_counter()
    if progress:
        print(f"simulating {world['products']:,} products, {world['sessions']:,} searches of "
              f"{world['queries']:,} query texts by {world['users']:,} users (seed {seed}) into {dirs.data}")  # fmt: skip
    sim = simulate(
        world["products"], world["sessions"], seed, n_queries=world["queries"], n_users=world["users"]
    )
    dirs.create()

    def build(folder: Path) -> dict[str, Any]:
        imported = import_tables(folder, sim.contract_tables(), name=f"simulated-seed{seed}")
        sim.save(folder, world=world, frames=WORLD_FRAMES)  # the truth-bearing frames, beside
        return imported

    imported = replace_folder(dirs.data, build)
    events = imported["added"].get("events", 0)
    imp = sim.impressions
    return {
        "data": str(dirs.data),
        "reused": False,
        "size": size,
        "products": len(sim.products),
        "distinct_titles": int(sim.products["title"].nunique()),
        "queries": len(sim.queries),
        "spanish_queries": int((sim.queries["lang"] == "es").sum()),
        "typo_queries": int(sim.queries["typo"].sum()),
        "users": len(sim.users),
        "searches": int(imp["search_id"].nunique()) if len(imp) else 0,
        "impressions": len(imp),
        "clicks": int(imp["clicked"].sum()) if len(imp) else 0,
        "purchases": int(imp["purchased"].sum()) if len(imp) else 0,
        "events": events,
        "true_eta": sim.click_model.eta,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    }


# --------------------------------------------------------------------------------------------------
# The online experiment world

ARM_PRESETS: dict[str, dict[str, Any]] = {
    "ltr": {
        "alias": "champion",
        "params": {"ranker": "ltr"},
        "description": "champion LambdaMART over hybrid (BM25 + dense) retrieval: the production path",
    },
    "bm25": {
        "alias": None,
        "params": {"ranker": "bm25"},
        "description": "BM25 only: lexical retrieval order, no dense retrieval, no LTR",
    },
    "hybrid": {
        "alias": None,
        "params": {"ranker": "hybrid"},
        "description": "retrieval fusion (BM25 + dense, RRF) without LTR",
    },
    "dense": {
        "alias": None,
        "params": {"ranker": "dense"},
        "description": "dense retrieval order only (needs an engine with the MiniLM index)",
    },
    "challenger": {
        "alias": "challenger",
        "params": {"ranker": "ltr"},
        "description": "the registry's challenger LambdaMART (registered by `mlsd pipeline run daily`)",
    },
}
DEFAULT_ARMS: tuple[str, ...] = ("ltr", "bm25")  # the issue's LambdaMART vs BM25-only

METRICS: tuple[dict[str, Any], ...] = (
    # First non-guardrail metric = the primary one: the seed's blend (see BLEND_WEIGHTS).
    {"name": "blended", "kind": "ratio", "numerator": "blended", "denominator": "searches"},
    {"name": "clicks_per_search", "kind": "ratio", "numerator": "clicks", "denominator": "searches"},
    {"name": "conversions_per_search", "kind": "ratio", "numerator": "purchases", "denominator": "searches"},
    {"name": "revenue_per_click", "kind": "ratio", "numerator": "revenue", "denominator": "clicks"},
    {"name": "revenue_per_search", "kind": "ratio", "numerator": "revenue", "denominator": "searches"},
    {"name": "revenue_per_user", "column": "revenue", "covariate": "pre_searches"},
    {
        "name": "latency_ms_per_search",
        "kind": "ratio",
        "numerator": "latency_ms",
        "denominator": "searches",
        "guardrail": True,
        "margin": 0.5,
        "higher_is_better": False,
    },
)
# Outcome column -> the expectation it has under an arm (what the truth is computed from).
_EXPECTED = {"clicks": "e_clicks", "purchases": "e_purchases", "revenue": "e_revenue"}
# The seed's primary metric: 0.6 x conversion + 0.3 x revenue per click + 0.1 x CTR.
BLEND_WEIGHTS: dict[str, float] = {"conversion": 0.6, "revenue_per_click": 0.3, "ctr": 0.1}


def baseline_rates(impressions: pd.DataFrame) -> dict[str, float]:
    """Per-search clicks, purchases and revenue of the logged click log: the pre-period level every
    arm's blend is normalised by (known before the experiment and the same for all arms, so the blend
    stays linear in each search's outcomes).

    Examples:
        >>> log = pd.DataFrame({"search_id": [0, 0, 1, 1], "clicked": [1, 1, 0, 0],
        ...                     "purchased": [1, 0, 0, 0], "order_value": [30.0, 0, 0, 0]})
        >>> baseline_rates(log)
        {'clicks': 1.0, 'purchases': 0.5, 'revenue': 15.0}
    """
    searches = max(int(impressions["search_id"].nunique()), 1)
    return {
        "clicks": float(impressions["clicked"].sum() / searches),
        "purchases": float(impressions["purchased"].sum() / searches),
        "revenue": float(impressions["order_value"].sum() / searches),
    }


def blend_values(
    clicks: np.ndarray, purchases: np.ndarray, revenue: np.ndarray, baseline: dict[str, float]
) -> np.ndarray:
    """Each search's contribution to the blended metric (its mean over searches is the blend).

    Terms, each relative to ``baseline`` (:func:`baseline_rates`): conversion = purchases per search,
    CTR = clicks per search, and revenue per click linearised (delta method) as
    ``1 + revenue/R0 - clicks/C0`` -- a ratio of two per-search means is not a per-search mean, and its
    first-order relative change is exactly ``dR/R0 - dC/C0``. At the baseline every term is 1, so the
    blend is 1; a difference of +0.05 between arms is a +5% weighted relative lift.

    Examples:
        >>> base = {"clicks": 2.0, "purchases": 0.5, "revenue": 50.0}
        >>> # twice the clicks, same sales: CTR +100% (+0.1) but revenue per click -100% (-0.3)
        >>> blend_values(np.array([2.0, 4.0]), np.array([0.5, 0.5]), np.array([50.0, 50.0]), base)
        array([1. , 0.8])
    """
    w = BLEND_WEIGHTS
    ctr = np.asarray(clicks) / baseline["clicks"]
    conversion = np.asarray(purchases) / baseline["purchases"]
    revenue_per_click = 1.0 + np.asarray(revenue) / baseline["revenue"] - ctr
    return w["conversion"] * conversion + w["revenue_per_click"] * revenue_per_click + w["ctr"] * ctr


MEAN_QUANTITY = 1.15  # the simulator buys 2 units in 15% of purchases


# --------------------------------------------------------------------------------------------------
# The world: simulated truth + a trained engine


@dataclass
class SearchWorld:
    """The simulator's truth (catalog, hidden quality, queries, users, click model) and a served engine."""

    products: pd.DataFrame
    truth: pd.DataFrame
    queries: pd.DataFrame
    users: pd.DataFrame
    click_model: ClickModel
    engine: Any
    registry_dir: Path | None = None
    description: dict[str, Any] | None = None
    baseline: dict[str, float] | None = None  # baseline_rates of the logged click log


def world_size(units: int) -> dict[str, int]:
    """The world an experiment of ``units`` users is simulated in: the demo world with one user per unit
    (every unit then has click-log history, so LTR personalises for all of them) and at least four
    logged searches per user."""
    demo = WORLD_SIZES["demo"]
    return {**demo, "users": int(units), "sessions": max(demo["sessions"], 4 * int(units))}


def load_world(
    dirs: SystemDir,
    *,
    units: int | None = None,
    dense: bool | None = None,
    progress: bool = True,
    parser_options: dict[str, Any] | None = None,
) -> SearchWorld:
    """The simulated world of ``dirs``: reuse its data (from the simulator) and champion, train a
    champion on its data when there is none (no dense index: seconds), or simulate
    a world there first -- sized for ``units`` (:func:`world_size`; None: the demo size) -- when its data
    folder is empty. A data folder the simulator did not write (real data) is refused: the world needs
    the simulator's truth.

    ``dense``, ``parser_options``: serve with these (default: as the champion was trained).
    """
    from mlsd.search.engine import MODEL_NAME, load_engine
    from mlsd.search.training import train

    say = print if progress else (lambda *_: None)
    started = time.perf_counter()
    if not (dirs.data / "simulation.json").exists():
        if (dirs.data / "products.parquet").exists():  # real data: never overwrite it with a simulation
            raise InputError(
                "--workdir", str(dirs.root),
                f"holds imported data ({dirs.data}), not a simulated world: an online experiment needs "
                "searchers who react to each arm's results (the simulator's click model and true "
                "relevance); a click log records reactions to the pages that were shown only",
                f"compare rankers offline on your data: `mlsd search train --workdir {dirs.root}` reports "
                "nDCG@10 on your judgements and, with an events file imported, fits LambdaMART on "
                "position-debiased clicks (IPS); `mlsd pipeline run daily` gates a challenger on the "
                "judgements; or run the experiment on a simulated world: `mlsd experiment run search` "
                "(a new workdir)",
            )  # fmt: skip
        counts = world_size(units) if units is not None else WORLD_SIZES["demo"]
        simulate_into(dirs, size="demo", progress=progress, **counts)
    sim = Simulation.load(dirs.data)
    try:
        champion = dirs.require_champion(MODEL_NAME)
        source = f"reused (champion v{champion.version})"
    except InputError:
        say(f"training a champion in {dirs.registry}")
        train(dirs, dense=bool(dense), parser_options=parser_options, compare_raw=False,
              progress=False)  # fmt: skip
        source = "simulated and trained here"
    engine = load_engine(dirs, dense=dense, parser_options=parser_options)
    return SearchWorld(
        sim.products, sim.truth, sim.queries, sim.users, sim.click_model, engine, dirs.registry,
        {
            "source": source,
            "products": len(sim.products),
            "queries": len(sim.queries),
            "users": len(sim.users),
            "logged_searches": int(sim.impressions["search_id"].nunique()),
            "examination": f"(1/rank)^{sim.click_model.eta:g}",
            "dense": engine.dense_ is not None,
            "champion_version": engine.model_version,
            "build_s": round(time.perf_counter() - started, 2),
        },
        baseline_rates(sim.impressions),
    )  # fmt: skip


def world_from_simulation(sim: Any, engine: Any, registry_dir: Path | None = None) -> SearchWorld:
    """A :class:`SearchWorld` over an in-memory :class:`Simulation` and a served engine (the demo's,
    which already has both)."""
    return SearchWorld(
        sim.products, sim.truth, sim.queries, sim.users.copy(), sim.click_model, engine, registry_dir,
        {
            "source": "the demo's world",
            "products": len(sim.products),
            "queries": len(sim.queries),
            "users": len(sim.users),
            "logged_searches": int(sim.impressions["search_id"].nunique()),
            "examination": f"(1/rank)^{sim.click_model.eta:g}",
            "dense": engine.dense_ is not None,
            "champion_version": engine.model_version,
        },
        baseline_rates(sim.impressions),
    )  # fmt: skip


def summary_lines(report: dict[str, Any]) -> list[str]:
    """2-3 printable lines: arm means, lift with CI and truth, verdict, SRM."""
    primary = report.get("primary_metric") or next(iter(report["metrics"]))
    lines = []
    for comp in report["metrics"][primary]:
        arm = comp.get("treatment")
        truth = report.get("truth", {}).get(primary, {}).get(arm)
        covered = report.get("truth_covered", {}).get(primary, {}).get(arm)
        lines.append(
            f"{report['experiment']}: {primary} control {comp['mean_control']:.3f} vs {arm} "
            f"{comp['mean_treatment']:.3f}; diff {comp['diff']:+.3f} [{comp['diff_low']:+.3f}, "
            f"{comp['diff_high']:+.3f}], relative {comp['relative']:+.1%}"
            + (
                f"; true diff {truth:+.3f} ({'covered' if covered else 'NOT covered'})"
                if truth is not None
                else ""
            )
        )
    srm = report.get("srm", {})
    verdicts = report.get("verdict")
    lines.append(
        f"verdict {verdicts}; SRM p={srm.get('p_value', float('nan')):.3g} "
        f"({'FLAGGED' if srm.get('flagged') else 'ok'}); {report['units']} units, {report['seconds']} s"
    )
    return lines


# --------------------------------------------------------------------------------------------------
# Expected and sampled shopper behaviour on a ranked page


def page_outcomes(
    world: SearchWorld, query_index: np.ndarray, user_rows: np.ndarray, pages: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-position probabilities of click and purchase, and the price, for a batch of result pages.

    ``pages``: ``(n, k)`` product ids in shown order, -1 padding. Returns ``p_click``, ``p_buy`` and
    ``price`` of shape ``(n, k)`` (0 where padded): the simulator's click model, vectorised.
    """
    n, k = pages.shape
    valid = pages >= 0
    pid = np.where(valid, pages, 0)
    qi = np.repeat(np.asarray(query_index, np.int64), k)
    grade = true_grades(world.queries, qi, world.products, world.truth, pid.ravel()).reshape(n, k)
    p = world.products
    dept = p["department"].cat.codes.to_numpy()[pid]
    fav = world.users[[f"fav_brand_{d.lower()}" for d in DEPARTMENTS]].to_numpy()[user_rows]
    likes_brand = np.take_along_axis(fav, dept, axis=1) == p["brand_id"].to_numpy()[pid]
    price = p["price"].to_numpy()[pid]
    median = np.array([t[5] for t in TAXONOMY])[p["leaf_id"].to_numpy()[pid]]
    sensitivity = world.users["price_sensitivity"].to_numpy()[user_rows][:, None]
    pricey = np.clip(np.log(price / median), 0, 2) * sensitivity
    attract = np.clip(ATTRACT_BY_GRADE[grade] * np.where(likes_brand, 1.4, 1.0) * (1 - 0.3 * pricey), 0, 0.97)
    exam = true_propensity(np.arange(1, k + 1), world.click_model.eta)[None, :]
    quality = world.truth["quality"].to_numpy()[pid]
    cart = CART_BY_GRADE[grade] * (0.7 + 0.3 / (1 + np.exp(-quality))) * (1 - 0.3 * pricey)
    p_click = np.where(valid, exam * attract, 0.0)
    return {
        "p_click": p_click,
        "p_cart": np.where(valid, cart, 0.0),
        "p_buy": p_click * np.where(valid, cart, 0.0) * BUY_GIVEN_CART,
        "price": np.where(valid, price, 0.0),
    }


def expected(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expected clicks, purchases and revenue per page (no sampling)."""
    return {
        "e_clicks": out["p_click"].sum(axis=1),
        "e_purchases": out["p_buy"].sum(axis=1),
        "e_revenue": (out["p_buy"] * out["price"]).sum(axis=1) * MEAN_QUANTITY,
    }


def _expected_with_blend(out: dict[str, np.ndarray], baseline: dict[str, float]) -> dict[str, np.ndarray]:
    """:func:`expected` plus the blend's expectation (linear in the three, so exact)."""
    exp = expected(out)
    return {**exp, "e_blended": blend_values(exp["e_clicks"], exp["e_purchases"], exp["e_revenue"], baseline)}


def sample(out: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One draw of clicks, purchases and revenue per page from the same probabilities."""
    clicked = rng.random(out["p_click"].shape) < out["p_click"]
    bought = clicked & (rng.random(clicked.shape) < out["p_cart"] * BUY_GIVEN_CART)
    qty = 1 + (rng.random(clicked.shape) < MEAN_QUANTITY - 1)
    return {
        "clicks": clicked.sum(axis=1).astype(np.float64),
        "purchases": bought.sum(axis=1).astype(np.float64),
        "revenue": np.round((bought * out["price"] * qty).sum(axis=1), 2),
    }


def _pages(responses: Sequence[dict[str, Any]], k: int) -> np.ndarray:
    pages = np.full((len(responses), k), -1, dtype=np.int64)
    for i, resp in enumerate(responses):
        ids = [r["product_id"] for r in resp["results"][:k]]
        pages[i, : len(ids)] = ids
    return pages


# --------------------------------------------------------------------------------------------------
# Units and their searches


def simulate_units(world: SearchWorld, units: int, seed: int = 0, searches_per_unit: float = 2.5) -> dict:
    """Unit ids, taste rows, pre-period search counts and the experiment's searches (query, unit, ts).

    Users ``0..len(world.users)-1`` are the world's (with click-log history, so LTR personalises for
    them); further units are new users with freshly drawn tastes.
    """
    if units < 2:
        raise InputError("--units", units, "too few units for an experiment", "use at least 2 (e.g. 2000)")
    rng = np.random.default_rng([seed, 4242])
    extra = max(0, units - len(world.users))
    if extra:
        fresh = simulate_users(extra, seed + 1000).assign(user_id=lambda f: f["user_id"] + len(world.users))
        world.users = pd.concat([world.users, fresh], ignore_index=True)
    unit_ids = np.arange(units).astype(str)
    # Activity differs between users (gamma rates): the pre-period count is the CUPED covariate.
    rate = rng.gamma(2.0, max(searches_per_unit - 1, 0.05) / 2.0, units)
    n_search = 1 + rng.poisson(rate)
    pre = rng.poisson(2 * rate)
    unit_of = np.repeat(np.arange(units), n_search)
    q = rng.choice(len(world.queries), size=len(unit_of), p=world.queries["weight"].to_numpy())
    start = EPOCH_END + DAY
    return {
        "unit_ids": unit_ids,
        "pre_searches": pre,
        "search_unit": unit_of,
        "search_query": q,
        "search_ts": start + unit_of.astype(np.int64),  # unit i arrives at second i of the experiment
    }


# --------------------------------------------------------------------------------------------------
# The experiment


def simulate_experiment(
    world: SearchWorld,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    lose_exposures: float = 0.0,
    searches_per_unit: float = 2.5,
    k: int | None = None,
    batch: int = 512,
    progress: bool = False,
) -> dict[str, Any]:
    """Drive the router for ``units`` users; return the client, experiment name, outcomes, covariates and
    the true effects (what :func:`run_experiment` analyses; tests use the pieces, e.g. for A/A)."""
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.experiments.exposures import MemoryExposureLog
    from mlsd.platform.experiments.online import LossyExposureLog, arms_from_presets, make_experiment
    from mlsd.platform.experiments.online import lose_exposures as lose_mask
    from mlsd.search.routing import SearchRouter

    if world.baseline is None:
        raise InputError(
            "world.baseline", None, "no pre-period rates to normalise the blended metric by",
            "build the world with load_world or world_from_simulation (they read the click log)",
        )  # fmt: skip
    names = list(arms) if arms is not None else list(DEFAULT_ARMS)
    arm_objs = arms_from_presets(ARM_PRESETS, names)
    config = make_experiment("search", arm_objs, list(METRICS))
    name = next(iter(config.experiments))
    k = k or world.click_model.page_size
    pop = simulate_units(world, units, seed, searches_per_unit)
    unit_ids = pop["unit_ids"]
    probe = ExperimentClient(config, registry=False)
    assigned = probe.assign(name, unit_ids)
    keep = lose_mask(assigned, lose_exposures, seed)
    client = ExperimentClient(config, log=LossyExposureLog(MemoryExposureLog(), unit_ids[~keep]))
    router = SearchRouter(world.engine, client, registry_dir=world.registry_dir)
    variants = router.variants_[name]

    s_unit, s_query, s_ts = pop["search_unit"], pop["search_query"], pop["search_ts"]
    texts = world.queries["text"].to_numpy()
    n = len(s_unit)
    arm_of = assigned[s_unit]
    expected_by_arm = {v.arm: {c: np.zeros(n) for c in (*_EXPECTED.values(), "e_blended")} for v in variants}
    sampled = {c: np.zeros(n) for c in ("clicks", "purchases", "revenue")}
    latency = np.zeros(n)
    stages: dict[str, list[float]] = {}
    cache: dict[tuple[int, str, int], np.ndarray] = {}  # (query, user or "", arm) -> page
    rng = np.random.default_rng([seed, 31337])
    # Each search keeps the deadline it would have alone: a batch of m searches gets m budgets.
    budget = world.engine.config.budgets.deadline_ms
    started = time.perf_counter()
    for lo in range(0, n, batch):
        sl = slice(lo, min(lo + batch, n))
        users = unit_ids[s_unit[sl]]
        responses = router.search_many(
            texts[s_query[sl]].tolist(), users.tolist(), k, ts=s_ts[sl], budget_ms=budget * len(users)
        )
        served = _pages(responses, k)
        # A response's timings are its variant's batch's: each search is charged its share.
        latency[sl] = [r["total_ms"] / r["batch"] for r in responses]
        for r in responses:
            for stage, ms in r["timings_ms"].items():
                stages.setdefault(stage, []).append(ms / r["batch"])
        rows = s_unit[sl]
        for a, v in enumerate(variants):
            # The page arm `a` shows: the served one for units in it, the engine's answer otherwise
            # (cached: a variant without LTR does not depend on the user), asked for as one batch.
            pages = served.copy()
            other = np.flatnonzero(arm_of[sl] != a)
            keys = [(int(s_query[lo + j]), str(users[j]) if v.ranking == "ltr" else "", a) for j in other]
            missing = list(dict.fromkeys(key for key in keys if key not in cache))
            if missing:
                answers = world.engine.search_batch(
                    [texts[q] for q, _, _ in missing], [u for _, u, _ in missing], k,
                    ranking=v.ranking, model=v.model, budget_ms=budget * len(missing),
                )  # fmt: skip
                cache.update(zip(missing, _pages(answers, k), strict=True))
            for j, key in zip(other, keys, strict=True):
                pages[j] = cache[key]
            out = page_outcomes(world, s_query[sl], rows, pages)
            for col, val in _expected_with_blend(out, world.baseline).items():
                expected_by_arm[v.arm][col][sl] = val
            mine = arm_of[sl] == a
            if mine.any():
                draw = sample({key: val[mine] for key, val in out.items()}, rng)
                for col, val in draw.items():
                    sampled[col][np.flatnonzero(mine) + lo] = val
        if progress:
            print(f"  {min(lo + batch, n):,}/{n:,} searches ({time.perf_counter() - started:.1f} s)")

    outcomes = pd.DataFrame(
        {
            "unit": unit_ids[s_unit],
            "ts": s_ts,
            "searches": 1.0,
            **sampled,
            "blended": blend_values(
                sampled["clicks"], sampled["purchases"], sampled["revenue"], world.baseline
            ),
            "latency_ms": latency,
        }
    )
    covariates = pd.DataFrame({"unit": unit_ids, "pre_searches": pop["pre_searches"].astype(np.float64)})
    truth = _truth(expected_by_arm, s_unit, units, [v.arm for v in variants])
    return {
        "client": client,
        "experiment": name,
        "outcomes": outcomes,
        "covariates": covariates,
        "truth": truth,
        "expected": {
            arm: {c: float(v.sum() / n) for c, v in cols.items()} for arm, cols in expected_by_arm.items()
        },
        "searches": n,
        "variants": variants,
        "engine_calls": n + len(cache),
        "drive_s": round(time.perf_counter() - started, 2),
        "stages": stages,
    }


def _truth(
    expected_by_arm: dict[str, dict[str, np.ndarray]], s_unit: np.ndarray, units: int, arms: list[str]
) -> dict[str, dict[str, float]]:
    """True differences (treatment - control) of every metric over all units, from expectations."""
    searches = len(s_unit)

    def per_search(arm: str, col: str) -> float:
        return float(expected_by_arm[arm][col].sum() / searches)

    def per_user(arm: str, col: str) -> float:
        return float(np.bincount(s_unit, expected_by_arm[arm][col], minlength=units).mean())

    def per_click(arm: str) -> float:
        return float(expected_by_arm[arm]["e_revenue"].sum() / expected_by_arm[arm]["e_clicks"].sum())

    control = arms[0]
    truth: dict[str, dict[str, float]] = {
        "blended": {},
        "clicks_per_search": {},
        "conversions_per_search": {},
        "revenue_per_click": {},
        "revenue_per_search": {},
        "revenue_per_user": {},
    }
    for arm in arms[1:]:
        truth["blended"][arm] = per_search(arm, "e_blended") - per_search(control, "e_blended")
        truth["revenue_per_click"][arm] = per_click(arm) - per_click(control)
        truth["clicks_per_search"][arm] = per_search(arm, "e_clicks") - per_search(control, "e_clicks")
        truth["conversions_per_search"][arm] = per_search(arm, "e_purchases") - per_search(
            control, "e_purchases"
        )
        truth["revenue_per_search"][arm] = per_search(arm, "e_revenue") - per_search(control, "e_revenue")
        truth["revenue_per_user"][arm] = per_user(arm, "e_revenue") - per_user(control, "e_revenue")
    return truth


def run_experiment(
    dirs: SystemDir,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    looks: int = 10,
    lose_exposures: float = 0.0,
    progress: bool = True,
    world: SearchWorld | None = None,
    searches_per_unit: float = 2.5,
    keep_stages: bool = False,
) -> dict[str, Any]:
    """Run one online experiment of search arms (:data:`ARM_PRESETS`, default :data:`DEFAULT_ARMS`) on
    ``units`` simulated users through the real engine; return the analysis with the true effects.

    ``world``: an already loaded :class:`SearchWorld` (the demo passes its own); otherwise the world in
    ``dirs`` (``W/search/data`` and ``registry``) is reused or created for ``units`` (:func:`load_world`). ``lose_exposures``: share of treatment units
    whose exposure is lost (planted SRM). ``keep_stages``: add ``report["stages_ms"]`` (per-stage
    latencies of every served search; the demo writes them to ``monitoring/timings.json``). When the
    control arm is the champion (``ltr``) and a treatment arm serves another registered version (the
    ``challenger`` preset), its result is written for the ship rule
    (:func:`mlsd.search.training.write_online_result`: ``W/search/monitoring/online/v<N>.json``, which the
    next daily job decides on; ``report["online_results"]`` names the files).
    """
    from mlsd.platform.experiments.online import arms_from_presets, with_truth

    started = time.perf_counter()
    arms_from_presets(ARM_PRESETS, list(arms or DEFAULT_ARMS))  # a bad arm fails before any simulation
    world = world or load_world(dirs, units=units, progress=progress)
    sim = simulate_experiment(
        world, units=units, arms=arms, seed=seed, lose_exposures=lose_exposures,
        searches_per_unit=searches_per_unit, progress=progress,
    )  # fmt: skip
    report = sim["client"].analyze(
        sim["experiment"], sim["outcomes"], covariates=sim["covariates"], looks=looks
    )
    report = with_truth(report, sim["truth"])
    report.update(
        experiment=sim["experiment"],
        system="search",
        world={
            **(world.description or {}),
            "searches": sim["searches"],
            "engine_calls": sim["engine_calls"],
            "searches_per_unit": round(sim["searches"] / units, 3),
            "expected_per_search": sim["expected"],
            "blend": {"weights": BLEND_WEIGHTS, "baseline_per_search": world.baseline},
            "lose_exposures": lose_exposures,
            "seed": seed,
        },
        units=units,
        seconds=round(time.perf_counter() - started, 2),
    )
    if keep_stages:
        report["stages_ms"] = sim["stages"]
    control, *treatments = sim["variants"]
    champion = world.engine.model_version
    if control.alias == "champion" and control.ranking == "ltr" and champion is not None:
        # A registered version tested against the champion: the evidence the ship rule reads.
        from mlsd.search.training import write_online_result

        for v in treatments:
            if v.model is not None and getattr(v.model, "version_", None) is not None:
                path = write_online_result(dirs, report, v.arm, v.model.version_, champion)
                report.setdefault("online_results", {})[v.arm] = str(path)
    return report
