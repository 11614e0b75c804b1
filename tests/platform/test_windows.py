"""One contract suite for every WindowStore: in-process and the real Redis give identical answers."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.streaming import NOT_STORED, MemoryWindowStore, WindowStore, mean_std

HOUR = 3600


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    if request.param == "memory":
        return lambda horizon, n_attrs=0: MemoryWindowStore(horizon, n_attrs, capacity=2)
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    return lambda horizon, n_attrs=0: RedisWindowStore(horizon, n_attrs, url=url, prefix=prefix)


def _window_stats(view, width):
    return view.moments(view.window(width))


def test_implements_protocol(make_store):
    assert isinstance(make_store(HOUR), WindowStore)


def test_known_answer_windows_include_self_and_exclude_expired(make_store):
    store = make_store(10 * HOUR)
    # key a: events at 0h, 1h, 2h, 3h (values 1..4); key b interleaved
    keys = ["a", "b", "a", "a", "b", "a"]
    ts = np.array([0, 0, HOUR, 2 * HOUR, 2 * HOUR, 3 * HOUR])
    values = np.array([1, 10, 2, 3, 20, 4])
    view = store.update_many(keys, ["e1", "e2", "e3", "e4", "e5", "e6"], ts, values)
    count, total, squares = _window_stats(view, 2 * HOUR)  # (t - 2h, t]
    assert count.tolist() == [1, 1, 2, 2, 1, 2]  # a@3h sees 2h and 3h only: 1h is exactly at the edge
    assert total.tolist() == [1, 10, 3, 5, 20, 7]
    assert squares.tolist() == [1, 100, 5, 13, 400, 25]
    mean, std = mean_std(count, total, squares)
    assert mean[5] == 3.5 and std[5] == 0.5
    assert view.inserted.all()
    assert view.own_seq.tolist() == [0, 0, 1, 2, 1, 3]


def test_delayed_window_and_labels_known_at_decision_time(make_store):
    store = make_store(100)
    store.update_many(["t"] * 3, [1, 2, 3], np.array([10, 20, 30]), np.array([1, 1, 1]))
    assert store.set_labels(["t", "t"], [1, 2], np.array([35, 50])) == 2
    assert store.set_labels(["t"], ["nope"], np.array([1])) == 0
    view = store.update_many(["t"], [4], np.array([40]), np.array([1]))
    known = view.window(width=30, delay=5) & (view.label_ts <= view.t[:, None])
    assert view.moments(view.window(30, 5))[0].tolist() == [3]  # ts in (5, 35]
    assert known.sum() == 1  # label of 1 known at 35 <= 40; label of 2 only at 50


def test_replay_changes_nothing(make_store):
    store = make_store(HOUR)
    first = store.update_many(["k", "k"], ["x", "y"], np.array([100, 200]), np.array([5, 7]))
    again = store.update_many(
        ["k", "k", "k"], ["x", "y", "y"], np.array([100, 200, 200]), np.array([5, 7, 7])
    )
    assert not again.inserted.any()
    assert again.own_seq.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(
        again.moments(again.window(HOUR))[1][:2], first.moments(first.window(HOUR))[1]
    )
    np.testing.assert_array_equal(again.moments(again.window(HOUR))[1], [5, 12, 12])
    later = store.update_many(["k"], ["z"], np.array([300]), np.array([1]))
    assert later.moments(later.window(HOUR))[0].tolist() == [3]  # x, y counted once each


def test_duplicate_id_inside_one_batch_counts_once(make_store):
    store = make_store(HOUR)
    view = store.update_many(["k", "k"], ["x", "x"], np.array([100, 100]), np.array([5, 5]))
    assert view.inserted.tolist() == [True, False]
    assert view.moments(view.window(HOUR))[0].tolist() == [1, 1]


def test_too_late_event_is_not_stored_and_horizon_trims(make_store):
    store = make_store(100)
    store.update_many(["k"], ["a"], np.array([1000]), np.array([1]))
    late = store.update_many(["k"], ["old"], np.array([850]), np.array([1]))
    assert not late.inserted.any()
    view = store.view_many(["k", "unknown"], np.array([1050, 1050]))
    assert view.moments(view.window(100))[0].tolist() == [1, 0]


def test_revert_removes_an_event(make_store):
    store = make_store(HOUR)
    store.update_many(["k", "k"], ["a", "b"], np.array([10, 20]), np.array([3, 4]))
    assert store.revert_many(["k"], ["a"]) == 1
    assert store.revert_many(["k"], ["a"]) == 0
    view = store.view_many(["k"], np.array([30]))
    assert view.moments(view.window(HOUR))[1].tolist() == [4]
    replay = store.update_many(["k"], ["a"], np.array([10]), np.array([3]))
    assert not replay.inserted.any()


def test_attrs_round_trip_exactly(make_store):
    store = make_store(HOUR, n_attrs=2)
    attrs = np.array([[48.858370, 2.294481], [0.1 + 0.2, -1e-300]])
    view = store.update_many(["k", "k"], [1, 2], np.array([1, 2]), np.array([1, 1]), attrs)
    order = np.argsort(np.where(view.seq[1] < 0, 99, view.seq[1]))
    got = view.attrs[1][order][:2]
    np.testing.assert_array_equal(got, attrs)


def test_capacity_grows_so_windows_stay_exact(make_store):
    store = make_store(10_000)
    rng = np.random.default_rng(0)
    n = 60
    keys = rng.integers(0, 3, n).tolist()
    ts = np.sort(rng.integers(0, 5000, n))
    values = rng.integers(0, 100, n)
    views = [
        store.update_many(keys[i : i + 7], list(range(i, min(i + 7, n))), ts[i : i + 7], values[i : i + 7])
        for i in range(0, n, 7)
    ]
    counts = np.concatenate([v.moments(v.window(1000))[0] for v in views])
    sums = np.concatenate([v.moments(v.window(1000))[1] for v in views])
    keys_a = np.array(keys)
    for i in range(n):  # brute force reference
        m = (keys_a[: i + 1] == keys_a[i]) & (ts[: i + 1] > ts[i] - 1000)
        assert counts[i] == m.sum() and sums[i] == values[: i + 1][m].sum()


def _grow_workload(store: MemoryWindowStore) -> list:
    """Batches that push one key past the initial capacity (attrs and labels set on the way)."""
    rng = np.random.default_rng(1)
    views = []
    for b in range(6):
        n = 12
        keys = [0] * 8 + rng.integers(1, 5, n - 8).tolist()  # key 0 grows, the others stay small
        ids = list(range(b * n, (b + 1) * n))
        ts = np.full(n, 100 * b) + np.arange(n)
        attrs = rng.normal(size=(n, 2))
        views.append(store.update_many(keys, ids, ts, rng.integers(0, 100, n), attrs))
        store.set_labels([0], [ids[0]], np.array([100 * b + 50]))
    return views


def test_growing_one_key_leaves_the_others_rings_alone():
    """Each key's ring is sized to its own events: the busy key grows, the others keep their first ring."""
    store = MemoryWindowStore(10_000, n_attrs=2, capacity=8)
    views = _grow_workload(store)
    assert store.capacity > 8  # key 0's ring grew
    held = len(store)
    assert store._cap[store._slots[0]] == store.capacity
    assert (store._cap[1:held] < store.capacity).all()  # the others: rings for their own events
    reference = _grow_workload(MemoryWindowStore(10_000, n_attrs=2, capacity=64))  # never grows
    for a, b in zip(views, reference, strict=True):
        for w in (50, 1000):
            for x, y in zip(a.moments(a.window(w)), b.moments(b.window(w)), strict=True):
                np.testing.assert_array_equal(x, y)


def test_reserved_store_never_grows_and_gives_the_same_windows():
    plain = MemoryWindowStore(10_000, n_attrs=2, capacity=8)
    sized = MemoryWindowStore(10_000, n_attrs=2, capacity=8)
    sized.reserve(keys=100, capacity=40)  # 40 rounds up to 64 (capacities double)
    cells = sized._ts.shape[0]  # the arena: every ring's cells
    assert sized.capacity == 64 and cells >= 100
    views_a, views_b = _grow_workload(plain), _grow_workload(sized)
    assert plain.capacity > 8 and sized.capacity == 64 and sized._ts.shape[0] == cells
    for a, b in zip(views_a, views_b, strict=True):
        for w in (50, 1000):
            for x, y in zip(a.moments(a.window(w)), b.moments(b.window(w)), strict=True):
                np.testing.assert_array_equal(x, y)
    sized.reserve(keys=10, capacity=8)  # never shrinks
    assert sized.capacity == 64 and sized._ts.shape[0] == cells


def test_prune_forgets_only_ids_outside_the_horizon():
    store = MemoryWindowStore(1_000)
    n = 60_000
    keys = (np.arange(n) % 500).tolist()
    store.update_many(keys, list(range(n)), np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64))
    assert len(store._events) == n  # below the first prune mark: nothing scanned
    later = np.full(n, 5_000, dtype=np.int64)  # the first batch is now outside every key's horizon
    store.update_many(keys, list(range(n, 2 * n)), later, np.ones(n, dtype=np.int64))
    assert len(store._events) == n  # pruned: only the live batch's ids are kept
    view = store.update_many([0], [n], np.array([5_000]), np.array([1]))  # a live id: a replay
    assert not view.inserted.any()


# -- micro-batches: several events of a key, out of order, replayed, at the horizon's edge -------------
def _brute_force(keys, ids, ts, values, horizon, width):
    """Reference: apply events one at a time in arrival order; per event, count and sum of (t - width, t]
    over what it saw: the events stored up to it (up to the original for a replay), less those that
    left the key's horizon (at or below its latest - horizon)."""
    stored: dict = {}  # id -> (key, ts, value, order stored)
    latest: dict = {}
    counts, sums = [], []
    for k, i, t, v in zip(keys, ids, ts.tolist(), values.tolist(), strict=True):
        if i not in stored and (k not in latest or t > latest[k] - horizon):
            stored[i] = (k, t, v, len(stored))
            latest[k] = max(latest.get(k, t), t)
        cut = latest.get(k, t) - horizon
        upto = len(stored)
        if i in stored and stored[i][0] == k and stored[i][1] > cut:
            upto = stored[i][3] + 1  # a replay sees what the original saw
        inside = [
            vv
            for kk, tt, vv, o in stored.values()
            if kk == k and o < upto and tt > cut and t - width < tt <= t
        ]
        counts.append(len(inside))
        sums.append(sum(inside))
    return counts, sums


def test_one_batch_out_of_order_with_replays_of_one_key(make_store):
    store = make_store(100)
    keys = ["k"] * 6 + ["j"]
    ids = ["a", "b", "c", "b", "d", "a", "z"]
    ts = np.array([50, 30, 40, 30, 60, 50, 35])
    values = np.array([1, 2, 4, 2, 8, 1, 16])
    view = store.update_many(keys, ids, ts, values)
    assert view.inserted.tolist() == [True, True, True, False, True, False, True]
    assert view.own_seq.tolist() == [0, 1, 2, 1, 3, 0, 0]
    count, total, _ = view.moments(view.window(15))
    # each event sees the events applied before it (arrival order) inside (t - 15, t]:
    # a@50: a | b@30: b | c@40: b, c | b again: as b saw it | d@60: a, d | a again: as a saw it | z alone
    assert count.tolist() == [1, 1, 2, 1, 2, 1, 1]
    assert total.tolist() == [1, 2, 6, 2, 9, 1, 16]
    later = store.view_many(["k"], np.array([60]))
    assert later.moments(later.window(100))[1].tolist() == [15]  # a, b, c, d once each


def test_eviction_exactly_at_the_window_edge(make_store):
    store = make_store(100)
    ts = np.array([0, 50, 100])
    first = store.update_many(["k", "k", "k"], ["e0", "e50", "e100"], ts, np.array([1, 2, 4]))
    assert first.moments(first.window(100))[1].tolist() == [1, 3, 6]  # (0, 100] excludes 0
    # 0 = latest - horizon: left the horizon (forgotten, whatever a window's width), not stored again;
    # 1 is inside: stored
    edge = store.update_many(["k", "k"], ["late0", "late1"], np.array([0, 1]), np.array([8, 16]))
    assert edge.inserted.tolist() == [False, True]
    assert edge.moments(edge.window(100))[1].tolist() == [0, 16]
    assert not store.update_many(["k"], ["e0"], np.array([0]), np.array([1])).inserted.any()
    view = store.view_many(["k", "k"], np.array([100, 150]))
    assert view.moments(view.window(100))[1].tolist() == [22, 4]  # 1 + 50 + 100 | only 100 in (50, 150]
    # 151 moves the key's latest: 50 leaves the horizon (50 <= 151 - 100) before its replay arrives
    moved = store.update_many(["k", "k"], ["e151", "e50"], np.array([151, 50]), np.array([32, 2]))
    assert moved.inserted.tolist() == [True, False]
    assert moved.own_seq[1] == NOT_STORED
    assert moved.moments(moved.window(100))[1].tolist() == [36, 0]
    assert moved.moments(moved.window(1000))[1].tolist() == [36, 0]  # wider than the horizon: same


def test_random_micro_batches_match_one_by_one_application(make_store):
    horizon = 100
    store = make_store(horizon)
    rng = np.random.default_rng(7)
    hist_k: list = []
    hist_i: list = []
    hist_t: list = []
    hist_v: list = []
    for b in range(12):
        n = 40
        keys = rng.integers(0, 4, n).tolist()
        ts = 30 * b + rng.integers(-40, 40, n)  # out of order within the batch, spread < horizon
        ts[:3] = 30 * b - 150  # too late for keys that have moved on
        values = rng.integers(1, 50, n)
        ids = [f"{b}-{i}" for i in range(n)]
        # at-least-once delivery: the same event again, later in this batch or from an earlier one
        for r in rng.choice(np.arange(1, n), 3, replace=False).tolist():
            keys[r], ids[r], ts[r], values[r] = keys[r - 1], ids[r - 1], ts[r - 1], values[r - 1]
        if hist_i:
            for r, old in zip(
                rng.choice(n, 2, replace=False).tolist(), rng.choice(len(hist_i), 2), strict=True
            ):
                keys[r], ids[r], ts[r], values[r] = hist_k[old], hist_i[old], hist_t[old], hist_v[old]
        view = store.update_many(keys, ids, ts, values)
        hist_k += keys
        hist_i += ids
        hist_t += ts.tolist()
        hist_v += values.tolist()
        for width in (20, 100, 1000):  # narrower than, equal to and wider than the horizon
            counts, sums = _brute_force(hist_k, hist_i, np.array(hist_t), np.array(hist_v), horizon, width)
            got = view.moments(view.window(width))
            assert got[0].tolist() == counts[-n:], (b, width)
            assert got[1].tolist() == sums[-n:], (b, width)


def test_batch_spanning_more_than_the_horizon(make_store):
    store = make_store(100)
    keys, ts = ["k"] * 5, np.array([50, 200, 50, 120, 100])
    # 50 is stored, 200 moves the key on (50 leaves), so the replay of 50 and the new 100 are too late
    view = store.update_many(keys, ["a", "b", "a", "c", "d"], ts, np.array([1, 2, 1, 4, 8]))
    assert view.inserted.tolist() == [True, True, False, True, False]
    assert view.own_seq.tolist() == [0, 1, NOT_STORED, 2, NOT_STORED]
    for width in (100, 1000):  # 120 does not see 50 (gone) nor 200 (later in time)
        assert view.moments(view.window(width))[1].tolist() == [1, 2, 0, 4, 0]
    # what each saw before it: 200 no longer sees 50; the events not stored see 200 (and 120)
    assert view.moments(view.before() & (view.ts > 0))[1].tolist() == [0, 0, 2, 2, 6]


def _redis_state(client, prefix):
    state = {}
    for key in client.scan_iter(match=prefix + "*"):
        name = key.decode()[len(prefix) :]
        if client.type(key) == b"zset":
            state[name] = client.zrange(key, 0, -1, withscores=True)
        else:
            state[name] = client.hgetall(key)
    return state


def test_batched_redis_equals_the_per_event_reference(redis_url, redis_prefix):
    """One script per batch leaves the same Redis state and gives the same views as one per event."""
    import redis

    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    batched = RedisWindowStore(100, 1, url=redis_url, prefix=redis_prefix + "b:")
    single = RedisWindowStore(100, 1, url=redis_url, prefix=redis_prefix + "s:", batched=False)
    rng = np.random.default_rng(3)
    prev_keys, prev_ts = [], np.zeros(0, dtype=np.int64)
    for b in range(8):
        n = 30
        keys = rng.integers(0, 3, n).tolist()
        ts = 40 * b + rng.integers(-60, 60, n)
        ts[:2] += 150  # jumps ahead: events of the same batch drop out of the horizon
        ids = [f"{b}-{i}" for i in range(n)]
        ids[5], keys[5], ts[5] = ids[4], keys[4], ts[4]
        if b:
            ids[6], keys[6], ts[6] = f"{b - 1}-7", prev_keys[7], prev_ts[7]
        values, attrs = rng.integers(1, 99, n), rng.normal(size=(n, 1))
        views = [s.update_many(keys, ids, ts, values, attrs) for s in (batched, single)]
        a, c = views
        np.testing.assert_array_equal(a.inserted, c.inserted)
        np.testing.assert_array_equal(a.own_seq, c.own_seq)
        for width in (10, 100, 1000):
            for x, y in zip(a.moments(a.window(width)), c.moments(c.window(width)), strict=True):
                np.testing.assert_array_equal(x, y)
        for s in (batched, single):
            s.set_labels(keys[:3], ids[:3], np.full(3, 40 * b))
            s.revert_many(keys[8:9], ids[8:9])
        prev_keys, prev_ts = keys, ts
    client = redis.Redis.from_url(redis_url)
    assert _redis_state(client, redis_prefix + "b:") == _redis_state(client, redis_prefix + "s:")
    view_a = batched.view_many([0, 1, 2, 9], np.array([300, 300, 250, 300]))
    view_b = single.view_many([0, 1, 2, 9], np.array([300, 300, 250, 300]))
    known_a = view_a.window(100) & (view_a.label_ts <= view_a.t[:, None])
    known_b = view_b.window(100) & (view_b.label_ts <= view_b.t[:, None])
    np.testing.assert_array_equal(known_a.sum(axis=1), known_b.sum(axis=1))
    np.testing.assert_array_equal(
        view_a.moments(view_a.window(100))[1], view_b.moments(view_b.window(100))[1]
    )


def test_sending_batches_first_and_reading_later_gives_the_same_views(redis_url, redis_prefix):
    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    stores = [RedisWindowStore(HOUR, url=redis_url, prefix=f"{redis_prefix}{i}:") for i in range(3)]
    ts = np.array([10, 20, 30, 40])
    finish = [
        s.update_many_begin(["a", "b", "a", "a"], [1, 2, 3, 4], ts, np.array([1, 2, 3, 4])) for s in stores
    ]
    views = [f() for f in reversed(finish)]  # read in any order
    for v in views:
        assert v.moments(v.window(HOUR))[1].tolist() == [1, 2, 4, 8]
    # members are stored one a line: an id with a line break is refused, on either path
    for store in (
        stores[0],
        RedisWindowStore(HOUR, url=redis_url, prefix=redis_prefix + "s:", batched=False),
    ):
        with pytest.raises(InputError, match="ids"):
            store.update_many(["a", "a"], ["x\ny", 5], np.array([50, 60]), np.array([16, 4]))


def test_keys_of_the_earlier_sorted_set_layout_are_moved_over(redis_url, redis_prefix):
    """State written before members moved into one hash field (a sorted set per key) keeps counting."""
    import redis

    from mlsd.platform.streaming.redis_windows import RedisWindowStore

    client = redis.Redis.from_url(redis_url)
    z, h = f"{redis_prefix}k:z", f"{redis_prefix}k:h"
    client.zadd(z, {"10,0,3#a": 10, "20,1,4#b": 20})
    client.hset(h, mapping={"e:a": "10,0,3#a", "e:b": "20,1,4#b", "__seq": 2, "__max": 20})
    store = RedisWindowStore(HOUR, url=redis_url, prefix=redis_prefix)
    view = store.update_many(["k", "k"], ["b", "c"], np.array([20, 30]), np.array([4, 5]))
    assert view.inserted.tolist() == [False, True] and view.own_seq.tolist() == [1, 2]
    assert view.moments(view.window(HOUR))[1].tolist() == [7, 12]
    assert not client.exists(z) and client.hget(h, "__blob") == b"10,0,3#a\n20,1,4#b\n30,2,5#c\n"


# -- bounded state: rings sized per key, idle keys evicted, caps -----------------------------------------
def _many_keys_and_one_busy(store: MemoryWindowStore, n_keys: int, busy_events: int) -> None:
    """``n_keys`` keys with one event each, then one key with ``busy_events`` events, all at t < 1000."""
    keys = [f"k{i}" for i in range(n_keys)]
    ts = np.sort(np.random.default_rng(0).integers(0, 500, n_keys))
    for i in range(0, n_keys, 10_000):
        j = slice(i, i + 10_000)
        store.update_many(keys[j], keys[j], ts[j], np.ones(ts[j].size, dtype=np.int64))
    busy = np.arange(busy_events, dtype=np.int64) * 500 // busy_events + 500
    _busy_key(store, busy, "b")


def _busy_key(store: MemoryWindowStore, ts: np.ndarray, prefix: str) -> None:
    """Events of one key at ``ts``, in batches of 256 (a view is batch x ring: keep it small)."""
    for i in range(0, ts.size, 256):
        t = ts[i : i + 256]
        store.update_many(["busy"] * t.size, [f"{prefix}{i + j}" for j in range(t.size)], t, np.ones_like(t))


def test_memory_is_proportional_to_each_keys_events_not_to_the_busiest_key():
    """100,000 keys with one event and one key with thousands: bytes per stored event stay small, and
    the busy key's width costs only its own ring (a dense layout would cost 100,000 x its width)."""
    n_keys = 100_000
    sizes = {}
    for busy_events in (1_000, 8_000):
        store = MemoryWindowStore(10_000, capacity=2)
        _many_keys_and_one_busy(store, n_keys, busy_events)
        assert len(store) == n_keys + 1 and store.capacity >= busy_events
        sizes[busy_events] = store.nbytes
        assert store.nbytes < 400 * (n_keys + busy_events)  # arrays, slack and both hash tables
    assert sizes[8_000] - sizes[1_000] < 400 * 7_000  # 7,000 more events of one key: their bytes only
    view = store.view_many(["k5", "busy", "new"], np.array([999, 999, 999]))
    assert view.moments(view.window(10_000))[0].tolist() == [1, 8_000, 0]


def test_idle_keys_are_evicted_after_the_horizon_and_the_busy_key_stays():
    store = MemoryWindowStore(1_000, capacity=2, lateness_s=0)
    _many_keys_and_one_busy(store, 100_000, 2_000)
    before = store.nbytes
    later = np.arange(2_000, dtype=np.int64) + 2_000  # the stream moves on: only the busy key is active
    _busy_key(store, later, "c")
    evicted = store.evict()
    assert evicted == {"idle": 100_000, "max_keys": 0, "max_events": 0}
    assert len(store) == 1 and len(store._events) == 1_000  # only the busy key's ids in (2999, 3999]
    assert store.nbytes < before / 10  # the arena keeps its size; hash tables and rings shrank
    view = store.view_many(["busy", "k7"], np.array([4_000, 4_000]))
    assert view.moments(view.window(1_000))[0].tolist() == [999, 0]  # (3000, 4000]


def _stream(rng, n_batches, n_keys, horizon):
    """Time-ordered micro-batches (jitter within a batch), a few replays and reverts."""
    prev = None
    for b in range(n_batches):
        n = 50
        keys = rng.integers(0, n_keys, n) * (b // 4 + 1)  # new keys over time, old ones go idle
        ts = 40 * b + np.sort(rng.integers(0, 60, n))
        ids = [f"{b}-{i}" for i in range(n)]
        if prev is not None:
            ids[7], keys[7], ts[7] = f"{b - 1}-3", prev[0][3], prev[1][3]  # an at-least-once replay
        prev = (keys, ts)
        yield keys.tolist(), ids, ts, rng.integers(1, 99, n), rng.normal(size=(n, 2))


def test_eviction_passes_leave_every_window_identical():
    """A store that runs an eviction pass after every batch answers exactly as one that never does,
    for events no later than ``lateness`` behind the stream - whatever the window's width."""
    horizon = 200
    kept = MemoryWindowStore(horizon, n_attrs=2, capacity=2)
    evicting = MemoryWindowStore(horizon, n_attrs=2, capacity=2, lateness_s=horizon)
    evicted = 0
    for keys, ids, ts, values, attrs in _stream(np.random.default_rng(5), 60, 6, horizon):
        a = kept.update_many(keys, ids, ts, values, attrs)
        b = evicting.update_many(keys, ids, ts, values, attrs)
        for s in (kept, evicting):
            s.set_labels(keys[:2], ids[:2], ts[:2] + 5)
            s.revert_many(keys[9:10], ids[9:10])
        np.testing.assert_array_equal(a.inserted, b.inserted)
        # a key evicted and seen again restarts its sequence numbers: only 'not stored' must agree
        np.testing.assert_array_equal(a.own_seq == NOT_STORED, b.own_seq == NOT_STORED)
        for width in (30, horizon, 10 * horizon):
            for x, y in zip(a.moments(a.window(width)), b.moments(b.window(width)), strict=True):
                np.testing.assert_array_equal(x, y)
            known_a = (a.window(width) & (a.label_ts <= a.t[:, None])).sum(axis=1)
            np.testing.assert_array_equal(
                known_a, (b.window(width) & (b.label_ts <= b.t[:, None])).sum(axis=1)
            )
        evicted += evicting.evict()["idle"]
    assert evicted > 0 and len(evicting) < len(kept)


def test_a_future_dated_event_does_not_evict_every_key():
    """The store's clock is the median of recent event times: one payment dated in the year 3000
    moves its own key only."""
    store = MemoryWindowStore(100, capacity=2, lateness_s=0)
    ts = np.arange(1_000, dtype=np.int64)
    store.update_many((np.arange(1_000) % 50).tolist(), list(range(1_000)), ts, np.ones_like(ts))
    store.update_many(["attacker"], ["x"], np.array([32_503_680_000]), np.array([1]))
    assert store.evict()["idle"] == 0 and store.clock < 1_000
    view = store.view_many([0], np.array([960]))  # key 0's events at 900 and 950 are still there
    assert view.moments(view.window(100))[0].tolist() == [2]


def test_an_event_behind_the_floor_on_an_evicted_key_is_too_late_not_counted_twice():
    store = MemoryWindowStore(100, capacity=2, lateness_s=0)
    store.update_many(["old"], ["a"], np.array([10]), np.array([1]))
    t = np.arange(1_000, 2_000, dtype=np.int64)
    _busy_key(store, t, "b")
    assert store.evict()["idle"] == 1 and store.floor > 10
    ids_before = len(store._events)
    replay = store.update_many(["old", "new"], ["a", "n"], np.array([10, 20]), np.array([1, 1]))
    assert replay.inserted.tolist() == [False, False]
    assert (replay.own_seq == NOT_STORED).all() and len(store._events) == ids_before
    assert store.evict()["idle"] == 2  # the keys were only named: the next pass drops them
    fresh = store.update_many(["old"], ["c"], np.array([1_999]), np.array([1]))
    assert fresh.inserted.tolist() == [True] and fresh.moments(fresh.window(100))[0].tolist() == [1]


def test_caps_evict_least_recently_used_keys_with_a_metric_and_a_log_line(caplog):
    from mlsd.platform.serving import REGISTRY

    def evictions(reason):
        labels = {"store": "test-cap", "reason": reason}
        return REGISTRY.get_sample_value("mlsd_window_evictions_total", labels) or 0.0

    store = MemoryWindowStore(10_000, capacity=2, max_keys=1_000, max_events=3_000, name="test-cap")
    before = evictions("max_keys")
    with caplog.at_level(logging.WARNING, logger="mlsd.streaming"):
        for b in range(12):  # 1,200 keys in all, each batch newer than the last
            keys = list(range(100 * b, 100 * (b + 1)))
            store.update_many(keys, keys, np.full(100, b), np.ones(100, dtype=np.int64))
    assert len(store) <= 1_000 and evictions("max_keys") > before
    assert 0 not in store._slots and 1_199 in store._slots  # the oldest went first
    assert any("max_keys=1000" in r.getMessage() for r in caplog.records)
    before = evictions("max_events")
    _busy_key(store, np.arange(4_000, dtype=np.int64) + 100, "b")  # past max_events alone: it goes too
    assert evictions("max_events") > before and store._top - store._garbage <= 3_000
