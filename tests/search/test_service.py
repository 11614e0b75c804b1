"""HTTP: /v1/search and /v1/events answer results, parsed query and timings; bad input is a 4xx naming the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mlsd.search.clicklog import ClickLog
from mlsd.search.config import SearchConfig
from mlsd.search.engine import SearchEngine
from mlsd.search.service import create_search_app
from mlsd.search.world import simulate


@pytest.fixture(scope="module")
def engine():
    sim = simulate(600, 0, seed=0, n_queries=40, n_users=10)
    return SearchEngine(SearchConfig(), dense=False).fit(sim.products)


@pytest.fixture
def client(engine, tmp_path):
    log = ClickLog(tmp_path)
    c = TestClient(create_search_app(engine, log))
    c.log = log
    return c


def _field(resp):
    return resp.json()["error"]["field"]


def test_search_ok(client) -> None:
    r = client.get("/v1/search", params={"q": "black chair", "user_id": "u1", "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) <= 7 and body["search_id"]
    assert body["parsed"]["entities"]["color"] == "black"
    assert {"corrected", "expansions", "entities", "language"} <= set(body["parsed"])
    assert "bm25" in body["timings_ms"] and isinstance(body["skipped"], list)
    health = client.get("/health").json()
    assert health["products"] == 600 and health["model"] == "search-ltr" and health["model_version"] is None
    assert body["batch"] == 1  # a request is the engine's batch of one


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"q": ""}, 422, "q"),
        ({"q": "   "}, 422, "q"),
        ({"q": "x" * 10_240}, 422, "q"),  # the documented maxLength (256)
        ({}, 422, "q"),
        ({"q": "lamp", "k": 0}, 422, "k"),
        ({"q": "lamp", "k": 100_000}, 422, "k"),
        ({"q": "lamp", "k": "many"}, 422, "k"),
    ],
)
def test_bad_search_input_names_the_field(client, params, status, field) -> None:
    r = client.get("/v1/search", params=params)
    assert r.status_code == status and _field(r) == field
    assert len(r.text) < 2000  # a 10 KB query is not echoed back


def test_events_without_a_click_log_are_503_with_the_fix(engine) -> None:
    r = TestClient(create_search_app(engine)).post("/v1/events", json={"events": [
        {"type": "click", "search_id": "s", "product_id": 1}]})  # fmt: skip
    assert r.status_code == 503 and "--workdir" in r.json()["error"]["fix"]


def test_events_are_recorded_in_the_click_log(client) -> None:
    s = client.get("/v1/search", params={"q": "lamp", "k": 3}).json()
    events = [
        {
            "type": "impression",
            "search_id": s["search_id"],
            "query": "lamp",
            "product_id": r["product_id"],
            "position": r["position"],
            "user_id": "u9",
        }
        for r in s["results"]
    ]
    events.append({"type": "click", "search_id": s["search_id"], "product_id": s["results"][0]["product_id"]})
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 200 and r.json() == {"accepted": len(events)}
    imp = client.log.impressions()
    assert len(imp) == len(s["results"]) and imp["clicked"].sum() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b'{"events": [{"type": "click", "search_id": "s", "product_id": 1, "ts": NaN}]}', "body"),
        (b'{"events": [{"type": "click", "search_id": "s", "product_id": 1, "value": Infinity}]}', "body"),
        (b"[1, 2]", "events"),
        (b'{"evts": []}', "events"),
        (b'{"events": {"type": "click"}}', "events"),
        (b'{"events": []}', "events"),
        (b'{"events": [{"type": "click", "search_id": "s"}]}', "events[0].product_id"),
        (b'{"events": [{"type": "boom", "search_id": "s", "product_id": 1}]}', "events[0].type"),
        (
            b'{"events": [{"type": "impression", "search_id": "s", "product_id": 1, "query": "q"}]}',
            "events[0].position",
        ),
        # out of range: a 422, never stored as INT64_MIN / INT32_MIN
        (b'{"events": [{"type": "click", "search_id": "s", "product_id": 1e30}]}', "events[0].product_id"),
        (b'{"events": [{"type": "click", "search_id": "s", "product_id": 1, "ts": 1e30}]}', "events[0].ts"),
        (b'{"events": [{"type": "click", "search_id": "s", "product_id": 2.5}]}', "events[0].product_id"),
        (
            b'{"events": [{"type": "click", "search_id": "s", "product_id": 1, "position": -2}]}',
            "events[0].position",
        ),  # fmt: skip
        (
            b'{"events": [{"type": "impression", "search_id": "s", "product_id": 1, "query": "q",'
            b' "position": 99999999999}]}',
            "events[0].position",
        ),
    ],
)
def test_malformed_events_are_422_naming_the_field(client, body, field) -> None:
    r = client.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and _field(r) == field
    assert len(client.log.events()) == 0  # nothing half-written


def test_openapi_documents_typed_bodies(client) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    ok = spec["paths"]["/v1/search"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SearchAnswer")
    assert {"results", "degraded", "experiment"} <= set(
        spec["components"]["schemas"]["SearchAnswer"]["properties"]
    )
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    impression, outcome = body["properties"]["events"]["items"]["anyOf"]
    assert {"type", "search_id", "product_id", "position", "query", "ts"} <= set(
        impression["required"]
    ) | set(impression["properties"])
    assert {"type", "search_id", "product_id"} == set(outcome["required"])
    assert "$defs" not in str(body)  # no reference the OpenAPI document cannot resolve


def _experiments(tmp_path, url):
    from mlsd.platform.experiments.client import ExperimentClient

    path = tmp_path / "experiments.yaml"
    path.write_text(
        "experiments:\n  - name: ranker-test\n    system: search\n"
        "    arms: [{name: control, params: {ranker: hybrid}}, {name: bm25, params: {ranker: bm25}}]\n"
    )
    return ExperimentClient.from_options(path, url)


def test_a_blackholed_exposure_log_serves_the_control_path_flagged_degraded(
    engine, tmp_path, blackhole
) -> None:
    experiments = _experiments(tmp_path, blackhole)
    experiments.outage_retry_s = 600  # the pause outlasts the test on a slow machine
    c = TestClient(create_search_app(engine, ClickLog(tmp_path), experiments=experiments))
    in_experiment = [f"u{i}" for i in range(40) if experiments.assign("ranker-test", [f"u{i}"])[0] >= 0]
    assert in_experiment
    first = c.get("/v1/search", params={"q": "lamp", "user_id": in_experiment[0], "k": 3})
    assert first.status_code == 200 and first.json()["degraded"] is True
    assert "exposure log unreachable" in first.json()["degraded_reason"]
    # While the log is down the experiment is paused: every user gets the control (champion) path.
    later = c.get("/v1/search", params={"q": "lamp", "user_id": in_experiment[-1], "k": 3}).json()
    assert later["degraded"] is True and later["experiment"] == {}
    anonymous = c.get("/v1/search", params={"q": "lamp", "k": 3}).json()
    assert anonymous["degraded"] is False  # no user, no experiment: nothing was left out
    assert c.get("/health").status_code == 200
    ready = c.get("/ready")
    assert ready.status_code == 503 and "exposure log" in ready.text


def test_a_healthy_exposure_log_is_not_degraded(engine, tmp_path, redis_url) -> None:
    c = TestClient(
        create_search_app(engine, ClickLog(tmp_path), experiments=_experiments(tmp_path, redis_url))
    )
    body = c.get("/v1/search", params={"q": "lamp", "user_id": "u1", "k": 3}).json()
    assert body["degraded"] is False and body["degraded_reason"] is None
    assert c.get("/ready").status_code == 200
