"""The candidate generator: the union of the sources into one long frame with per-source flags, ranks and
scores; users without history get content from their seed titles plus popularity (cold start)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates.als import ALSCandidates
from mlsd.recsys.candidates.base import History, as_user_array, check_exclude, check_n, empty_rows
from mlsd.recsys.candidates.blend import BlendCandidates
from mlsd.recsys.candidates.content import ContentCandidates
from mlsd.recsys.candidates.item_item import EASECandidates, RP3BetaCandidates, SequentialEASECandidates
from mlsd.recsys.candidates.popularity import PopularityCandidates
from mlsd.recsys.data import IdMap

# What a bare CandidateGenerator / TwoStageRecommender unions when given no sources (~1,000 unique
# titles per user on a large catalogue). The evaluated and served model is not built from this but from
# mlsd.recsys.model.model_spec (EVAL_SOURCES and EVAL_SOURCE_SETTINGS below, with its catalogue rule).
DEFAULT_SOURCES: dict[str, int] = {
    "als": 500,
    "ease": 300,
    "rp3": 200,
    "content": 300,
    "popular": 200,
    "trending": 100,
    "new": 50,
}
# The model definition's sources and settings (mlsd.recsys.model.model_spec: what `mlsd recsys
# evaluate` measures and the daily job serves). A smaller union: the ranker only has to fill a top 10, and on MovieLens-size
# catalogues a 1,000-title union is most of the catalogue (slow to rank, no better on inner validation).
# Source settings for MovieLens-size data, chosen on the inner validation split of TRAIN (see
# docs/recsys.md "Offline evaluation"): ALS with 12 factors, EASE lambda 500, RP3beta beta 0.5, and
# their z-score blend weighted EASE 1, RP3beta 0.3, ALS 0.7 (a flat optimum: 0.278-0.280 nearby), plus
# sequential EASE (window 5, lambda 50) at 0.5: +0.003 on five inner splits (a plateau, 0.3-0.7, window 3-10).
EVAL_SOURCE_SETTINGS: dict[str, dict] = {
    "als": {"factors": 12, "regularization": 0.05, "alpha": 2.0},
    "ease": {"lam": 500.0},
    "rp3": {"alpha": 1.0, "beta": 0.5},
    "seq": {"window": 5, "lam": 50.0},
    "blend": {"ease": 1.0, "rp3": 0.3, "als": 0.7, "seq": 0.5},
}
EVAL_SOURCES: dict[str, int] = {
    "blend": 100,
    "als": 100,
    "ease": 100,
    "rp3": 50,
    "content": 30,
    "popular": 30,
    "trending": 20,
    "new": 10,
}


def default_source(name: str):
    """A fresh, unfitted source for a default name."""
    factories = {
        "als": ALSCandidates,
        "ease": EASECandidates,
        "rp3": RP3BetaCandidates,
        "seq": SequentialEASECandidates,
        "blend": BlendCandidates,
        "content": ContentCandidates,
        "popular": lambda: PopularityCandidates("popular"),
        "trending": lambda: PopularityCandidates("trending"),
        "new": lambda: PopularityCandidates("new"),
    }
    if name not in factories:
        raise InputError(
            "source", name, f"is not a known candidate source {sorted(factories)}", "pick one of those"
        )
    return factories[name]()


class CandidateGenerator:
    """Union of several sources into one long frame; cold-start users get content (seeds) + popularity.

    ``sources`` maps a name to ``n`` (how many that source contributes) and ``models`` optionally
    maps a name to a configured source instance (defaults from :func:`default_source`). Sources
    that cannot fit the data (EASE on a huge catalogue) are dropped at fit time, with the reason
    kept in ``skipped_``.

    :meth:`candidates` returns columns ``batch_row, user_id, item_idx, item_id, n_sources`` and, per source
    ``s``: ``in_s`` (bool), ``rank_s`` (1-based, 0 when absent) and ``score_s`` (NaN when absent).
    """

    COLD_SOURCES = ("content", "popular", "trending", "new")

    def __init__(self, sources: dict[str, int] | None = None, models: dict | None = None) -> None:
        self.sources = sources
        self.models = models

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> CandidateGenerator:
        hist = History.build(data, users, items)
        self.users_, self.items_ = hist.users, hist.items
        sources = dict(DEFAULT_SOURCES if self.sources is None else self.sources)
        if hist.items_frame is None:
            sources.pop("content", None)
        self.models_: dict = {}
        self.skipped_: dict[str, str] = {}
        for name in sources:
            model = (self.models or {}).get(name) or default_source(name)
            try:
                self.models_[name] = model.fit(hist)
            except InputError as err:
                self.skipped_[name] = str(err)
        self.n_per_source_ = {name: sources[name] for name in self.models_}
        if not self.models_:
            raise InputError(
                "sources", list(sources), "no candidate source could be fitted", "check the data"
            )
        return self

    @property
    def source_names(self) -> list[str]:
        return list(self.models_)

    def candidates(
        self, user_ids, exclude=None, seed_items: list | None = None, n: dict[str, int] | None = None
    ) -> pd.DataFrame:
        """Long frame of unique (user, item) candidates from every source, for a batch of users.

        ``seed_items`` (one list of raw item ids per user) feeds the content source for users
        without history (onboarding picks, browsed titles).
        """
        user_ids = as_user_array(user_ids)
        exclude = check_exclude(exclude, len(user_ids), len(self.items_))
        if seed_items is not None and len(seed_items) != len(user_ids):
            raise InputError(
                "seed_items", len(seed_items), "must have one list per user", "align with user_ids"
            )
        known = self.users_.index(user_ids) >= 0
        sizes = {**self.n_per_source_, **(n or {})}
        parts = []
        for name, model in self.models_.items():
            k = check_n(sizes[name])
            if name not in self.COLD_SOURCES and not known.any():
                # nobody here has history: skip the work but keep the columns (the ranker needs them)
                parts.append((name, *empty_rows(len(user_ids), 0)))
                continue
            idx, sc = model.candidates(user_ids, k, exclude)
            if name == "content" and seed_items is not None and (~known).any():
                cold = np.flatnonzero(~known)
                c_ex = exclude[cold] if exclude is not None else None
                idx[cold], sc[cold] = model.from_seeds([seed_items[j] for j in cold], k, c_ex)
            parts.append((name, idx, sc))
        return self._union(user_ids, parts)

    def _union(self, user_ids: np.ndarray, parts) -> pd.DataFrame:
        n_items = len(self.items_)
        keys, srcs, ranks, scores = [], [], [], []
        for s, (_name, idx, sc) in enumerate(parts):
            rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
            flat, flat_sc = idx.ravel(), sc.ravel()
            rank = np.tile(np.arange(1, idx.shape[1] + 1), idx.shape[0])
            ok = flat >= 0
            keys.append(rows[ok] * n_items + flat[ok])
            srcs.append(np.full(ok.sum(), s))
            ranks.append(rank[ok])
            scores.append(flat_sc[ok])
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        src = np.concatenate(srcs) if srcs else np.zeros(0, np.int64)
        rank = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
        score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        uniq, inv = np.unique(key, return_inverse=True)
        row = uniq // n_items
        frame = {
            "batch_row": row.astype(np.int64),  # position of the candidate's user in the request
            "user_id": user_ids[row],
            "item_idx": (uniq % n_items).astype(np.int64),
        }
        frame["item_id"] = self.items_.raw(frame["item_idx"])
        n_src = np.zeros(len(uniq), np.int64)
        for s, (name, _idx, _sc) in enumerate(parts):
            sel = src == s
            flag = np.zeros(len(uniq), bool)
            flag[inv[sel]] = True
            r = np.zeros(len(uniq), np.int64)
            r[inv[sel]] = rank[sel]
            v = np.full(len(uniq), np.nan, np.float32)
            v[inv[sel]] = score[sel]
            frame[f"in_{name}"], frame[f"rank_{name}"], frame[f"score_{name}"] = flag, r, v
            n_src += flag
        frame["n_sources"] = n_src
        return pd.DataFrame(frame)
