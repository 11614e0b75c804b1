"""Examination propensities estimated from the click log, and the inverse-propensity weights they give.

Users click what they look at, and they look at the top: a click at rank 1 says less about relevance
than one at rank 15. Two estimators, both fitted on :meth:`ClickLog.impressions` frames:

* :class:`SwapPropensityEstimator` (randomised intervention, Joachims et al. 2017): in a small share
  of searches the old ranker's top result is swapped with a uniformly drawn rank k. The same
  population of results is then shown at rank 1 and at rank k, so
  ``P(examine k) / P(examine 1) = CTR(top result shown at k) / CTR(top result shown at 1)``.
  The per-rank ratios are noisy deep down; a power law ``(1/k)**eta`` fitted to them by weighted least
  squares in log space gives the smooth curve used for weighting.
* :class:`PositionBasedEM` (Wang et al. 2018, position-based click model): no intervention needed,
  only that the same (query, product) pair was shown at different ranks; EM alternates between
  examination per rank and attractiveness per pair.

Propensities are relative to rank 1 (``p[1] = 1``): IPS only needs ratios.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError


class _Propensities:
    """Shared lookup: ``propensity(positions)`` from the fitted curve, clipped from below."""

    propensities_: np.ndarray  # index 0 = rank 1
    clip: float

    def propensity(self, positions: np.ndarray) -> np.ndarray:
        """Relative examination probability of 1-based ranks (ranks past the fitted depth use the last)."""
        pos = np.clip(np.asarray(positions, dtype=np.int64), 1, len(self.propensities_))
        return np.maximum(self.propensities_[pos - 1], self.clip)

    def weights(self, positions: np.ndarray) -> np.ndarray:
        """Inverse-propensity weights ``1 / max(p, clip)``."""
        return 1.0 / self.propensity(positions)

    def to_dict(self) -> dict:
        return {
            "method": type(self).__name__,
            "eta": float(getattr(self, "eta_", float("nan"))),
            "propensities": [round(float(p), 5) for p in self.propensities_],
        }


def _fit_power_law(ranks: np.ndarray, ratios: np.ndarray, weights: np.ndarray) -> float:
    """eta of ``ratio = rank**-eta``, weighted least squares on log(ratio) through the origin (p1 = 1)."""
    ok = (ratios > 0) & (weights > 0) & (ranks > 1)
    if not ok.any():
        return float("nan")
    x, y, w = np.log(ranks[ok]), np.log(ratios[ok]), weights[ok]
    return float(-(w * x * y).sum() / (w * x * x).sum())


class SwapPropensityEstimator(_Propensities):
    """Propensities from randomised swaps of rank 1 with rank k (rows with ``logged_position == 1``).

    ``smooth=True`` (default) uses the fitted power law; ``False`` uses the raw per-rank ratios.
    """

    def __init__(self, max_position: int = 20, *, smooth: bool = True, clip: float = 0.05) -> None:
        self.max_position = max_position
        self.smooth = smooth
        self.clip = clip

    def fit(self, impressions: pd.DataFrame) -> SwapPropensityEstimator:
        top = impressions[impressions["logged_position"].to_numpy() == 1]
        pos = top["position"].to_numpy(np.int64)
        clicked = top["clicked"].to_numpy(np.float64)
        k = self.max_position
        keep = (pos >= 1) & (pos <= k)
        shown = np.bincount(pos[keep], minlength=k + 1)[1:]
        clicks = np.bincount(pos[keep], weights=clicked[keep], minlength=k + 1)[1:]
        swapped = shown[1:].sum()
        if shown[0] == 0 or clicks[0] == 0 or swapped == 0:
            raise InputError(
                "clicklog",
                f"{int(shown[0])} unswapped / {int(swapped)} swapped top results",
                "the log has no randomised swaps of the top result (logged_position == 1 shown lower)",
                "log a share of searches with the top result swapped, or use PositionBasedEM",
            )
        ctr = np.divide(clicks, shown, out=np.zeros(k), where=shown > 0)
        self.shown_ = shown
        self.clicks_ = clicks
        self.raw_ = ctr / ctr[0]
        # Binomial variance of a log-ratio ~ 1/clicks: weight each rank by its click count.
        self.eta_ = _fit_power_law(np.arange(1, k + 1, dtype=np.float64), self.raw_, clicks)
        fitted = np.power(1.0 / np.arange(1, k + 1), self.eta_)
        self.propensities_ = fitted if self.smooth else np.where(shown > 0, self.raw_, fitted)
        return self


class PositionBasedEM(_Propensities):
    """Position-based click model fitted by EM: ``P(click) = theta[rank] * gamma[query, product]``."""

    def __init__(
        self,
        max_position: int = 20,
        *,
        n_iter: int = 100,
        tol: float = 1e-6,
        clip: float = 0.05,
        smooth: bool = False,
    ) -> None:
        self.max_position = max_position
        self.n_iter = n_iter
        self.tol = tol
        self.clip = clip
        self.smooth = smooth

    def fit(self, impressions: pd.DataFrame) -> PositionBasedEM:
        pos = impressions["position"].to_numpy(np.int64)
        keep = (pos >= 1) & (pos <= self.max_position)
        pos = pos[keep] - 1
        c = impressions["clicked"].to_numpy(np.float64)[keep]
        pair = pd.MultiIndex.from_arrays(
            [impressions["query"].to_numpy()[keep], impressions["product_id"].to_numpy()[keep]]
        )
        pair_codes, _ = pd.factorize(pair)
        k, m = self.max_position, int(pair_codes.max()) + 1 if len(pair_codes) else 0
        if m == 0:
            raise InputError("clicklog", 0, "no impressions to fit", "log some searches first")
        n_pos = np.bincount(pos, minlength=k).astype(np.float64)
        n_pair = np.bincount(pair_codes, minlength=m).astype(np.float64)
        theta = np.full(k, 0.5)
        gamma = np.full(m, 0.5)
        for _ in range(self.n_iter):
            t, g = theta[pos], gamma[pair_codes]
            denom = np.maximum(1.0 - t * g, 1e-12)
            # Posterior of (examined, attractive) given no click; a click means both.
            e_not_r = t * (1.0 - g) / denom
            r_not_e = (1.0 - t) * g / denom
            new_theta = np.bincount(pos, weights=c + (1 - c) * e_not_r, minlength=k) / np.maximum(n_pos, 1)
            new_gamma = np.bincount(pair_codes, weights=c + (1 - c) * r_not_e, minlength=m) / n_pair
            delta = np.abs(new_theta - theta).max()
            theta, gamma = np.clip(new_theta, 1e-6, 1.0), np.clip(new_gamma, 1e-6, 1.0)
            if delta < self.tol:
                break
        self.theta_ = theta
        self.raw_ = theta / theta[0]
        self.eta_ = _fit_power_law(np.arange(1, k + 1, dtype=np.float64), self.raw_, n_pos)
        self.propensities_ = np.power(1.0 / np.arange(1, k + 1), self.eta_) if self.smooth else self.raw_
        return self


def estimate_propensities(impressions: pd.DataFrame, max_position: int = 20, *, clip: float = 0.05):
    """The swap estimator when the log has randomised swaps, else position-based EM."""
    has_swaps = bool(((impressions["logged_position"] == 1) & (impressions["position"] > 1)).any())
    if has_swaps:
        return SwapPropensityEstimator(max_position, clip=clip).fit(impressions)
    return PositionBasedEM(max_position, clip=clip).fit(impressions)
