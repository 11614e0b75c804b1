"""Drift: PSI known answers and bands, categoricals and missing values, KS, the per-feature report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mlsd.platform.errors import InputError
from mlsd.platform.monitoring.drift import (
    DriftMonitor,
    ks,
    prediction_drift,
    psi,
    psi_band,
    psi_from_counts,
    quantile_edges,
)


def test_psi_known_answers_and_bands():
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert np.isclose(psi_from_counts([50, 50], [25, 75]), expected)  # 0.2747
    assert psi_from_counts([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)  # proportions, not counts
    assert [psi_band(v) for v in (0.0, 0.099, 0.1, 0.25, 0.2501, 3.0)] == [
        "stable", "stable", "moderate", "moderate", "significant", "significant",
    ]  # fmt: skip


def test_psi_of_a_mean_shift_follows_theory():
    """For N(0,1) vs N(mu,1) the continuous PSI (symmetric KL) is mu^2; 10 quantile bins see a bit less."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 50_000)
    edges = quantile_edges(ref, 10)
    assert np.allclose(np.histogram(ref, [-np.inf, *edges, np.inf])[0] / len(ref), 0.1, atol=0.002)
    values = {mu: psi(ref, rng.normal(mu, 1, 50_000)) for mu in (0.0, 0.4, 0.8)}
    assert values[0.0] < 0.005
    assert 0.8 * 0.16 < values[0.4] < 0.16 * 1.05 and psi_band(values[0.4]) == "moderate"
    assert 0.8 * 0.64 < values[0.8] < 0.64 * 1.05 and psi_band(values[0.8]) == "significant"


def test_categorical_psi_exact_and_unseen_categories():
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    cur = ["a"] * 20 + ["b"] * 30 + ["c"] * 50
    expected = (0.2 - 0.5) * np.log(0.2 / 0.5) + (0.5 - 0.2) * np.log(0.5 / 0.2)
    assert np.isclose(psi(ref, cur), expected)
    # A category never seen in training lands in __other__ and shows up as drift.
    new = ["a"] * 40 + ["b"] * 30 + ["c"] * 20 + ["d"] * 10
    report = DriftMonitor().fit(pd.DataFrame({"x": ref})).report(pd.DataFrame({"x": new}))["features"]["x"]
    assert report["kind"] == "categorical"
    assert report["bins"]["labels"] == ["a", "b", "c", "__other__", "__missing__"]
    assert np.allclose(report["bins"]["current"], [0.4, 0.3, 0.2, 0.1, 0.0])
    assert report["psi"] > 0.1 and report["ks_statistic"] is None


def test_missing_values_have_their_own_bin():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=10_000)
    cur = rng.normal(size=10_000)
    cur[:3000] = np.nan  # an upstream join broke for 30% of rows
    monitor = DriftMonitor().fit(pd.DataFrame({"amount": ref}))
    row = monitor.report(pd.DataFrame({"amount": cur}))["features"]["amount"]
    assert row["null_rate_reference"] == 0.0 and row["null_rate_current"] == pytest.approx(0.3)
    assert row["band"] == "significant"
    # The present values did not move, and KS (on present values) agrees.
    assert row["ks_pvalue"] > 0.001
    ref_nan = ref.copy()
    ref_nan[:3000] = np.nan
    same = DriftMonitor().fit(pd.DataFrame({"amount": ref_nan})).report(pd.DataFrame({"amount": cur}))
    assert same["features"]["amount"]["band"] == "stable"


def test_ks_is_scipys_two_sample_test():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=500), rng.normal(0.3, 1, 400)
    ref = sps.ks_2samp(a, b)
    assert ks(a, b) == pytest.approx((ref.statistic, ref.pvalue))
    row = DriftMonitor().fit(pd.DataFrame({"v": a})).report(pd.DataFrame({"v": b}))["features"]["v"]
    assert row["ks_statistic"] == pytest.approx(ref.statistic) and row["ks_pvalue"] == pytest.approx(
        ref.pvalue
    )


def _frames(rng, n=5000):
    reference = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "hour": rng.integers(0, 24, n),
            "country": rng.choice(["US", "GB", "DE"], n, p=[0.6, 0.3, 0.1]),
            "merchant_id": rng.integers(0, 5, n),
        }
    )
    current = reference.sample(frac=1.0, random_state=1, replace=True).reset_index(drop=True)
    current["amount"] = current["amount"] * 3  # planted: amounts tripled
    current["country"] = rng.choice(["US", "GB", "DE"], n, p=[0.3, 0.3, 0.4])  # planted: mix changed
    return reference, current


def test_report_finds_the_planted_drift_and_only_it(tmp_path):
    reference, current = _frames(np.random.default_rng(3))
    monitor = DriftMonitor(categorical=["merchant_id"]).fit(reference)
    report = monitor.report(current)
    json.dumps(report)  # JSON-ready
    feats = report["features"]
    assert feats["amount"]["band"] == "significant" and feats["country"]["band"] == "significant"
    assert feats["hour"]["band"] == "stable" and feats["merchant_id"]["band"] == "stable"
    assert feats["merchant_id"]["kind"] == "categorical" and feats["hour"]["kind"] == "numeric"
    assert set(report["summary"]["drifted"]) == {"amount", "country"}
    assert report["summary"]["significant"] == 2 and report["n_current"] == len(current)
    restored = DriftMonitor.load(monitor.save(tmp_path / "monitor.json"))
    assert restored.report(current) == report
    assert DriftMonitor(reference, categorical=["merchant_id"]).fit().report(current) == report
    with pytest.raises(InputError) as err:
        DriftMonitor().fit()
    assert err.value.field == "reference"


def test_prediction_drift_and_bad_input():
    rng = np.random.default_rng(4)
    scores = rng.beta(1, 20, 20_000)
    assert prediction_drift(scores, rng.beta(1, 20, 20_000))["band"] == "stable"
    assert prediction_drift(scores, rng.beta(1, 8, 20_000))["band"] == "significant"
    monitor = DriftMonitor()
    with pytest.raises(InputError) as err:
        monitor.report(pd.DataFrame({"a": [1.0]}))
    assert err.value.field == "monitor"
    monitor.fit(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))
    with pytest.raises(InputError) as err:
        monitor.report(pd.DataFrame({"a": [1.0]}))
    assert err.value.field == "current.b"
    with pytest.raises(InputError) as err:
        monitor.report(pd.DataFrame({"a": ["high"], "b": ["x"]}))
    assert err.value.field == "current.a"
    with pytest.raises(InputError) as err:
        DriftMonitor().fit(pd.DataFrame({"a": []}))
    assert err.value.field == "reference"


def test_discrete_numeric_features_compare_as_categories():
    import math

    ref = pd.DataFrame({"flag": [0] * 500 + [1] * 500, "amount": np.arange(1000.0)})
    cur = pd.DataFrame({"flag": [0] * 600 + [1] * 400, "amount": np.arange(1000.0)})
    report = DriftMonitor(discrete_max=20).fit(ref).report(cur)
    assert report["features"]["flag"]["kind"] == "categorical"
    assert report["features"]["amount"]["kind"] == "numeric"  # 1,000 distinct values: quantile bins
    expected = 0.1 * math.log(1.2) + (-0.1) * math.log(0.8)
    assert report["features"]["flag"]["psi"] == pytest.approx(expected, abs=1e-6)
    assert DriftMonitor().fit(ref).report(cur)["features"]["flag"]["kind"] == "numeric"  # off by default
