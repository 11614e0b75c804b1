"""RedisWindowStore's ``retain_s``: cells kept past the horizon for replays, invisible to every view."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.platform.streaming import MemoryWindowStore

pytestmark = pytest.mark.services


def test_cells_kept_past_the_horizon_change_no_view(redis_url, redis_prefix):
    import redis

    from mlsd.platform.streaming.redis_windows import RedisWindowStore

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
    blob = redis.Redis.from_url(redis_url).hget(f"{redis_prefix}k:0:h", "__blob").decode()
    oldest = min(int(line.split(",")[0]) for line in blob.splitlines())
    latest = int(redis.Redis.from_url(redis_url).hget(f"{redis_prefix}k:0:h", "__max"))
    assert oldest <= latest - 100


@pytest.mark.parametrize("batched", [True, False])
def test_an_idle_key_expires_after_idle_ttl_and_a_busy_one_is_renewed(redis_url, redis_prefix, batched):
    """Bounded state on Redis: each write (re)sets the key's TTL, so keys no event touches go away
    (``idle_ttl_s``); without it a key keeps its last events until it is touched again."""
    import time

    import redis

    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    client = redis.Redis.from_url(redis_url)
    prefix = f"{redis_prefix}ttl{int(batched)}:"
    store = RedisWindowStore(100, 0, url=redis_url, prefix=prefix, batched=batched, idle_ttl_s=1)
    store.update_many(["idle", "busy"], ["a", "b"], np.array([10, 10]), np.array([1, 1]), None)
    assert 0 < client.pttl(f"{prefix}idle:h") <= 1000
    time.sleep(0.6)
    store.update_many(["busy"], ["c"], np.array([20]), np.array([1]), None)
    time.sleep(0.6)
    assert not client.exists(f"{prefix}idle:h")  # 1.2 s untouched: gone
    assert client.exists(f"{prefix}busy:h")  # touched 0.6 s ago: renewed

    forever = RedisWindowStore(100, 0, url=redis_url, prefix=prefix + "n:", batched=batched)
    forever.update_many(["k"], ["a"], np.array([10]), np.array([1]), None)
    assert client.ttl(f"{prefix}n:k:h") == -1  # idle_ttl_s=0: the old behaviour, no expiry
