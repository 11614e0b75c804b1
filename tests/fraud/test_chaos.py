"""Chaos run of the stream workers, as separate processes on the real Redis.

A failure-free run (one worker) records every payment's decision and feature row. The same stream
- with one poison entry in it - then goes through two worker processes: one is killed with SIGKILL
mid-run and restarted, and Redis is cut off for 3 s (a TCP proxy in front of the shared server
drops every connection and refuses new ones; the shared server itself is never stopped). Every
payment must be decided exactly once, with the decision and the feature row of the failure-free
run, the poison entry must be in the dead-letter stream, and the workers must ride the outage out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from mlsd.fraud.stream import publish, read_dead_letters, read_decisions, stream_keys

pytestmark = [pytest.mark.services, pytest.mark.slow]

N = 600  # payments in the stream
BATCH = 10
CLAIM_IDLE_MS = 800
IDLE_EXIT = 8.0  # seconds without entries before a worker exits (longer than a worker's start)
WORKER = "import sys; from mlsd.cli import main; sys.exit(main(sys.argv[1:]))"


class CuttableProxy:
    """A TCP proxy to Redis that can be cut: every open connection dropped, new ones refused."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.closed = False
        self.cuts = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()  # the outage: refused at once
                continue
            server = socket.create_connection(self.target)
            with self._lock:
                self._pairs.append((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            _close(s)

    def cut(self) -> None:
        self.up = False
        self.cuts += 1
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                _close(s)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        _close(self.listener)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny trained workdir (simulate + train, as `mlsd fraud` does)."""
    from mlsd.cli import main

    work = tmp_path_factory.mktemp("chaos")
    argv = ["--workdir", str(work), "--json"]
    assert main(["fraud", "simulate", *argv, "--size", "tiny", "--cards", "200", "--terminals", "50"]) == 0
    assert main(["fraud", "train", *argv, "--trees", "30"]) == 0
    return work


def _payments(workdir: Path) -> list[dict]:
    from mlsd.fraud.data import load_history

    tx = load_history(workdir / "fraud" / "data").sort_values("ts", kind="stable").iloc[-N:]
    rows = tx.drop(columns=["fraud", "scenario", "label_ts"], errors="ignore")
    return [json.loads(line) for line in rows.to_json(orient="records", lines=True).splitlines()]


def _publish(client, prefix: str, pays: list[dict]) -> bytes:
    """The stream: the payments, with one poison entry (not JSON) in the middle; returns its id."""
    stream = stream_keys(prefix)["input"]
    publish(client, stream, pays[: N // 4])
    poison = client.xadd(stream, {"p": b'{"tx_id": 1, "amount": '})
    publish(client, stream, pays[N // 4 : N // 2])
    return poison


def _worker(workdir: Path, url: str, prefix: str, idle_exit: float) -> subprocess.Popen:
    argv = ["fraud", "stream", "--workdir", str(workdir), "--redis-url", url, "--prefix", prefix]
    argv += ["--batch-size", str(BATCH), "--claim-idle-ms", str(CLAIM_IDLE_MS)]
    argv += ["--idle-exit", str(idle_exit), "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


def _wait(predicate, timeout: float = 90.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _recorded(client, prefix: str, workdir: Path, tx_ids: list) -> np.ndarray:
    """The feature rows the workers recorded for ``tx_ids`` (what each payment was scored with)."""
    from mlsd.fraud.engine import FraudDirs
    from mlsd.fraud.features import RedisRecords
    from mlsd.platform.system import SystemDir

    names = FraudDirs(SystemDir(workdir, "fraud")).feature_config().feature_names()
    found, rows = RedisRecords(client, prefix + "fw:", names).get([str(t) for t in tx_ids])
    assert found.tolist() == list(range(len(tx_ids))), "every payment has a recorded feature row"
    return rows


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out)


def test_two_workers_one_killed_and_a_redis_outage_decide_every_payment_once_as_without_failures(
    workdir, redis_url, redis_prefix
):
    import redis

    client = redis.Redis.from_url(redis_url)
    pays = _payments(workdir)
    tx_ids = [p["tx_id"] for p in pays]

    # failure-free: one worker, the shared Redis directly
    ref = redis_prefix + "ref:"
    ref_poison = _publish(client, ref, pays)
    publish(client, stream_keys(ref)["input"], pays[N // 2 :])
    _finish(_worker(workdir, redis_url, ref, idle_exit=1.0))
    ref_out = {d["tx_id"]: d for d in read_decisions(client, stream_keys(ref)["output"])}
    assert sorted(ref_out) == sorted(tx_ids)
    ref_rows = _recorded(client, ref, workdir, tx_ids)
    assert [d["id"] for d in read_dead_letters(client, stream_keys(ref)["dead"])] == [ref_poison.decode()]

    # chaos: two workers through a proxy that will be cut
    chaos = redis_prefix + "chaos:"
    keys = stream_keys(chaos)
    host = urlparse(redis_url)
    proxy = CuttableProxy(host.hostname or "127.0.0.1", host.port or 6379)
    via_proxy = f"redis://127.0.0.1:{proxy.port}{host.path or '/0'}"
    procs = []
    try:
        poison = _publish(client, chaos, pays)
        procs += [_worker(workdir, via_proxy, chaos, idle_exit=IDLE_EXIT) for _ in range(2)]
        _wait(lambda: client.xlen(keys["output"]) >= N // 8, what="the first decisions")

        def holds(proc) -> int:  # entries delivered to a worker process and not yet acknowledged
            name = f"worker-0-{proc.pid}"
            return len(client.xpending_range(keys["input"], "scorers", "-", "+", 10_000, consumername=name))

        # the victim: a worker holding a batch (whichever started first and is busy)
        _wait(lambda: any(holds(p) for p in procs), what="a worker to hold a batch")
        victim = next((p for p in procs if holds(p)), procs[0])
        victim.send_signal(signal.SIGKILL)  # mid-batch: what it held stays pending
        victim.wait()
        assert victim.returncode == -signal.SIGKILL
        left_behind = holds(victim)
        procs.append(_worker(workdir, via_proxy, chaos, idle_exit=IDLE_EXIT))  # restarted
        _wait(lambda: client.xlen(keys["output"]) >= N // 2 - 3 * BATCH, what="half the decisions")
        proxy.cut()  # Redis unreachable for 3 s; the rest of the payments arrive meanwhile
        publish(client, keys["input"], pays[N // 2 :])
        time.sleep(3.0)
        proxy.restore()
        stats = [_finish(p) for p in procs if p is not victim]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        proxy.close()

    survivors = [p for p in procs if p is not victim]
    assert all(p.returncode == 0 for p in survivors)  # both survivors rode the outage out
    workers = [w for s in stats for w in s["workers"]]
    assert sum(w["redis_errors"] for w in workers) > 0  # ... and did see it
    assert sum(w["reclaimed"] for w in workers) >= left_behind  # the victim's batch was taken over
    out = read_decisions(client, keys["output"])
    assert sorted(d["tx_id"] for d in out) == sorted(tx_ids)  # every payment, exactly once
    assert client.xpending(keys["input"], "scorers")["pending"] == 0
    [dead] = read_dead_letters(client, keys["dead"])
    assert dead["id"] == poison.decode() and "not valid JSON" in dead["error"]
    # the same decisions and the same features as the run without failures
    for d in out:
        want = ref_out[d["tx_id"]]
        assert (d["decision"], d.get("probability"), d.get("reasons")) == (
            want["decision"], want.get("probability"), want.get("reasons"),
        ), d["tx_id"]  # fmt: skip
    np.testing.assert_array_equal(_recorded(client, chaos, workdir, tx_ids), ref_rows)
