"""`mlsd fraud bench` run tiny: the JSON contract of every path (figures are not asserted)."""

from __future__ import annotations

import json

import pytest

from mlsd.fraud.bench import bench_inprocess, replay_payments, run_bench
from mlsd.platform.testing import require_extra

KEYS = {"achieved_tps", "p50_ms", "p95_ms", "p99_ms"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from mlsd.fraud.bench import bootstrap
    from mlsd.platform.system import SystemDir

    dirs = SystemDir(tmp_path_factory.mktemp("bench"), "fraud")
    return bootstrap(dirs, cards=150, days=30, lgbm_params={"n_estimators": 20})


def test_inprocess_path_contract(dirs):
    result = run_bench(tps=400, seconds=0.5, paths=["inproc"], dirs=dirs)
    json.dumps(result)  # JSON-serialisable as printed by --json
    assert set(result["inproc"]) >= KEYS
    assert result["inproc"]["payments"] == 200 == result["config"]["payments"]
    assert result["inproc"]["achieved_tps"] > 0
    assert result["inproc"]["p50_ms"] <= result["inproc"]["p95_ms"] <= result["inproc"]["p99_ms"]
    assert result["config"]["model_version"] == 1


def test_inprocess_stops_by_itself_when_it_cannot_keep_up():
    class Slow:
        def score(self, tx):
            import time

            time.sleep(0.05)

    out = bench_inprocess(Slow(), replay_payments(5000), tps=5000, seconds=0.2, max_batch=10, drain_s=0.1)
    assert out["payments"] < out["target_payments"] == 1000  # bounded: gave up instead of running on


@pytest.mark.slow
@pytest.mark.services
def test_redis_and_http_paths_contract(dirs, redis_url):
    result = run_bench(
        tps=200, seconds=1, paths=["redis", "http"], workers=[1], redis_url=redis_url, dirs=dirs
    )
    assert KEYS | {"workers"} <= set(result["redis"]["workers=1"])
    assert result["redis"]["workers=1"]["payments"] == 200
    assert set(result["http"]) >= KEYS and result["http"]["payments"] == 200
    import redis

    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match="mlsd-bench:*"))  # cleaned up after itself


@pytest.mark.slow
@pytest.mark.services
def test_cluster_path_runs_partitions_on_a_redis_cluster_and_models_capacity(dirs, redis_cluster_url):
    result = run_bench(
        tps=300, seconds=1, paths=["cluster"], workers=[1, 2], dirs=dirs, redis_cluster=redis_cluster_url
    )
    json.dumps(result)
    for w in (1, 2):
        run = result["cluster"][f"workers={w}"]
        assert set(run) >= KEYS and run["payments"] == 300 and run["partitions"] == w
        assert len(run["shards"]) == 3  # the 3 masters' commands and CPU over the run
        assert run["worker_cpu_ms_per_payment"] > 0
    capacity = result["cluster"]["capacity"]
    assert set(capacity["per_worker_tps_by_workers"]) == {"1", "2"}
    assert capacity["workers_needed"] == -(-300 // capacity["per_worker_tps"])  # ceil(target / rate)
    assert capacity["masters_needed"] >= 1


def test_capacity_model_from_measured_runs():
    from mlsd.fraud.bench import capacity_model

    runs = {
        "workers=1": {"workers": 1, "achieved_tps": 3000.0, "payments": 90_000, "target_payments": 300_000,
                      "shards": {"a": {"cpu_ms_per_payment": 0.06}, "b": {"cpu_ms_per_payment": 0.02}}},
        "workers=2": {"workers": 2, "achieved_tps": 5000.0, "payments": 150_000, "target_payments": 300_000,
                      "shards": {"a": {"cpu_ms_per_payment": 0.05}, "b": {"cpu_ms_per_payment": 0.03}}},
    }  # fmt: skip
    runs["workers=1"]["worker_cpu_ms_per_payment"] = 0.2
    runs["workers=2"]["worker_cpu_ms_per_payment"] = 0.25
    model = capacity_model(runs, target_tps=10_000)
    assert model["per_worker_tps"] == 2500.0 and model["workers_needed"] == 4
    # a core each: 1000 / 0.225 ms = 4444 tx/s; at 70% busy 10k needs 4
    assert model["per_worker_tps_dedicated_core"] == pytest.approx(4444.4, abs=0.1)
    assert model["workers_needed_dedicated_cores"] == 4
    assert model["per_worker_rate_is"] == "measured at saturation"
    assert model["scaling_efficiency"] == pytest.approx(5000 / 6000, abs=1e-3)
    assert model["redis_cpu_ms_per_payment"] == 0.08  # all masters, median of the runs
    assert model["masters_needed"] == 2  # 10k x 0.08 ms = 0.8 core at 50% per master


@pytest.mark.services
def test_transport_bench_times_redis_streams_and_nats_jetstream(redis_url):
    import os
    import socket

    from mlsd.fraud.bench import bench_transport

    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1.0).close()
    except OSError:
        if os.environ.get("MLSD_REQUIRE_SERVICES") == "1":
            pytest.fail("MLSD_REQUIRE_SERVICES=1 but NATS JetStream at 127.0.0.1:4222 is not reachable")
        pytest.skip("NATS JetStream at 127.0.0.1:4222 is not reachable: start nats-server -js")
    require_extra("nats", "nats")
    out = bench_transport(300, batch=100, redis_url=redis_url)
    for transport in ("redis_streams", "nats_jetstream"):
        assert set(out[transport]) == {"publish_per_s", "consume_ack_per_s", "client_cpu_us_per_message"}
        assert all(v > 0 for v in out[transport].values())
    import redis

    assert not list(redis.Redis.from_url(redis_url).scan_iter(match="mlsd-transport:*"))
