"""One contract suite for every WindowStore: in-process and the real Redis give identical answers."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.platform.streaming import MemoryWindowStore, WindowStore, mean_std

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


def test_growth_into_prefilled_arrays_equals_plain_growth(monkeypatch):
    plain = MemoryWindowStore(10_000, n_attrs=2, capacity=8)
    monkeypatch.setattr(plain, "_prepare_growth", lambda: None)  # always the synchronous path
    prefilled = MemoryWindowStore(10_000, n_attrs=2, capacity=8)
    real_prepare = prefilled._prepare_growth
    used = []

    def prepare_and_wait():  # deterministic: the background fill finishes before the next batch
        thread = real_prepare()
        if thread is not None:
            thread.join()
            used.append(prefilled._spare[0])

    monkeypatch.setattr(prefilled, "_prepare_growth", prepare_and_wait)
    views_a, views_b = _grow_workload(plain), _grow_workload(prefilled)
    assert used and prefilled.capacity == plain.capacity > 8
    for name in ("_ts", "_seq", "_value", "_attrs", "_label"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(prefilled, name))
    for a, b in zip(views_a, views_b, strict=True):
        np.testing.assert_array_equal(a.moments(a.window(1000))[1], b.moments(b.window(1000))[1])


def test_reserved_store_never_grows_and_gives_the_same_windows():
    plain = MemoryWindowStore(10_000, n_attrs=2, capacity=8)
    sized = MemoryWindowStore(10_000, n_attrs=2, capacity=8)
    sized.reserve(keys=100, capacity=40)  # 40 rounds up to 64 (capacities double)
    rows = sized._ts.shape[0]
    assert sized.capacity == 64 and rows >= 100
    views_a, views_b = _grow_workload(plain), _grow_workload(sized)
    assert plain.capacity > 8 and sized.capacity == 64 and sized._ts.shape[0] == rows
    for a, b in zip(views_a, views_b, strict=True):
        for w in (50, 1000):
            for x, y in zip(a.moments(a.window(w)), b.moments(b.window(w)), strict=True):
                np.testing.assert_array_equal(x, y)
    sized.reserve(keys=10, capacity=8)  # never shrinks
    assert sized.capacity == 64 and sized._ts.shape[0] == rows


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
