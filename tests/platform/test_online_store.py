"""ONE contract suite for every OnlineStore: the in-process MemoryStore, RedisStore on a real single Redis
and RedisStore on a real 3-master Redis Cluster.

:class:`OnlineStoreContract` holds the tests; a backend opts in with a subclass whose ``make_store``
builds one (3 lines, below). A fake clock tests TTLs by moving time, never by sleeping.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.features import MemoryStore, OnlineStore, RedisStore


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


ALL_TYPES = {
    "an_int": 42,
    "a_big_int": -(2**62) + 7,
    "a_float": 0.1,
    "a_nan": math.nan,
    "an_inf": -math.inf,
    "a_bool": True,
    "a_false": False,
    "a_str": "naïve café ☕",
    "an_empty_str": "",
    "some_bytes": b"\x00\xff raw",
    "nothing": None,
    "a_list": [0.5, 1.25, -3.0],
    "mixed_list": [1, "two", 3.5, None, [4]],
    "a_dict": {"action": 3, "drama": 0.25},
    "a_vector": np.array([0.1, -2.5, 3.25], dtype=np.float32),
    "int_ids": np.array([1, 2, 3], dtype=np.int64),
    "a_matrix": np.arange(6, dtype=np.float64).reshape(2, 3),
}


def assert_same(got: object, want: object) -> None:
    """Equal value AND type (arrays: dtype and shape), nan equal to nan."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert type(got) is type(want), (got, want)
        assert got == want


class OnlineStoreContract:
    """The contract as a test suite: subclass it and define ``make_store(self, request, clock)``."""

    def make_store(self, request: pytest.FixtureRequest, clock: FakeClock) -> OnlineStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self, request: pytest.FixtureRequest, clock: FakeClock):
        made = self.make_store(request, clock)
        yield made
        if hasattr(made, "close"):
            made.close()

    def test_both_implement_the_protocol(self, store: OnlineStore) -> None:
        assert isinstance(store, OnlineStore)

    def test_round_trip_of_every_value_type(self, store: OnlineStore) -> None:
        store.put_many("user", {"u1": ALL_TYPES})
        [row] = store.get_many("user", ["u1"])
        assert row is not None and set(row) == set(ALL_TYPES)
        for field, value in ALL_TYPES.items():
            assert_same(row[field], value)

    def test_numpy_scalars_and_tuples_are_normalised(self, store: OnlineStore) -> None:
        store.put_many(
            "n",
            {
                "k": {
                    "i": np.int64(3),
                    "f": np.float32(0.5),
                    "d": np.float64(0.25),
                    "b": np.bool_(True),
                    "t": (1, 2),
                }
            },
        )
        [row] = store.get_many("n", ["k"])
        assert row == {"i": 3, "f": 0.5, "d": 0.25, "b": True, "t": [1, 2]}
        assert [type(row[f]) for f in "ifdbt"] == [int, float, float, bool, list]

    def test_missing_keys_are_none_in_order(self, store: OnlineStore) -> None:
        store.put_many("user", {"a": {"x": 1}, "c": {"x": 3}})
        assert store.get_many("user", ["a", "b", "c", "zzz"]) == [{"x": 1}, None, {"x": 3}, None]
        assert store.get_many("other_namespace", ["a"]) == [None]
        assert store.get_many("user", []) == []

    def test_field_subset(self, store: OnlineStore) -> None:
        store.put_many(
            "item", {"i1": {"genre": "drama", "year": 1994, "pop": 0.7}, "i2": {"genre": "comedy"}}
        )
        rows = store.get_many("item", ["i1", "i2", "i3"], fields=["year", "genre"])
        assert rows == [{"year": 1994, "genre": "drama"}, {"genre": "comedy"}, None]  # absent field omitted
        assert store.get_many("item", ["i2"], fields=["pop"]) == [{}]  # present row, no such field

    def test_ttl_expires_on_read(self, store: OnlineStore, clock: FakeClock) -> None:
        store.put_many("card", {"c1": {"n_1h": 3}}, ttl_s=60)
        store.put_many("card", {"c2": {"n_1h": 5}})  # no TTL: never expires
        clock.advance(59.9)
        assert store.get_many("card", ["c1", "c2"]) == [{"n_1h": 3}, {"n_1h": 5}]
        assert store.get_many("card", ["c1"], fields=["n_1h"]) == [{"n_1h": 3}]
        clock.advance(0.2)
        assert store.get_many("card", ["c1", "c2"]) == [None, {"n_1h": 5}]
        assert store.get_many("card", ["c1"], fields=["n_1h"]) == [None]
        clock.advance(10 * 365 * 86400)
        assert store.get_many("card", ["c2"]) == [{"n_1h": 5}]

    def test_rewrite_after_expiry_does_not_resurrect_old_fields(
        self, store: OnlineStore, clock: FakeClock
    ) -> None:
        store.put_many("card", {"c1": {"old": 1, "shared": 1}}, ttl_s=10)
        clock.advance(11)
        store.put_many("card", {"c1": {"shared": 2}}, ttl_s=10)
        assert store.get_many("card", ["c1"]) == [{"shared": 2}]

    def test_overwrite_replaces_the_row_and_its_ttl(self, store: OnlineStore, clock: FakeClock) -> None:
        store.put_many("user", {"u": {"a": 1, "b": 2}}, ttl_s=10)
        store.put_many("user", {"u": {"a": 10}})  # replace: b gone, no TTL any more
        clock.advance(100)
        assert store.get_many("user", ["u"]) == [{"a": 10}]
        store.put_many("user", {"u": {"a": 11}}, ttl_s=5)
        clock.advance(6)
        assert store.get_many("user", ["u"]) == [None]

    def test_delete(self, store: OnlineStore) -> None:
        store.put_many("user", {"a": {"x": 1}, "b": {"x": 2}})
        store.delete_many("user", ["a", "never-existed"])
        assert store.get_many("user", ["a", "b"]) == [None, {"x": 2}]
        store.delete_many("user", [])

    def test_stored_values_are_isolated_from_callers(self, store: OnlineStore) -> None:
        vector = np.array([1.0, 2.0], dtype=np.float32)
        tags = ["a", "b"]
        store.put_many("user", {"u": {"v": vector, "tags": tags}})
        vector[0] = 99.0
        tags.append("c")
        [row] = store.get_many("user", ["u"])
        np.testing.assert_array_equal(row["v"], [1.0, 2.0])
        assert row["tags"] == ["a", "b"]
        row["tags"].append("mutated")
        assert store.get_many("user", ["u"])[0]["tags"] == ["a", "b"]

    def test_bad_values_raise_input_error(self, store: OnlineStore) -> None:
        with pytest.raises(InputError, match="unsupported"):
            store.put_many("user", {"u": {"x": object()}})
        with pytest.raises(InputError, match="dtype"):
            store.put_many("user", {"u": {"x": np.array(["a", "b"])}})
        with pytest.raises(InputError, match="TTL"):
            store.put_many("user", {"u": {"x": 1}}, ttl_s=0)
        with pytest.raises(InputError, match="keys must be strings"):
            store.put_many("user", {7: {"x": 1}})  # type: ignore[dict-item]

    def test_large_batch_in_one_call(self, store: OnlineStore) -> None:
        n = 10_000
        vectors = np.random.default_rng(0).random((n, 8), dtype=np.float32)
        rows = {f"u{i}": {"i": i, "v": vectors[i]} for i in range(n)}
        store.put_many("big", rows, ttl_s=3600)
        keys = [f"u{i}" for i in range(n)] + ["missing"]
        got = store.get_many("big", keys)
        assert len(got) == n + 1 and got[-1] is None
        assert [r["i"] for r in got[:-1]] == list(range(n))
        np.testing.assert_array_equal(np.stack([r["v"] for r in got[:-1]]), vectors)
        subset = store.get_many("big", keys[: n : n // 10], fields=["i"])
        assert subset == [{"i": i} for i in range(0, n, n // 10)]


class TestMemoryStore(OnlineStoreContract):
    def make_store(self, request, clock):
        return MemoryStore(clock=clock)


class TestRedisStore(OnlineStoreContract):
    def make_store(self, request, clock):
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        return RedisStore(url, prefix=prefix, clock=clock)


class TestRedisClusterStore(OnlineStoreContract):
    def make_store(self, request, clock):
        url, prefix = (
            request.getfixturevalue("redis_cluster_url"),
            request.getfixturevalue("redis_cluster_prefix"),
        )
        return RedisStore(url, prefix=prefix, clock=clock)


def test_redis_pipelines_each_batch_into_one_round_trip(redis_url: str, redis_prefix: str) -> None:
    """A batch call is one pipeline execution, not one round trip per key (checked with a counting client)."""
    import redis

    class CountingPipelineClient(redis.Redis):
        executions = 0

        def pipeline(self, *args, **kwargs):
            pipe = super().pipeline(*args, **kwargs)
            original = pipe.execute

            def execute(*a, **kw):
                CountingPipelineClient.executions += 1
                return original(*a, **kw)

            pipe.execute = execute
            return pipe

    client = CountingPipelineClient.from_url(redis_url)
    store = RedisStore(redis_url, prefix=redis_prefix, client=client)
    store.put_many("ns", {str(i): {"x": i} for i in range(500)}, ttl_s=60)
    store.get_many("ns", [str(i) for i in range(500)])
    store.get_many("ns", [str(i) for i in range(500)], fields=["x"])
    assert CountingPipelineClient.executions == 3
    # The server also gets a real EXPIRE for cleanup, close to the TTL.
    assert 0 < client.pttl(f"{redis_prefix}ns:0") <= 60_000
    client.close()


@pytest.fixture(params=["redis", "cluster"])
def redis_where(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(url, prefix) of a single Redis or of the Redis Cluster: the tests below run on both."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return request.getfixturevalue("redis_cluster_url"), request.getfixturevalue("redis_cluster_prefix")


def test_memory_and_redis_answer_identically(redis_where) -> None:
    redis_url, redis_prefix = redis_where
    clock = FakeClock()
    stores = [MemoryStore(clock=clock), RedisStore(redis_url, prefix=redis_prefix, clock=clock)]
    rng = np.random.default_rng(3)
    rows = {
        f"e{i}": {
            "n": int(rng.integers(0, 100)),
            "x": float(rng.random()),
            "v": rng.random(4).astype(np.float32),
        }
        for i in range(200)
    }
    for s in stores:
        s.put_many("ns", rows, ttl_s=30)
        s.put_many("ns", {"forever": {"n": -1}})
        s.delete_many("ns", ["e5", "e6"])
    clock.advance(15)
    keys = [f"e{i}" for i in range(205)] + ["forever"]
    answers = [s.get_many("ns", keys) for s in stores] + [
        s.get_many("ns", keys, fields=["v", "n"]) for s in stores
    ]
    for a, b in [(answers[0], answers[1]), (answers[2], answers[3])]:
        assert len(a) == len(b)
        for ra, rb in zip(a, b, strict=True):
            assert (ra is None) == (rb is None)
            if ra is not None:
                assert set(ra) == set(rb)
                for field in ra:
                    assert_same(rb[field], ra[field])
    clock.advance(16)
    assert stores[0].get_many("ns", keys) == stores[1].get_many("ns", keys) == [None] * 205 + [{"n": -1}]
    stores[1].close()


# ---------------------------------------------------------------------------------------------------
# The serving path under an outage: bounded waits, a typed error, a readiness check.


def test_a_blackholed_store_raises_store_unavailable_on_the_serving_path(blackhole) -> None:
    from mlsd.platform.features.online import StoreUnavailable

    store = RedisStore(blackhole, retry_after_s=60)
    with pytest.raises(StoreUnavailable, match="unreachable") as first:
        store.get_many("users", ["1"], timeout_s=0.2)
    assert "TimeoutError" in str(first.value)
    # The breaker is open: the next call fails without waiting on the network again.
    with pytest.raises(StoreUnavailable, match="failed less than 60 s ago"):
        store.get_many("users", ["1"], timeout_s=0.2)
    assert store.ping() is False
    with pytest.raises(StoreUnavailable):  # writes on the serving path are bounded the same way
        store.put_many("users", {"1": {"age": 3}}, timeout_s=0.2)
    store.close()


def test_a_refused_connection_and_a_spent_budget_are_store_unavailable(blackhole) -> None:
    import socket

    from mlsd.platform.features.online import StoreUnavailable

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailable, match="unreachable"):
        RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0").get_many("users", ["1"], timeout_s=0.2)
    with pytest.raises(StoreUnavailable) as err:
        RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0").get_many("users", ["1"], timeout_s=0.2)
    assert "hunter2" not in str(err.value)  # the password never lands in an error or a log
    with pytest.raises(StoreUnavailable, match="ms left"):
        RedisStore(blackhole).get_many("users", ["1"], timeout_s=0.001)  # no time for a round trip


def test_the_serving_path_reads_the_same_rows_and_pings(redis_where) -> None:
    redis_url, redis_prefix = redis_where
    store = RedisStore(redis_url, prefix=redis_prefix)
    store.put_many("users", {"1": {"age": 30}})
    assert store.get_many("users", ["1", "2"], timeout_s=0.5) == [{"age": 30}, None]
    store.put_many("users", {"2": {"age": 31}}, timeout_s=0.5)
    assert store.get_many("users", ["2"], timeout_s=0.5) == [{"age": 31}]
    assert store.ping() is True
    store.close()


# ---------------------------------------------------------------------------------------------------
# Redis Cluster: the layout (the entity is the hash tag) and the writes that never span slots.


def test_on_a_cluster_rows_are_tagged_by_entity_and_spread_over_the_masters(
    redis_cluster_url, redis_cluster_prefix
) -> None:
    from mlsd.platform.redis_cluster import connect, key_slot

    store = RedisStore(redis_cluster_url, prefix=redis_cluster_prefix)
    store.put_many("user", {str(i): {"x": i} for i in range(300)}, ttl_s=60)
    store.put_many("user_vectors", {"7": {"v": np.ones(2, dtype=np.float32)}})
    client = connect(redis_cluster_url)
    one, other = f"{redis_cluster_prefix}user:{{7}}", f"{redis_cluster_prefix}user_vectors:{{7}}"
    assert client.hget(one, "x") == b"i7" and 0 < client.pttl(one) <= 60_000
    assert key_slot(one) == key_slot(other)  # one entity's rows share a slot across namespaces
    masters = {client.get_node_from_key(store._key("user", str(i))).name for i in range(300)}
    assert len(masters) == len(client.get_primaries())  # one batch wrote to every master
    store.delete_many("user", [str(i) for i in range(150)])  # a DEL over many slots, split by the client
    assert store.get_many("user", ["0", "149", "150"]) == [None, None, {"x": 150}]
    with pytest.raises(InputError) as err:
        RedisStore(redis_cluster_url, prefix="mlsd:{shared}:")
    assert err.value.field == "prefix"
    client.close()
    store.close()


def test_a_cluster_that_lost_its_scripts_is_written_again(redis_cluster_url, redis_cluster_prefix) -> None:
    """After a restart or a failover a node has no scripts: the put loads it again, once."""
    from mlsd.platform.redis_cluster import connect

    store = RedisStore(redis_cluster_url, prefix=redis_cluster_prefix)
    store.put_many("user", {"a": {"x": 1}})
    client = connect(redis_cluster_url)
    client.script_flush()  # on every primary
    store.put_many("user", {str(i): {"x": i} for i in range(50)})
    assert store.get_many("user", ["a", "49"]) == [{"x": 1}, {"x": 49}]
    client.close()
    store.close()


def test_single_redis_keeps_its_layout_and_hash_tags_can_be_asked_for(redis_url, redis_prefix) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    RedisStore(redis_url, prefix=redis_prefix).put_many("u", {"1": {"x": 1}})
    RedisStore(redis_url, prefix=redis_prefix, hash_tags=True).put_many("u", {"2": {"x": 2}})
    assert client.exists(f"{redis_prefix}u:1", f"{redis_prefix}u:{{2}}") == 2
    client.close()


def test_an_unreachable_cluster_is_store_unavailable_not_a_failed_start() -> None:
    """A service builds its store at startup: with the cluster down it must start and serve degraded."""
    import socket

    from mlsd.platform.features.online import StoreUnavailable

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = RedisStore(f"redis+cluster://:hunter2@127.0.0.1:{port}", prefix="mlsd:")  # no error yet
    assert store.cluster and store.hash_tags
    with pytest.raises(StoreUnavailable, match="unreachable") as err:
        store.get_many("users", ["1"], timeout_s=0.2)
    assert "hunter2" not in str(err.value)
    assert store.ping() is False
    store.close()
