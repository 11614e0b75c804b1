"""Business rules applied after ranking: stock, the parsed price filter, brand diversity, pins, top 48.

The order matters and is fixed: hard filters first (a result failing one is never shown, whatever its
score), then products of the category the query named ahead of the others (when it named one), then
merchandising pins at the top, then brand diversity over the first ``diversity_top`` slots, then the cut
to ``k``. Everything is array work over the ranked candidate rows; the only Python loop is
over the pins (a handful per query).

Brand diversity: among the first ``diversity_top`` results at most ``max_per_brand`` share a brand. The
slots are filled greedily in score order with every result whose brand is still under the cap; the
results skipped keep their order right after. When the query itself asks for a brand ("sonix
headphones") diversity would fight the user, so it is off for that query. When the candidates cannot
fill the slots under the cap (few brands), the slots hold every capped pick first and the remainder after.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlsd.search.config import RuleConfig


@dataclass
class RuleReport:
    """What the rules did to one result list (for the response and for tests)."""

    dropped_out_of_stock: int = 0
    dropped_price: int = 0
    price_filter_skipped: str | None = None  # why a parsed price filter was not applied
    pinned: list[int] = field(default_factory=list)
    category_first: str | None = None  # the parsed category whose products were moved ahead
    demoted_for_diversity: int = 0
    diversity_applied: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class BusinessRules:
    """Rules over a fitted catalog: ``apply(rows, ...)`` -> the final rows (catalog row indices)."""

    def __init__(self, config: RuleConfig | None = None) -> None:
        self.config = config or RuleConfig()

    def fit(self, products: pd.DataFrame) -> BusinessRules:
        """Keep the columns the rules read, as arrays aligned with catalog rows."""
        n = len(products)
        self.stock_ = (  # unknown stock (empty in the catalog) counts as in stock
            products["stock"].fillna(1).to_numpy(np.int64) if "stock" in products else np.ones(n, np.int64)
        )
        self.price_ = products["price"].to_numpy(np.float64)
        self.has_prices_ = bool(np.isfinite(self.price_).any())
        brand = (
            products["brand"].astype(str).str.lower().to_numpy() if "brand" in products else np.full(n, "")
        )
        self.brand_codes_, self.brand_names_ = pd.factorize(brand)
        self.row_of_id_ = pd.Series(np.arange(n), index=products["product_id"].to_numpy(np.int64))
        category = (
            products["category"].astype(str).str.lower() if "category" in products else pd.Series([""] * n)
        )
        self.category_codes_, names = pd.factorize(category.to_numpy())
        self.category_names_ = [str(c) for c in names]
        self._category_masks: dict[str, np.ndarray] = {}
        return self

    def apply(
        self,
        rows: np.ndarray,
        *,
        price_min: float | None = None,
        price_max: float | None = None,
        category: str | None = None,
        query: str = "",
        brand_in_query: bool = False,
        k: int | None = None,
    ) -> tuple[np.ndarray, RuleReport]:
        """Filter, pin, diversify and cut ``rows`` (catalog rows, best first; -1 padding allowed)."""
        cfg = self.config
        k = cfg.k_max_results if k is None else k
        report = RuleReport()
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[rows >= 0]
        keep = np.ones(len(rows), dtype=bool)
        if cfg.drop_out_of_stock:
            in_stock = self.stock_[rows] > 0
            report.dropped_out_of_stock = int((~in_stock).sum())
            keep &= in_stock
        asked_price = price_min is not None or price_max is not None
        if asked_price and not self.has_prices_:
            # A catalog without prices (e.g. imported titles only) cannot answer "under $20": filtering
            # would drop every product, so the filter is skipped and the report says so.
            report.price_filter_skipped = "the catalog has no prices"
        elif cfg.apply_price_filter and asked_price:
            price = self.price_[rows]
            ok = np.ones(len(rows), dtype=bool)
            if price_min is not None and np.isfinite(price_min):
                ok &= price >= price_min
            if price_max is not None and np.isfinite(price_max):
                ok &= price <= price_max
            report.dropped_price = int((keep & ~ok).sum())
            keep &= ok
        rows = rows[keep]
        if cfg.category_first and category:
            # The query named a category ("headphones", "auriculares"): its products go first, in score
            # order, then the rest. A ranker trained on logs of on-topic results has seen few off-topic
            # products that match another entity ("black" backpacks for "black headphones"); query
            # categorisation guards against ranking those above the category asked for.
            in_cat = self._in_category(category)[rows]
            if in_cat.any() and not in_cat.all():
                rows = np.concatenate([rows[in_cat], rows[~in_cat]])
            report.category_first = category
        pinned = self._pinned_rows(query, price_min, price_max)
        if len(pinned):
            report.pinned = [int(self.row_of_id_.index[r]) for r in pinned]
            rows = np.concatenate([pinned, rows[~np.isin(rows, pinned)]])
        if cfg.diversity_top > 0 and not brand_in_query and len(rows) > 1:
            rows, demoted = self._diversify(rows, n_fixed=len(pinned))
            report.demoted_for_diversity = demoted
            report.diversity_applied = True
        return rows[:k], report

    def _in_category(self, category: str) -> np.ndarray:
        """Mask of catalog rows whose category path starts with ``category`` (cached per category)."""
        mask = self._category_masks.get(category)
        if mask is None:
            prefix = category.strip().lower()
            ok = np.array([name.startswith(prefix) for name in self.category_names_], dtype=bool)
            mask = ok[self.category_codes_] if len(ok) else np.zeros(len(self.stock_), dtype=bool)
            self._category_masks[category] = mask
        return mask

    def _pinned_rows(self, query: str, price_min: float | None, price_max: float | None) -> np.ndarray:
        ids = self.config.pinned.get(query.strip().lower(), ())
        if not ids:
            return np.zeros(0, dtype=np.int64)
        found = self.row_of_id_.reindex(list(ids)).dropna().astype(np.int64).to_numpy()
        # A pin is merchandising, not an exception to the hard rules: out of stock or outside the asked
        # price range, it is not shown.
        ok = self.stock_[found] > 0 if self.config.drop_out_of_stock else np.ones(len(found), bool)
        if self.config.apply_price_filter:
            if price_min is not None and np.isfinite(price_min):
                ok &= self.price_[found] >= price_min
            if price_max is not None and np.isfinite(price_max):
                ok &= self.price_[found] <= price_max
        return pd.unique(found[ok])

    def _diversify(self, rows: np.ndarray, n_fixed: int) -> tuple[np.ndarray, int]:
        """At most ``max_per_brand`` per brand in the first ``diversity_top`` slots (pins count, stay put)."""
        top, cap = self.config.diversity_top, self.config.max_per_brand
        brands = self.brand_codes_[rows]
        # Rank of each result within its brand, in score order: result j is eligible for the top slots
        # iff fewer than `cap` earlier results share its brand (greedy fill == this rank < cap).
        order = _rank_within_group(brands)
        eligible = order < cap
        eligible[:n_fixed] = True  # pins keep their slots
        slot_rows = np.flatnonzero(eligible)[:top]
        if len(slot_rows) == 0 or (slot_rows[-1] == len(slot_rows) - 1):
            return rows, 0  # already diverse: the first `top` are all eligible
        chosen = np.zeros(len(rows), dtype=bool)
        chosen[slot_rows] = True
        new = np.concatenate([rows[chosen], rows[~chosen]])
        demoted = int((~chosen[: len(slot_rows)]).sum())
        return new, demoted


def _rank_within_group(codes: np.ndarray) -> np.ndarray:
    """0-based occurrence count of each element's value among the elements before it (groupby cumcount)."""
    by_code = np.argsort(codes, kind="stable")
    sorted_codes = codes[by_code]
    starts = np.flatnonzero(np.concatenate([[True], sorted_codes[1:] != sorted_codes[:-1]]))
    run_start = np.repeat(starts, np.diff(np.concatenate([starts, [len(codes)]])))
    rank = np.empty(len(codes), dtype=np.int64)
    rank[by_code] = np.arange(len(codes)) - run_start
    return rank
