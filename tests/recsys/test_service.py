"""The HTTP service: contract, cold start, rules on every answer, deadline degradation, bad input, hot reload."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlsd.platform.registry import ArtifactCorrupted, ModelRegistry
from mlsd.recsys.config import Budgets, RecsysConfig, ServiceConfig
from mlsd.recsys.demo import tiny_registry
from mlsd.recsys.rules import region_bits
from mlsd.recsys.service import RecsysService, create_service_app
from mlsd.recsys.simulate import load

STAGES = {"candidates", "rules", "features", "ranking", "rerank"}
NO_POLL = RecsysConfig(service=ServiceConfig(reload_poll_s=0))


@pytest.fixture(scope="module")
def service():
    svc = RecsysService(tiny_registry() / "registry", config=NO_POLL)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_service_app(service))


@pytest.fixture(scope="module")
def known_user(service):
    return int(service._state.model.users_.ids[0])


def test_known_user_gets_ranked_titles_with_sources_reasons_and_timings(client, known_user):
    r = client.get(f"/v1/recommendations/{known_user}", params={"k": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == str(known_user) and body["k"] == 7 and body["cold_start"] is False
    assert body["model_version"] == 1
    assert 1 <= len(body["items"]) <= 7
    assert len({it["item_id"] for it in body["items"]}) == len(body["items"])
    for item in body["items"]:
        assert item["sources"] and item["reasons"] and item["title"]
        assert 0 < item["propensity"] <= 1
    assert set(body["timings_ms"]) == STAGES and body["skipped"] == []
    assert body["n_candidates"] >= len(body["items"])


def test_default_k_is_50(client, known_user, service):
    body = client.get(f"/v1/recommendations/{known_user}").json()
    assert body["k"] == 50 and len(body["items"]) == min(50, body["n_candidates"])


def test_unknown_user_gets_flagged_cold_start_results(client):
    body = client.get("/v1/recommendations/987654321", params={"k": 10, "region": "EU", "age": 30}).json()
    assert body["cold_start"] is True and body["items"]
    assert all(set(it["sources"]) <= {"content", "popular", "trending", "new"} for it in body["items"])
    top = [it["item_id"] for it in body["items"][:3]]
    seed = ",".join(map(str, top))
    seeded = client.get(
        "/v1/recommendations/987654321", params={"k": 10, "region": "EU", "age": 30, "seed": seed}
    )
    seeded = seeded.json()
    assert seeded["cold_start"] is True and seeded["items"]
    assert not set(top) & {
        it["item_id"] for it in seeded["items"]
    }  # onboarding picks are not recommended back
    assert any("content" in it["sources"] for it in seeded["items"])  # the picks seed content candidates


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/recommendations/abc", {}, "user_id"),
        ("/v1/recommendations/-4", {}, "user_id"),
        ("/v1/recommendations/12", {"k": 0}, "k"),
        ("/v1/recommendations/12", {"k": -3}, "k"),
        ("/v1/recommendations/12", {"k": 501}, "k"),
        ("/v1/recommendations/12", {"k": "ten"}, "k"),
        ("/v1/recommendations/12", {"region": "MARS"}, "region"),
        ("/v1/recommendations/12", {"seed": "1,x"}, "seed"),
        ("/v1/recommendations/12", {"age": 400}, "age"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(client, path, params, field):
    r = client.get(path, params=params)
    assert 400 <= r.status_code < 500
    assert r.json()["error"]["field"] == field


def test_k_500_is_allowed(client, known_user):
    r = client.get(f"/v1/recommendations/{known_user}", params={"k": 500})
    assert r.status_code == 200 and r.json()["k"] == 500


def test_rules_hold_on_every_answer(service):
    """Over many users (known and unknown, several ages/regions), no returned title breaks a rule."""
    data = load(tiny_registry() / "data")
    users = data.users.set_index("user_id")
    rng = np.random.default_rng(0)
    ids = rng.choice(users.index.to_numpy(), 40, replace=False).tolist() + [10**9 + i for i in range(5)]
    for uid in ids:
        out = service.recommend(uid, 30, deadline_ms=10_000)
        shown = np.array([it["item_id"] for it in out["items"]], dtype=np.int64)
        region = users.loc[uid, "region"] if uid in users.index else "US"
        age = int(users.loc[uid, "age"]) if uid in users.index else 0
        ok = service._state.rules.allowed(
            shown, now=out["now"], user_region=region_bits(region), user_age=age
        )
        assert ok.all(), (uid, shown[~ok])
        items = data.items.set_index("item_id").loc[shown]
        assert (items["license_start"] <= out["now"]).all() and (items["license_end"] > out["now"]).all()


def test_deadline_degrades_to_candidate_order_and_says_so(service, known_user):
    out = service.recommend(known_user, 10, deadline_ms=0.001)
    skipped = {s["stage"] for s in out["skipped"]}
    assert skipped == {"features", "ranking", "rerank"}
    assert set(out["timings_ms"]) == {"candidates", "rules"}  # rules are never skipped
    assert out["items"] and all(it["propensity"] == 1.0 for it in out["items"])
    full = service.recommend(known_user, 10, deadline_ms=10_000)
    assert full["skipped"] == [] and set(full["timings_ms"]) == STAGES


def test_exposures_are_logged_with_propensities(service, known_user):
    before = len(service.exposures)
    out = service.recommend(known_user, 5, request_id="req-1")
    log = service.exposures.to_frame()
    assert len(service.exposures) == before + len(out["items"])
    mine = log[log["request_id"] == "req-1"]
    assert mine["item_id"].tolist() == [it["item_id"] for it in out["items"]]
    assert mine["position"].tolist() == list(range(len(out["items"])))
    assert mine["propensity"].tolist() == pytest.approx([it["propensity"] for it in out["items"]])


def test_health_reports_the_model_version(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_version"] == 1


def test_hot_reload_on_promotion_and_corrupted_artifact_refused(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry() / "registry", root)
    cfg = RecsysConfig(service=ServiceConfig(reload_poll_s=3600))  # the watcher exists; we poll by hand
    svc = RecsysService(root, config=cfg)
    try:
        reg = ModelRegistry(root)
        assert svc.version == 1 and not svc.check_reload()
        v2 = reg.register("recsys-ranker", reg.artifact_path("recsys-ranker", 1), params={}, metrics={},
                          data_fingerprint="x", parent=1)  # fmt: skip
        reg.promote("recsys-ranker", v2.version)
        assert svc.check_reload() and svc.version == 2 and svc.reloads == 1
        assert svc.recommend(int(svc._state.model.users_.ids[0]), 3)["model_version"] == 2
        # Tamper with the champion's files: a new service refuses to load it.
        (v2.path / "model.json").write_text("{}")
        with pytest.raises(ArtifactCorrupted):
            RecsysService(root, config=NO_POLL)
    finally:
        svc.close()


def test_deadline_budget_comes_from_typed_config(known_user):
    cfg = RecsysConfig(budgets=Budgets(deadline_ms=0.001), service=ServiceConfig(reload_poll_s=0))
    svc = RecsysService(tiny_registry() / "registry", config=cfg)
    out = svc.recommend(known_user, 5)
    assert out["deadline_ms"] == 0.001 and {s["stage"] for s in out["skipped"]} == {
        "features",
        "ranking",
        "rerank",
    }


def _onboarding_flow(store):
    """A visitor signs up, picks three titles; the very next request is personalised from the store."""
    svc = RecsysService(tiny_registry() / "registry", config=NO_POLL, online_store=store)
    uid = 555_000_111
    before = svc.recommend(uid, 10)
    assert before["cold_start"] is True
    picks = [it["item_id"] for it in svc.recommend(uid, 10, region="EU", age=30)["items"][:3]]
    svc.record_profile(uid, region="EU", age=30, picks=picks)
    after = svc.recommend(uid, 10)
    assert after["cold_start"] is True
    assert not set(picks) & {it["item_id"] for it in after["items"]}
    assert any("content" in it["sources"] for it in after["items"])
    # The stored age (30) applies: without it the unknown-age default (0) allows family titles only.
    data = load(tiny_registry() / "data").items.set_index("item_id")
    assert set(data.loc[[it["item_id"] for it in after["items"]], "age_rating"]) - {"G"}


def test_onboarding_profile_from_the_memory_online_store():
    from mlsd.platform.features.online import MemoryStore

    _onboarding_flow(MemoryStore())


@pytest.mark.services
def test_onboarding_profile_from_real_redis(redis_url, redis_prefix):
    from mlsd.platform.features.online import RedisStore

    with RedisStore(redis_url, prefix=redis_prefix) as store:
        _onboarding_flow(store)


def test_profile_endpoint_feeds_cold_start_over_http():
    from mlsd.platform.features.online import MemoryStore

    svc = RecsysService(tiny_registry() / "registry", config=NO_POLL, online_store=MemoryStore())
    client = TestClient(create_service_app(svc))
    r = client.put("/v1/users/777000/profile", json={"region": "IN", "age": 40, "picks": [1, 2]})
    assert r.status_code == 200 and r.json()["stored"] is True
    body = client.get("/v1/recommendations/777000", params={"k": 10}).json()
    assert body["cold_start"] is True and not {1, 2} & {it["item_id"] for it in body["items"]}
    bad = client.put("/v1/users/777000/profile", json={"age": -1})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "age"
    assert client.put("/v1/users/x1/profile", json={}).json()["error"]["field"] == "user_id"


def test_cold_users_are_scored_by_the_models_own_fallback(service):
    """A user without history gets TwoStageRecommender.score()'s order (candidate order with the
    trending/new weights), as in offline evaluation, not the ranker's scores on empty features."""
    from mlsd.recsys.config import RerankConfig

    cfg = RecsysConfig(
        service=ServiceConfig(reload_poll_s=0),
        rerank=RerankConfig(epsilon=0.0, freshness_weight=0.0, diversity="none"),
    )
    svc = RecsysService(tiny_registry() / "registry", config=cfg)
    model = svc._state.model
    uid = 10**12 + 7
    out = svc.recommend(uid, 10, region="EU", age=30, deadline_ms=10_000)
    assert out["cold_start"] is True and out["scored_by"] == "cold_start_fallback"
    assert "features" not in out["timings_ms"] and out["skipped"] == []
    frame = model.candidates(np.array([uid]), seed_items=[[]])
    ok = svc._state.rules.allowed(
        frame["item_id"].to_numpy(), now=out["now"], user_region=region_bits("EU"), user_age=30
    )
    frame = frame[ok].reset_index(drop=True)
    expected = frame["item_id"].to_numpy()[np.argsort(-model.score(frame), kind="stable")[:10]]
    assert [it["item_id"] for it in out["items"]] == expected.tolist()
    known = svc.recommend(int(model.users_.ids[0]), 10, deadline_ms=10_000)
    assert known["scored_by"] == "ranker" and "features" in known["timings_ms"]
    svc.close()
