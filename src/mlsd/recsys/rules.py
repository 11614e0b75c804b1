"""Business rules: hard filters over candidate arrays (region, age rating, licensing window, release).

A rule is not a preference: a title that fails one is never returned, whatever the model thinks of it.
:class:`RuleFilter` turns the title catalogue into a few aligned numpy arrays once (at load time), and
:meth:`RuleFilter.allowed` answers a whole batch of candidates with a handful of vectorised comparisons:
no Python loop per title or per user.

Time is explicit (``now``, seconds since the epoch): the licensing window ``[license_start, license_end)``
is checked at *request* time, so the same model serves correctly as titles come and go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.recsys.config import AGE_RATINGS, REGIONS, RuleConfig

_FAR_FUTURE = np.iinfo(np.int64).max
_FAR_PAST = np.iinfo(np.int64).min


def region_bits(regions: str | np.ndarray | pd.Series | list[str] | None) -> np.ndarray | int:
    """Encode one region code (``"EU"``) or an array of them as bit masks over :data:`REGIONS`.

    A pipe-separated list (``"US|EU"``) sets several bits; that is how a title lists where it may be shown.
    Unknown codes set no bit, so they match nothing (fail closed).
    """
    if regions is None:
        return 0
    if isinstance(regions, str):
        return sum(1 << i for i, r in enumerate(REGIONS) if r in regions.split("|"))
    values = pd.Series(np.asarray(regions, dtype=object)).fillna("").astype(str)
    bits = np.zeros(len(values), dtype=np.int64)
    for i, code in enumerate(REGIONS):
        # Vectorised per region (5 passes), not per title.
        has = values.str.contains(rf"(?:^|\|){code}(?:\||$)", regex=True).to_numpy()
        bits |= has.astype(np.int64) << i
    return bits


def min_age(ratings: np.ndarray | pd.Series) -> np.ndarray:
    """Minimum viewer age for each age rating; an unknown rating is treated as adults-only (fail closed)."""
    return pd.Series(np.asarray(ratings, dtype=object)).map(AGE_RATINGS).fillna(18).to_numpy(np.int16)


@dataclass
class _Catalog:
    ids: np.ndarray  # sorted item ids
    order: np.ndarray  # position in the items frame for each sorted id
    region_bits: np.ndarray
    min_age: np.ndarray
    license_start: np.ndarray
    license_end: np.ndarray
    release_ts: np.ndarray


class RuleFilter:
    """Vectorised hard filters from :class:`~mlsd.recsys.config.RuleConfig`.

    ``fit(items)`` reads the catalogue: ``item_id`` plus, when present, ``region`` (``"US|EU"``: where it may be shown),
    ``age_rating``, ``license_start``, ``license_end`` and ``release_ts`` (int64 seconds). A missing
    column means the catalogue does not restrict on it (MovieLens has no licensing windows).
    """

    def __init__(self, config: RuleConfig | None = None) -> None:
        self.config = config or RuleConfig()

    def fit(self, items: pd.DataFrame) -> RuleFilter:
        n = len(items)
        ids = items["item_id"].to_numpy(np.int64)
        order = np.argsort(ids, kind="stable")

        def col(name: str, default: int) -> np.ndarray:
            if name not in items:
                return np.full(n, default, dtype=np.int64)
            return items[name].fillna(default).to_numpy(np.int64)

        all_regions = (1 << len(REGIONS)) - 1
        self.catalog_ = _Catalog(
            ids=ids[order],
            order=order,
            region_bits=(region_bits(items["region"]) if "region" in items else np.full(n, all_regions))[
                order
            ],
            min_age=(min_age(items["age_rating"]) if "age_rating" in items else np.zeros(n, np.int16))[order],
            license_start=col("license_start", _FAR_PAST)[order],
            license_end=col("license_end", _FAR_FUTURE)[order],
            release_ts=col("release_ts", _FAR_PAST)[order],
        )
        return self

    def _positions(self, item_ids: np.ndarray) -> np.ndarray:
        """Position of each id in the sorted catalogue, -1 when the id is unknown (or padding)."""
        ids = self.catalog_.ids
        pos = np.searchsorted(ids, item_ids)
        pos = np.minimum(pos, len(ids) - 1)
        return np.where(ids[pos] == item_ids, pos, -1) if len(ids) else np.full(item_ids.shape, -1)

    def allowed(
        self,
        item_ids: np.ndarray,
        *,
        now: int | np.ndarray,
        user_region: int | np.ndarray,
        user_age: int | np.ndarray,
    ) -> np.ndarray:
        """Boolean mask, same shape as ``item_ids``: True where the title may be shown.

        ``item_ids`` is 1-D (one request) or 2-D ``(n_requests, n_candidates)`` padded with -1; ``now``,
        ``user_region`` (bits from :func:`region_bits`) and ``user_age`` are scalars or one per request.
        Unknown ids and padding are never allowed.
        """
        known, failures = self.failures(item_ids, now=now, user_region=user_region, user_age=user_age)
        ok = known
        for failed in failures.values():
            ok &= ~failed
        return ok

    def failures(
        self,
        item_ids: np.ndarray,
        *,
        now: int | np.ndarray,
        user_region: int | np.ndarray,
        user_age: int | np.ndarray,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Which titles are in the catalogue, and per enabled rule (``region``, ``age_rating``,
        ``license_window``, ``released_only``) which titles fail it (a title may fail several): what a
        response reports as ``filtered``. Arguments as :meth:`allowed`.

        Examples:
            >>> items = pd.DataFrame({"item_id": [1, 2, 3], "age_rating": ["G", "R", "PG-13"],
            ...                       "region": ["US|EU", "US", "EU"]})
            >>> rules = RuleFilter().fit(items)
            >>> known, failed = rules.failures(np.array([1, 2, 3, 9]), now=0,
            ...                                user_region=region_bits("EU"), user_age=0)
            >>> known.tolist(), failed["age_rating"].tolist(), failed["region"].tolist()
            ([True, True, True, False], [False, True, True, False], [False, True, False, False])
        """
        item_ids = np.asarray(item_ids, dtype=np.int64)
        cfg, cat = self.config, self.catalog_

        def per_row(value: int | np.ndarray) -> np.ndarray:
            value = np.asarray(value, dtype=np.int64)
            return value[:, None] if value.ndim == 1 and item_ids.ndim == 2 else value

        pos = self._positions(item_ids)
        known = pos >= 0
        p = np.where(known, pos, 0)
        now_b = per_row(now)
        failed: dict[str, np.ndarray] = {}
        if cfg.region:
            failed["region"] = known & ((cat.region_bits[p] & per_row(user_region)) == 0)
        if cfg.age_rating:
            failed["age_rating"] = known & (cat.min_age[p] > per_row(user_age))
        if cfg.license_window:
            failed["license_window"] = known & ~(
                (cat.license_start[p] <= now_b) & (now_b < cat.license_end[p])
            )
        if cfg.released_only:
            failed["released_only"] = known & (cat.release_ts[p] > now_b)
        return known, failed

    def filter(
        self,
        item_ids: np.ndarray,
        scores: np.ndarray | None = None,
        *,
        now: int,
        user_region: int,
        user_age: int,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """One request: the allowed ids (order kept), their scores, and the kept indices."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if item_ids.ndim != 1:
            raise InputError(
                "item_ids", item_ids.shape, "filter takes one request (1-D)", "use allowed() for batches"
            )
        keep = np.flatnonzero(self.allowed(item_ids, now=now, user_region=user_region, user_age=user_age))
        return item_ids[keep], (None if scores is None else np.asarray(scores)[keep]), keep
