"""API keys with roles on every state-changing route of every app the factory builds (issue 11, item 5)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from mlsd.platform import auth as auth_module
from mlsd.platform.auth import ANONYMOUS, ApiKeys, Principal, hash_key
from mlsd.platform.errors import InputError
from mlsd.platform.serving import create_app, secure, serve

SERVICE_KEY = "service-key-0123456789abcdef"
REVIEW_KEY = "review-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
KEYS = f"scorer:service:{SERVICE_KEY},ann:reviewer:{REVIEW_KEY},root:admin:{ADMIN_KEY}"


def make_app(auth: ApiKeys | None = None):
    """A system with the three kinds of route: a read, a service write, a review write."""
    app = create_app("authsys", title="auth test", auth=auth)

    def who(request: Request) -> dict:
        p = request.state.principal
        return {"name": p.name, "role": p.role, "authenticated": p.authenticated}

    @app.get("/v1/things", tags=["authsys"])
    def read(request: Request) -> dict:
        return who(request)

    @app.post("/v1/things", tags=["authsys"])
    def write(request: Request, body: dict) -> dict:
        return who(request)

    @app.put("/v1/things/{thing_id}", tags=["authsys"])
    def put(request: Request, thing_id: int, body: dict) -> dict:
        return who(request)

    @app.post("/v1/review/cases/{tx_id}/resolve", tags=["review"])
    def resolve(request: Request, tx_id: str, body: dict) -> dict:
        return who(request)

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_app(ApiKeys.parse(KEYS)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"field", "value", "problem", "fix", "message"} <= set(body["error"])
    return body["error"]


# -- 401 / 403 / who is allowed ---------------------------------------------------------------------


def test_a_state_change_without_a_key_is_401_naming_how_to_send_one(client: TestClient) -> None:
    response = client.post("/v1/things", json={"x": 1})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    err = error(response)
    assert err["field"] == "Authorization" and err["problem"] == "no API key sent"
    assert "Authorization: Bearer" in err["fix"] and "X-API-Key" in err["fix"] and "service" in err["fix"]


def test_an_unknown_key_is_401_and_never_echoed(client: TestClient) -> None:
    guess = "wrong-key-but-long-enough-0123"
    for headers in (bearer(guess), {"X-API-Key": guess}):
        response = client.post("/v1/things", json={"x": 1}, headers=headers)
        assert response.status_code == 401 and error(response)["problem"] == "API key not recognised"
        assert guess not in response.text


@pytest.mark.parametrize(
    ("method", "path", "key", "status", "name"),
    [
        ("post", "/v1/things", SERVICE_KEY, 200, "scorer"),
        ("put", "/v1/things/3", SERVICE_KEY, 200, "scorer"),
        ("post", "/v1/things", REVIEW_KEY, 403, None),  # a reviewer cannot score or write
        ("post", "/v1/review/cases/t1/resolve", REVIEW_KEY, 200, "ann"),
        ("post", "/v1/review/cases/t1/resolve", SERVICE_KEY, 403, None),  # a service cannot label
        ("post", "/v1/review/cases/t1/resolve", ADMIN_KEY, 200, "root"),
        ("post", "/v1/things", ADMIN_KEY, 200, "root"),
    ],
)
def test_roles(client: TestClient, method: str, path: str, key: str, status: int, name: str | None) -> None:
    response = client.request(method.upper(), path, json={"x": 1}, headers=bearer(key))
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["name"] == name and response.json()["authenticated"] is True
    else:
        err = error(response)
        assert err["field"] == "role" and "needs" in err["problem"] and "admin" in err["fix"]


def test_x_api_key_header_works_like_bearer(client: TestClient) -> None:
    response = client.post("/v1/things", json={"x": 1}, headers={"X-API-Key": SERVICE_KEY})
    assert response.status_code == 200 and response.json()["role"] == "service"


def test_reads_are_open_by_default_and_closed_with_auth_reads() -> None:
    open_reads = TestClient(make_app(ApiKeys.parse(KEYS)))
    assert open_reads.get("/v1/things").json() == {
        "name": "anonymous",
        "role": "admin",
        "authenticated": False,
    }
    closed = TestClient(make_app(ApiKeys.parse(KEYS, auth_reads=True)))
    assert closed.get("/v1/things").status_code == 401
    assert closed.get("/v1/things", headers=bearer(REVIEW_KEY)).json()["name"] == "ann"  # any role reads
    for path in ("/health", "/ready", "/metrics"):  # load balancers and scrapers carry no key
        assert closed.get(path).status_code == 200, path


def test_an_app_built_in_process_without_auth_is_open_with_the_anonymous_principal() -> None:
    response = TestClient(make_app()).post("/v1/review/cases/t1/resolve", json={"x": 1})
    assert response.status_code == 200
    assert response.json() == {"name": ANONYMOUS.name, "role": "admin", "authenticated": False}


def test_every_stored_digest_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = auth_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    keys = ApiKeys.parse(KEYS)
    assert keys.authenticate(SERVICE_KEY) == Principal("scorer", "service")  # the first key matches ...
    assert len(calls) == 3  # ... and the other two are still compared: no early exit
    assert keys.authenticate("nope-nope-nope-nope") is None and len(calls) == 6


# -- the audit trail ----------------------------------------------------------------------------------


def test_every_state_change_is_audited_with_name_role_method_path_status_never_the_key(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mlsd.audit"):
        client.post("/v1/review/cases/t9/resolve", json={"x": 1}, headers=bearer(REVIEW_KEY))
        client.post("/v1/things", json={"x": 1}, headers=bearer(REVIEW_KEY))  # refused: audited too
        client.post("/v1/things", json={"x": 1})
        client.get("/v1/things")  # reads are not audited
    records = [r for r in caplog.records if r.name == "mlsd.audit"]
    got = [(r.principal, r.role, r.method, r.path, r.status) for r in records]
    assert got == [
        ("ann", "reviewer", "POST", "/v1/review/cases/t9/resolve", 200),
        ("ann", "reviewer", "POST", "/v1/things", 403),
        ("-", "-", "POST", "/v1/things", 401),
    ]
    assert all(REVIEW_KEY not in r.getMessage() for r in records)
    assert "principal=ann role=reviewer method=POST path=/v1/review/cases/t9/resolve status=200" in (
        records[0].getMessage()
    )


# -- configuration: environment, file, mistakes ---------------------------------------------------------


def test_keys_from_a_yaml_or_json_file_hold_digests_not_keys(tmp_path) -> None:
    entries = [{"name": "scorer", "role": "service", "sha256": hash_key(SERVICE_KEY)}]
    (tmp_path / "keys.json").write_text(json.dumps({"keys": entries}))
    (tmp_path / "keys.yaml").write_text(
        f"- name: scorer\n  role: service\n  sha256: {hash_key(SERVICE_KEY)}\n"
    )
    for name in ("keys.json", "keys.yaml"):
        keys = ApiKeys.from_env({"MLSD_API_KEYS_FILE": str(tmp_path / name)})
        assert keys is not None and keys.authenticate(SERVICE_KEY) == Principal("scorer", "service")


def test_env_and_file_combine_and_auth_reads_is_a_flag(tmp_path) -> None:
    (tmp_path / "k.yaml").write_text(f"- {{name: ann, role: reviewer, sha256: {hash_key(REVIEW_KEY)}}}\n")
    env = {"MLSD_API_KEYS": f"scorer:service:{SERVICE_KEY}", "MLSD_API_KEYS_FILE": str(tmp_path / "k.yaml"),
           "MLSD_AUTH_READS": "1"}  # fmt: skip
    keys = ApiKeys.from_env(env)
    assert keys is not None and keys.auth_reads and len(keys.keys) == 2
    assert keys.authenticate(REVIEW_KEY).name == "ann" and keys.authenticate(SERVICE_KEY).name == "scorer"


@pytest.mark.parametrize(
    ("env", "field", "fix_mentions"),
    [
        (
            {"MLSD_API_KEYS": "scorer:service:short"},
            "MLSD_API_KEYS[scorer].key",
            "python -m mlsd.platform.auth",
        ),
        ({"MLSD_API_KEYS": f"scorer:superuser:{SERVICE_KEY}"}, "MLSD_API_KEYS[scorer].role", "reviewer"),
        ({"MLSD_API_KEYS": SERVICE_KEY}, "MLSD_API_KEYS", "name:role:key"),
        ({"MLSD_API_KEYS": f"a:service:{SERVICE_KEY},a:admin:{ADMIN_KEY}"}, "MLSD_API_KEYS", "own name"),
        ({"MLSD_API_KEYS": f"a:service:{SERVICE_KEY},b:admin:{SERVICE_KEY}"}, "MLSD_API_KEYS", "own key"),
        ({"MLSD_AUTH_READS": "maybe"}, "MLSD_AUTH_READS", "MLSD_AUTH_READS=1"),
        ({"MLSD_AUTH": "sometimes"}, "MLSD_AUTH", "MLSD_AUTH=off"),
        ({"MLSD_API_KEYS_FILE": "/nonexistent/keys.yaml"}, "MLSD_API_KEYS_FILE", "keys file"),
    ],
)
def test_a_bad_configuration_names_the_variable_and_the_fix_never_the_key(env, field, fix_mentions) -> None:
    with pytest.raises(InputError) as err:
        ApiKeys.from_env(env)
    assert err.value.field == field and fix_mentions in err.value.fix
    assert SERVICE_KEY not in str(err.value) and ADMIN_KEY not in str(err.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (f"- {{name: s, role: service, key: {SERVICE_KEY}}}\n", ".key"),  # the key itself on disk
        ("- {name: s, role: service, sha256: abc}\n", ".sha256"),
        ("keys: nope\n", "MLSD_API_KEYS_FILE"),
        ("- [unclosed\n", "MLSD_API_KEYS_FILE"),
    ],
)
def test_a_bad_keys_file_is_refused(tmp_path, text: str, field: str) -> None:
    (tmp_path / "keys.yaml").write_text(text)
    with pytest.raises(InputError) as err:
        ApiKeys.from_file(tmp_path / "keys.yaml")
    assert err.value.field.endswith(field) and SERVICE_KEY not in str(err.value)


# -- the production path fails closed -------------------------------------------------------------------


def test_serve_without_keys_fails_closed_naming_the_variables(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()  # as a system's serve verb builds it: no auth= passed
    with caplog.at_level(logging.WARNING, logger="mlsd.serving"):
        secure(app, environ={})
    assert "no API keys configured" in caplog.text
    client = TestClient(app)
    for key in (None, SERVICE_KEY):  # no key is valid when none is configured
        response = client.post("/v1/things", json={"x": 1}, headers=bearer(key) if key else {})
        assert response.status_code == 401
        err = error(response)
        assert "no API keys configured" in err["problem"]
        assert "MLSD_API_KEYS" in err["fix"] and "MLSD_API_KEYS_FILE" in err["fix"]
    assert client.get("/v1/things").status_code == 200  # reads stay up


def test_serve_applies_the_environment_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    monkeypatch.setenv("MLSD_API_KEYS", KEYS)
    monkeypatch.delenv("MLSD_AUTH", raising=False)
    serve(make_app(), port=8999)
    client = TestClient(served[0])
    assert client.post("/v1/things", json={"x": 1}).status_code == 401
    assert client.post("/v1/things", json={"x": 1}, headers=bearer(SERVICE_KEY)).status_code == 200


def test_auth_off_is_an_explicit_loud_choice(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    with caplog.at_level(logging.WARNING, logger="mlsd.auth"):
        secure(app, environ={"MLSD_AUTH": "off"})
    assert "authentication is OFF" in caplog.text
    assert TestClient(app).post("/v1/things", json={"x": 1}).status_code == 200


def test_keys_passed_in_code_are_kept_by_serve() -> None:
    app = make_app(ApiKeys.parse(f"only:admin:{ADMIN_KEY}"))
    secure(app, environ={"MLSD_API_KEYS": f"scorer:service:{SERVICE_KEY}"})
    client = TestClient(app)
    assert client.post("/v1/things", json={}, headers=bearer(SERVICE_KEY)).status_code == 401
    assert client.post("/v1/things", json={}, headers=bearer(ADMIN_KEY)).status_code == 200


def test_the_key_tool_makes_a_key_and_hashes_one_from_stdin() -> None:
    new = subprocess.run([sys.executable, "-m", "mlsd.platform.auth", "new", "scorer", "service"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    entry = next(line for line in new.stdout.splitlines() if line.startswith("MLSD_API_KEYS entry"))
    keys = ApiKeys.parse(entry.split(": ", 1)[1])
    key = entry.rsplit(":", 1)[1]
    digest = subprocess.run([sys.executable, "-m", "mlsd.platform.auth", "hash"], input=key + "\n",
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert digest == hash_key(key) and digest in new.stdout and keys.authenticate(key).name == "scorer"


def test_openapi_says_which_operations_need_a_key() -> None:
    spec = TestClient(make_app(ApiKeys.parse(KEYS))).get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    paths = spec["paths"]
    assert paths["/v1/things"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert paths["/v1/review/cases/{tx_id}/resolve"]["post"]["security"]
    assert "security" not in paths["/v1/things"]["get"] and "security" not in paths["/health"]["get"]
    closed = TestClient(make_app(ApiKeys.parse(KEYS, auth_reads=True))).get("/openapi.json").json()
    assert (
        closed["paths"]["/v1/things"]["get"]["security"]
        and "security" not in closed["paths"]["/ready"]["get"]
    )


def test_a_path_cannot_forge_an_audit_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlsd.audit"):
        client.post(
            "/v1/review/cases/t1%0Aprincipal=root role=admin/resolve", json={}, headers=bearer(REVIEW_KEY)
        )
    (record,) = [r for r in caplog.records if r.name == "mlsd.audit"]
    message = record.getMessage()
    assert "\n" not in message and "t1\\nprincipal=root\\x20role=admin/resolve" in message
    assert message.count(" principal=") == 1 and " role=admin" not in message  # one line, one principal


def test_a_bad_key_configuration_stops_serve_before_it_listens(monkeypatch, capsys) -> None:
    import uvicorn

    from mlsd.cli import main

    monkeypatch.setattr(
        uvicorn, "run", lambda *a, **kw: pytest.fail("served despite a bad key configuration")
    )
    monkeypatch.setenv("MLSD_API_KEYS", "scorer:service:tinykey")
    assert main(["dashboard", "--port", "8051"]) == 2  # the dashboard: the cheapest app served by serve()
    err = capsys.readouterr().err
    assert (
        "MLSD_API_KEYS[scorer].key" in err
        and "python -m mlsd.platform.auth new" in err
        and "tinykey" not in err
    )


def test_routes_of_an_included_router_are_protected_too() -> None:
    from fastapi import APIRouter

    router = APIRouter()

    @router.post("/v1/review/claim", tags=["review"])
    def claim(request: Request, body: dict) -> dict:
        return {"reviewer": request.state.principal.name}

    app = create_app("routersys", title="r", auth=ApiKeys.parse(KEYS))
    app.include_router(router)
    client = TestClient(app)
    assert client.post("/v1/review/claim", json={}).status_code == 401
    assert client.post("/v1/review/claim", json={}, headers=bearer(SERVICE_KEY)).status_code == 403
    assert client.post("/v1/review/claim", json={}, headers=bearer(REVIEW_KEY)).json() == {"reviewer": "ann"}
