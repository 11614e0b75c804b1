"""Exposure logs (one contract over memory and real Redis) and mergeable sufficient statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.assignment import MetricSpec
from mlsd.platform.experiments.exposures import (
    ExposureLog,
    MemoryExposureLog,
    MetricStats,
    RedisExposureLog,
    aggregate,
    aggregate_many,
    exposure_counts,
)


class ExposureLogContract:
    """The exposure-log contract as a test suite: a backend opts in with a subclass whose ``make(request)``
    returns a factory of logs sharing one backend (two Redis clients = two service processes)."""

    def make(self, request: pytest.FixtureRequest):
        raise NotImplementedError

    @pytest.fixture
    def make_log(self, request: pytest.FixtureRequest):
        made = []

        def make_one():
            log = factory()
            made.append(log)
            return log

        factory = self.make(request)
        yield make_one
        for log in made:
            if hasattr(log, "close"):
                log.close()

    def test_each_unit_arm_is_logged_exactly_once(self, make_log):
        log = make_log()
        assert isinstance(log, ExposureLog)
        units = np.array([1, 2, 3, 4, 2, 5])  # 2 twice in one batch
        arms = np.array([0, 1, -1, 1, 1, 0])  # 3 is not in the experiment
        first = log.log("exp-a", units, arms, ts=100)
        assert first.tolist() == [True, True, False, True, False, True]
        again = make_log().log("exp-a", ["1", "2", "4", "6"], [0, 1, 1, 1], ts=np.array([200, 201, 202, 203]))
        assert again.tolist() == [False, False, False, True]  # "1" is the unit 1: ids are normalised to str
        moved = log.log(
            "exp-a", [1], [1], ts=300
        )  # same unit, other arm (its config changed): a new exposure
        assert moved.tolist() == [True]
        other = log.log("exp-b", [1, 2], [0, 0], ts=400)  # experiments are independent
        assert other.tolist() == [True, True]
        frame = log.exposures("exp-a")
        assert list(frame.columns) == ["unit", "arm", "ts"]
        assert frame["unit"].tolist() == ["1", "2", "4", "5", "6", "1"]
        assert frame["arm"].tolist() == [0, 1, 1, 0, 1, 1]
        assert frame["ts"].tolist() == [100, 100, 100, 100, 203, 300]
        assert exposure_counts(frame, 2).tolist() == [2, 3]  # unit 1 counted once, in the arm it saw first
        assert log.exposures("never-logged").empty

    def test_many_exposures_round_trip_in_order(self, make_log):
        log = make_log()
        rng = np.random.default_rng(3)
        units = rng.integers(0, 300, size=1000)
        arms = rng.integers(-1, 3, size=1000)
        new = log.log("exp-big", units, arms, ts=np.arange(1000))
        # Known answer computed independently: the first occurrence of each (unit, arm) with arm >= 0.
        frame = pd.DataFrame({"unit": units.astype(str), "arm": arms, "ts": np.arange(1000)})
        expected = frame[frame["arm"] >= 0].drop_duplicates(["unit", "arm"])
        assert new.sum() == len(expected)
        got = (
            log.exposures("exp-big", page=50)
            if isinstance(log, RedisExposureLog)
            else log.exposures("exp-big")
        )
        pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_dtype=False)

    def test_bad_exposure_batch_is_an_input_error(self, make_log):
        with pytest.raises(InputError) as err:
            make_log().log("exp-a", [1, 2, 3], [0, 1])
        assert err.value.field == "arms"


class TestMemoryExposureLog(ExposureLogContract):
    def make(self, request):
        shared = MemoryExposureLog()
        return lambda: shared


class TestRedisExposureLog(ExposureLogContract):
    def make(self, request):
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        return lambda: RedisExposureLog(url, prefix=prefix, chunk=7)  # tiny chunks exercise the batching


class TestRedisClusterExposureLog(ExposureLogContract):
    def make(self, request):
        url, prefix = (
            request.getfixturevalue("redis_cluster_url"),
            request.getfixturevalue("redis_cluster_prefix"),
        )
        return lambda: RedisExposureLog(url, prefix=prefix, chunk=7)


def test_on_a_cluster_experiments_spread_over_the_masters_and_each_stays_on_one_slot(
    redis_cluster_url, redis_cluster_prefix
):
    from mlsd.platform.redis_cluster import connect, key_slot

    log = RedisExposureLog(redis_cluster_url, prefix=redis_cluster_prefix)
    experiments = [f"exp-{i}" for i in range(30)]
    for name in experiments:
        assert log.log(name, [1, 2, 1], [0, 1, 0], ts=5).tolist() == [True, True, False]
    seen, stream = log._keys("exp-0")
    assert key_slot(seen) == key_slot(stream)  # the script touches both: one slot
    client = connect(redis_cluster_url)
    masters = {client.get_node_from_key(log._keys(name)[0]).name for name in experiments}
    assert len(masters) == len(client.get_primaries())
    assert log.exposures("exp-29")["unit"].tolist() == ["1", "2"]
    client.close()
    log.close()


def test_serving_timeouts_reach_every_node_of_a_cluster(redis_cluster_url, redis_cluster_prefix):
    from mlsd.platform.experiments.client import bound_waits

    log = bound_waits(RedisExposureLog(redis_cluster_url, prefix=redis_cluster_prefix), timeout_s=0.25)
    assert log.log("exp-t", ["a", "b"], [0, 1], ts=1).tolist() == [True, True]
    client = log._client.cluster_client
    assert client.nodes_manager.connection_kwargs["socket_timeout"] == 0.25  # nodes found later
    for node in client.get_nodes():
        assert node.redis_connection.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    log._client.configure(socket_timeout=0.5)  # once the client is made: every node's pool
    assert {
        n.redis_connection.connection_pool.connection_kwargs["socket_timeout"] for n in client.get_nodes()
    } == {0.5}
    log.close()


def test_an_exposure_log_on_an_unreachable_cluster_starts_and_its_calls_are_outages():
    import socket

    from mlsd.platform.experiments.client import is_outage

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = RedisExposureLog(f"redis+cluster://127.0.0.1:{port}", prefix="mlsd:")  # a service still starts
    with pytest.raises(Exception) as err:
        log.log("exp", ["a"], [0])
    assert is_outage(err.value)  # the experiment client pauses experiments instead of failing requests
    log.close()


# ---------------------------------------------------------------------------------------------------
# Sufficient statistics


def test_stats_equal_direct_sums():
    rng = np.random.default_rng(0)
    arm = rng.integers(-1, 3, size=500)
    num, den = rng.poisson(2, 500).astype(float), rng.poisson(5, 500).astype(float) + 1
    st = MetricStats.from_arrays("ctr", ["a", "b", "c"], arm, {"num": num, "den": den})
    for a in range(3):
        m = arm == a
        assert st.n[a] == m.sum()
        assert np.allclose(st.s[a], [num[m].sum(), den[m].sum()])
        assert np.allclose(st.q[a], [[(num[m] ** 2).sum(), (num[m] * den[m]).sum()],
                                     [(num[m] * den[m]).sum(), (den[m] ** 2).sum()]])  # fmt: skip


def test_stats_from_two_shards_add_up_to_the_union():
    rng = np.random.default_rng(1)
    arm = rng.integers(0, 2, size=2000)
    y, x = rng.gamma(2.0, 3.0, 2000), rng.normal(size=2000)
    shard = rng.random(2000) < 0.3
    full = MetricStats.from_arrays("m", ["c", "t"], arm, {"y": y, "x": x})
    a = MetricStats.from_arrays("m", ["c", "t"], arm[shard], {"y": y[shard], "x": x[shard]})
    b = MetricStats.from_arrays("m", ["c", "t"], arm[~shard], {"y": y[~shard], "x": x[~shard]})
    merged = a + b
    assert np.array_equal(merged.n, full.n)
    assert np.allclose(merged.s, full.s) and np.allclose(merged.q, full.q)
    restored = MetricStats.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert np.allclose(restored.q, full.q) and restored.variables == ("y", "x")
    with pytest.raises(InputError):
        merged + MetricStats.from_arrays("other", ["c", "t"], arm, {"y": y, "x": x})


def test_aggregate_sums_events_per_unit_and_counts_silent_units_as_zero():
    exposures = pd.DataFrame({"unit": ["u1", "u2", "u3", "u4"], "arm": [0, 0, 1, 1], "ts": [1, 2, 3, 4]})
    events = pd.DataFrame(
        {
            "unit": ["u1", "u1", "u3", "u9"],  # u2, u4 did nothing; u9 was never exposed
            "clicks": [1, 2, 5, 100],
            "impressions": [10, 10, 10, 100],
            "minutes": [3.0, 4.0, 1.0, 50.0],
        }
    )
    pre = pd.DataFrame({"unit": ["u1", "u2", "u3", "u4"], "pre_minutes": [2.0, 0.0, 1.0, 3.0]})
    specs = [
        MetricSpec("minutes", covariate="pre_minutes"),
        MetricSpec("ctr", kind="ratio", numerator="clicks", denominator="impressions"),
    ]
    stats = aggregate_many(exposures, events, specs, ["c", "t"], covariates=pre)
    minutes, ctr = stats["minutes"], stats["ctr"]
    assert minutes.n.tolist() == [2, 2]
    assert minutes.s[:, 0].tolist() == [7.0, 1.0] and minutes.s[:, 1].tolist() == [2.0, 4.0]
    assert minutes.q[0, 0, 0] == 49.0 and minutes.q[0, 0, 1] == 14.0
    assert ctr.s.tolist() == [[3.0, 20.0], [5.0, 10.0]]
    # Integer unit ids in the events match the string ids of the exposure log.
    int_stats = aggregate(
        pd.DataFrame({"unit": ["7", "8"], "arm": [0, 1], "ts": [0, 0]}),
        pd.DataFrame({"unit": [7, 8, 8], "minutes": [1.0, 2.0, 3.0]}),
        MetricSpec("minutes"),
        ["c", "t"],
    )
    assert int_stats.s[:, 0].tolist() == [1.0, 5.0]
    with pytest.raises(InputError) as err:
        aggregate(exposures, events.drop(columns="clicks"), specs[1], ["c", "t"])
    assert err.value.field == "outcomes.clicks"
    with pytest.raises(InputError) as err:
        aggregate(exposures, events, specs[0], ["c", "t"])
    assert err.value.field == "covariates"
