"""The payment stream partitioned by card on a real 3-master Redis Cluster (started on free loopback
ports for this module, stopped by process id): card windows and records on the partition's slot,
shared-entity windows bucketed, one worker process per partition, one of them killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlsd.fraud.distributed import (
    BucketedWindowStore,
    ClusterLayout,
    PartitionFeatureEngine,
    cluster_client,
    partition_of,
    publish_partitioned,
    read_partitioned_decisions,
)
from mlsd.fraud.features import FeatureEngine, RedisRecords, replay
from mlsd.fraud.stream import ensure_group, read_dead_letters

pytestmark = [pytest.mark.services]

WORKER = "import sys; from mlsd.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def cluster_url(redis_cluster_url):
    return redis_cluster_url  # the session's 3-master cluster (tests/conftest.py)


@pytest.fixture
def layout_prefix(redis_cluster_prefix):
    return redis_cluster_prefix  # its keys deleted from every master after the test


def _payments(n_cards=120, days=3, seed=3):
    from mlsd.fraud.world import simulate

    return simulate(n_cards=n_cards, n_terminals=30, days=days, seed=seed)


def test_partitions_are_stable_and_spread_over_the_masters(cluster_url, layout_prefix):
    layout = ClusterLayout(3, layout_prefix)
    cluster = cluster_client(cluster_url)
    homes = {cluster.get_node_from_key(layout.partition_prefix(p)).port for p in range(3)}
    assert len(homes) == 3  # one partition per master on an evenly sliced cluster
    part = partition_of(np.arange(3000), 3)
    assert np.bincount(part).min() > 800  # roughly even
    assert partition_of(["17", 17.0], 3).tolist() == [partition_of([17], 3)[0]] * 2


def test_one_partition_on_the_cluster_gives_the_single_process_features_exactly(cluster_url, layout_prefix):
    tx = _payments()
    want = replay(FeatureEngine(), tx)
    engine = PartitionFeatureEngine(
        None, cluster_url=cluster_url, layout=ClusterLayout(1, layout_prefix), partition=0
    )
    got = replay(engine, tx)
    np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
    # a replay (a redelivered batch) is answered from the records, windows untouched
    again = engine.update_batch(tx.iloc[100:200])
    np.testing.assert_array_equal(again.to_numpy(), want.iloc[100:200].to_numpy())
    assert isinstance(engine.stores["terminal"], BucketedWindowStore)


def test_two_partitions_keep_card_features_exact_and_count_shared_windows_once(cluster_url, layout_prefix):
    tx = _payments()
    want = replay(FeatureEngine(), tx)
    layout = ClusterLayout(2, layout_prefix)
    part = partition_of(tx["card_id"], 2)
    engines = [
        PartitionFeatureEngine(None, cluster_url=cluster_url, layout=layout, partition=p) for p in (0, 1)
    ]
    # the partitions interleave by batch, as two workers do
    got = {p: [] for p in (0, 1)}
    frames = {p: tx[part == p] for p in (0, 1)}
    for start in range(0, max(len(f) for f in frames.values()), 64):
        for p in (0, 1):
            chunk = frames[p].iloc[start : start + 64]
            if len(chunk):
                got[p].append(engines[p].update_batch(chunk).set_index(chunk.index))
    import pandas as pd

    merged = pd.concat([*got[0], *got[1]]).sort_index()
    card = [c for c in want.columns if c.startswith(("card_", "seq"))]
    np.testing.assert_array_equal(merged[card].to_numpy(), want[card].to_numpy())
    # every payment is in its terminal's window once: a view at the end counts them all
    horizon = engines[0].stores["terminal"].horizon_s
    end = int(tx["ts"].max())
    terminals = np.unique(tx["terminal_id"].to_numpy())
    view = engines[0].stores["terminal"].view_many(terminals.tolist(), np.full(terminals.size, end))
    counts = view.moments(view.window(horizon))[0]
    recent = tx[tx["ts"] > end - horizon]
    expected = recent.groupby("terminal_id").size().reindex(terminals, fill_value=0).to_numpy()
    np.testing.assert_array_equal(counts, expected)


def test_publish_routes_each_payment_to_its_cards_partition(cluster_url, layout_prefix):
    tx = _payments(n_cards=60, days=1).drop(columns=["fraud", "scenario", "label_ts"])
    layout = ClusterLayout(2, layout_prefix)
    cluster = cluster_client(cluster_url)
    sent = publish_partitioned(cluster, layout, tx)
    assert sum(sent) == len(tx)
    for p in (0, 1):
        entries = cluster.xrange(layout.partition_prefix(p) + "payments")
        cards = [json.loads(fields[b"p"])["card_id"] for _, fields in entries]
        assert len(cards) == sent[p] and set(partition_of(cards, 2).tolist()) <= {p}


# ---------------------------------------------------------------------------------------------------
# chaos: a partition's worker killed mid-run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from mlsd.cli import main

    work = tmp_path_factory.mktemp("cluster-chaos")
    argv = ["--workdir", str(work), "--json"]
    assert main(["fraud", "simulate", *argv, "--size", "tiny", "--cards", "200", "--terminals", "50"]) == 0
    assert main(["fraud", "train", *argv, "--trees", "30"]) == 0
    return work


def _worker(workdir: Path, url: str, prefix: str, partition: int) -> subprocess.Popen:
    argv = ["fraud", "stream", "--workdir", str(workdir), "--redis-cluster", url, "--prefix", prefix]
    argv += ["--partitions", "2", "--partition", str(partition), "--batch-size", "10"]
    argv += ["--claim-idle-ms", "800", "--idle-exit", "4", "--json"]
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _wait(predicate, timeout: float = 90.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_partition_worker_loses_and_duplicates_nothing(workdir, cluster_url, layout_prefix):
    from mlsd.fraud.data import load_history
    from mlsd.fraud.engine import FraudDirs
    from mlsd.platform.system import SystemDir

    n = 600
    tx = load_history(workdir / "fraud" / "data").sort_values("ts", kind="stable").iloc[-n:]
    tx = tx.drop(columns=["fraud", "scenario", "label_ts"], errors="ignore").reset_index(drop=True)
    layout = ClusterLayout(2, layout_prefix)
    cluster = cluster_client(cluster_url)
    victim_stream = layout.partition_prefix(0) + "payments"
    for p in (0, 1):
        ensure_group(cluster, layout.partition_prefix(p) + "payments", "scorers")
    publish_partitioned(cluster, layout, tx.iloc[: n // 2])
    poison = cluster.xadd(victim_stream, {"p": b'{"tx_id": 1, "amount": '})
    publish_partitioned(cluster, layout, tx.iloc[n // 2 :])

    procs = [_worker(workdir, cluster_url, layout_prefix, p) for p in (0, 1)]
    victim = procs[0]
    try:

        def held() -> int:
            pend = cluster.xpending_range(victim_stream, "scorers", "-", "+", 10_000)
            return sum(1 for e in pend if e["consumer"].decode() == f"p0-{victim.pid}")

        _wait(held, what="partition 0's worker to hold a batch")
        victim.send_signal(signal.SIGKILL)  # mid-batch: what it held stays pending
        victim.wait()
        left_behind = held()
        procs.append(_worker(workdir, cluster_url, layout_prefix, 0))  # restarted: reclaims them
        outs = []
        for proc in procs[1:]:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-3000:]
            outs.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert victim.returncode == -signal.SIGKILL
    decided = [d["tx_id"] for d in read_partitioned_decisions(cluster, layout)]
    assert sorted(decided) == sorted(tx["tx_id"].tolist())  # every payment, exactly once
    restarted = [w for o in outs for w in o["workers"] if w["partition"] == 0]
    assert sum(w["reclaimed"] for w in restarted) >= left_behind > 0
    for p in (0, 1):
        assert cluster.xpending(layout.partition_prefix(p) + "payments", "scorers")["pending"] == 0
    [dead] = read_dead_letters(cluster, layout.partition_prefix(0) + "payments:dead")
    assert dead["id"] == poison.decode()
    # card features: those of one process that never failed, payment by payment
    config = FraudDirs(SystemDir(workdir, "fraud")).feature_config()
    want = FeatureEngine(config).update_batch(tx)  # the stream's order (by time), no labels
    card = [i for i, c in enumerate(want.columns) if c.startswith(("card_", "seq"))]
    part = partition_of(tx["card_id"], 2)
    for p in (0, 1):
        home = cluster.get_node_from_key(layout.partition_prefix(p))
        import redis

        records = RedisRecords(
            redis.Redis(host=home.host, port=home.port),
            layout.partition_prefix(p) + "fw:",
            want.columns.tolist(),
        )
        ids = tx["tx_id"][part == p].astype(str).tolist()
        found, rows = records.get(ids)
        assert found.size == len(ids)
        np.testing.assert_array_equal(rows[:, card], want.to_numpy()[part == p][:, card])


def _move_slot(cluster, slot: int, to_port: int | None = None) -> int:
    """Move ``slot`` with its keys to another master (what `redis-cli --cluster reshard` does per
    slot); returns the port it was on."""
    import redis

    masters = {n.port: redis.Redis(host=n.host, port=n.port) for n in cluster.get_primaries()}
    ids = {port: c.execute_command("CLUSTER", "MYID").decode() for port, c in masters.items()}
    src_port = cluster.nodes_manager.get_node_from_slot(slot).port
    dst_port = to_port or next(p for p in masters if p != src_port)
    src, dst = masters[src_port], masters[dst_port]
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src_port])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst_port])
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", *keys)
    for c in masters.values():
        c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst_port])
    cluster.nodes_manager.initialize()  # the test's own client: read the new slot map
    return src_port


def test_a_resharded_partition_slot_is_followed_and_the_batch_retried(cluster_url, layout_prefix):
    import redis

    from mlsd.platform.redis_cluster import key_slot

    tx = _payments()
    want = replay(FeatureEngine(), tx)
    layout = ClusterLayout(1, layout_prefix)
    engine = PartitionFeatureEngine(None, cluster_url=cluster_url, layout=layout, partition=0)
    half = len(tx) // 2
    first = engine.update_batch(tx.iloc[:half])
    cluster = cluster_client(cluster_url)
    slot = key_slot(layout.partition_prefix(0))
    home = _move_slot(cluster, slot)  # the partition's stream, records and card windows move
    try:
        with pytest.raises(redis.ConnectionError, match="slot moved"):
            engine.update_batch(tx.iloc[half:])  # the stream worker retries this as an outage
        assert engine.reconnects == 1
        second = engine.update_batch(tx.iloc[half:])  # the retry, on the slot's new master
    finally:
        _move_slot(cluster, slot, to_port=home)  # the session's cluster as it was
    got = np.vstack([first.to_numpy(), second.to_numpy()])
    # no label events in between here: compare the window and card columns (risk needs labels)
    cols = [i for i, c in enumerate(want.columns) if not c.startswith("terminal_risk")]
    np.testing.assert_array_equal(got[:, cols], want.to_numpy()[:, cols])


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--redis-cluster", "redis://127.0.0.1:6379/0"], "--redis-cluster"),  # not a cluster URL
        (["--redis-cluster", "redis+cluster://127.0.0.1:1", "--partitions", "0"], "--partitions"),
        (["--redis-cluster", "redis+cluster://127.0.0.1:1", "--partition", "2"], "--partition"),
        (["--redis-cluster", "redis+cluster://127.0.0.1:1", "--workers", "3"], "--workers"),
        (["--redis-cluster", "redis+cluster://127.0.0.1:1", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_stream_on_a_cluster_refuses_bad_options_naming_them(tmp_path, capsys, extra, field):
    from mlsd.cli import main

    code = main(["fraud", "stream", "--workdir", str(tmp_path), *extra])
    assert code == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "fraud").exists()  # nothing created
