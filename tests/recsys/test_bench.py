"""The bench's JSON contract, at a tiny size (the figures themselves come from the real run)."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main
from mlsd.recsys.bench import STAGES, summarize

KEYS = {"p50_ms", "p95_ms", "p99_ms", "throughput_rps", "stages"}


@pytest.mark.slow
def test_bench_json_contract(capsys):
    code = main(["recsys", "bench", "--users", "300", "--items", "80", "--requests", "24", "--concurrency", "8",
                 "--ranker-users", "200", "--events-per-user", "10", "--k", "20", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert set(result) == {"train", "in_process", "http"}
    # trained on every user of the window, the ranker on a sample of them
    assert result["train"]["users"] >= result["train"]["ranker_users"] > 0
    assert result["train"]["train_s"] > 0 and set(result["train"]["steps_s"]) >= {"ranker", "stage_one"}
    for mode in ("in_process", "http"):
        b = result[mode]
        assert set(b) == (KEYS | {"workers", "load", "concurrency"} if mode == "http" else KEYS)
        assert 0 < b["p50_ms"] <= b["p95_ms"] <= b["p99_ms"]
        assert b["throughput_rps"] > 0
        assert {"candidates", "rules"} <= set(b["stages"]) <= set(STAGES)
        assert all(v >= 0 for v in b["stages"].values())


def test_summarize_percentiles_are_exact():
    out = summarize([float(i) for i in range(1, 101)], {"ranking": [1.0, 2.0, 3.0]}, wall_s=2.0)
    assert out["p50_ms"] == 50.5 and out["p99_ms"] == 99.01 and out["throughput_rps"] == 50.0
    assert out["stages"] == {"ranking": 2.98}


@pytest.mark.slow
def test_http_with_several_uvicorn_worker_processes(tiny):
    """``--workers 2``: a real ``uvicorn --workers 2`` child serving the workdir's champion; both
    workers answer /health before the run, every request succeeds, and the server is gone after."""
    import asyncio

    import numpy as np

    from mlsd.recsys.bench import ServerProcess, _http_run

    users = np.array([1, 2, 3, 10**9 + 1] * 4)  # known and cold ids alike
    with ServerProcess(tiny.root, workers=2) as server:
        latencies, stages, _wall, errors = asyncio.run(_http_run(server.url, users, 10, concurrency=4))
        # open loop: Poisson arrivals at 400 a second; every request sent once and answered
        opened, open_stages, open_wall, open_errors = asyncio.run(
            _http_run(server.url, users, 10, concurrency=4, rate=400.0)
        )
    assert errors == 0 and len(latencies) == len(users)
    assert "candidates" in stages and len(stages["candidates"]) == len(users)
    assert open_errors == 0 and len(opened) == len(open_stages["candidates"]) == len(users)
    assert open_wall > 0 and all(ms > 0 for ms in opened)
    assert server.proc.poll() is not None  # stopped


@pytest.mark.slow
def test_bench_with_two_workers_sharing_user_state_on_redis(redis_url):
    """``--user-state URL --workers 2``: the user side exported to Redis, two uvicorn workers holding only
    the item side; every request answered, memory per user reported, the run's keys deleted after."""
    import redis

    from mlsd.recsys.bench import run_bench

    result = run_bench(users=300, items=80, requests=16, concurrency=4, events_per_user=10, ranker_users=200,
                       k=10, workers=2, user_state=redis_url)  # fmt: skip
    state = result["user_state"]
    assert state["users"] == result["train"]["users"] and state["tables"] >= 5
    assert state["redis_bytes_per_user"] > 0 and state["process_bytes_per_user"] > 0
    assert result["http"]["workers"] == 2 and len(result["http"]["worker_rss_mb"]) == 2
    assert "user_state" in result["in_process"]["stages"] and "user_state" in result["http"]["stages"]
    client = redis.Redis.from_url(redis_url)
    assert next(client.scan_iter(match=state["prefix"] + "*"), None) is None
    client.close()
