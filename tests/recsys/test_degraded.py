"""Degraded, not down: with its Redis blackholed (a listener that accepts and never answers), the
recommender still answers 200 with titles that passed the rules, flagged ``degraded`` with the reason,
known and new users alike, and /ready says the dependency is down while /health stays live."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from mlsd.platform.features.online import RedisStore
from mlsd.recsys.config import RecsysConfig, ServiceConfig
from mlsd.recsys.engine import RecsysEngine
from mlsd.recsys.service import create_service_app

NO_POLL = RecsysConfig(service=ServiceConfig(reload_poll_s=0))


@pytest.fixture
def engine(tiny, blackhole):
    svc = RecsysEngine(tiny.registry, config=NO_POLL, online_store=RedisStore(blackhole))
    yield svc
    svc.close()


def test_known_and_new_users_get_a_degraded_200_with_the_reason(engine, tiny):
    client = TestClient(create_service_app(engine))
    known = int(engine.snapshot().model.users_.ids[0])
    for user, cold in ((known, False), (987654321, True)):
        r = client.get(f"/v1/recommendations/{user}", params={"k": 10})
        assert r.status_code == 200
        body = r.json()
        assert body["degraded"] is True and "live profiles not read" in body["degraded_reason"]
        assert body["cold_start"] is cold and body["items"]
        # The rules still ran: an unknown viewer sees only titles rated for all ages.
        if cold:
            assert body["filtered"]["age_rating"] >= 0 and "unknown age" in body["policy"]
    assert client.get("/health").status_code == 200  # live: the process is fine
    ready = client.get("/ready")
    assert ready.status_code == 503 and "redis" in ready.text.lower()


def test_a_profile_write_during_the_outage_is_a_503_naming_the_fix(engine):
    client = TestClient(create_service_app(engine))
    r = client.put("/v1/users/5/profile", json={"age": 30})
    assert r.status_code == 503 and r.json()["error"]["field"] == "online_store"
    assert "retry" in r.json()["error"]["fix"]


def test_sixty_concurrent_requests_all_come_back_degraded(engine):
    client = TestClient(create_service_app(engine))
    known = [int(u) for u in engine.snapshot().model.users_.ids[:60]]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda u: client.get(f"/v1/recommendations/{u}", params={"k": 5}), known))
    assert [r.status_code for r in replies] == [200] * 60
    assert all(r.json()["degraded"] for r in replies)


def test_a_healthy_store_is_not_degraded_and_ready(tiny, redis_url, redis_prefix):
    svc = RecsysEngine(tiny.registry, config=NO_POLL, online_store=RedisStore(redis_url, prefix=redis_prefix))
    client = TestClient(create_service_app(svc))
    body = client.get("/v1/recommendations/987654321", params={"k": 5}).json()
    assert body["degraded"] is False and body["degraded_reason"] is None
    assert client.get("/ready").status_code == 200
    svc.close()


def test_a_blackholed_exposure_log_pauses_experiments_and_flags_the_answers(tiny, tmp_path, blackhole):
    from mlsd.platform.experiments.client import ExperimentClient

    path = tmp_path / "experiments.yaml"
    path.write_text(
        "experiments:\n  - name: explore-more\n    system: recsys\n"
        "    arms: [{name: control}, {name: explore, params: {epsilon: 0.2}}]\n"
    )
    experiments = ExperimentClient.from_options(path, blackhole)
    experiments.outage_retry_s = 600  # the pause outlasts the test on a slow machine
    svc = RecsysEngine(tiny.registry, config=NO_POLL, experiments=experiments)
    client = TestClient(create_service_app(svc))
    users = [int(u) for u in svc.snapshot().model.users_.ids[:20]]
    first = client.get(f"/v1/recommendations/{users[0]}", params={"k": 5})
    assert first.status_code == 200 and first.json()["degraded"] is True
    assert "exposure log unreachable" in first.json()["degraded_reason"]
    later = [client.get(f"/v1/recommendations/{u}", params={"k": 5}).json() for u in users[1:]]
    assert all(b["degraded"] and b["experiment"] == {} for b in later)  # paused: the champion path
    svc.close()
