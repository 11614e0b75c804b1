"""Ranking features of (query, product) pairs: text match, semantics, history, quality, price, user, entities.

:class:`SearchFeatures` is fitted once on the catalog and the click-log *history* (impressions strictly
before the moment being scored: point-in-time, so training labels never leak into their own features)
and then turns a batch of candidate pairs into a float32 matrix with columns :data:`FEATURE_NAMES`:

* ``bm25_<field>`` per field (title, brand, category, attributes, description) and ``bm25`` fused, of
  the understood query (spell-corrected, translated, synonym-expanded) -- the retrieval engineer's
  :meth:`BM25Index.field_scores`, so ranking and retrieval agree on the numbers;
* ``dense_cos``: MiniLM cosine (NaN when the dense stage was skipped for the deadline; LightGBM
  routes missing values, so a degraded request still ranks);
* history, debiased: ``ctr_product``, ``cvr_product``, ``ctr_query_product``: clicks (purchases)
  per *examination*, each impression weighted by ``1/propensity(rank)``, smoothed towards the mean
  with ``prior`` pseudo-impressions (so a product seen twice is not a 50% CTR product);
* ``review_score``: Bayesian-shrunk rating times a recency weight (a 4.8 with no review for two
  years is worth less than a 4.6 reviewed last week), ``rating``, ``log_reviews``;
* ``price_pct``: price percentile within the category, ``log_price``, ``return_rate``, ``margin``,
  ``promoted``;
* ``aff_brand``, ``aff_category``: the user's share of past clicks on this brand / department;
* ``match_brand``, ``match_color``, ``match_category``, ``price_in_range``: query entities vs
  product (NaN when the query did not ask), and ``n_entities`` asked;
* list-relative ``bm25_gap`` and ``dense_gap`` (distance to the best candidate of the same query).

All lookups are vectorised: history tables are sorted int64 keys (``query_code * P + product_id``)
searched with ``np.searchsorted``, never dicts in a Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

FEATURE_NAMES: tuple[str, ...] = (
    "bm25_title", "bm25_brand", "bm25_category", "bm25_attributes", "bm25_description", "bm25",
    "dense_cos",
    "ctr_product", "cvr_product", "ctr_query_product", "log_impressions",
    "review_score", "rating", "log_reviews",
    "price_pct", "log_price", "return_rate", "margin", "promoted",
    "aff_brand", "aff_category",
    "match_brand", "match_color", "match_category", "price_in_range", "n_entities",
    "bm25_gap", "dense_gap",
)  # fmt: skip
DAY = 86_400


class FieldScorer(Protocol):
    """What features need from BM25: per-field scores of given pairs (``BM25Index.field_scores``)."""

    fields: tuple[str, ...]

    def field_scores(
        self,
        queries: Sequence[str],
        query_index: np.ndarray,
        rows: np.ndarray,
        *,
        expansions: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray: ...


def normalize_query(text: str) -> str:
    """The key history is stored under: lower-case, single spaces."""
    return " ".join(str(text).lower().split())


def normalize_queries(texts: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
    """:func:`normalize_query` of many texts, computed once per distinct text (logs repeat queries)."""
    codes, uniq = pd.factorize(np.asarray(texts, dtype=object))
    normalized = np.array([normalize_query(t) for t in uniq], dtype=object)
    return normalized[codes] if len(codes) else np.zeros(0, dtype=object)


@dataclass
class QueryBatch:
    """The queries of one batch as the ranker sees them (one entry per query)."""

    texts: list[str]
    understood: list[str]
    expansions: list[list[str]]
    user_ids: list[str]
    query_vectors: np.ndarray | None = None  # (n, d) or None when dense was skipped
    brand: list[str | None] = field(default_factory=list)
    color: list[str | None] = field(default_factory=list)
    category: list[str | None] = field(default_factory=list)
    price_min: np.ndarray | None = None
    price_max: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        for name in ("brand", "color", "category"):
            if not getattr(self, name):
                setattr(self, name, [None] * n)
        if self.price_min is None:
            self.price_min = np.full(n, np.nan)
        if self.price_max is None:
            self.price_max = np.full(n, np.nan)

    @classmethod
    def from_parsed(
        cls,
        texts: Sequence[str],
        parsed: Sequence[Any],
        user_ids: Sequence[str] | None = None,
        query_vectors: np.ndarray | None = None,
    ) -> QueryBatch:
        """From :class:`mlsd.search.query.ParsedQuery` objects (``corrected``, ``expansions``, ``entities``)."""
        ents = [p.entities for p in parsed]

        def num(v: Any) -> float:
            return np.nan if v is None else float(v)

        return cls(
            texts=list(texts),
            understood=[p.corrected for p in parsed],
            expansions=[list(p.expansions) for p in parsed],
            user_ids=[str(u) for u in (user_ids if user_ids is not None else [""] * len(texts))],
            query_vectors=query_vectors,
            brand=[e.brand for e in ents],
            color=[e.color for e in ents],
            category=[e.category for e in ents],
            price_min=np.array([num(e.price_min) for e in ents], dtype=np.float64),
            price_max=np.array([num(e.price_max) for e in ents], dtype=np.float64),
        )


def _group_max(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    if len(values) == 0:
        return values
    uniq, inverse = np.unique(groups, return_inverse=True)
    out = np.full(len(uniq), -np.inf)
    np.maximum.at(out, inverse, np.where(np.isnan(values), -np.inf, values))
    return out[inverse]


class _KeyTable:
    """Sorted int64 keys with value columns; ``lookup(keys)`` -> values (0 where absent) and a found mask."""

    def __init__(self, keys: np.ndarray, values: dict[str, np.ndarray]) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.values = {k: v[order] for k, v in values.items()}

    def lookup(self, keys: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if len(self.keys) == 0:
            return {k: np.zeros(len(keys)) for k in self.values}, np.zeros(len(keys), dtype=bool)
        idx = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[idx] == keys
        return {k: np.where(found, v[idx], 0.0) for k, v in self.values.items()}, found


class SearchFeatures:
    """Feature builder: ``fit(products, bm25, dense=None, history=None, propensity=None)``, then ``transform``.

    ``propensity`` (an estimator from :mod:`mlsd.search.propensity`, or None for raw counts) debiases
    the history features; ``prior`` is the pseudo-impression count of the smoothing; ``half_life_days``
    the review recency decay.
    """

    def __init__(
        self, *, prior: float = 20.0, half_life_days: float = 180.0, rating_prior: float = 10.0
    ) -> None:
        self.prior = prior
        self.half_life_days = half_life_days
        self.rating_prior = rating_prior

    # -- fitting -------------------------------------------------------------------------------------
    def fit(
        self,
        products: pd.DataFrame,
        bm25: FieldScorer | None,
        dense: Any = None,
        history: pd.DataFrame | None = None,
        propensity: Any = None,
        now_ts: int | None = None,
    ) -> SearchFeatures:
        self.bm25_ = bm25
        self.dense_ = dense
        n = len(products)
        self.n_rows_ = n
        self.product_ids_ = products["product_id"].to_numpy(np.int64)
        self.id_span_ = int(self.product_ids_.max()) + 1 if n else 1

        def col(name: str) -> np.ndarray:
            # astype first: a nullable integer column (Int64, as imported) has NA where a value is unknown
            return products[name].astype(np.float64).to_numpy() if name in products else np.full(n, np.nan)

        price = col("price")
        category = products["category"].astype(str) if "category" in products else pd.Series([""] * n)
        self.category_codes_, self.category_names_ = pd.factorize(category.to_numpy())
        self.price_pct_ = pd.Series(price).groupby(self.category_codes_).rank(pct=True).to_numpy()
        self.log_price_ = np.log1p(price)
        rating = col("rating")
        reviews = col("review_count")
        mean_rating = np.nanmean(rating) if np.isfinite(rating).any() else np.nan
        bayes = (
            np.nan_to_num(rating, nan=mean_rating) * np.nan_to_num(reviews) + mean_rating * self.rating_prior
        ) / (np.nan_to_num(reviews) + self.rating_prior)
        last = col("last_review_ts")
        now = now_ts if now_ts is not None else (int(np.nanmax(last)) if np.isfinite(last).any() else 0)
        age_days = np.where(last > 0, (now - last) / DAY, np.inf)
        recency = np.exp(-np.log(2) * np.maximum(age_days, 0) / self.half_life_days)
        self.review_score_ = bayes * (0.5 + 0.5 * np.nan_to_num(recency))
        self.rating_ = rating
        self.log_reviews_ = np.log1p(reviews)
        self.return_rate_ = col("return_rate")
        self.margin_ = col("margin")
        self.promoted_ = col("promoted")
        brand = products["brand"].astype(str).str.lower() if "brand" in products else pd.Series([""] * n)
        self.brand_codes_, brand_names = pd.factorize(brand.to_numpy())
        self.brand_index_ = pd.Index(brand_names)
        self.brand_code_of_ = {b: i for i, b in enumerate(brand_names)}
        dept = category.str.split("/").str[0].str.strip()
        self.dept_codes_, dept_names = pd.factorize(dept.to_numpy())
        self.dept_index_ = pd.Index(dept_names)
        self.color_codes_, self.color_index_ = self._product_colors(products)
        self.color_code_of_ = {c: i for i, c in enumerate(self.color_index_)}
        self.category_lower_ = [str(c).lower() for c in self.category_names_]
        self._category_masks: dict[str, np.ndarray] = {}
        self._fit_history(history, propensity)
        return self

    @staticmethod
    def _product_colors(products: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
        from mlsd.search.entities import COLOR_ALIASES

        if "color" in products:
            raw = products["color"].astype(str)
        else:  # "color: black; material: oak" -> "black"; parsed once per distinct attribute string
            attrs = pd.Categorical(products.get("attributes", pd.Series([""] * len(products))).astype(str))
            parsed = pd.Series(attrs.categories).str.extract(r"colou?r:\s*([^;]+)")[0].fillna("").str.strip()
            raw = pd.Series(parsed.to_numpy()[attrs.codes])
        folded = raw.str.lower().map(lambda c: COLOR_ALIASES.get(c, c)) if len(raw) else raw
        codes, names = pd.factorize(folded.to_numpy())
        return codes, pd.Index(names)

    def _fit_history(self, history: pd.DataFrame | None, propensity: Any) -> None:
        empty = history is None or len(history) == 0
        self.query_index_ = pd.Index([])
        self.user_index_ = pd.Index([])
        if empty:
            self.product_table_ = _KeyTable(
                np.zeros(0, np.int64), {"n": np.zeros(0), "wc": np.zeros(0), "wp": np.zeros(0)}
            )
            self.qp_table_ = self.product_table_
            self.ub_table_ = _KeyTable(np.zeros(0, np.int64), {"share": np.zeros(0)})
            self.ud_table_ = self.ub_table_
            self.mean_ctr_ = self.mean_cvr_ = 0.0
            return
        pos = history["position"].to_numpy(np.int64)
        w = propensity.weights(pos) if propensity is not None else np.ones(len(pos))
        clicked = history["clicked"].to_numpy(np.float64)
        bought = history["purchased"].to_numpy(np.float64)
        pid = history["product_id"].to_numpy(np.int64)
        wc, wp = w * clicked, w * bought
        self.mean_ctr_ = float(wc.mean())
        self.mean_cvr_ = float(wp.mean())
        frame = pd.DataFrame({"pid": pid, "n": 1.0, "wc": wc, "wp": wp})
        g = frame.groupby("pid", sort=False).sum()
        self.product_table_ = _KeyTable(
            g.index.to_numpy(np.int64), {c: g[c].to_numpy() for c in ("n", "wc", "wp")}
        )
        qcodes, qnames = pd.factorize(normalize_queries(history["query"].to_numpy()))
        self.query_index_ = pd.Index(qnames)
        frame["key"] = qcodes.astype(np.int64) * self.id_span_ + pid
        g = frame.groupby("key", sort=False)[["n", "wc"]].sum()
        self.qp_table_ = _KeyTable(
            g.index.to_numpy(np.int64), {"n": g["n"].to_numpy(), "wc": g["wc"].to_numpy()}
        )
        # User affinity from clicks: share of the user's clicks per brand and per department.
        row_of = pd.Series(np.arange(self.n_rows_), index=self.product_ids_)
        clicks = history[clicked > 0]
        rows = row_of.reindex(clicks["product_id"].to_numpy()).to_numpy()
        ok = ~np.isnan(rows)
        rows = rows[ok].astype(np.int64)
        ucodes, unames = pd.factorize(clicks["user_id"].astype(str).to_numpy()[ok])
        self.user_index_ = pd.Index(unames)
        per_user = np.bincount(ucodes, minlength=len(unames)).astype(np.float64)
        self.ub_table_ = self._share_table(ucodes, self.brand_codes_[rows], len(self.brand_index_), per_user)
        self.ud_table_ = self._share_table(ucodes, self.dept_codes_[rows], len(self.dept_index_), per_user)

    @staticmethod
    def _share_table(ucodes: np.ndarray, codes: np.ndarray, span: int, per_user: np.ndarray) -> _KeyTable:
        keys = ucodes.astype(np.int64) * max(span, 1) + codes
        uniq, counts = np.unique(keys, return_counts=True)
        return _KeyTable(uniq, {"share": counts / per_user[uniq // max(span, 1)]})

    # -- transforming --------------------------------------------------------------------------------
    def user_affinity(self, user_ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(brand share, department share) of the users' past clicks, per pair; 0 for unknown users."""
        users = np.asarray(user_ids, dtype=object)
        if len(self.user_index_) == 0:
            ucode = np.full(len(rows), -1)
        elif (
            len(users) and (users == users[0]).all()
        ):  # one user (serving): one lookup, not an index probe per pair
            ucode = np.full(len(rows), self.user_index_.get_indexer([users[0]])[0])
        else:
            ucode = self.user_index_.get_indexer(users)
        known = ucode >= 0
        bkey = ucode.astype(np.int64) * max(len(self.brand_index_), 1) + self.brand_codes_[rows]
        dkey = ucode.astype(np.int64) * max(len(self.dept_index_), 1) + self.dept_codes_[rows]
        b, _ = self.ub_table_.lookup(np.where(known, bkey, -1))
        d, _ = self.ud_table_.lookup(np.where(known, dkey, -1))
        return b["share"], d["share"]

    def transform(
        self,
        batch: QueryBatch,
        query_index: np.ndarray,
        rows: np.ndarray,
        user_affinity: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Features of pairs ``(batch query query_index[j], catalog row rows[j])``: ``(n_pairs, len(FEATURE_NAMES))``.

        ``user_affinity`` overrides the per-pair affinities (training passes the mean over the users who
        saw each pair).
        """
        qi = np.asarray(query_index, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        X = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
        c = {name: j for j, name in enumerate(FEATURE_NAMES)}
        if n == 0:
            return X
        if self.bm25_ is not None:
            scores = self.bm25_.field_scores(batch.understood, qi, rows, expansions=batch.expansions)
            for j, f in enumerate(self.bm25_.fields):
                if f"bm25_{f}" in c:
                    X[:, c[f"bm25_{f}"]] = scores[:, j]
            X[:, c["bm25"]] = scores[:, -1]
            X[:, c["bm25_gap"]] = scores[:, -1] - _group_max(scores[:, -1].astype(np.float64), qi)
        if batch.query_vectors is not None and self.dense_ is not None:
            cos = self.dense_.cosine(batch.query_vectors, qi, rows)
            X[:, c["dense_cos"]] = cos
            X[:, c["dense_gap"]] = cos - _group_max(np.asarray(cos, np.float64), qi)
        pid = self.product_ids_[rows]
        p, _ = self.product_table_.lookup(pid)
        k = self.prior
        ctr_p = (p["wc"] + k * self.mean_ctr_) / (p["n"] + k)
        X[:, c["ctr_product"]] = ctr_p
        X[:, c["cvr_product"]] = (p["wp"] + k * self.mean_cvr_) / (p["n"] + k)
        X[:, c["log_impressions"]] = np.log1p(p["n"])
        qkeys = [normalize_query(t) for t in batch.texts]
        qcode = self.query_index_.get_indexer(qkeys) if len(self.query_index_) else np.full(len(qkeys), -1)
        pair_q = qcode[qi]
        qp, _ = self.qp_table_.lookup(
            np.where(pair_q >= 0, pair_q.astype(np.int64) * self.id_span_ + pid, -1)
        )
        X[:, c["ctr_query_product"]] = (qp["wc"] + k * ctr_p) / (qp["n"] + k)
        X[:, c["review_score"]] = self.review_score_[rows]
        X[:, c["rating"]] = self.rating_[rows]
        X[:, c["log_reviews"]] = self.log_reviews_[rows]
        X[:, c["price_pct"]] = self.price_pct_[rows]
        X[:, c["log_price"]] = self.log_price_[rows]
        X[:, c["return_rate"]] = self.return_rate_[rows]
        X[:, c["margin"]] = self.margin_[rows]
        X[:, c["promoted"]] = self.promoted_[rows]
        if user_affinity is None:
            users = (
                np.asarray(batch.user_ids, dtype=object)[qi]
                if batch.user_ids
                else np.full(n, "", dtype=object)
            )
            user_affinity = self.user_affinity(users, rows)
        X[:, c["aff_brand"]], X[:, c["aff_category"]] = user_affinity
        self._entity_features(batch, qi, rows, X, c)
        return X

    def _entity_features(
        self, batch: QueryBatch, qi: np.ndarray, rows: np.ndarray, X: np.ndarray, c: dict
    ) -> None:
        from mlsd.search.entities import COLOR_ALIASES

        def codes(values: list[str | None], code_of: dict[str, int], fold=str.lower) -> np.ndarray:
            # -1: not asked; -2: asked for something this catalog does not have
            return np.array([code_of.get(fold(v), -2) if v else -1 for v in values], dtype=np.int64)

        asked_count = np.zeros(len(batch.texts))
        for name, values, code_of, product_codes, fold in (
            ("match_brand", batch.brand, self.brand_code_of_, self.brand_codes_, str.lower),
            (
                "match_color",
                batch.color,
                self.color_code_of_,
                self.color_codes_,
                lambda v: COLOR_ALIASES.get(v.lower(), v.lower()),
            ),
        ):
            q = codes(values, code_of, fold)
            asked_count += q != -1
            pq = q[qi]
            X[:, c[name]] = np.where(pq == -1, np.nan, (pq == product_codes[rows]).astype(np.float32))
        # Category: the entity is a path prefix ("Electronics / Audio"); a product matches when its path
        # starts with it. Evaluated per distinct category name, then gathered.
        cat_match = np.full(len(rows), np.nan, dtype=np.float32)
        asked_cats = [q for q, entity in enumerate(batch.category) if entity]
        for q in asked_cats:  # per query that named a category (serving: at most one)
            entity = batch.category[q].lower()
            ok_codes = self._category_masks.get(entity)
            if ok_codes is None:
                ok_codes = np.array([name.startswith(entity) for name in self.category_lower_], dtype=bool)
                self._category_masks[entity] = ok_codes
            asked_count[q] += 1
            sel = qi == q if len(batch.texts) > 1 else slice(None)
            cat_match[sel] = ok_codes[self.category_codes_[rows[sel]]]
        X[:, c["match_category"]] = cat_match
        lo, hi = batch.price_min[qi], batch.price_max[qi]
        price = np.expm1(self.log_price_[rows])
        asked = np.isfinite(lo) | np.isfinite(hi)
        inside = ~(price < lo) & ~(price > hi)
        X[:, c["price_in_range"]] = np.where(asked, inside.astype(np.float32), np.nan)
        asked_count += np.isfinite(batch.price_min) | np.isfinite(batch.price_max)
        X[:, c["n_entities"]] = asked_count[qi]
