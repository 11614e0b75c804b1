"""The app factory: health and readiness, Prometheus metrics, the error shape on every failure path, the
body guard (JSON only, size and depth limits, no NaN/Infinity), deadlines, stages."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fastapi import HTTPException, Query, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.serving import (
    REGISTRY,
    Deadline,
    ErrorBody,
    SafeJSONResponse,
    StageTimer,
    create_app,
    metric,
)


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Item(BaseModel):
    name: str
    price: float


def make_app(system: str = "testsys", health=None):
    app = create_app(system, title="test app", version="9.9.9", health=health)

    @app.get("/v1/items/{item_id}")
    def get_item(item_id: int, k: int = Query(10, ge=1, le=500)) -> dict:
        if item_id == 7:
            raise InputError("item_id", item_id, "no such item", "use an id from /v1/items", status=404)
        if item_id == 8:
            raise DataFormatError("items.csv", 3, "expected 4 columns, got 2", "fix the file")
        if item_id == 9:
            raise HTTPException(status_code=404, detail="item 9 was withdrawn")
        if item_id == 13:
            raise RuntimeError("boom: a bug")
        timer = StageTimer(system)
        with timer.stage("lookup"):
            pass
        return {"item_id": item_id, "k": k, **timer.to_dict()}

    @app.post("/v1/items")
    def post_item(item: Item) -> dict:
        return {"name": item.name}

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_app())


def sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_health_reports_system_and_version(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["system"] == "testsys" and body["version"] == "9.9.9"
    assert body["uptime_s"] >= 0


def test_health_details_and_failing_check() -> None:
    ok = TestClient(make_app(health=lambda: {"model_version": 3}))
    assert ok.get("/health").json()["model_version"] == 3

    def broken() -> dict:
        raise RuntimeError("model not loaded")

    response = TestClient(make_app(health=broken)).get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "model not loaded" in response.json()["reason"]


def test_ok_request_returns_stage_timings(client: TestClient) -> None:
    body = client.get("/v1/items/1?k=5").json()
    assert body["item_id"] == 1 and body["k"] == 5
    assert set(body["timings_ms"]) == {"lookup"} and body["timings_ms"]["lookup"] >= 0
    assert body["skipped"] == []


def test_input_error_answers_its_status_and_names_the_field(client: TestClient) -> None:
    response = client.get("/v1/items/7")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["field"] == "item_id" and error["value"] == 7
    assert error["problem"] == "no such item" and error["fix"].startswith("use an id")


def test_data_format_error_is_an_input_error(client: TestClient) -> None:
    response = client.get("/v1/items/8")
    assert response.status_code == 422
    assert response.json()["error"]["value"] == "items.csv:3"


@pytest.mark.parametrize(
    ("url", "field", "location"),
    [
        ("/v1/items/abc", "item_id", "path"),  # not an int
        ("/v1/items/1?k=0", "k", "query"),  # below ge=1
        ("/v1/items/1?k=501", "k", "query"),  # above le=500
        ("/v1/items/1?k=ten", "k", "query"),  # not an int
    ],
)
def test_validation_errors_are_422_naming_the_field(
    client: TestClient, url: str, field: str, location: str
) -> None:
    response = client.get(url)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field and error["location"] == location
    assert error["problem"] and error["fix"]
    assert "detail" not in response.json()  # not FastAPI's default shape


def test_body_validation_names_the_body_field(client: TestClient) -> None:
    response = client.post("/v1/items", json={"name": "x", "price": "cheap"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "price" and error["location"] == "body" and error["value"] == "cheap"

    missing = client.post("/v1/items", json={"price": 1.0}).json()["error"]
    assert missing["field"] == "name" and missing["value"] is None


def test_unknown_route_and_wrong_method_answer_json(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"]["field"] == "path"
    response = client.delete("/v1/items/1")
    assert response.status_code == 405 and response.json()["error"]["field"] == "method"


def test_http_exception_from_a_handler_keeps_its_detail(client: TestClient) -> None:
    response = client.get("/v1/items/9")
    assert response.status_code == 404
    assert response.json()["error"]["problem"] == "item 9 was withdrawn"


def test_unexpected_error_is_500_json_and_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="mlsd.serving"):
        response = client.get("/v1/items/13")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert "RuntimeError" in error["problem"] and "boom" not in response.text  # no internals leaked
    assert any("boom: a bug" in record.exc_text for record in caplog.records if record.exc_text)


def test_metrics_count_requests_by_route_template() -> None:
    client = TestClient(make_app(system="metricsys"))
    labels = {"system": "metricsys", "method": "GET", "route": "/v1/items/{item_id}", "status": "200"}
    before = sample("mlsd_requests_total", labels)
    client.get("/v1/items/1")
    client.get("/v1/items/2")
    client.get("/v1/items/13")
    assert sample("mlsd_requests_total", labels) == before + 2
    assert sample("mlsd_requests_total", {**labels, "status": "500"}) >= 1
    text = client.get("/metrics").text
    assert (
        'mlsd_requests_total{method="GET",route="/v1/items/{item_id}",status="200",system="metricsys"}'
        in text
    )
    assert 'mlsd_stage_seconds_count{stage="lookup",system="metricsys"}' in text
    assert "mlsd_request_seconds_bucket" in text


def test_many_apps_in_one_process_share_the_registry() -> None:
    first, second = TestClient(make_app(system="app-a")), TestClient(make_app(system="app-b"))
    first.get("/v1/items/1")
    second.get("/v1/items/1")
    text = second.get("/metrics").text
    assert 'system="app-a"' in text and 'system="app-b"' in text


def test_metric_get_or_create() -> None:
    from prometheus_client import Counter, Gauge

    a = metric(Counter, "mlsd_test_things", "things", ("kind",))
    assert metric(Counter, "mlsd_test_things", "things", ("kind",)) is a
    with pytest.raises(ValueError, match="already exists"):
        metric(Gauge, "mlsd_test_things", "things", ("kind",))


def test_deadline_with_injected_clock() -> None:
    clock = FakeClock()
    deadline = Deadline(200, clock=clock)
    assert deadline.remaining_ms() == 200 and not deadline.expired() and deadline.allows(150)
    clock.advance(0.120)
    assert deadline.elapsed_ms() == pytest.approx(120)
    assert deadline.remaining_ms() == pytest.approx(80)
    assert not deadline.allows(100) and deadline.allows(50)
    clock.advance(0.100)
    assert deadline.expired() and deadline.remaining_ms() == pytest.approx(-20)
    with pytest.raises(InputError):
        Deadline(0)


def test_stage_timer_accumulates_records_failures_and_skips() -> None:
    clock = FakeClock()
    timer = StageTimer("timersys", clock=clock)
    with timer.stage("candidates"):
        clock.advance(0.010)
    with timer.stage("rank"):
        clock.advance(0.005)
    with timer.stage("candidates"):
        clock.advance(0.002)
    with pytest.raises(ZeroDivisionError), timer.stage("rerank"):
        clock.advance(0.001)
        _ = 1 / 0
    timer.skip("explore", "deadline")
    assert list(timer.timings_ms) == ["candidates", "rank", "rerank"]
    assert timer.timings_ms["candidates"] == pytest.approx(12)
    assert timer.timings_ms["rerank"] == pytest.approx(1)
    assert timer.total_ms == pytest.approx(18)
    assert timer.to_dict()["skipped"] == [{"stage": "explore", "reason": "deadline"}]
    assert sample("mlsd_stage_seconds_count", {"system": "timersys", "stage": "candidates"}) == 2
    assert sample("mlsd_stage_seconds_sum", {"system": "timersys", "stage": "candidates"}) == pytest.approx(
        0.012
    )
    assert sample("mlsd_stage_skipped_total", {"system": "timersys", "stage": "explore"}) == 1


# ---------------------------------------------------------------------------------------------------
# The body guard (issue 11): JSON only, a size limit, a depth limit, no NaN/Infinity in or out.


def guarded_app(**options):
    app = create_app("guardsys", title="guard", **options)

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict:  # reads the raw body, as search's events route does
        return {"bytes": len(await request.body())}

    @app.post("/v1/items")
    def post_item(item: Item) -> dict:
        return {"name": item.name, "price": item.price}

    @app.get("/v1/nan")
    def nan():  # no return annotation: FastAPI hands the dict to the response class as it is
        return {"probability": float("nan"), "scores": [1.0, float("inf")], "n": 3}

    @app.get("/v1/numpy")
    def numpy_answer():
        return SafeJSONResponse({"scores": np.array([0.5, np.nan]), "n": np.int64(3)})

    @app.get("/v1/bad-value")
    def bad_value() -> dict:
        raise InputError("amount", float("inf"), "must be finite", "send a finite amount")

    return app


@pytest.fixture
def guarded() -> TestClient:
    return TestClient(guarded_app())


def post_raw(client: TestClient, body, content_type: str | None = "application/json", path="/v1/echo"):
    headers = {} if content_type is None else {"content-type": content_type}
    return client.post(path, content=body, headers=headers)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_a_body_that_is_not_json_is_415_closing_the_cross_origin_form_post(guarded, content_type) -> None:
    response = post_raw(guarded, b'{"events": []}', content_type)
    assert response.status_code == 415
    err = response.json()["error"]
    assert err["field"] == "Content-Type" and "application/json" in err["fix"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/vnd.api+json"]
)
def test_json_content_types_pass(guarded, content_type) -> None:
    assert post_raw(guarded, b'{"a": 1}', content_type).json() == {"bytes": 8}
    assert guarded.post("/v1/echo").status_code == 200  # no body, nothing to check


def test_an_oversized_body_is_413_before_it_is_parsed(guarded) -> None:
    big = b'{"q": "' + b"x" * (1 << 20) + b'"}'
    response = post_raw(guarded, big)
    assert response.status_code == 413 and response.json()["error"]["field"] == "body"
    assert "1048576" in response.json()["error"]["problem"]


def test_a_chunked_body_without_content_length_is_cut_off_too(guarded) -> None:
    def chunks():
        for _ in range(30):
            yield b"x" * 50_000

    response = guarded.post("/v1/echo", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


def test_the_body_limit_is_set_per_app() -> None:
    client = TestClient(guarded_app(max_body_bytes=100))
    assert post_raw(client, b'{"q": "' + b"x" * 80 + b'"}').status_code == 200
    assert post_raw(client, b'{"q": "' + b"x" * 120 + b'"}').status_code == 413


@pytest.mark.parametrize("path", ["/v1/echo", "/v1/items"])
def test_json_nested_100000_deep_is_422_not_500(guarded, path) -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        response = post_raw(guarded, body, path=path)
        assert response.status_code == 422, response.text
        assert "nested 100000 levels deep" in response.json()["error"]["problem"]
    assert post_raw(guarded, b"[" * 60 + b"]" * 60, path="/v1/echo").status_code == 200


@pytest.mark.parametrize(
    "number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-2.5E+400", b"9" * 400 + b".0"]
)
def test_non_finite_numbers_in_a_body_are_422_naming_them(guarded, number) -> None:
    response = post_raw(guarded, b'{"name": "x", "price": ' + number + b"}", path="/v1/items")
    assert response.status_code == 422, response.text
    err = response.json()["error"]
    assert err["field"] == "body" and "finite" in err["fix"]


def test_the_same_words_inside_strings_are_text(guarded) -> None:
    body = b'{"name": "NaN Infinity 1e999 [[[[[[", "price": 1e300}'
    assert post_raw(guarded, body, path="/v1/items").json() == {
        "name": "NaN Infinity 1e999 [[[[[[",
        "price": 1e300,
    }


def test_a_response_never_holds_nan_or_infinity(guarded, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mlsd.serving"):
        response = guarded.get("/v1/nan")
    assert response.status_code == 200
    assert response.text == '{"probability":null,"scores":[1.0,null],"n":3}'
    assert "non-finite" in caplog.text
    assert guarded.get("/v1/numpy").text == '{"scores":[0.5,null],"n":3}'


def test_an_error_about_an_infinite_value_is_still_its_4xx(guarded) -> None:
    response = guarded.get("/v1/bad-value")  # starlette's JSONResponse would raise: a 500
    assert response.status_code == 422 and response.json()["error"]["value"] is None


# ---------------------------------------------------------------------------------------------------
# /health (liveness) and /ready (readiness), and the error bodies as the OpenAPI documents them.


def test_ready_answers_503_with_the_reason_while_health_stays_ok() -> None:
    state = {"redis": True}

    def redis_ping() -> dict:
        if not state["redis"]:
            raise ConnectionError("redis at 127.0.0.1:6379 did not answer within 50 ms")
        return {"redis": "ok"}

    client = TestClient(
        create_app("readysys", title="r", health=lambda: {"model_version": 3}, ready=redis_ping)
    )
    assert client.get("/ready").json() == {"status": "ready", "system": "readysys", "redis": "ok"}
    state["redis"] = False
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable" and "did not answer" in response.json()["reason"]
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == 3  # alive: do not restart it


def test_ready_checks_can_be_added_after_the_app_is_built() -> None:
    app = create_app("readysys2", title="r")
    client = TestClient(app)
    assert client.get("/ready").status_code == 200

    def failing() -> dict:
        raise RuntimeError("reloading v7 failed")

    app.state.ready_checks.append(failing)
    assert client.get("/ready").status_code == 503 and "v7" in client.get("/ready").json()["reason"]


def test_a_failing_liveness_check_is_not_ready_either() -> None:
    def broken() -> dict:
        raise RuntimeError("model not loaded")

    assert TestClient(make_app(health=broken)).get("/ready").status_code == 503


def test_openapi_documents_the_error_bodies_as_sent(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's 422 is not what we send
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for status in ("401", "403", "404", "413", "415", "422"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)
    assert "/ready" in spec["paths"] and "503" in spec["paths"]["/ready"]["get"]["responses"]
    # what is sent validates against the documented model
    sent = client.post("/v1/items", json={"name": "x", "price": "cheap"}).json()
    assert ErrorBody.model_validate(sent).error.field == "price"


def test_escaped_quotes_do_not_fool_the_depth_limit() -> None:
    client = TestClient(guarded_app(max_json_depth=2))
    text = rb'{"q": "a \" [[[[ \\\" {{{{", "n": [1]}'  # escaped quotes: the brackets are text
    assert post_raw(client, text).status_code == 200
    ends = rb'{"q": "a \\", "n": [[[1]]]}'  # an escaped backslash ends the string: the brackets are JSON
    response = post_raw(client, ends)
    assert response.status_code == 422 and "nested 4 levels" in response.json()["error"]["problem"]
    assert post_raw(client, b"{not json", path="/v1/items").json()["error"]["field"] != "body.depth"
