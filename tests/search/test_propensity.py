"""Propensities estimated from the log recover the simulator's true examination curve."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.search.propensity import PositionBasedEM, SwapPropensityEstimator, estimate_propensities
from mlsd.search.world import ClickModel, simulate


@pytest.fixture(scope="module", params=[1.0, 0.7])
def logged(request):
    sim = simulate(1500, 30_000, seed=5, n_queries=80, n_users=300, click_model=ClickModel(eta=request.param))
    return sim


def test_swap_estimator_recovers_true_propensities(logged) -> None:
    est = SwapPropensityEstimator(20).fit(logged.impressions)
    true = logged.true_propensities(20)
    assert abs(est.eta_ - logged.click_model.eta) < 0.1
    np.testing.assert_allclose(est.propensities_[:10], true[:10], atol=0.05)
    # The raw per-rank ratios are unbiased too, just noisier.
    np.testing.assert_allclose(est.raw_[:5], true[:5], atol=0.08)


def test_em_recovers_the_curve_without_interventions(logged) -> None:
    first = logged.impressions[
        logged.impressions["search_id"] < 12_000
    ]  # EM needs no intervention, less data
    est = PositionBasedEM(20, n_iter=40).fit(first)
    assert abs(est.eta_ - logged.click_model.eta) < 0.2
    np.testing.assert_allclose(est.propensities_[:5], logged.true_propensities(5), atol=0.08)


def test_no_swaps_is_a_clear_error_and_auto_falls_back_to_em() -> None:
    sim = simulate(800, 3000, seed=1, n_queries=40, n_users=50, click_model=ClickModel(swap_rate=0.0))
    with pytest.raises(InputError) as err:
        SwapPropensityEstimator().fit(sim.impressions)
    assert "swap" in err.value.problem
    assert isinstance(estimate_propensities(sim.impressions), PositionBasedEM)


def test_weights_are_clipped(logged) -> None:
    est = SwapPropensityEstimator(20, clip=0.1).fit(logged.impressions)
    w = est.weights(np.array([1, 2, 20, 500]))
    assert w[0] == pytest.approx(1.0) and w.max() <= 10.0 + 1e-9 and (np.diff(w) >= 0).all()
