"""The simulated world: the data generator (schema, determinism, query noise, ground truth, the
position-biased click model, sizes written into a workdir) and the online experiment world (routing by
user, exposures, known-truth analysis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.client import ExperimentClient
from mlsd.platform.experiments.online import aa_rejection_rate, arms_from_presets, make_experiment
from mlsd.platform.system import SystemDir
from mlsd.search.data import TEXT_FIELDS
from mlsd.search.routing import SearchRouter
from mlsd.search.service import create_search_app
from mlsd.search.world import (
    ARM_PRESETS,
    DEFAULT_ARMS,
    METRICS,
    WORLD_SIZES,
    ClickModel,
    Simulation,
    load_world,
    run_experiment,
    simulate,
    simulate_catalog,
    simulate_experiment,
    simulate_into,
    true_grades,
    true_propensity,
    world_size,
)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(2000, 6000, seed=3, n_queries=200, n_users=300)


def test_catalog_schema_and_ranges(sim: Simulation) -> None:
    p = sim.products
    for col in (
        "product_id",
        *TEXT_FIELDS,
        "price",
        "rating",
        "review_count",
        "reviews_90d",
        "last_review_ts",
        "return_rate",
        "stock",
        "margin",
        "promoted",
        "color",
        "material",
        "size",
    ):
        assert col in p.columns, col
    assert p["product_id"].is_unique
    assert (p["price"] > 0).all() and p["rating"].between(1, 5).all()
    assert p["return_rate"].between(0, 0.6).all() and (p["stock"] >= 0).all()
    assert (p["reviews_90d"] <= p["review_count"]).all()
    assert 0.02 < (p["stock"] == 0).mean() < 0.15  # some out of stock, for the rules to drop
    assert p["category"].astype(str).str.count(" / ").eq(2).all()  # three-level hierarchy
    # Titles carry brand and colour; the attribute string the retrieval schema wants is there.
    first = p.iloc[0]
    assert str(first["brand"]) in str(first["title"]) and str(first["color"]).title() in str(first["title"])
    assert f"color: {first['color']}" in str(first["attributes"])


def test_catalog_is_deterministic_and_titles_finite() -> None:
    a, _ = simulate_catalog(5000, seed=1)
    b, _ = simulate_catalog(5000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    c, _ = simulate_catalog(5000, seed=2)
    assert not np.array_equal(a["price"].to_numpy(), c["price"].to_numpy())
    # Templates: far fewer distinct titles than products once the catalog is large.
    big, _ = simulate_catalog(30_000, seed=0)
    assert big["title"].nunique() < 0.7 * len(big)


def test_too_small_catalog_is_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        simulate_catalog(10)
    assert err.value.field == "--products"


def test_query_stream_has_the_noise_asked_for(sim: Simulation) -> None:
    q = sim.queries
    assert q["text"].is_unique
    assert set(q["intent"]) >= {"category", "brand", "brand_category", "color_category", "price_category"}
    assert (q["lang"] == "es").sum() >= 5 and q["typo"].sum() >= 5 and q["synonym"].sum() >= 5
    priced = q[q["intent"] == "price_category"]
    assert (priced["price_max"].notna() | priced["price_min"].notna()).all()
    assert priced["text"].str.contains(r"\$|dollars").all()
    assert (
        q.loc[q["lang"] == "es", "text"]
        .str.contains(
            "auriculares|altavoz|silla|mochila|menos de|camiseta|reloj|zapatillas|mesa|sartén|manta|botas|chaqueta|funda|cargador|teclado|ratón|cámara|lámpara|cojín|cuchillos|esterilla|tienda|casco|portátil|sofá|sofa"
        )
        .all()
    )
    assert np.isclose(q["weight"].sum(), 1.0)


def test_true_grades_known_answers() -> None:
    products, truth = simulate_catalog(500, seed=0)
    p0 = products.iloc[0]
    queries = pd.DataFrame(
        {
            "leaf_id": [int(p0["leaf_id"]), int(p0["leaf_id"]), int(p0["leaf_id"]), -1, int(p0["leaf_id"])],
            "brand_id": [-1, int(p0["brand_id"]), (int(p0["brand_id"]) + 1) % 32, int(p0["brand_id"]), -1],
            "color_id": [-1, -1, -1, -1, -1],
            "price_min": [np.nan] * 5,
            "price_max": [np.nan, np.nan, np.nan, np.nan, float(p0["price"]) - 1.0],
        }
    )
    truth.loc[0, "quality"] = 0.0  # not top quality: grade 2 where everything matches
    grades = true_grades(queries, np.arange(5), products, truth, np.zeros(5, dtype=np.int64))
    assert grades.tolist() == [2, 2, 1, 2, 1]  # match, brand match, wrong brand, brand query, over budget
    truth.loc[0, "quality"] = 2.0
    assert true_grades(queries, np.array([0]), products, truth, np.array([0]))[0] == 3
    other_leaf = int(np.flatnonzero(products["leaf_id"].to_numpy() != p0["leaf_id"])[0])
    assert true_grades(queries, np.array([0]), products, truth, np.array([other_leaf]))[0] == 0


def test_click_log_is_position_biased_with_swaps(sim: Simulation) -> None:
    imp = sim.impressions
    k = sim.click_model.page_size
    assert imp.groupby("search_id").size().eq(k).all()
    assert set(imp["position"].unique()) == set(range(1, k + 1))
    # Funnel: purchase => cart => click; order value only with a purchase.
    assert not (imp["purchased"] & ~imp["added_to_cart"]).any()
    assert not (imp["added_to_cart"] & ~imp["clicked"]).any()
    assert ((imp["order_value"] > 0) == imp["purchased"]).all()
    # Randomised swaps: the logged top result shown lower in about swap_rate of the searches.
    swapped = imp[(imp["logged_position"] == 1) & (imp["position"] > 1)]["search_id"].nunique()
    assert 0.1 < swapped / imp["search_id"].nunique() < 0.3
    ctr = imp.groupby("position")["clicked"].mean()
    assert ctr.iloc[0] > 2 * ctr.iloc[4] > 0


def test_true_propensity_curve() -> None:
    np.testing.assert_allclose(true_propensity(np.array([1, 2, 4]), 1.0), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(true_propensity(np.array([1, 4]), 0.5), [1.0, 0.5])


def test_save_load_roundtrip(tmp_path, sim: Simulation) -> None:
    sim.save(tmp_path)
    back = Simulation.load(tmp_path)
    assert len(back.impressions) == len(sim.impressions) and back.click_model == sim.click_model
    with pytest.raises(InputError):
        Simulation.load(tmp_path / "nope")


def test_click_model_settings_are_used() -> None:
    flat = simulate(
        800, 2000, seed=0, n_queries=50, n_users=50, click_model=ClickModel(eta=0.0, swap_rate=0.0)
    )
    assert (flat.impressions["position"] == flat.impressions["logged_position"]).all()
    np.testing.assert_allclose(flat.true_propensities(5), np.ones(5))


def test_simulate_into_writes_the_layout_and_never_overwrites(tmp_path) -> None:
    dirs = SystemDir(tmp_path, "search")
    made = simulate_into(dirs, size="tiny", seed=1, sessions=500)
    assert made["products"] == WORLD_SIZES["tiny"]["products"] and made["searches"] == 500
    assert (dirs.data / "products.parquet").exists() and (dirs.data / "clicklog" / "events").is_dir()
    assert made["events"] >= made["impressions"] > 0
    # the same world again is reused as it is; another one is refused (a click log is never doubled)
    assert simulate_into(dirs, size="tiny", seed=1, sessions=500, reuse=True)["reused"]
    for kwargs in ({"size": "tiny", "seed": 2, "reuse": True}, {"size": "tiny", "seed": 1, "sessions": 500}):
        with pytest.raises(InputError) as err:
            simulate_into(dirs, **kwargs)
        assert err.value.field == "--workdir"
    with pytest.raises(InputError) as err:
        simulate_into(SystemDir(tmp_path / "other", "search"), size="huge")
    assert err.value.field == "--size" and not (tmp_path / "other").exists()


def test_the_experiment_world_is_sized_for_its_units() -> None:
    assert world_size(300)["users"] == 300 and world_size(5000)["users"] == 5000
    assert world_size(5000)["sessions"] >= 4 * 5000
    assert world_size(300)["products"] == WORLD_SIZES["demo"]["products"]


def _client(arms=DEFAULT_ARMS, presets=ARM_PRESETS) -> ExperimentClient:
    config = make_experiment("search", arms_from_presets(presets, list(arms)), list(METRICS))
    return ExperimentClient(config, registry=False)


def test_router_serves_each_user_their_arm_and_exposes_once(search_world) -> None:
    dirs, world = search_world
    client = _client()
    name = next(iter(client.config.experiments))
    metrics = CollectorRegistry()
    router = SearchRouter(world.engine, client, registry_dir=dirs.registry, metrics_registry=metrics)
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
    dirs, world = search_world
    client = _client()
    app = create_search_app(world.engine, experiments=client, registry_dir=dirs.registry)
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
        ({"alias": "staging", "params": {}}, "alias"),  # the registry has no such alias
    ],
)
def test_bad_arms_fail_at_startup_naming_the_field(search_world, preset, field) -> None:
    dirs, world = search_world
    client = _client(("ltr", "bad"), {**ARM_PRESETS, "bad": preset})
    with pytest.raises(InputError) as err:
        SearchRouter(world.engine, client, registry_dir=dirs.registry)
    assert err.value.field.endswith(field) and "arms[1]" in err.value.field


def test_ltr_vs_bm25_effect_has_the_right_sign_and_the_interval_covers_the_truth(search_world) -> None:
    dirs, world = search_world
    report = run_experiment(dirs, units=500, seed=3, looks=4, progress=False, world=world)
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
    dirs = SystemDir(tmp_path, "search")
    dirs.data.mkdir(parents=True)
    tiny_catalog.to_parquet(dirs.data / "products.parquet")
    with pytest.raises(InputError) as err:
        load_world(dirs, progress=False)
    assert err.value.field == "--workdir"
    assert pd.read_parquet(dirs.data / "products.parquet").equals(tiny_catalog)
