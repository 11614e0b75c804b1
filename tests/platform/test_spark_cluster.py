"""The local Spark standalone cluster the Spark tests run on: a real master and workers from the pyspark
package, on loopback ports only, ended by PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.spark_cluster import LocalSparkCluster, SparkClusterStartError
from mlsd.platform.testing import require_extra


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(pids: list[int]) -> list[str]:
    """Hex local addresses (``/proc/net/tcp{,6}``, state LISTEN) of the sockets the processes ``pids`` hold."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    out.append(cols[1].split(":")[0])
    return out


LOOPBACK = ("0100007F", "0000000000000000FFFF00000100007F")  # 127.0.0.1, as IPv4 and IPv4-mapped IPv6


@pytest.mark.slow
@pytest.mark.services
def test_a_master_and_two_workers_start_on_loopback_and_stop_by_pid():
    require_extra("pyspark", "spark")
    cluster = LocalSparkCluster(workers=2, cores_per_worker=1, memory_per_worker="512m")
    try:
        cluster.start()
        status = cluster.status()
        assert cluster.url is not None and cluster.url.startswith("spark://127.0.0.1:")
        assert status["aliveworkers"] == 2
        assert sorted(w["cores"] for w in status["workers"]) == [1, 1]
        assert {w["memory"] for w in status["workers"]} == {512}
        pids = cluster.pids
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        addresses = _listening(pids)
        assert addresses, "the daemons listen somewhere"
        # Nothing beyond loopback: every socket the master and workers listen on is 127.0.0.1's.
        assert all(a in LOOPBACK for a in addresses), addresses
        # master RPC + web UI, each worker's RPC + web UI; no REST submission server on its fixed 6066
        assert len(addresses) == 2 + 2 * 2, addresses
    finally:
        cluster.stop()
    assert not any(_alive(p) for p in pids)
    assert cluster.url is None and cluster.pids == []


# A driver in its own process (as a job is): a session on the cluster, one job, then it holds its
# executors until its stdin closes.
DRIVER = """
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(sys.argv[1]).config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1").config("spark.ui.enabled", "false")
         .config("spark.executor.memory", "512m").getOrCreate())
assert spark.sparkContext.parallelize(range(8), 4).map(lambda x: x * 2).sum() == 56
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
@pytest.mark.services
def test_stop_ends_the_executors_of_a_running_application_too():
    require_extra("pyspark", "spark")
    from mlsd.platform.spark_cluster import descendants

    cluster = LocalSparkCluster(workers=2, memory_per_worker="512m")
    driver = None
    try:
        cluster.start()
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)  # fmt: skip
        assert driver.stdout.readline().strip() == "ready"
        executors = [pid for worker in cluster.pids[1:] for pid in descendants(worker)]
        assert len(executors) >= 2  # an executor JVM under each worker (and their Python workers)
    finally:
        cluster.stop()
        if driver is not None:
            driver.stdin.close()
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait()
    assert not any(_alive(p) for p in executors)


def test_a_stop_before_start_is_harmless():
    cluster = LocalSparkCluster()
    cluster.stop()  # nothing started: nothing to end
    assert cluster.pids == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": "2"}, "workers"),
        ({"cores_per_worker": -1}, "cores_per_worker"),
        ({"memory_per_worker": "1 GB"}, "memory_per_worker"),
        ({"memory_per_worker": 1024}, "memory_per_worker"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_bad_arguments_name_the_field_the_value_and_the_fix(kwargs, field):
    with pytest.raises(InputError) as err:
        LocalSparkCluster(**kwargs)
    assert err.value.field == field
    assert err.value.value == next(iter(kwargs.values()))
    assert err.value.fix


def test_status_before_start_says_to_start():
    with pytest.raises(SparkClusterStartError, match="start"):
        LocalSparkCluster().status()
