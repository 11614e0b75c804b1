"""Assignment: deterministic hashing, weights, layers, holdout, coverage ramps, typed config."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats as sps

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.experiments.assignment import (
    N_BUCKETS,
    Arm,
    Assigner,
    Experiment,
    ExperimentConfig,
    Layer,
    bucket_of,
)

UNITS = np.arange(20_000)


def _config(coverage: float = 1.0, holdout: float = 0.0) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "holdout": {"fraction": holdout},
            "layers": [
                {
                    "name": "ranking",
                    "experiments": [
                        {
                            "name": "ranker",
                            "allocation": 0.6,
                            "coverage": coverage,
                            "arms": [
                                {"name": "control", "weight": 1, "alias": "champion"},
                                {
                                    "name": "treatment",
                                    "weight": 3,
                                    "alias": "challenger",
                                    "params": {"k": 50},
                                },
                            ],
                        },
                        {"name": "diversity", "allocation": 0.4, "arms": [{"name": "off"}, {"name": "on"}]},
                    ],
                },
                {
                    "name": "ui",
                    "experiments": [
                        {"name": "layout", "arms": [{"name": "a"}, {"name": "b"}, {"name": "c", "weight": 0}]}
                    ],
                },
            ],
        }
    )


def test_bucket_matches_an_independent_blake2b_and_int_equals_str():
    key = hashlib.blake2b(b"my-salt", digest_size=32).digest()
    expected = (
        int.from_bytes(hashlib.blake2b(b"12345", digest_size=8, key=key).digest(), "little") % N_BUCKETS
    )
    assert bucket_of("my-salt", [12345]).tolist() == [expected]
    assert bucket_of("my-salt", ["12345"]).tolist() == [expected]
    assert bucket_of("my-salt", np.array([12345.0])).tolist() == [expected]
    # Another salt reshuffles: ~1 id in 10^4 keeps its bucket by chance.
    assert np.mean(bucket_of("my-salt", UNITS) == bucket_of("other-salt", UNITS)) < 0.001


def test_buckets_are_uniform_and_salts_independent():
    a, b = bucket_of("salt-a", UNITS), bucket_of("salt-b", UNITS)
    assert a.min() >= 0 and a.max() < N_BUCKETS
    counts = np.bincount(a // 1000, minlength=10)
    assert sps.chisquare(counts).pvalue > 1e-3
    # Independent salts: the 2x2 table of "bucket < 5000" under both salts shows no association.
    table = np.histogram2d(a < 5000, b < 5000, bins=2)[0]
    assert sps.chi2_contingency(table).pvalue > 1e-3
    assert np.array_equal(a, bucket_of("salt-a", UNITS))  # deterministic


def test_weights_are_respected_and_zero_weight_arm_is_never_assigned():
    assigner = Assigner(_config())
    ranker = assigner.assign("ranker", UNITS)
    inside = ranker[ranker >= 0]
    share = np.mean(inside == 1)
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / len(inside))
    layout = assigner.assign("layout", UNITS)
    assert set(np.unique(layout)) == {0, 1}  # arm c has weight 0; layout covers the whole layer
    assert abs(np.mean(layout == 1) - 0.5) < 4 * np.sqrt(0.25 / len(UNITS))


def test_layer_experiments_are_mutually_exclusive_and_layers_are_independent():
    arms = Assigner(_config()).assign_all(UNITS)
    in_ranker, in_div, in_layout = arms["ranker"] >= 0, arms["diversity"] >= 0, arms["layout"] >= 0
    assert not np.any(in_ranker & in_div)
    assert np.all(in_ranker | in_div)  # allocations 0.6 + 0.4 fill the layer
    assert abs(in_ranker.mean() - 0.6) < 4 * np.sqrt(0.24 / len(UNITS))
    # The other layer cuts across: the layout arm is independent of the ranker arm.
    table = np.array(
        [[np.sum((arms["ranker"] == i) & (arms["layout"] == j)) for j in (0, 1)] for i in (-1, 0, 1)]
    )
    assert sps.chi2_contingency(table).pvalue > 1e-3
    assert in_layout.all()


def test_assignment_is_stable_when_coverage_grows():
    small = Assigner(_config(coverage=0.1)).assign("ranker", UNITS)
    large = Assigner(_config(coverage=0.5)).assign("ranker", UNITS)
    full = Assigner(_config(coverage=1.0)).assign("ranker", UNITS)
    in_small = small >= 0
    assert abs(in_small.mean() - 0.06) < 0.01 and abs((large >= 0).mean() - 0.30) < 0.015
    assert np.all(large[in_small] == small[in_small])  # same units, same arms
    assert np.all(full[large >= 0] == large[large >= 0])
    # ... while the other experiment in the layer does not move at all.
    div_small = Assigner(_config(coverage=0.1)).assign("diversity", UNITS)
    assert np.array_equal(div_small, Assigner(_config(coverage=1.0)).assign("diversity", UNITS))


def test_holdout_units_are_in_no_experiment():
    assigner = Assigner(_config(holdout=0.1))
    held = assigner.in_holdout(UNITS)
    assert abs(held.mean() - 0.1) < 0.01
    for arms in assigner.assign_all(UNITS).values():
        assert np.all(arms[held] == -1)
    # Without the holdout those units would have been assigned: the holdout is what removed them.
    assert np.any(Assigner(_config()).assign("layout", UNITS)[held] >= 0)


def test_assign_and_assign_all_agree_and_arms_name_what_they_change():
    assigner = Assigner(_config(coverage=0.5, holdout=0.05))
    all_arms = assigner.assign_all(UNITS[:5000])
    for name in ("ranker", "diversity", "layout"):
        assert np.array_equal(all_arms[name], assigner.assign(name, UNITS[:5000]))
    idx = all_arms["ranker"]
    objects = assigner.arms("ranker", idx[:50])
    for i, arm in zip(idx[:50], objects, strict=True):
        assert (arm is None) == (i < 0)
        if arm is not None and i == 1:
            assert arm.alias == "challenger" and arm.params == {"k": 50}


def test_python_built_config_matches_yaml_built(tmp_path):
    path = tmp_path / "experiments.yaml"
    path.write_text(
        """
layers:
  - name: ranking
    experiments:
      - name: ranker
        system: recsys
        arms:
          - {name: control, alias: champion}
          - {name: treatment, alias: challenger, params: {diversity: 0.3}}
        metrics:
          - {name: watch_minutes, covariate: pre_watch_minutes}
          - {name: ctr, kind: ratio, numerator: clicks, denominator: impressions}
          - {name: latency_ms, guardrail: true, margin: 0.05, higher_is_better: false}
"""
    )
    loaded = ExperimentConfig.from_yaml(path)
    built = ExperimentConfig(
        layers=(
            Layer(
                "ranking",
                (
                    Experiment(
                        "ranker",
                        (
                            Arm("control", alias="champion"),
                            Arm("treatment", alias="challenger", params={"diversity": 0.3}),
                        ),
                        system="recsys",
                        metrics=loaded.experiment("ranker").metrics,
                    ),
                ),
            ),
        )
    )
    assert loaded == built
    assert ExperimentConfig.from_dict(loaded.to_dict()) == loaded
    exp = loaded.experiment("ranker")
    assert exp.salt == "ranker" and exp.metrics[1].kind == "ratio" and exp.metrics[2].guardrail
    assert np.array_equal(
        Assigner(loaded).assign("ranker", UNITS[:1000]), Assigner(built).assign("ranker", UNITS[:1000])
    )


def _exp(**overrides):
    exp = {"name": "e", "arms": [{"name": "c"}, {"name": "t"}]}
    exp.update(overrides)
    return {"layers": [{"name": "l", "experiments": [exp]}]}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_exp(arms=[{"name": "c"}, {"name": "t", "weight": -1}]), "layers[0].experiments[0].arms[1].weight"),
        (
            _exp(arms=[{"name": "c"}, {"name": "t", "weight": "heavy"}]),
            "layers[0].experiments[0].arms[1].weight",
        ),
        (_exp(arms=[{"name": "c"}]), "layers[0].experiments[0].arms"),
        (_exp(coverage=1.5), "layers[0].experiments[0].coverage"),
        (_exp(colour="red"), "layers[0].experiments[0].colour"),
        (_exp(mode="canary"), "layers[0].experiments[0].mode"),
        (_exp(salt="layer:l"), "layers[0].experiments[0].salt"),
        (
            _exp(metrics=[{"name": "ctr", "kind": "ratio", "numerator": "clicks"}]),
            "layers[0].experiments[0].metrics[0].numerator",
        ),
        (_exp(metrics=[{"name": "m", "margin": 2}]), "layers[0].experiments[0].metrics[0].margin"),
        ({"layers": [{"name": "l", "experiments": [{"arms": []}]}]}, "layers[0].experiments[0].name"),
        ({"layers": [{"experiments": []}]}, "layers[0].name"),
        ({"holdout": {"fraction": 1.0}, "layers": []}, "holdout.fraction"),
        ({"layers": "ranking"}, "layers"),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(InputError) as err:
        ExperimentConfig.from_dict(data)
    assert err.value.field == field


def test_allocations_over_100_percent_and_duplicate_names_are_refused():
    two = {
        "name": "l",
        "experiments": [
            {"name": "a", "allocation": 0.7, "arms": [{"name": "c"}, {"name": "t"}]},
            {"name": "b", "allocation": 0.4, "arms": [{"name": "c"}, {"name": "t"}]},
        ],
    }
    with pytest.raises(InputError) as err:
        ExperimentConfig.from_dict({"layers": [two]})
    assert err.value.field == "layers[0].experiments[1].allocation"
    two["experiments"][1]["allocation"] = 0.3
    two["experiments"][1]["name"] = "a"
    with pytest.raises(InputError) as err:
        ExperimentConfig.from_dict({"layers": [two]})
    assert err.value.field == "layers[0].experiments[1].name"


def test_bad_yaml_names_the_line_and_bad_ids_and_names_are_input_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("layers:\n  - name: l\n    experiments: [\n")
    with pytest.raises(DataFormatError) as err:
        ExperimentConfig.from_yaml(path)
    assert err.value.line is not None and err.value.line >= 3
    assigner = Assigner(_config())
    with pytest.raises(InputError) as err:
        assigner.assign("nope", UNITS[:3])
    assert err.value.field == "experiment" and err.value.status == 404
    with pytest.raises(InputError) as err:
        assigner.assign("ranker", np.array([1.0, np.nan]))
    assert err.value.field == "unit_ids"
    assert assigner.assign("ranker", np.array([], dtype=np.int64)).shape == (0,)
