"""Shared fixtures: the real Redis and PostgreSQL servers, and the real public data samples.

Tests that need a server take ``redis_url`` / ``postgres_dsn``; ``redis_cluster_url`` starts a 3-master
Redis Cluster on free local ports once per session (``MLSD_REDIS_CLUSTER_URL`` points at one instead);
``spark_master_url`` a Spark standalone master + 2 workers (``MLSD_SPARK_MASTER_URL`` instead). With
``MLSD_REQUIRE_SERVICES=1`` (CI) an unreachable server FAILS the test; elsewhere it skips with a
message saying how to start it.
Tests that need ``../shared/data`` take ``shared_data`` and skip with a message when it is absent.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("MLSD_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("MLSD_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_DSN = os.environ.get("MLSD_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SHARED_DATA = Path(
    os.environ.get("MLSD_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)

HOW_TO_START = {
    "redis": "start it with: redis-server --daemonize yes --port 6379 --save '' (or set MLSD_REDIS_URL)",
    "postgres": "start it with: pg_ctlcluster $(ls /etc/postgresql) main start (or set MLSD_POSTGRES_DSN)",
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _need(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{service} at {host}:{port} is not reachable; {HOW_TO_START[service]}"
    if REQUIRE_SERVICES:
        pytest.fail(f"MLSD_REQUIRE_SERVICES=1 but {message}")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """URL of a real Redis; the test's keys go under a unique prefix, flushed afterwards by the user."""
    from urllib.parse import urlparse

    parsed = urlparse(REDIS_URL)
    _need("redis", parsed.hostname or "127.0.0.1", parsed.port or 6379)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str):
    """A unique key prefix on the real Redis, deleted after the test."""
    import redis

    prefix = f"mlsd-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def redis_cluster_url():
    """``redis+cluster://127.0.0.1:<p1>,...`` of a real Redis Cluster: 3 masters, no replicas (the start
    fits in ~2 s), started on free loopback ports for the session and stopped by PID at its end; or
    ``MLSD_REDIS_CLUSTER_URL`` when set. Under ``MLSD_REQUIRE_SERVICES=1`` a failed start fails."""
    from mlsd.platform.redis_cluster import ClusterStartError, LocalRedisCluster

    given = os.environ.get("MLSD_REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    try:
        try:
            cluster = LocalRedisCluster(masters=3).start()
        except ClusterStartError:  # once more: a free port can be taken between the check and the bind
            cluster = LocalRedisCluster(masters=3).start()
    except (ClusterStartError, OSError) as err:
        message = f"could not start a local Redis Cluster ({err}); install redis-server or set MLSD_REDIS_CLUSTER_URL"
        if REQUIRE_SERVICES:
            pytest.fail(f"MLSD_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    yield cluster.url
    cluster.stop()


@pytest.fixture(scope="session")
def spark_master_url():
    """``spark://127.0.0.1:<port>`` of a real Spark standalone cluster: a master and 2 workers (1 core,
    1g each; the start takes ~10 s) from the pyspark package, started on free loopback ports for the
    session and stopped by PID at its end; or ``MLSD_SPARK_MASTER_URL`` when set. Under
    ``MLSD_REQUIRE_SERVICES=1`` a failed start fails."""
    from mlsd.platform.testing import require_extra

    require_extra("pyspark", "spark")
    from mlsd.platform.spark_cluster import LocalSparkCluster, SparkClusterStartError

    given = os.environ.get("MLSD_SPARK_MASTER_URL")
    if given:
        yield given
        return
    try:
        cluster = LocalSparkCluster(workers=2).start()
    except (SparkClusterStartError, OSError) as err:
        message = f"could not start a local Spark cluster ({err}); install a JDK 17 or set MLSD_SPARK_MASTER_URL"  # fmt: skip
        if REQUIRE_SERVICES:
            pytest.fail(f"MLSD_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    yield cluster.url
    cluster.stop()


@pytest.fixture
def redis_cluster_prefix(redis_cluster_url: str):
    """A unique key prefix on the Redis Cluster, its keys deleted from every master after the test."""
    from mlsd.platform.redis_cluster import connect, delete_prefix

    prefix = f"mlsd-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = connect(redis_cluster_url)
    delete_prefix(client, prefix)
    client.close()


@pytest.fixture
def postgres_dsn() -> str:
    from urllib.parse import urlparse

    parsed = urlparse(POSTGRES_DSN)
    _need("postgres", parsed.hostname or "127.0.0.1", parsed.port or 5432)
    return POSTGRES_DSN


@pytest.fixture
def shared_data():
    """Return a function ``(name) -> Path`` into ../shared/data, skipping when the sample is absent."""

    def get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"{path} not present; set MLSD_SHARED_DATA to the folder holding the public samples")
        return path

    return get


@pytest.fixture
def blackhole():
    """A Redis URL whose server accepts connections and never answers (a blackholed Redis): what an
    outage looks like to a client with no timeout, and what the serving path's bounded waits are for."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()
