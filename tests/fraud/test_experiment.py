"""Known-truth tests of the fraud shadow experiment, its monitoring and the weekly retrain, on a tiny
simulated world (trained once per module; every later run reuses its models)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.experiment import ensure_data, run_experiment
from mlsd.fraud.monitoring import drift_report, performance_by_label_age
from mlsd.platform.errors import InputError

TINY = {"cards": 1000, "terminals": 200, "days": 35, "seed": 3}
METRICS = ("fraud_loss", "false_declines", "review_load")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fraud-world")
    # every card of the live period is in: the estimate must equal the population truth exactly
    full = run_experiment(
        workdir,
        units=100_000,
        arms=["champion", "challenger", "lenient"],
        world=TINY,
        looks=3,
        progress=False,
    )
    return workdir, full


def _row(report, metric, arm):
    return next(c for c in report["metrics"][metric] if c["treatment"] == arm)


def test_whole_population_estimate_equals_the_counterfactual_truth(world):
    _, report = world
    assert report["mode"] == "shadow" and report["world"]["coverage"] == 1.0
    assert report["units"] == report["truth_population"]["units"]
    for metric in METRICS:
        for arm in ("challenger", "lenient"):
            # served pass (experiment) and truth pass (every arm for every card, replayed features) agree
            assert _row(report, metric, arm)["diff"] == pytest.approx(report["truth"][metric][arm], abs=1e-9)
    assert len(report["looks"]) == 3 and report["looks"][-1]["n"] == report["units"]


def test_planted_worse_policy_is_detected_with_the_right_sign(world):
    _, report = world
    # higher thresholds can only approve more: more fraud lost, fewer declines and reviews, per card
    assert report["truth"]["fraud_loss"]["lenient"] > 0
    assert report["truth"]["false_declines"]["lenient"] <= 0
    assert report["truth"]["review_load"]["lenient"] < 0
    loss = _row(report, "fraud_loss", "lenient")
    assert loss["diff_low"] > 0 and loss["p_value"] < 0.01
    # one look at the end: the fixed-horizon test rejects; the always-valid sequence (built for peeking)
    # is ~3 standard errors wide and may still say "keep running" at this size -- never "better"
    assert report["verdict"]["lenient"] in ("worse than the champion", "keep running")
    assert loss["cs_high"] > 0
    assert report["srm"]["flagged"] is False and "no split" in report["srm"]["note"]


def test_sample_of_cards_covers_the_population_truth(world):
    workdir, full = world
    report = run_experiment(
        workdir, units=full["units"] // 2, arms=["champion", "lenient"], seed=1, looks=0, progress=False
    )
    assert 0.3 < report["world"]["coverage"] < 0.7
    assert report["world"]["models"]["champion"].get("reused")  # the world was not retrained
    covered = [report["truth_covered"][m]["lenient"] for m in METRICS]
    assert sum(covered) >= 2  # 95% intervals: all three usually, two at the very least
    est = _row(report, "fraud_loss", "lenient")
    assert est["diff"] > 0 and report["truth"]["fraud_loss"]["lenient"] > 0


def test_aa_shadow_has_exactly_zero_difference_and_lost_logs_only_shrink_it(world):
    workdir, _ = world
    report = run_experiment(
        workdir,
        units=600,
        arms=["champion", "champion"],
        seed=2,
        looks=0,
        lose_exposures=0.25,
        progress=False,
    )
    for metric in METRICS:
        row = _row(report, metric, "champion_2")
        assert row["diff"] == 0.0 and report["truth"][metric]["champion_2"] == 0.0
    assert report["verdict"]["champion_2"] == "keep running"
    lost = report["lost_exposures"]
    assert 0.15 < lost["units_dropped"] / lost["units_in_experiment"] < 0.35
    assert report["units"] == lost["units_in_experiment"] - lost["units_dropped"]
    assert report["srm"]["flagged"] is False  # no split, no SRM to fake


def test_unknown_arm_is_an_input_error(world):
    workdir, _ = world
    with pytest.raises(InputError, match="--arms"):
        run_experiment(workdir, arms=["champion", "nope"], progress=False)


def test_drift_report_against_the_training_reference(world):
    workdir, _ = world
    report = drift_report(workdir)
    assert report["system"] == "fraud" and "prediction" in report["features"]
    assert "training" in report["reference"] and "served sample" in report["current"]
    assert set(report["summary"]) >= {"stable", "moderate", "significant", "max_psi"}
    ages = report["performance"]["by_label_age"]
    known = [row["frauds_known"] for row in ages]
    assert known == sorted(known) and known[-1] > known[0]  # chargebacks mature after 30 days


def test_performance_by_label_age_counts_labels_known_at_each_age():
    day = 86_400

    class T:
        block, review = 0.8, 0.5

    scored = pd.DataFrame({"tx_id": [1, 2, 3, 4], "ts": [0, 0, 0, 0], "prediction": [0.9, 0.6, 0.7, 0.1]})
    truth = pd.DataFrame(
        {"tx_id": [1, 2, 3, 4], "fraud": [1, 1, 0, 0], "label_ts": [2 * 3600, 40 * day, 90 * day, 90 * day]}
    )
    out = performance_by_label_age(scored, truth, T, now=10 * day, ages_days=(1, 30, 60))
    rows = {r["age_days"]: r for r in out["by_label_age"]}
    assert [rows[a]["frauds_known"] for a in (1, 30, 60, "final")] == [1, 1, 2, 2]
    assert rows[1]["recall_at_block"] == 1.0 and rows[60]["recall_at_block"] == 0.5
    assert rows[60]["precision_at_review"] == pytest.approx(2 / 3)
    assert rows[1]["matured_share"] == 1.0 and rows[30]["matured_share"] == 0.0


def test_weekly_retrain_is_idempotent_and_validates_the_date(tmp_path):
    from mlsd.fraud.schedule import run_scheduled

    tx = ensure_data(tmp_path, {"cards": 400, "terminals": 80, "days": 30, "seed": 5})
    last = pd.Timestamp(int(tx["ts"].max()), unit="s").date()
    first = run_scheduled(tmp_path, last - dt.timedelta(days=2), progress=False)
    assert first["registered"] and first["promoted"] and first["version"] == 1  # no champion yet
    again = run_scheduled(tmp_path, last - dt.timedelta(days=2), progress=False)
    assert not again["registered"] and again["version"] == 1 and "version 1" in again["reason"]
    assert again["data_fingerprint"] == first["data_fingerprint"]
    later = run_scheduled(tmp_path, progress=False)  # default: the data's last day
    assert later["registered"] and later["version"] == 2 and later["run_date"] == last.isoformat()
    assert later["promoted"] == (later["champion_version"] == 2)
    assert np.isfinite(later["metrics"]["challenger_eval"]["average_precision"])
    with pytest.raises(InputError, match="--date") as err:
        run_scheduled(tmp_path, last + dt.timedelta(days=1), progress=False)
    assert last.isoformat() in str(err.value)
