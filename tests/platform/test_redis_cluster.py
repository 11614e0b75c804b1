"""The Redis connection factory, the hash-tag helpers and the local Redis Cluster the tests run on."""

from __future__ import annotations

import os

import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.redis_cluster import (
    LocalRedisCluster,
    check_untagged,
    connect,
    is_cluster,
    key_slot,
    tagged,
)

pytestmark = pytest.mark.services


def test_the_session_cluster_has_three_masters_covering_every_slot(redis_cluster_url):
    client = connect(redis_cluster_url)
    assert is_cluster(client)
    masters = client.get_primaries()
    assert len(masters) >= 3
    assert client.cluster_info()["cluster_state"] == "ok"
    covered = sum(end - start + 1 for start, end, *_ in _slot_ranges(client))
    assert covered == 16384
    client.close()


def _slot_ranges(client):
    return [
        (int(r[0]), int(r[1]))
        for r in client.execute_command("CLUSTER SLOTS", target_nodes=client.get_random_node())
    ]


def test_keys_of_one_entity_share_a_slot_and_entities_spread_over_the_masters(
    redis_cluster_url, redis_cluster_prefix
):
    client = connect(redis_cluster_url)
    p = redis_cluster_prefix
    assert len({key_slot(tagged(p, "card-7", s)) for s in (":h", ":z", ":decided")}) == 1
    # one script over one entity's keys runs; over two entities' keys it is refused (CROSSSLOT)
    import redis

    from mlsd.platform.redis_cluster import run_script

    both = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return 1"
    a, b = tagged(p, "card-7", ":a"), tagged(p, "card-7", ":b")
    assert run_script(client, both, [([a, b], ["1"])]) == [1]
    assert client.mget(a, b) == [b"1", b"1"]
    with pytest.raises((redis.RedisClusterException, redis.ResponseError), match="(?i)slot"):
        run_script(client, both, [([a, tagged(p, "card-8", ":a")], ["2"])])
    nodes = {client.get_node_from_key(tagged(p, i)).name for i in range(200)}
    assert len(nodes) == len(client.get_primaries())  # 200 entities land on every master
    client.close()


def test_connect_refuses_a_cluster_database_and_braces_in_prefixes():
    with pytest.raises(InputError, match="database 0"):
        connect("redis+cluster://127.0.0.1:7000/2")
    with pytest.raises(InputError) as err:
        check_untagged("prefix", "mlsd:{a}:")
    assert err.value.field == "prefix"
    assert type(connect("redis://127.0.0.1:1/0")).__name__ == "Redis"


def test_a_local_cluster_stops_every_process_it_started(
    redis_cluster_url,
):  # the fixture: skip / fail as it does without redis-server
    cluster = LocalRedisCluster(masters=3).start()
    pids = cluster.pids
    assert len(pids) == 3 and cluster.url.startswith("redis+cluster://127.0.0.1:")
    client = connect(cluster.url)
    client.set(tagged("t:", "x"), 1)
    assert client.get(tagged("t:", "x")) == b"1"
    client.close()
    cluster.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert cluster.url is None


def test_used_memory_and_delete_prefix_cover_every_master(redis_cluster_url, redis_cluster_prefix, redis_url):
    from mlsd.platform.redis_cluster import delete_prefix, used_memory

    client = connect(redis_cluster_url)
    before = used_memory(client)
    for i in range(300):
        client.set(tagged(redis_cluster_prefix, i), "x" * 1000)
    assert used_memory(client) - before > 300 * 1000
    assert delete_prefix(client, redis_cluster_prefix) == 300
    assert used_memory(connect(redis_url)) > 0  # a single Redis answers the same call
    client.close()
