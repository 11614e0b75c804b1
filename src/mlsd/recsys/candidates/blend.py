"""The linear ensemble of collaborative scorers: per-user z-scores over the catalogue, weighted and summed."""

from __future__ import annotations

import numpy as np

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates.als import ALSCandidates
from mlsd.recsys.candidates.base import DenseScored, History, as_user_array
from mlsd.recsys.candidates.item_item import EASECandidates, RP3BetaCandidates, SequentialEASECandidates
from mlsd.recsys.data import IdMap


class BlendCandidates(DenseScored):
    """A weighted sum of collaborative scorers, each z-scored over the catalogue per user.

    The scorers' raw scales are unrelated (EASE regression weights, random-walk probabilities, ALS
    inner products); z-scoring each user's row over every item puts them on one scale, and the
    weighted sum is the linear ensemble a ranker has to beat. ``models`` maps a name to a
    configured (unfitted) source, ``weights`` a name to its weight; each is fitted on the same
    history. Like EASE/RP3beta it is dense over items (``max_items`` comes from its members).
    """

    def __init__(self, models: dict | None = None, weights: dict[str, float] | None = None) -> None:
        self.models = models
        self.weights = weights

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> BlendCandidates:
        import copy

        hist = History.build(data, users, items)
        self.users_, self.items_ = hist.users, hist.items
        weights = dict(self.weights or {"ease": 1.0, "rp3": 0.5, "als": 0.5})
        self.members_: dict = {}
        for name in weights:
            model = (self.models or {}).get(name)
            model = copy.deepcopy(model) if model is not None else _member(name)
            self.members_[name] = model.fit(hist)  # an InputError (catalogue too big) drops the blend
        self.weights_ = weights
        return self

    def score_dense(self, user_ids) -> np.ndarray:
        """(u, n_items) blended z-scores; NaN rows for unknown users."""
        out = np.zeros((len(as_user_array(user_ids)), len(self.items_)), np.float32)
        for name, model in self.members_.items():
            s = model.score_dense(user_ids).astype(np.float32)
            mean = s.mean(axis=1, keepdims=True)
            std = s.std(axis=1, keepdims=True)
            out += self.weights_[name] * (s - mean) / np.where(std > 0, std, 1.0)
        return out


def _member(name: str):
    """A fresh collaborative source for a blend weight's name (a blend mixes collaborative scorers)."""
    factories = {
        "als": ALSCandidates,
        "ease": EASECandidates,
        "rp3": RP3BetaCandidates,
        "seq": SequentialEASECandidates,
    }
    if name not in factories:
        raise InputError("weights", name, f"is not a collaborative source {sorted(factories)}",
                         "blend those, or pass a configured source in models=")  # fmt: skip
    return factories[name]()
