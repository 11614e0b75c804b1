"""``mlsd recsys serve --workdir W --workers N``: each worker builds the engine from the environment (which
carries the workdir), so what the workers must share (profiles, exposures) has to be Redis; a wrong
combination fails before any worker."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mlsd.cli import main
from mlsd.platform.errors import InputError
from mlsd.recsys import service


def test_app_from_env_builds_the_service_with_experiments(tiny, tmp_path, redis_url, redis_prefix):
    config = tmp_path / "experiments.yaml"
    config.write_text(
        "experiments:\n  - name: recsys-aa\n    system: recsys\n"
        "    arms: [{name: a, alias: champion}, {name: b, alias: champion}]\n"
    )
    env = {
        service.WORKDIR_ENV: str(tiny.root),
        service.DEADLINE_ENV: "500",
        service.EXPERIMENTS_ENV: str(config),
        service.EXPOSURE_REDIS_ENV: redis_url,
    }
    app = service.app_from_env(env)
    http = TestClient(app)
    body = http.get("/v1/recommendations/7?k=5").json()
    assert len(body["items"]) == 5 and set(body["experiment"]) == {"recsys-aa"}
    assert app.state.recsys.experiments.log.url == redis_url  # exposures shared by every worker


@pytest.mark.parametrize(
    "env, field",
    [
        ({}, service.WORKDIR_ENV),
        ({service.WORKDIR_ENV: "x", service.DEADLINE_ENV: "soon"}, service.DEADLINE_ENV),
        ({service.WORKDIR_ENV: "x", service.EXPERIMENTS_ENV: "/no/such.yaml"}, "--experiments"),
        ({service.WORKDIR_ENV: "/no/such/workdir"}, "--workdir"),
    ],
)
def test_app_from_env_names_the_bad_variable(env, field):
    with pytest.raises(InputError) as err:
        service.app_from_env(env)
    assert err.value.field == field


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--online-store", "memory"], "--online-store"),
        (["--experiments", "configs/experiments.yaml"], "--exposure-redis"),
    ],
)
def test_serve_workers_refuses_per_process_state(tiny, extra, field, capsys):
    argv = ["recsys", "serve", "--workdir", str(tiny.root), "--workers", "2", *extra]
    assert main(argv) == 2
    assert field in capsys.readouterr().err


def test_the_workers_factory_fails_closed_like_serve(tiny, redis_url):
    """``--workers N`` builds each app in uvicorn's factory, not through serve(): it must apply the
    environment's API keys too (no keys: profile writes refused with 401; reads stay open)."""
    env = {service.WORKDIR_ENV: str(tiny.root), service.ONLINE_STORE_ENV: redis_url}
    open_reads = TestClient(service.app_from_env(env))
    assert open_reads.get("/v1/recommendations/7?k=3").status_code == 200
    assert open_reads.put("/v1/users/7/profile", json={"region": "US"}).status_code == 401

    key = "k" * 24
    keyed = TestClient(service.app_from_env({**env, "MLSD_API_KEYS": f"app:service:{key}"}))
    written = keyed.put("/v1/users/7/profile", json={"region": "US"}, headers={"X-API-Key": key})
    assert written.status_code == 200, written.text


def test_workers_read_the_user_side_from_redis(tiny, redis_url, redis_prefix):
    """``MLSD_RECSYS_USER_STATE``: a worker keeps only the item side and reads each request's user rows
    from Redis (exported under the champion's version), answering as a worker holding every user."""
    from mlsd.platform.features.online import RedisStore
    from mlsd.platform.registry import ModelRegistry
    from mlsd.recsys.engine import export_user_state, user_state_namespace
    from mlsd.recsys.model import TwoStageRecommender

    model = TwoStageRecommender.load(ModelRegistry(tiny.registry).artifact_path("recsys-ranker", "champion"))
    with RedisStore(redis_url, prefix=redis_prefix) as store:
        export_user_state(model, store, user_state_namespace(1))
    env = {service.WORKDIR_ENV: str(tiny.root), service.CLOCK_ENV: "data"}
    shared_env = {**env, service.USER_STATE_ENV: redis_url, service.USER_STATE_PREFIX_ENV: redis_prefix}
    local, shared = service.app_from_env(env), service.app_from_env(shared_env)
    assert len(shared.state.recsys.snapshot().model.users_) == 0  # no user held in the worker
    user = int(model.users_.ids[3])
    a = TestClient(local).get(f"/v1/recommendations/{user}?k=5").json()
    b = TestClient(shared).get(f"/v1/recommendations/{user}?k=5").json()
    assert not b["cold_start"] and "user_state" in b["timings_ms"]
    assert b["scored_by"] == a["scored_by"] == "ranker"
    assert TestClient(shared).get("/ready").status_code == 200
