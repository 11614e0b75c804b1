"""RedisWindowStore on a single Redis and on a Redis Cluster.

The window contract (``test_windows.py``: every test taking ``make_store``) runs here once more, on the
3-master Redis Cluster: the cluster opts in with the ``make_store`` factory below. The rest: cells kept
past the horizon (``retain_s``), idle keys' expiry, and on the cluster the per-slot script calls, labels
across slots, lost scripts and a reshard under a live store.
"""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlsd.platform.streaming import MemoryWindowStore

pytestmark = pytest.mark.services


def _window_contract() -> dict:
    """The contract tests of test_windows.py (those taking ``make_store``), collected here as well."""
    spec = importlib.util.spec_from_file_location(
        "_window_contract", Path(__file__).with_name("test_windows.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {
        name: fn
        for name, fn in vars(module).items()
        if name.startswith("test_") and "make_store" in inspect.signature(fn).parameters
    }


globals().update({f"{name}_on_a_cluster": fn for name, fn in _window_contract().items()})


@pytest.fixture
def make_store(redis_cluster_url, redis_cluster_prefix):
    """The Redis Cluster's opt-in to the window contract."""
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    return lambda horizon, n_attrs=0: RedisWindowStore(
        horizon, n_attrs, url=redis_cluster_url, prefix=redis_cluster_prefix
    )


@pytest.fixture(params=["redis", "cluster"])
def redis_where(request) -> tuple[str, str]:
    """(url, prefix) of a single Redis or of the Redis Cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return request.getfixturevalue("redis_cluster_url"), request.getfixturevalue("redis_cluster_prefix")


def test_cells_kept_past_the_horizon_change_no_view(redis_where):
    from mlsd.platform.redis_cluster import connect
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    redis_url, redis_prefix = redis_where
    kept = RedisWindowStore(100, 1, url=redis_url, prefix=redis_prefix + "k:", retain_s=1000)
    memory = MemoryWindowStore(100, 1)
    rng = np.random.default_rng(7)
    for b in range(10):
        n = 25
        keys = rng.integers(0, 3, n).tolist()
        ts = 40 * b + rng.integers(-60, 60, n)  # out of order, events leaving the horizon
        ids = [f"{b}-{i}" for i in range(n)]
        ids[3], keys[3], ts[3] = ids[2], keys[2], ts[2]  # a replay within the batch
        values, attrs = rng.integers(1, 99, n), rng.normal(size=(n, 1))
        a, m = (s.update_many(keys, ids, ts, values, attrs) for s in (kept, memory))
        np.testing.assert_array_equal(a.inserted, m.inserted)
        np.testing.assert_array_equal(a.own_seq, m.own_seq)
        for width in (10, 100):
            for x, y in zip(a.moments(a.window(width)), m.moments(m.window(width)), strict=True):
                np.testing.assert_array_equal(x, y)
        at = np.full(3, 40 * b - 50)  # what-if views in the past of the keys: the kept cells stay hidden
        va, vm = kept.view_many([0, 1, 2], at), memory.view_many([0, 1, 2], at)
        np.testing.assert_array_equal(va.moments(va.window(100))[1], vm.moments(vm.window(100))[1])
    # ... while Redis still holds them: the oldest kept cell is older than the horizon
    client = connect(redis_url)
    h = kept._keys(0)[1]
    blob = client.hget(h, "__blob").decode()
    oldest = min(int(line.split(",")[0]) for line in blob.splitlines())
    assert oldest <= int(client.hget(h, "__max")) - 100
    client.close()


@pytest.mark.parametrize("batched", [True, False])
def test_an_idle_key_expires_after_idle_ttl_and_a_busy_one_is_renewed(redis_where, batched):
    """Bounded state on Redis: each write (re)sets the key's TTL, so keys no event touches go away
    (``idle_ttl_s``); without it a key keeps its last events until it is touched again."""
    import time

    from mlsd.platform.redis_cluster import connect
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    redis_url, redis_prefix = redis_where
    client = connect(redis_url)
    prefix = f"{redis_prefix}ttl{int(batched)}:"
    store = RedisWindowStore(100, 0, url=redis_url, prefix=prefix, batched=batched, idle_ttl_s=1)
    store.update_many(["idle", "busy"], ["a", "b"], np.array([10, 10]), np.array([1, 1]), None)
    assert 0 < client.pttl(store._keys("idle")[1]) <= 1000
    time.sleep(0.6)
    store.update_many(["busy"], ["c"], np.array([20]), np.array([1]), None)
    time.sleep(0.6)
    assert not client.exists(store._keys("idle")[1])  # 1.2 s untouched: gone
    assert client.exists(store._keys("busy")[1])  # touched 0.6 s ago: renewed

    forever = RedisWindowStore(100, 0, url=redis_url, prefix=prefix + "n:", batched=batched)
    forever.update_many(["k"], ["a"], np.array([10]), np.array([1]), None)
    assert client.ttl(forever._keys("k")[1]) == -1  # idle_ttl_s=0: the old behaviour, no expiry
    client.close()


# -- Redis Cluster: a batch split by slot, labels across slots, lost scripts, resharding ----------------


def _random_batches(store, reference, rng, batches: int, n_keys: int, t0: int = 0) -> None:
    """Feed both stores the same micro-batches (replays, late events, labels, reverts) and compare
    every view: the cluster's per-slot calls must answer as one call / the in-process store does.
    Times start near 0, so some labels are negative times (they must still count as labels)."""
    for b in range(batches):
        n = 60
        keys = [f"card-{k}" for k in rng.integers(0, n_keys, n).tolist()]
        ts = t0 + 30 * b + rng.integers(-40, 40, n)
        ids = [f"{t0}-{b}-{i}" for i in range(n)]
        ids[5], keys[5], ts[5] = ids[4], keys[4], ts[4]  # a replay inside the batch
        values, attrs = rng.integers(1, 99, n), rng.normal(size=(n, 1))
        got, want = (s.update_many(keys, ids, ts, values, attrs) for s in (store, reference))
        np.testing.assert_array_equal(got.inserted, want.inserted)
        np.testing.assert_array_equal(got.own_seq, want.own_seq)
        for width in (20, 100):
            for x, y in zip(got.moments(got.window(width)), want.moments(want.window(width)), strict=True):
                np.testing.assert_array_equal(x, y)
            known_got = got.window(width) & (got.label_ts <= got.t[:, None])
            known_want = want.window(width) & (want.label_ts <= want.t[:, None])
            np.testing.assert_array_equal(known_got.sum(axis=1), known_want.sum(axis=1))
        labelled = rng.choice(n, 10, replace=False).tolist()
        for s in (store, reference):
            s.set_labels([keys[i] for i in labelled], [ids[i] for i in labelled], ts[labelled] + 5)
            s.revert_many(keys[7:8], ids[7:8])


def test_a_batch_over_many_slots_answers_as_the_in_process_store(redis_cluster_url, redis_cluster_prefix):
    from mlsd.platform.redis_cluster import connect
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    store = RedisWindowStore(100, 1, url=redis_cluster_url, prefix=redis_cluster_prefix)
    _random_batches(store, MemoryWindowStore(100, 1), np.random.default_rng(11), batches=8, n_keys=40)
    client = connect(redis_cluster_url)
    assert store._keys("card-1") == [
        f"{redis_cluster_prefix}{{card-1}}:z",
        f"{redis_cluster_prefix}{{card-1}}:h",
    ]
    masters = {client.get_node_from_key(store._keys(f"card-{k}")[1]).name for k in range(40)}
    assert len(masters) == len(client.get_primaries())  # the batches spanned every master
    client.close()


def test_a_cluster_that_lost_its_scripts_runs_each_call_once(redis_cluster_url, redis_cluster_prefix):
    from mlsd.platform.redis_cluster import connect
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    rng = np.random.default_rng(5)
    stores = [
        RedisWindowStore(100, 1, url=redis_cluster_url, prefix=f"{redis_cluster_prefix}{b}:", batched=b)
        for b in (True, False)
    ]
    references = [MemoryWindowStore(100, 1), MemoryWindowStore(100, 1)]
    client = connect(redis_cluster_url)
    for round_ in range(2):
        client.script_flush()  # every primary forgets every script (a restart would)
        for store, reference in zip(stores, references, strict=True):
            _random_batches(store, reference, rng, batches=2, n_keys=20, t0=100 * round_)
    client.close()


@pytest.mark.slow
def test_resharding_moves_each_key_with_its_slot_and_a_live_store_follows(
    redis_cluster_url,
):  # the fixture: skip / fail as it does without redis-server
    """``redis-cli --cluster reshard`` moves slots, keys and all, between masters while a store holds a
    stale slot map: its calls get MOVED, are sent again where the slot now lives, and every window
    answers as if nothing had moved (a key's two Redis keys move together: one hash tag, one slot)."""
    from mlsd.platform.redis_cluster import LocalRedisCluster, connect, key_slot
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    with LocalRedisCluster(masters=3) as cluster:
        store = RedisWindowStore(100, 1, url=cluster.url, prefix="win:")
        reference = MemoryWindowStore(100, 1)
        rng = np.random.default_rng(3)
        _random_batches(store, reference, rng, batches=3, n_keys=30)
        client = connect(cluster.url)
        owner = [client.nodes_manager.get_node_from_slot(slot).name for slot in range(16384)]
        first_slot = {name: owner.index(name) for name in set(owner)}
        # redis-cli moves a master's lowest slots first: move just enough of them to take one key along
        slot_of = {k: key_slot(store._keys(f"card-{k}")[1]) for k in range(30)}
        key = min(slot_of, key=lambda k: slot_of[k] - first_slot[owner[slot_of[k]]])
        source = client.get_node_from_key(store._keys(f"card-{key}")[1])
        target = next(n for n in client.get_primaries() if n.name != source.name)
        source_id, target_id = (
            _text(client.execute_command("CLUSTER MYID", target_nodes=node)) for node in (source, target)
        )
        slots = slot_of[key] - first_slot[source.name] + 1
        moved = subprocess.run(
            ["redis-cli", "--cluster", "reshard", source.name, "--cluster-from", source_id,
             "--cluster-to", target_id, "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr
        fresh = connect(cluster.url)
        assert fresh.get_node_from_key(store._keys(f"card-{key}")[1]).name == target.name  # it moved
        assert fresh.exists(store._keys(f"card-{key}")[1]) == 1  # with its state
        _random_batches(store, reference, rng, batches=3, n_keys=30, t0=1000)  # the stale store follows
        fresh.close()
        client.close()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.slow
def test_a_failover_promotes_a_replica_and_a_live_store_follows(
    redis_cluster_url,
):  # the fixture: skip / fail as it does without redis-server
    """A master dies (SIGKILL); its replica takes over its slots. The window store's next call to the dead
    node fails (the caller redelivers, as after any outage) and makes it read the slot map again; from
    then on every window answers as before: the replica holds the state (``WAIT`` made sure of it). The
    online store and the exposure log (redis-py's cluster client) follow the failover as well."""
    import os
    import signal
    import time

    import redis

    from mlsd.platform.experiments.exposures import RedisExposureLog
    from mlsd.platform.features import RedisStore
    from mlsd.platform.features.online import StoreUnavailable
    from mlsd.platform.redis_cluster import LocalRedisCluster, connect
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    with LocalRedisCluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        rows = RedisStore(cluster.url, prefix="rows:")
        rows.put_many("user", {f"card-{k}": {"x": k} for k in range(30)})
        exposures = RedisExposureLog(cluster.url, prefix="exp:")
        exposures.log("e", ["card-0", "card-1"], [0, 1], ts=1)
        store = RedisWindowStore(100, 1, url=cluster.url, prefix="win:")
        reference = MemoryWindowStore(100, 1)
        rng = np.random.default_rng(9)
        _random_batches(store, reference, rng, batches=2, n_keys=30)
        client = connect(cluster.url)
        for node in client.get_primaries():  # every write acknowledged by a replica too
            assert client.execute_command("WAIT", 1, 5000, target_nodes=node) >= 1
        # the first node of the URL dies: clients made from now on must start from another one
        victim = next(n for n in client.get_primaries() if n.port == cluster.ports[0])
        key = next(
            f"card-{k}" for k in range(30) if client.get_node_from_key(store._keys(f"card-{k}")[1]) == victim
        )
        os.kill(cluster.pid_of(victim.port), signal.SIGKILL)
        alive = next(p for p in cluster.ports if p != victim.port)
        deadline = time.monotonic() + 60
        while True:  # the replica is promoted once the other masters agree the master failed
            fresh = connect(f"redis+cluster://127.0.0.1:{alive}")
            moved = fresh.get_node_from_key(store._keys(key)[1]).name != victim.name
            fresh.close()
            if moved and cluster.ready():
                break
            assert time.monotonic() < deadline, "no failover within 60 s"
            time.sleep(0.2)
        keys = [f"card-{k}" for k in range(30)]
        at = np.full(30, 2000)
        # the first call may still reach the dead node: it fails, nothing applied, the map is re-read
        with pytest.raises(redis.ConnectionError):
            store.view_many(keys, at)
        view = store.view_many(keys, at)
        want = reference.view_many(keys, at)
        np.testing.assert_array_equal(view.moments(view.window(1000))[1], want.moments(want.window(1000))[1])
        _random_batches(store, reference, rng, batches=2, n_keys=30, t0=200)

        def after_one_outage(call):
            try:
                return call()
            except (StoreUnavailable, redis.ConnectionError, redis.TimeoutError):
                time.sleep(1.1)  # the serving path's breaker (retry_after_s=1) closes again
                return call()

        got = after_one_outage(lambda: rows.get_many("user", ["card-0", "card-29"], timeout_s=1.0))
        assert got == [{"x": 0}, {"x": 29}]
        after_one_outage(lambda: rows.put_many("user", {"card-0": {"x": -1}}))
        assert rows.get_many("user", ["card-0"]) == [{"x": -1}]
        assert after_one_outage(lambda: exposures.log("e", ["card-0", "card-2"], [0, 0], ts=2)).tolist() == [
            False,
            True,
        ]
        assert exposures.exposures("e")["unit"].tolist() == ["card-0", "card-1", "card-2"]
        client.close()
