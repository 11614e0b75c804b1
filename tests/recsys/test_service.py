"""The HTTP service over the engine: the API contract, cold start, bad input as a 4xx naming the field,
/health naming the model and its version, the profile endpoint."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mlsd.recsys.config import RecsysConfig, ServiceConfig
from mlsd.recsys.engine import RecsysEngine
from mlsd.recsys.service import create_service_app

NO_POLL = RecsysConfig(service=ServiceConfig(reload_poll_s=0))
STAGES = {"queue", "candidates", "rules", "features", "ranking", "rerank"}


@pytest.fixture(scope="module")
def service(tiny):
    svc = RecsysEngine(tiny.registry, config=NO_POLL)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_service_app(service))


@pytest.fixture(scope="module")
def known_user(service):
    return int(service.snapshot().model.users_.ids[0])


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


def test_health_reports_the_model_and_its_version(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "recsys-ranker" and body["model_version"] == 1


def test_profile_endpoint_feeds_cold_start_over_http(tiny):
    from mlsd.platform.features.online import MemoryStore

    svc = RecsysEngine(tiny.registry, config=NO_POLL, online_store=MemoryStore())
    client = TestClient(create_service_app(svc))
    r = client.put("/v1/users/777000/profile", json={"region": "IN", "age": 40, "picks": [1, 2]})
    assert r.status_code == 200 and r.json()["stored"] is True
    body = client.get("/v1/recommendations/777000", params={"k": 10}).json()
    assert body["cold_start"] is True and not {1, 2} & {it["item_id"] for it in body["items"]}
    bad = client.put("/v1/users/777000/profile", json={"age": -1})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "age"
    assert client.put("/v1/users/x1/profile", json={}).json()["error"]["field"] == "user_id"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seed": "99999999999999999999999"}, "seed"),  # overflowed int64: was a 500
        ({"seed": "1,²"}, "seed"),  # a unicode digit str.isdigit() accepts and int() may not
        ({"seed": ",".join(["1"] * 101)}, "seed"),
    ],
)
def test_seeds_out_of_range_are_422(client, params, field):
    r = client.get("/v1/recommendations/12", params=params)
    assert r.status_code == 422 and r.json()["error"]["field"] == field


@pytest.mark.parametrize(
    "body",
    [
        b'{"age": NaN}',
        b'{"age": 1e30}',
        b'{"age": "old"}',
        b'{"picks": [99999999999999999999999]}',
        b'{"region": "EU", "favourite": 1}',
        b'{"age": true}',
    ],
)
def test_bad_profiles_are_4xx_not_500(tiny, body):
    from mlsd.platform.features.online import MemoryStore

    svc = RecsysEngine(tiny.registry, config=NO_POLL, online_store=MemoryStore())
    client = TestClient(create_service_app(svc))
    r = client.put("/v1/users/5/profile", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert client.get("/v1/recommendations/5", params={"k": 3}).status_code == 200


def test_a_whole_float_is_an_integer_as_json_schema_says(tiny):
    from mlsd.platform.features.online import MemoryStore

    svc = RecsysEngine(tiny.registry, config=NO_POLL, online_store=MemoryStore())
    r = TestClient(create_service_app(svc)).put("/v1/users/5/profile", json={"age": 32.0, "picks": [7.0]})
    assert r.status_code == 200 and svc.store.get_many("recsys:user", ["5"])[0] == {"age": 32, "picks": "7"}


def test_openapi_documents_typed_bodies(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200  # was a 500: a forward reference to JSONResponse
    spec = r.json()
    ok = spec["paths"]["/v1/recommendations/{user_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/Recommendations")
    fields = spec["components"]["schemas"]["Recommendations"]["properties"]
    assert {"items", "degraded", "filtered", "policy"} <= set(fields)


def test_an_unknown_viewer_sees_all_ages_titles_and_the_answer_says_what_was_filtered(client, service):
    body = client.get("/v1/recommendations/987654321", params={"k": 20}).json()
    assert body["policy"].startswith("unknown age")
    assert set(body["filtered"]) == {"region", "age_rating", "license_window", "released_only"}
    assert body["filtered"]["age_rating"] > 0  # adult and teen titles among the candidates were removed
    rules = service.snapshot().rules
    shown = [it["item_id"] for it in body["items"]]
    assert (rules.catalog_.min_age[rules._positions(shown)] == 0).all()
    adult = client.get("/v1/recommendations/987654321", params={"k": 20, "age": 40}).json()
    assert adult["policy"].startswith("age 40 from the request") and adult["filtered"]["age_rating"] == 0


def test_at_most_concurrent_requests_engine_calls_run_at_once_and_the_wait_is_spent_from_the_deadline(tiny):
    """Eight requests at once against a process allowed two engine calls: never more than two inside the
    engine, every request answered, the waits reported as ``queue`` and taken from each one's budget."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    config = RecsysConfig(service=ServiceConfig(reload_poll_s=0, concurrent_requests=2))
    engine = RecsysEngine(tiny.registry, config=config)
    inside, most, lock, budgets = 0, 0, threading.Lock(), []
    handle = engine.handle

    def slow_handle(bodies):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
            budgets.append(bodies[0]["deadline_ms"])
        time.sleep(0.05)  # long enough for the others to pile up behind the two running
        try:
            return handle(bodies)
        finally:
            with lock:
                inside -= 1

    engine.handle = slow_handle
    user = int(engine.snapshot().model.users_.ids[0])
    # one event loop for all eight, as a uvicorn worker has (the limiter belongs to its loop)
    with TestClient(create_service_app(engine)) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.get(f"/v1/recommendations/{user}").json(), range(8)))
    engine.close()
    assert most == 2 and len(answers) == 8
    # Only two get in at once and each call holds its turn >= 50 ms, so at least six waited that long (a
    # bound the sleep implies, whatever the machine's speed), and their budgets were cut by the wait.
    waited = [a for a in answers if a["timings_ms"]["queue"] >= 50]
    assert len(waited) >= 6
    assert sum(b <= config.budgets.deadline_ms - 50 for b in budgets) >= 6
    assert sorted(a["deadline_ms"] for a in answers) == pytest.approx(sorted(budgets))  # served under it
