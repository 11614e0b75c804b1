"""Online experiments for search: routing by user, exposures, and known-truth analysis of the simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.client import ExperimentClient
from mlsd.platform.experiments.online import aa_rejection_rate, arms_from_presets, make_experiment
from mlsd.search.experiment import (
    ARM_PRESETS,
    DEFAULT_ARMS,
    METRICS,
    load_world,
    run_experiment,
    simulate_experiment,
)
from mlsd.search.routing import SearchRouter
from mlsd.search.service import create_search_app


def _client(arms=DEFAULT_ARMS, presets=ARM_PRESETS) -> ExperimentClient:
    config = make_experiment("search", arms_from_presets(presets, list(arms)), list(METRICS))
    return ExperimentClient(config, registry=False)


def test_router_serves_each_user_their_arm_and_exposes_once(search_world) -> None:
    workdir, world = search_world
    client = _client()
    name = next(iter(client.config.experiments))
    metrics = CollectorRegistry()
    router = SearchRouter(world.engine, client, registry_dir=workdir / "registry", metrics_registry=metrics)
    users = [str(u) for u in range(40)]
    out = router.search_many(["black chair"] * 40, users, 10, ts=1_000)
    arms = client.assign(name, users)
    assert set(arms.tolist()) == {0, 1}
    for resp, arm in zip(out, arms.tolist(), strict=True):
        assert resp["experiment"] == {name: DEFAULT_ARMS[arm]}
        assert resp["ranked_by"] == ("ltr" if DEFAULT_ARMS[arm] == "ltr" else "bm25")
    router.search_many(["lamp"] * 40, users, 10)  # the same users again: no new exposures
    exposures = client.exposures(name)
    assert len(exposures) == 40 and sorted(exposures["unit"]) == sorted(users)
    assert (exposures.set_index("unit").loc[users, "arm"].to_numpy() == arms).all()
    anonymous = router.search("black chair", "", 10)  # no unit: champion path, no exposure
    assert anonymous["experiment"] == {} and anonymous["ranked_by"] == "ltr"
    assert len(client.exposures(name)) == 40
    counts = {
        s.labels["model"]: s.value
        for m in metrics.collect()
        for s in m.samples
        if m.name == "mlsd_rank_score" and s.labels.get("le") == "+Inf"
    }
    assert counts["ltr"] > 0 and counts["bm25"] > 0 and counts["champion"] > 0


def test_service_names_the_experiment_and_arm(search_world) -> None:
    workdir, world = search_world
    client = _client()
    app = create_search_app(world.engine, experiments=client, registry_dir=workdir / "registry")
    body = TestClient(app).get("/v1/search", params={"q": "earbuds", "user_id": "12", "k": 5}).json()
    (name,) = client.config.experiments
    assert body["experiment"] == {name: DEFAULT_ARMS[int(client.assign(name, ["12"])[0])]}
    assert len(client.exposures(name)) == 1


@pytest.mark.parametrize(
    ("preset", "field"),
    [
        ({"alias": None, "params": {"ranker": "bogus"}}, "params.ranker"),
        ({"alias": None, "params": {"ranker": "dense"}}, "params.ranker"),  # engine has no dense index
        ({"alias": None, "params": {"rankr": "bm25"}}, "params.rankr"),
        ({"alias": "challenger", "params": {}}, "alias"),  # the registry has no challenger yet
    ],
)
def test_bad_arms_fail_at_startup_naming_the_field(search_world, preset, field) -> None:
    workdir, world = search_world
    client = _client(("ltr", "bad"), {**ARM_PRESETS, "bad": preset})
    with pytest.raises(InputError) as err:
        SearchRouter(world.engine, client, registry_dir=workdir / "registry")
    assert err.value.field.endswith(field) and "arms[1]" in err.value.field


def test_ltr_vs_bm25_effect_has_the_right_sign_and_the_interval_covers_the_truth(search_world) -> None:
    workdir, world = search_world
    report = run_experiment(workdir, units=500, seed=3, looks=4, progress=False, world=world)
    assert report["experiment"] == "search-ltr-vs-bm25" and report["units"] == 500
    assert not report["srm"]["flagged"]
    for metric in ("clicks_per_search", "conversions_per_search"):
        (comp,) = report["metrics"][metric]
        truth = report["truth"][metric]["bm25"]
        assert truth < 0  # BM25-only ranks worse than LambdaMART in this world
        assert comp["diff_high"] < 0, metric  # detected, right sign
        assert report["truth_covered"][metric]["bm25"], (metric, comp, truth)
    assert len(report["looks"]) == 4 and report["looks"][-1]["n"] == 500
    (lat,) = [g for g in report["guardrails"] if g["metric"] == "latency_ms_per_search"]
    assert lat["status"] in {"pass", "inconclusive", "fail"}


def test_aa_has_zero_true_effect_and_rejects_at_about_the_nominal_rate(search_world) -> None:
    _, world = search_world
    sim = simulate_experiment(world, units=400, arms=["bm25", "bm25"], seed=1)
    assert all(v == {"bm25_2": 0.0} for v in sim["truth"].values())  # same variant: identical pages
    experiment = sim["client"].config.experiment(sim["experiment"])
    aa = aa_rejection_rate(sim["outcomes"], experiment, covariates=sim["covariates"], seeds=200)
    assert aa["seeds"] == 200 and aa["units"] == 400
    assert 0.01 <= aa["rate"] <= 0.10, aa
    assert all(0.0 <= r <= 0.12 for r in aa["per_metric"].values()), aa


def test_lost_exposures_are_flagged_as_srm(search_world) -> None:
    _, world = search_world
    base = dict(units=6000, arms=["bm25", "bm25"], seed=2, searches_per_unit=1.0)
    lossy = simulate_experiment(world, lose_exposures=0.1, **base)
    report = lossy["client"].analyze(lossy["experiment"], lossy["outcomes"], covariates=lossy["covariates"])
    counts = np.asarray(report["srm"]["counts"])
    assert report["srm"]["flagged"] and counts[1] < 0.93 * counts[0]
    assert report["verdict"]["bm25_2"] == "invalid (SRM)"
    clean = simulate_experiment(world, lose_exposures=0.0, **base)
    assert not clean["client"].analyze(clean["experiment"], clean["outcomes"], clean["covariates"])["srm"][
        "flagged"
    ]


def test_engine_ranking_variants(search_world) -> None:
    _, world = search_world
    engine = world.engine
    ltr = engine.search("black chair", "3", 10)
    bm25 = engine.search("black chair", "3", 10, ranking="bm25")
    assert ltr["ranked_by"] == "ltr" and bm25["ranked_by"] == "bm25"
    assert {"stage": "ltr", "reason": "ranking variant: bm25"} in bm25["skipped"]
    assert "features" not in bm25["timings_ms"] and bm25["results"]
    # Without a dense index "hybrid" is the same lexical order as "bm25": only LTR differs.
    hybrid = engine.search("black chair", "3", 10, ranking="hybrid")
    assert [r["product_id"] for r in hybrid["results"]] == [r["product_id"] for r in bm25["results"]]
    with pytest.raises(InputError) as err:
        engine.search("black chair", "3", 10, ranking="random")
    assert err.value.field == "ranking"


def test_a_real_data_folder_is_never_overwritten_by_the_simulator(tmp_path, tiny_catalog) -> None:
    (tmp_path / "data").mkdir()
    tiny_catalog.to_parquet(tmp_path / "data" / "products.parquet")
    with pytest.raises(InputError) as err:
        load_world(tmp_path, progress=False)
    assert err.value.field == "--workdir"
    assert pd.read_parquet(tmp_path / "data" / "products.parquet").equals(tiny_catalog)
