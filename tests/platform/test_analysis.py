"""Analysis on sufficient statistics: known answers, planted effects, A/A rates, CUPED, SRM, guardrails."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.analysis import analyze_experiment, compare, guardrail, srm_check
from mlsd.platform.experiments.assignment import Arm, Experiment, MetricSpec
from mlsd.platform.experiments.exposures import MetricStats

ARMS = ("control", "treatment")


def _two_arm(rng, n, effect=0.0, mean=10.0, sd=3.0, seeds=None):
    """Units alternate arms (exactly balanced); returns (arm_idx, y) shaped (seeds, n) or (n,)."""
    shape = (n,) if seeds is None else (seeds, n)
    arm = np.broadcast_to(np.arange(n) % 2, shape)
    y = rng.normal(mean, sd, shape) + effect * arm
    return arm, y


def test_welch_matches_scipy_on_the_raw_data():
    rng = np.random.default_rng(0)
    arm = rng.integers(0, 2, 700)
    y = np.where(arm == 1, rng.exponential(3.0, 700), rng.exponential(2.5, 700))  # unequal variances
    st = MetricStats.from_arrays("m", ARMS, arm, {"y": y})
    c = compare(st)
    ref = sps.ttest_ind(y[arm == 1], y[arm == 0], equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert c.kind == "mean"
    assert (
        np.isclose(c.p_value, ref.pvalue)
        and np.isclose(c.diff_low, ci.low)
        and np.isclose(c.diff_high, ci.high)
    )
    assert np.isclose(c.diff, y[arm == 1].mean() - y[arm == 0].mean())


def test_planted_effect_is_detected_with_the_right_sign_and_covered():
    rng = np.random.default_rng(1)
    arm, y = _two_arm(rng, 10_000, effect=0.4)
    c = compare(MetricStats.from_arrays("m", ARMS, arm, {"y": y}))
    assert c.significant and c.diff > 0 and c.p_value < 1e-6
    assert c.diff_low < 0.4 < c.diff_high
    assert c.relative_low < 0.04 < c.relative_high  # 0.4 on a mean of 10
    _, y_neg = _two_arm(rng, 10_000, effect=-0.4)
    neg = compare(MetricStats.from_arrays("m", ARMS, arm, {"y": y_neg}))
    assert neg.significant and neg.diff_high < 0 and neg.relative < 0


def test_aa_tests_reject_at_the_nominal_rate():
    rng = np.random.default_rng(2)
    arm, y = _two_arm(rng, 1000, seeds=2000)
    c = compare(MetricStats.from_batch("m", ARMS, arm, {"y": y}))
    assert c.p_value.shape == (2000,)
    assert 0.035 <= np.mean(c.p_value < 0.05) <= 0.065
    # Relative-lift CI (delta method) covers the true relative lift (0) at about the nominal rate too.
    covered = (c.relative_low < 0) & (c.relative_high > 0)
    assert 0.935 <= covered.mean() <= 0.965


def test_ratio_metric_delta_method_has_nominal_coverage():
    """Clicks per impression with per-user correlated counts: the naive binomial SE would be too small;
    the delta method over users must cover the true ratio difference ~95% of the time."""
    rng = np.random.default_rng(3)
    seeds, n = 1000, 800
    arm = np.broadcast_to(np.arange(n) % 2, (seeds, n))
    impressions = rng.poisson(rng.gamma(2.0, 5.0, (seeds, n))) + 1.0  # heavy users see more
    user_ctr = rng.beta(2, 18, (seeds, n)) * np.where(arm == 1, 1.1, 1.0)  # treatment: +10% per-user CTR
    clicks = rng.poisson(impressions * user_ctr).astype(float)
    st = MetricStats.from_batch("ctr", ARMS, arm, {"num": clicks, "den": impressions})
    c = compare(st)
    assert c.kind == "ratio"
    truth = 0.1 * 0.1  # E[ctr] = 2 / 20 = 0.1; +10% -> +0.01 (user CTR is independent of impressions)
    covered = (c.diff_low < truth) & (c.diff_high > truth)
    assert 0.93 <= covered.mean() <= 0.97
    assert np.isclose(np.std(c.diff), np.mean(c.se), rtol=0.08)  # the SE is the real spread
    rel_covered = (c.relative_low < 0.1) & (c.relative_high > 0.1)
    assert 0.93 <= rel_covered.mean() <= 0.97


def test_cuped_reduces_variance_and_stays_unbiased():
    rng = np.random.default_rng(4)
    seeds, n, rho = 1000, 1000, 0.8
    arm = np.broadcast_to(np.arange(n) % 2, (seeds, n))
    x = rng.normal(0, 1, (seeds, n))
    y = 5 + rho * x + np.sqrt(1 - rho**2) * rng.normal(0, 1, (seeds, n)) + 0.1 * arm
    st = MetricStats.from_batch("m", ARMS, arm, {"y": y, "x": x})
    cuped, raw = compare(st, cuped=True), compare(st, cuped=False)
    assert cuped.kind == "cuped" and raw.kind == "mean"
    # Theory: Var shrinks by corr^2 = 0.64, i.e. the CI is 60% as wide.
    assert np.isclose(np.mean(cuped.variance_reduction), rho**2, atol=0.02)
    assert np.isclose(np.std(cuped.diff) ** 2 / np.std(raw.diff) ** 2, 1 - rho**2, atol=0.06)
    assert abs(np.mean(cuped.diff) - 0.1) < 3 * np.std(cuped.diff) / np.sqrt(seeds)
    covered = (cuped.diff_low < 0.1) & (cuped.diff_high > 0.1)
    assert 0.93 <= covered.mean() <= 0.97
    assert np.mean(cuped.significant) > np.mean(raw.significant) + 0.2  # more power from the same units


def test_srm_flags_a_planted_mismatch_and_not_a_clean_split():
    rng = np.random.default_rng(5)
    assert srm_check([10_400, 9_600], [1, 1])["flagged"]  # 52/48 on 20k units: p ~ 1e-8
    assert not srm_check([5_020, 14_980], [1, 3])["flagged"]
    clean = rng.multinomial(20_000, [0.25, 0.75], size=5000)
    flagged = np.asarray(srm_check(clean, [1, 3])["flagged"])
    assert flagged.mean() < 0.004  # about the 0.1% threshold
    skewed = rng.multinomial(20_000, [0.27, 0.73], size=200)
    assert np.mean(srm_check(skewed, [1, 3])["flagged"]) > 0.9
    assert srm_check([100, 100, 3], [1, 1, 0])["flagged"]  # a zero-weight arm got traffic
    with pytest.raises(InputError):
        srm_check([1, 2, 3], [1, 1])


def test_guardrail_pass_fail_inconclusive():
    rng = np.random.default_rng(6)
    latency = MetricSpec("latency_ms", guardrail=True, margin=0.02, higher_is_better=False)
    arm = np.arange(40_000) % 2
    base = rng.gamma(4.0, 10.0, 40_000)  # mean 40 ms
    slower = MetricStats.from_arrays("latency_ms", ARMS, arm, {"y": base * np.where(arm == 1, 1.10, 1.0)})
    same = MetricStats.from_arrays("latency_ms", ARMS, arm, {"y": base})
    assert guardrail(compare(slower), latency)["status"] == "fail"
    assert guardrail(compare(same), latency)["status"] == "pass"
    few = MetricStats.from_arrays("latency_ms", ARMS, arm[:60], {"y": base[:60]})
    assert guardrail(compare(few), latency)["status"] == "inconclusive"
    revenue = MetricSpec("revenue", guardrail=True, margin=0.02)  # higher is better
    poorer = MetricStats.from_arrays("revenue", ARMS, arm, {"y": base * np.where(arm == 1, 0.9, 1.0)})
    assert guardrail(compare(poorer), revenue)["status"] == "fail"


def test_experiment_report_is_json_and_gives_verdicts():
    rng = np.random.default_rng(7)
    exp = Experiment(
        "ranker",
        (Arm("control", alias="champion"), Arm("treatment", alias="challenger")),
        system="recsys",
        metrics=(
            MetricSpec("watch", covariate="pre"),
            MetricSpec("latency_ms", guardrail=True, margin=0.05, higher_is_better=False),
        ),
    )
    arm = np.arange(20_000) % 2
    pre = rng.gamma(2.0, 5.0, 20_000)
    watch = pre + rng.normal(0, 3, 20_000) + 0.5 * arm
    latency = rng.gamma(4.0, 10.0, 20_000)
    stats = {
        "watch": MetricStats.from_arrays("watch", exp.arm_names, arm, {"y": watch, "x": pre}),
        "latency_ms": MetricStats.from_arrays("latency_ms", exp.arm_names, arm, {"y": latency}),
    }
    report = json.loads(json.dumps(analyze_experiment(exp, stats)))
    assert report["verdict"] == {"treatment": "win"}
    assert report["srm"]["flagged"] is False and report["primary_metric"] == "watch"
    watch_cmp = report["metrics"]["watch"][0]
    assert watch_cmp["kind"] == "cuped" and watch_cmp["variance_reduction"] > 0.5
    assert watch_cmp["cs_low"] < 0.5 < watch_cmp["cs_high"]
    assert report["guardrails"][0]["status"] == "pass"
    assert analyze_experiment(exp, stats, counts=[10_400, 9_600])["verdict"] == {"treatment": "invalid (SRM)"}
    stats["latency_ms"] = MetricStats.from_arrays(
        "latency_ms", exp.arm_names, arm, {"y": latency * (1 + 0.3 * arm)}
    )
    assert analyze_experiment(exp, stats)["verdict"] == {"treatment": "guardrail failed: latency_ms"}
    with pytest.raises(InputError) as err:
        analyze_experiment(exp, {"watch": stats["watch"]})
    assert err.value.field == "stats"


def test_end_to_end_through_the_client_finds_the_planted_effect_and_a_logging_bug():
    """Config -> assignment -> exposures (repeated, as services report them) -> outcomes -> report."""
    import pandas as pd
    from prometheus_client import CollectorRegistry

    from mlsd.platform.experiments.assignment import ExperimentConfig
    from mlsd.platform.experiments.client import ExperimentClient

    config = ExperimentConfig.from_dict(
        {
            "holdout": {"fraction": 0.05},
            "layers": [
                {
                    "name": "ranking",
                    "experiments": [
                        {
                            "name": "ranker",
                            "coverage": 0.5,
                            "arms": [
                                {"name": "control", "alias": "champion"},
                                {"name": "treatment", "alias": "challenger"},
                            ],
                            "metrics": [
                                {"name": "minutes", "covariate": "pre_minutes"},
                                {
                                    "name": "ctr",
                                    "kind": "ratio",
                                    "numerator": "clicks",
                                    "denominator": "impressions",
                                },
                            ],
                        }
                    ],
                }
            ],
        }
    )
    registry = CollectorRegistry()
    client = ExperimentClient(config, registry=registry)
    rng = np.random.default_rng(8)
    users = np.arange(20_000)
    arms = client.assign("ranker", users)
    groups = client.groups(arms)
    assert sorted(groups) == [-1, 0, 1] and np.all(arms[groups[1]] == 1)
    assert client.arm("ranker", 1).alias == "challenger" and client.arm("ranker", -1) is None
    for _ in range(2):  # every request reports its exposure; only the first one counts
        client.expose("ranker", users, arms, ts=1_700_000_000)
    exposed = arms >= 0
    assert registry.get_sample_value(
        "mlsd_experiment_exposures_total", {"experiment": "ranker", "arm": "treatment"}
    ) == np.sum(arms == 1)
    pre = rng.gamma(2.0, 10.0, len(users))
    minutes = pre * 0.8 + rng.normal(0, 5, len(users)) + 1.0 * (arms == 1)  # planted +1 minute
    impressions = rng.poisson(20, len(users)) + 1
    clicks = rng.binomial(impressions, 0.1)
    events = pd.DataFrame({"unit": users, "minutes": minutes, "clicks": clicks, "impressions": impressions})
    covariates = pd.DataFrame({"unit": users, "pre_minutes": pre})
    report = client.analyze("ranker", events[exposed | (rng.random(len(users)) < 0.5)], covariates)
    minutes_cmp = report["metrics"]["minutes"][0]
    assert minutes_cmp["diff_low"] < 1.0 < minutes_cmp["diff_high"] and minutes_cmp["diff"] > 0
    assert report["metrics"]["ctr"][0]["significant"] is False  # nothing planted on CTR
    assert report["srm"]["flagged"] is False and report["verdict"] == {"treatment": "win"}
    assert sum(report["srm"]["counts"]) == exposed.sum()
    # A logging bug: the treatment path drops 10% of its exposures. The SRM check must catch it.
    buggy = ExperimentClient(config, registry=False)
    keep = (arms == 0) | (rng.random(len(users)) > 0.10)
    buggy.expose("ranker", users[keep], arms[keep])
    assert buggy.analyze("ranker", events, covariates)["verdict"] == {"treatment": "invalid (SRM)"}


def test_analyze_verb_reads_config_and_stats_files(tmp_path, capsys):
    from mlsd.cli import main as mlsd_main

    def main(argv):
        return mlsd_main(["experiment", *argv])

    (tmp_path / "exp.yaml").write_text(
        "experiments:\n  - name: ranker\n    arms: [{name: control}, {name: treatment}]\n    metrics: [{name: m}]\n"
    )
    rng = np.random.default_rng(9)
    arm = np.arange(4000) % 2
    st = MetricStats.from_arrays("m", ARMS, arm, {"y": rng.normal(0, 1, 4000) + 0.3 * arm})
    (tmp_path / "stats.json").write_text(json.dumps({"m": st.to_dict()}))
    argv = ["analyze", "--config", str(tmp_path / "exp.yaml"), "--experiment", "ranker", "--stats"]
    assert main([*argv, str(tmp_path / "stats.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == {"treatment": "win"} and report["metrics"]["m"][0]["diff"] > 0
    assert main([*argv, str(tmp_path / "stats.json")]) == 0
    assert "verdict treatment: win" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main([*argv, str(tmp_path / "bad.json")]) == 2  # DataFormatError -> message + exit 2
    assert "bad.json" in capsys.readouterr().err
    assert (
        main(["analyze", "--config", str(tmp_path / "exp.yaml"), "--experiment", "nope", "--stats", "x"]) == 2
    )


def test_looks_replay_the_experiment_in_exposure_order():
    import pandas as pd

    from mlsd.platform.experiments.assignment import ExperimentConfig
    from mlsd.platform.experiments.client import ExperimentClient

    config = ExperimentConfig.from_dict(
        {"experiments": [{"name": "e", "arms": [{"name": "c"}, {"name": "t"}], "metrics": [{"name": "y"}]}]}
    )
    client = ExperimentClient(config, registry=False)
    rng = np.random.default_rng(10)
    users = np.arange(6000)
    arms = client.assign("e", users)
    client.expose("e", users, arms, ts=users)  # one unit exposed per second
    y = rng.normal(0, 1, 6000) + 0.2 * arms
    late = pd.DataFrame(
        {"unit": users[:100], "y": 100.0, "ts": 10_000}
    )  # after every look's cut but the last
    events = pd.concat([pd.DataFrame({"unit": users, "y": y, "ts": users + 1}), late])
    report = client.analyze("e", events, looks=4, planned_n=6000)
    looks = report["looks"]
    assert [look["n"] for look in looks] == [1500, 3000, 4500, 6000]
    assert [look["ts"] for look in looks] == [1499, 2999, 4499, 5999]
    first = looks[0]["metrics"]["y"][0]
    assert first["n_control"] + first["n_treatment"] == 1500
    # Events are cut at each look's time: the late events (ts 10,000) are in no look, but in the report.
    assert looks[-1]["metrics"]["y"][0]["diff"] != report["metrics"]["y"][0]["diff"]
    assert all(look["metrics"]["y"][0]["cs_low"] < 0.2 < look["metrics"]["y"][0]["cs_high"] for look in looks)
    assert report["higher_is_better"] == {"y": True}


def test_paired_shadow_comparison_is_calibrated_and_tighter_than_a_split():
    from mlsd.platform.experiments.analysis import paired_compare

    rng = np.random.default_rng(11)
    seeds, n = 2000, 500
    risk = rng.gamma(2.0, 1.0, (seeds, n))  # per-transaction difficulty, shared by both models
    champion = risk + rng.normal(0, 0.3, (seeds, n))
    challenger = risk + rng.normal(0, 0.3, (seeds, n)) - 0.05  # planted: 0.05 lower loss
    shadow = np.zeros((seeds, n), dtype=int)
    st = MetricStats.from_batch("loss", ["shadow"], shadow, {"champion": champion, "challenger": challenger})
    out = paired_compare(st)
    covered = (np.array(out["diff_low"]) < -0.05) & (np.array(out["diff_high"]) > -0.05)
    assert 0.935 <= covered.mean() <= 0.965
    assert np.mean(out["variance_reduction_vs_unpaired"]) > 0.9  # the shared risk cancels out
    one = paired_compare(
        MetricStats.from_arrays(
            "loss", ["shadow"], shadow[0], {"champion": champion[0], "challenger": challenger[0]}
        )
    )
    ref = sps.ttest_rel(challenger[0], champion[0])
    assert np.isclose(one["p_value"], ref.pvalue) and one["diff"] < 0
    assert one["cs_low"] < one["diff_low"] < one["diff_high"] < one["cs_high"]
    with pytest.raises(InputError):
        paired_compare(MetricStats.from_arrays("m", ARMS, np.arange(4) % 2, {"y": np.ones(4)}))
