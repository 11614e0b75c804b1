"""The simulated world, part 2 (online experiments) against its known truth: a planted effect is found
with the right sign and its interval covers the true effect; an A/A test rejects at about the nominal
rate; a planted exposure-logging bug is flagged as a sample-ratio mismatch; the world is sized for the
units asked for."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.online import aa_rejection_rate
from mlsd.platform.system import SystemDir
from mlsd.recsys.config import TrainConfig
from mlsd.recsys.world import (
    ARM_PRESETS,
    DEFAULT_ARMS,
    WORLD,
    World,
    ensure_world,
    run_experiment,
    simulate_experiment,
    world_size,
)

# Many light viewers over few titles: cheap to simulate and train, enough viewers for an SRM test.
SIZE = {"n_users": 10_000, "n_items": 120, "days": 10, "seed": 3, "events_per_user": 6.0}
TRAIN = TrainConfig(
    train_days=7, label_days=3, sources={"als": 30, "content": 20, "popular": 20, "trending": 5, "new": 5},
    n_estimators=20,
)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dirs = SystemDir(tmp_path_factory.mktemp("recsys-world"), "recsys")
    ensure_world(dirs, size=SIZE, train=TRAIN)
    return dirs


def test_presets_and_default_arms():
    assert DEFAULT_ARMS == ("champion", "challenger")
    assert {"champion", "challenger", "no_ranker"} <= set(ARM_PRESETS)
    assert ARM_PRESETS["no_ranker"] == {
        **ARM_PRESETS["no_ranker"],
        "alias": "champion",
        "params": {"ranker": "none"},
    }


def test_expected_outcomes_match_the_sampled_ones(world):
    # The truth is only as good as the expectation formulas: check them against many draws.
    w = World.load(world.data)
    users = np.repeat(w.user_ids[:50], 400)
    lists = np.tile(np.r_[w.item_ids[:9], -1], (len(users), 1))
    drawn = w.sample(users, lists, np.random.default_rng(0))
    expected = w.expected(users, lists)
    for key in ("impressions", "plays", "completions", "watch_minutes"):
        se = drawn[key].std() / np.sqrt(len(users))
        assert abs(drawn[key].mean() - expected[key].mean()) < 4 * se, key


@pytest.mark.slow
def test_planted_worse_arm_is_detected_and_the_interval_covers_the_truth(world):
    report = run_experiment(
        world, units=1500, arms=["champion", "no_ranker"], seed=0, looks=4, progress=False
    )
    truth = report["truth"]["watch_minutes"]["no_ranker"]
    c = report["metrics"]["watch_minutes"][0]
    assert truth < 0  # ranking by the model beats candidate order in this world
    assert c["diff"] < 0 and c["diff_high"] < 0  # detected, with the right sign
    assert report["truth_covered"]["watch_minutes"]["no_ranker"]
    assert c["variance_reduction"] > 0  # CUPED on pre-period watch minutes helps
    assert report["verdict"]["no_ranker"] in {"loss", "keep running"}
    assert not report["srm"]["flagged"]
    assert len(report["looks"]) == 4 and report["looks"][-1]["n"] == sum(report["srm"]["counts"])
    assert report["units"] == 1500 and report["world"]["arms"]["no_ranker"]["params"] == {"ranker": "none"}
    assert (world.monitoring / "served_features.parquet").exists()  # the drift "current" window


@pytest.mark.slow
def test_aa_rejects_at_the_nominal_rate_and_lost_exposures_are_an_srm(world):
    # One run serves both checks: identical arms (outcomes cannot depend on the arm) and a planted
    # logging bug that drops 10% of the treatment's exposures. A 10% loss adds 0.0026 per unit to the
    # chi-square's noncentrality: 10,000 viewers give the SRM check ~96% power at the platform's
    # p < 0.001 threshold (6,000 would give ~75%). Every viewer is a real request (served in batches).
    run = simulate_experiment(
        world, units=10_000, arms=["no_ranker", "no_ranker"], seed=1, lose_exposures=0.1, k=5, progress=False
    )
    assert run.truth["watch_minutes"] == {"no_ranker_2": 0.0}
    experiment = run.client.config.experiment(run.name)
    aa = aa_rejection_rate(run.outcomes, experiment, covariates=run.covariates, seeds=200)
    assert aa["seeds"] == 200 and aa["units"] == 10_000
    # 200 seeds at alpha 0.05: the rate's standard error is 0.015.
    assert 0.0 <= aa["rate"] <= 0.10
    report = run.client.analyze(run.name, run.outcomes, covariates=run.covariates)
    counts = report["srm"]["counts"]
    assert report["srm"]["flagged"] and counts[1] < counts[0]
    assert report["verdict"]["no_ranker_2"] == "invalid (SRM)"
    assert run.world["units_dropped_from_log"] > 0


def test_bad_arguments_are_input_errors(world):
    with pytest.raises(InputError) as err:
        run_experiment(world, units=100, arms=["champion", "nope"], progress=False)
    assert err.value.field == "--arms"
    with pytest.raises(InputError) as err:
        run_experiment(world, units=10**7, arms=["champion", "no_ranker"], progress=False)
    assert err.value.field == "--units"
    with pytest.raises(InputError) as err:  # a world simulated for fewer viewers is not resized
        run_experiment(world, units=20_000, arms=["champion", "no_ranker"], progress=False)
    assert err.value.field == "--units" and "fresh --workdir" in err.value.fix
    with pytest.raises(InputError) as err:
        run_experiment(world, units=100, arms=["champion", "no_ranker"], lose_exposures=1.5, progress=False)
    assert err.value.field == "--lose-exposures"


def test_mlsd_experiment_run_prints_the_report_and_writes_it(world, tmp_path, capsys):
    import json

    from mlsd.cli import main

    out = tmp_path / "report.json"
    argv = ["experiment", "run", "recsys", "--units", "300", "--arms", "champion,no_ranker", "--looks", "2",
            "--workdir", str(world.root), "--out", str(out)]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is one JSON object
    assert report["experiment"] == "recsys-champion-vs-no_ranker" and len(report["looks"]) == 2
    assert json.loads(out.read_text())["truth"] == report["truth"]
    assert main(argv) == 0  # the readable table
    text = capsys.readouterr().out
    assert "watch_minutes *" in text and "true diff" in text and "verdict no_ranker" in text
    assert main(["experiment", "run", "recsys", "--arms", "champion,nope", "--workdir", str(world.root)]) == 2
    assert "--arms" in capsys.readouterr().err


def test_the_world_is_sized_for_the_units():
    assert world_size(300) == WORLD  # a few hundred units: the default world (fast)
    big = world_size(5000)
    assert big.n_users >= 5000 and (big.n_items, big.days, big.train) == (
        WORLD.n_items,
        WORLD.days,
        WORLD.train,
    )


@pytest.mark.slow
def test_5000_units_get_a_world_of_their_own(tmp_path):
    report = run_experiment(SystemDir(tmp_path, "recsys"), units=5000, arms=["champion", "no_ranker"], looks=1,
                            progress=False)  # fmt: skip
    assert report["units"] == 5000 and report["world"]["viewers"] >= 5000
    assert report["truth"]["watch_minutes"]["no_ranker"] < 0
