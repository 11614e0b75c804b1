"""What the online simulators share: arm presets, one-experiment configs, planted SRM, A/A calibration,
the truth next to the estimate, and shadow (paired) analysis through the ExperimentClient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.experiments import (
    ExperimentClient,
    aa_rejection_rate,
    arms_from_presets,
    lose_exposures,
    make_experiment,
    with_truth,
)

PRESETS = {
    "champion": {"alias": "champion"},
    "challenger": {"alias": "challenger", "params": {"depth": 3}},
}
METRICS = [
    {"name": "minutes", "covariate": "pre_minutes"},
    {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "views"},
]


def test_presets_become_arms_and_a_repeated_name_is_an_a_a_pair() -> None:
    arms = arms_from_presets(PRESETS, ["champion", "challenger"])
    assert [a.name for a in arms] == ["champion", "challenger"]
    assert arms[1].alias == "challenger" and arms[1].params == {"depth": 3}
    aa = arms_from_presets(PRESETS, ["champion", "champion"])
    assert [a.name for a in aa] == ["champion", "champion_2"]
    assert aa[0].alias == aa[1].alias == "champion"


@pytest.mark.parametrize("names", [["champion", "nope"], ["champion"]])
def test_bad_arm_lists_name_the_flag(names) -> None:
    with pytest.raises(InputError) as err:
        arms_from_presets(PRESETS, names)
    assert err.value.field == "--arms"


def test_make_experiment_covers_every_unit_with_the_configured_split() -> None:
    config = make_experiment("recsys", arms_from_presets(PRESETS, ["champion", "challenger"]), METRICS)
    (name,) = config.experiments
    assert name == "recsys-champion-vs-challenger"
    arms = ExperimentClient(config, registry=False).assign(name, np.arange(20_000))
    assert (arms >= 0).all()
    assert abs(arms.mean() - 0.5) < 0.02


def test_lose_exposures_drops_only_treatment_units() -> None:
    arm_idx = np.tile([0, 1], 50_000)
    keep = lose_exposures(arm_idx, 0.1, seed=3)
    assert keep[arm_idx == 0].all()
    assert abs((~keep[arm_idx == 1]).mean() - 0.1) < 0.01
    assert lose_exposures(arm_idx, 0.0).all()
    with pytest.raises(InputError):
        lose_exposures(arm_idx, 1.5)


def test_a_planted_srm_is_flagged_and_a_clean_run_is_not() -> None:
    config = make_experiment("recsys", arms_from_presets(PRESETS, ["champion", "challenger"]), METRICS[:1])
    name = next(iter(config.experiments))
    units = np.arange(20_000)
    outcomes = pd.DataFrame({"unit": units, "minutes": 1.0})
    covariates = pd.DataFrame({"unit": units, "pre_minutes": 1.0})
    flagged = {}
    for fraction in (0.0, 0.1):
        client = ExperimentClient(config, registry=False)
        arms = client.assign(name, units)
        keep = lose_exposures(arms, fraction, seed=0)
        client.expose(name, units[keep], arms[keep])
        flagged[fraction] = client.analyze(name, outcomes, covariates=covariates)["srm"]["flagged"]
    assert flagged == {0.0: False, 0.1: True}


def test_a_a_rejection_rate_is_close_to_alpha() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    pre = rng.gamma(2.0, 10.0, n)
    outcomes = pd.DataFrame(
        {
            "unit": np.arange(n),
            "minutes": pre * 0.8 + rng.gamma(2.0, 5.0, n),
            "clicks": rng.poisson(2.0, n),
            "views": rng.poisson(10.0, n) + 1,
        }
    )
    covariates = pd.DataFrame({"unit": np.arange(n), "pre_minutes": pre})
    config = make_experiment("recsys", arms_from_presets(PRESETS, ["champion", "champion"]), METRICS)
    exp = next(iter(config.experiments.values()))
    result = aa_rejection_rate(outcomes, exp, covariates=covariates, seeds=400)
    assert result["seeds"] == 400 and result["units"] == n and result["metric"] == "minutes"
    # 400 seeds: the rate's standard error at 5% is ~1.1 points
    for rate in result["per_metric"].values():
        assert 0.02 <= rate <= 0.085, result


def test_with_truth_says_whether_the_interval_covers_the_true_effect() -> None:
    report = {"metrics": {"minutes": [{"treatment": "challenger", "diff_low": 0.5, "diff_high": 1.5}]}}
    out = with_truth(report, {"minutes": {"challenger": 1.0}})
    assert out["truth"] == {"minutes": {"challenger": 1.0}}
    assert out["truth_covered"] == {"minutes": {"challenger": True}}
    assert (
        with_truth(report, {"minutes": {"challenger": 2.0}})["truth_covered"]["minutes"]["challenger"]
        is False
    )


def _shadow(challenger_shift: float, n: int = 4000):
    config = make_experiment(
        "fraud",
        arms_from_presets(PRESETS, ["champion", "challenger"]),
        [
            {"name": "fraud_loss", "higher_is_better": False},
            {"name": "review_rate", "kind": "ratio", "numerator": "reviews", "denominator": "payments"},
        ],
        mode="shadow",
        unit="customer_id",
    )
    name = next(iter(config.experiments))
    client = ExperimentClient(config, registry=False)
    rng = np.random.default_rng(2)
    units = np.arange(n)
    arms = client.assign(name, units)
    assert set(np.unique(arms)) == {0, 1}  # assignment still splits ...
    client.expose(name, units, arms)
    assert set(client.exposures(name)["arm"]) == {0}  # ... but in shadow mode every unit saw arm 0
    loss = rng.exponential(20.0, n)
    payments = rng.poisson(5, n) + 1
    reviews = rng.binomial(payments, 0.02)
    outcomes = pd.DataFrame(
        {
            "unit": units,
            "fraud_loss@champion": loss,
            "fraud_loss@challenger": loss + challenger_shift + rng.normal(0, 1.0, n),
            "reviews@champion": reviews,
            "reviews@challenger": reviews,
            "payments": payments,
        }
    )
    report = client.analyze(name, outcomes, looks=4)
    sample_diff = float((outcomes["fraud_loss@challenger"] - outcomes["fraud_loss@champion"]).mean())
    return report, sample_diff


def test_shadow_analysis_pairs_the_arms_on_the_same_units() -> None:
    report, sample_diff = _shadow(challenger_shift=-1.0)
    assert report["mode"] == "shadow" and report["srm"]["flagged"] is False
    (loss,) = report["metrics"]["fraud_loss"]
    assert loss["treatment"] == "challenger" and loss["control"] == "champion"
    assert loss["diff"] == pytest.approx(sample_diff)
    assert loss["diff_low"] <= -1.0 <= loss["diff_high"]
    assert loss["diff_high"] < 0 and loss["sequential_significant"]
    # pairing removes the between-card variance: the unpaired interval would be ~20x wider
    assert loss["variance_reduction_vs_unpaired"] > 0.99
    assert report["verdict"]["challenger"] == "better than the champion"  # lower loss is better
    (review,) = report["metrics"]["review_rate"]
    assert review["diff"] == pytest.approx(0.0) and review["mean_control"] == pytest.approx(
        report["metrics"]["review_rate"][0]["mean_treatment"]
    )
    assert len(report["looks"]) == 4


def test_shadow_a_a_has_no_difference_and_keeps_running() -> None:
    report, _ = _shadow(challenger_shift=0.0)
    (loss,) = report["metrics"]["fraud_loss"]
    assert loss["diff_low"] <= 0.0 <= loss["diff_high"]
    assert report["verdict"]["challenger"] == "keep running"


def test_shadow_outcomes_without_per_arm_columns_are_refused() -> None:
    config = make_experiment(
        "fraud",
        arms_from_presets(PRESETS, ["champion", "challenger"]),
        [{"name": "fraud_loss"}],
        mode="shadow",
    )
    name = next(iter(config.experiments))
    client = ExperimentClient(config, registry=False)
    client.expose(name, ["a", "b"], [0, 1])
    with pytest.raises(InputError) as err:
        client.analyze(name, pd.DataFrame({"unit": ["a", "b"], "fraud_loss": [1.0, 2.0]}))
    assert "@" in err.value.fix


@pytest.mark.parametrize(
    "argv, field",
    [
        (["experiment", "run", "weather"], "system"),
        (["experiment", "run", "recsys", "--units", "5"], "--units"),
        (["experiment", "run", "recsys", "--lose-exposures", "1.5"], "--lose-exposures"),
        (["monitor", "report", "--system", "weather", "--workdir", "."], "--system"),
        (["monitor", "report", "--system", "fraud", "--workdir", "/no/such/dir"], "--workdir"),
        (["monitor", "report", "--current", "x.parquet"], "--reference"),
    ],
)
def test_cli_rejects_bad_input_with_the_field_and_exit_2(argv, field, capsys) -> None:
    from mlsd.cli import main

    assert main(argv) == 2
    assert field in capsys.readouterr().err


def test_serve_options_build_a_client_with_the_configured_exposure_log(
    tmp_path, redis_url, redis_prefix
) -> None:
    from mlsd.platform.experiments import RedisExposureLog

    path = tmp_path / "experiments.yaml"
    path.write_text(
        "layers:\n"
        "  - name: search\n    experiments:\n"
        "      - name: search-ltr-vs-bm25\n        system: search\n"
        "        arms: [{name: ltr, alias: champion}, {name: bm25, params: {ranker: bm25}}]\n"
        "  - name: recsys\n    experiments:\n"
        "      - name: recsys-ranker\n        system: recsys\n"
        "        arms: [{name: champion}, {name: challenger, alias: challenger}]\n"
    )
    assert ExperimentClient.from_options(None) is None
    local = ExperimentClient.from_options(path)
    assert [e.name for e in local.experiments_for("search")] == ["search-ltr-vs-bm25"]
    assert local.experiments_for("fraud") == []
    shared = ExperimentClient.from_options(path, redis_url, prefix=redis_prefix)
    assert isinstance(shared.log, RedisExposureLog)
    shared.expose("recsys-ranker", ["u1", "u1", "u2"], [0, 0, 1])
    assert sorted(shared.exposures("recsys-ranker")["unit"]) == ["u1", "u2"]
    for args, field in (
        ((tmp_path / "nope.yaml",), "--experiments"),
        ((None, redis_url), "--exposure-redis"),
    ):
        with pytest.raises(InputError) as err:
            ExperimentClient.from_options(*args)
        assert err.value.field == field


def test_identical_shadow_arms_report_zero_without_warnings() -> None:
    import warnings

    config = make_experiment(
        "fraud", arms_from_presets(PRESETS, ["champion", "champion"]), [{"name": "fraud_loss"}], mode="shadow"
    )
    name = next(iter(config.experiments))
    client = ExperimentClient(config, registry=False)
    client.expose(name, np.arange(100), np.zeros(100, dtype=int))
    loss = np.random.default_rng(0).exponential(10.0, 100)
    for values, reduction in ((loss, 1.0), (np.zeros(100), None)):  # all-zero: 0/0 -> null, no warning
        outcomes = pd.DataFrame(
            {"unit": np.arange(100), "fraud_loss@champion": values, "fraud_loss@champion_2": values}
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (row,) = client.analyze(name, outcomes)["metrics"]["fraud_loss"]
        assert row["diff"] == 0.0 and row["variance_reduction_vs_unpaired"] == reduction


def test_make_experiment_coverage_ramps_the_share_of_units_in_it() -> None:
    config = make_experiment(
        "search", arms_from_presets(PRESETS, ["champion", "challenger"]), [], coverage=0.2
    )
    arms = ExperimentClient(config, registry=False).assign(next(iter(config.experiments)), np.arange(20_000))
    assert abs((arms >= 0).mean() - 0.2) < 0.02
