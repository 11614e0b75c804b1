"""Shadow experiments in the pipeline: assignment, counterfactual decisions, exposures, Prometheus."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mlsd.fraud.decision import BLOCK
from mlsd.fraud.engine import FraudPipeline
from mlsd.fraud.features import FeatureEngine
from mlsd.fraud.rules import RuleEngine
from mlsd.fraud.world import simulate
from mlsd.platform.errors import InputError
from mlsd.platform.experiments.client import ExperimentClient
from mlsd.platform.experiments.online import make_experiment

METRICS = [{"name": "fraud_loss", "higher_is_better": False}]


class Const:
    feature_names = ("amount",)

    def __init__(self, p, version):
        self.p, self.version = p, version
        self.calls = 0

    def predict(self, features):
        self.calls += len(features)
        return np.full(len(features), self.p)

    def contributions(self, features):
        return np.zeros((len(features), 2))


@pytest.fixture(scope="module")
def payments():
    tx = simulate(n_cards=120, n_terminals=40, days=3, seed=2)
    return tx.iloc[:400].drop(columns=["fraud", "scenario", "label_ts"]).reset_index(drop=True)


def _client(arms, mode="shadow", unit="card_id"):
    return ExperimentClient(make_experiment("fraud", arms, METRICS, mode=mode, unit=unit), registry=False)


def test_shadow_experiment_decides_with_champion_scores_arms_and_exposes(payments):
    registry = CollectorRegistry()
    client = _client(
        [{"name": "champion", "alias": "champion"}, {"name": "challenger", "alias": "challenger"}]
    )
    challenger = Const(0.99, "2")
    pipe = FraudPipeline(
        FeatureEngine(),
        RuleEngine(),
        Const(0.01, "1"),
        experiments=client,
        variants={"challenger": challenger},
        metrics_registry=registry,
    )
    batch = pipe.score(payments)
    name = "fraud-champion-vs-challenger"
    result = batch.experiments[name]
    n = len(payments)
    assert (result.arm >= 0).all()  # coverage 1: every card is in
    # the champion decides: its low score approves (rules may lift a few); the challenger's block is
    # counterfactual only
    assert (batch.decisions.labels == "approve").sum() >= n - 10
    assert (result.decision["challenger"] == BLOCK).all()
    np.testing.assert_array_equal(result.decision["champion"], batch.decisions.decision)
    np.testing.assert_allclose(result.probability["challenger"], 0.99)
    assert challenger.calls == n
    exposed = client.exposures(name)
    assert set(exposed["unit"]) == set(payments["card_id"].astype(str))  # once per card
    assert len(exposed) == payments["card_id"].nunique()
    records = batch.records()
    assert records[0]["experiments"][0]["name"] == name
    assert records[0]["experiments"][0]["arm"] in ("champion", "challenger")
    assert batch.response()["experiments"][name]["units_in"] == n
    # Prometheus, batch-level: both score histograms and the decision mix
    count = registry.get_sample_value("mlsd_score_count", {"system": "fraud", "model": "challenger"})
    assert count == n
    assert registry.get_sample_value("mlsd_score_count", {"system": "fraud", "model": "champion"}) == n
    decided = sum(
        registry.get_sample_value("mlsd_decisions_total", {"system": "fraud", "decision": d}) or 0
        for d in ("approve", "review", "block")
    )
    assert decided == n


def test_units_outside_the_experiment_are_neither_scored_nor_exposed(payments):
    from dataclasses import replace

    config = make_experiment(
        "fraud",
        [{"name": "champion", "alias": "champion"}, {"name": "challenger", "alias": "challenger"}],
        METRICS,
        mode="shadow",
        unit="card_id",
    )
    layer = config.layers[0]
    config = replace(
        config, layers=(replace(layer, experiments=(replace(layer.experiments[0], coverage=0.3),)),)
    )
    client = ExperimentClient(config, registry=False)
    challenger = Const(0.99, "2")
    pipe = FraudPipeline(
        FeatureEngine(),
        RuleEngine(),
        Const(0.01, "1"),
        experiments=client,
        variants={"challenger": challenger},
    )
    batch = pipe.score(payments)
    result = batch.experiments["fraud-champion-vs-challenger"]
    inside = result.arm >= 0
    assert 0 < inside.sum() < len(payments)
    assert challenger.calls == inside.sum()  # only the experiment's cards pay for the extra model
    assert np.isnan(result.probability["challenger"][~inside]).all()
    assert (result.decision["challenger"][~inside] == -1).all()
    exposed = set(client.exposures("fraud-champion-vs-challenger")["unit"])
    assert exposed == set(payments.loc[inside, "card_id"].astype(str))


def test_aa_arms_reuse_the_champion_and_thresholds_param_changes_decisions(payments):
    client = _client(
        [
            {"name": "champion", "alias": "champion"},
            {"name": "champion_2", "alias": "champion"},
            {
                "name": "strict",
                "alias": "champion",
                "params": {"thresholds": {"block": 0.001, "review": 0.0}},
            },
        ]
    )
    champion = Const(0.01, "1")
    pipe = FraudPipeline(FeatureEngine(), RuleEngine(), champion, experiments=client)
    batch = pipe.score(payments)
    result = batch.experiments[next(iter(client.config.experiments))]
    np.testing.assert_array_equal(result.decision["champion_2"], result.decision["champion"])
    assert (result.decision["strict"] == BLOCK).all()
    assert champion.calls == len(payments)  # the A/A and threshold arms cost no extra prediction


def test_rules_only_batch_exposes_nothing(payments):
    client = _client(
        [{"name": "champion", "alias": "champion"}, {"name": "challenger", "alias": "challenger"}]
    )
    pipe = FraudPipeline(
        FeatureEngine(), RuleEngine(), None, experiments=client, variants={"challenger": Const(0.5, "2")}
    )
    batch = pipe.score(payments)
    assert batch.experiments == {}
    assert "shadow" in [s["stage"] for s in batch.timer.skipped]
    assert client.exposures("fraud-champion-vs-challenger").empty


def test_bad_experiment_configs_are_rejected_at_start_up():
    arms = [{"name": "champion", "alias": "champion"}, {"name": "challenger", "alias": "challenger"}]
    with pytest.raises(InputError, match="mode"):
        FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.1, "1"), experiments=_client(arms, mode="split"),
                      variants={"challenger": Const(0.5, "2")})  # fmt: skip
    with pytest.raises(InputError, match="alias"):
        FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.1, "1"), experiments=_client(arms))
    bad = [arms[0], {"name": "x", "alias": "champion", "params": {"diversity": 1}}]
    with pytest.raises(InputError, match="diversity"):
        FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.1, "1"), experiments=_client(bad))
    inverted = [
        arms[0],
        {"name": "x", "alias": "champion", "params": {"thresholds": {"block": 0.2, "review": 0.5}}},
    ]
    with pytest.raises(InputError, match="thresholds"):
        FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.1, "1"), experiments=_client(inverted))
    # a unit that is not a payment field would be a KeyError (500) on the first payment
    with pytest.raises(InputError, match="unit"):
        FraudPipeline(
            FeatureEngine(),
            RuleEngine(),
            Const(0.1, "1"),
            experiments=_client([arms[0], {"name": "aa", "alias": "champion"}], unit="customer_id"),
        )


def test_http_decisions_name_the_experiment_and_arm():
    from fastapi.testclient import TestClient

    from mlsd.fraud.service import build_app

    client = _client(
        [{"name": "champion", "alias": "champion"}, {"name": "challenger", "alias": "challenger"}]
    )
    pipe = FraudPipeline(
        FeatureEngine(), RuleEngine(), Const(0.01, "1"), variants={"challenger": Const(0.99, "2")}
    )
    http = TestClient(build_app(pipe, experiments=client))
    payments = [
        {"tx_id": i, "ts": 1_770_000_000 + i, "card_id": i % 3, "terminal_id": 5, "amount": 12.5}
        for i in range(6)
    ]
    body = http.post("/v1/score/batch", json={"payments": payments}).json()
    assert [d["experiments"][0]["name"] for d in body["decisions"]] == ["fraud-champion-vs-challenger"] * 6
    assert body["experiments"]["fraud-champion-vs-challenger"]["units_in"] == 6
    assert http.get("/health").json()["experiments"] == ["fraud-champion-vs-challenger"]
    assert set(client.exposures("fraud-champion-vs-challenger")["unit"]) == {"0", "1", "2"}
