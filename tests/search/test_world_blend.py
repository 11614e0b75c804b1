"""The seed's blended primary metric in search experiments: reported first, right sign, exact truth."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.search.world import BLEND_WEIGHTS, blend_values, run_experiment


def test_blend_is_one_at_the_baseline_and_weights_each_relative_lift() -> None:
    base = {"clicks": 2.0, "purchases": 0.5, "revenue": 40.0}
    at_base = blend_values(np.array([2.0]), np.array([0.5]), np.array([40.0]), base)
    # +10% conversions only; +10% revenue at the same clicks (revenue per click +10%); +10% clicks and
    # +10% revenue (revenue per click unchanged, CTR +10%).
    conv = blend_values(np.array([2.0]), np.array([0.55]), np.array([40.0]), base)
    rpc = blend_values(np.array([2.0]), np.array([0.5]), np.array([44.0]), base)
    ctr = blend_values(np.array([2.2]), np.array([0.5]), np.array([44.0]), base)
    assert at_base[0] == pytest.approx(1.0)
    assert conv[0] - 1 == pytest.approx(0.1 * BLEND_WEIGHTS["conversion"])
    assert rpc[0] - 1 == pytest.approx(0.1 * BLEND_WEIGHTS["revenue_per_click"])
    assert ctr[0] - 1 == pytest.approx(0.1 * BLEND_WEIGHTS["ctr"])


def test_planted_better_ranker_blend_is_primary_with_the_truths_sign(search_world) -> None:
    dirs, world = search_world
    # Control BM25-only, treatment the champion LambdaMART: the planted better ranker.
    report = run_experiment(
        dirs, units=500, arms=["bm25", "ltr"], seed=5, looks=3, progress=False, world=world
    )
    assert report["primary_metric"] == "blended" and next(iter(report["metrics"])) == "blended"
    for component in ("clicks_per_search", "conversions_per_search", "revenue_per_click"):
        assert component in report["metrics"]  # kept as secondary metrics
    (comp,) = report["metrics"]["blended"]
    truth = report["truth"]["blended"]["ltr"]
    assert truth > 0 and comp["diff"] > 0 and report["truth_covered"]["blended"]["ltr"]

    # The blend's truth is 0.6 / 0.3 / 0.1 of the component truths, each relative to the baseline;
    # revenue per click enters linearised: d(revenue/search)/R0 - d(clicks/search)/C0.
    base = report["world"]["blend"]["baseline_per_search"]
    t = report["truth"]
    ctr = t["clicks_per_search"]["ltr"] / base["clicks"]
    conversion = t["conversions_per_search"]["ltr"] / base["purchases"]
    revenue_per_click = t["revenue_per_search"]["ltr"] / base["revenue"] - ctr
    assert truth == pytest.approx(0.6 * conversion + 0.3 * revenue_per_click + 0.1 * ctr, rel=1e-9)
