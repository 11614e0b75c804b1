"""A local Spark standalone cluster (one master, N workers) from the pyspark pip package, for tests and benches.

``local[2]`` runs the driver and the tasks in one JVM: nothing crosses a process boundary, so a job that
only works in one JVM (a closure that captures driver state, a file written on the driver and read by
a task, factors that never leave the driver) passes there and fails on a real cluster.
:class:`LocalSparkCluster` starts what a team runs: a standalone ``Master`` and ``workers`` ``Worker``
JVMs, each worker launching its own executor JVM for an application; a session on :attr:`url` ships
its tasks to those executors.

The processes come from pyspark's own ``bin/spark-class`` (``SPARK_HOME`` = pyspark's directory; a JDK
17 on the PATH or ``JAVA_HOME``), every one bound to 127.0.0.1 on free ports (``SPARK_LOCAL_IP`` covers
the web UIs, the block managers and the executors' ports), its log in a temporary folder. :meth:`start`
returns when the master's ``/json/`` reports every worker ALIVE; :meth:`stop` ends every process by
PID, with its process group (a worker's executors run in it).

Examples:
    >>> cluster = LocalSparkCluster(workers=2)   # nothing starts before start()
    >>> cluster.url is None, cluster.pids
    (True, [])
    >>> LocalSparkCluster(workers=0)
    Traceback (most recent call last):
    ...
    mlsd.platform.errors.InputError: workers=0: must be a whole number >= 1. Fix: pass e.g. workers=2
    >>> LocalSparkCluster(memory_per_worker="lots")
    Traceback (most recent call last):
    ...
    mlsd.platform.errors.InputError: memory_per_worker='lots': is not a Spark memory size. Fix: pass e.g. '1g' or '512m'
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlsd.platform.errors import InputError

__all__ = ["LocalSparkCluster", "SparkClusterStartError", "descendants", "spark_home"]

HOST = "127.0.0.1"
MEMORY = re.compile(r"^[1-9][0-9]*[mg]$")


class SparkClusterStartError(RuntimeError):
    """The local Spark cluster did not come up (no pyspark, no java, a worker never registered)."""


def spark_home() -> Path:
    """pyspark's package directory: the pip package is a whole Spark distribution (``bin/``, ``jars/``)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise SparkClusterStartError("pyspark is not installed: pip install mlsd[spark] (pyspark 4)")
    return Path(spec.origin).parent


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (held open together, so no two are the same)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still exists (zombies count as gone)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _started(pid: int) -> str | None:
    """A process's start time (``/proc/<pid>/stat`` field 22): tells it from a later one given the same PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (a worker's executors), read from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return sorted(out)


class LocalSparkCluster:
    """A Spark standalone master and ``workers`` workers (``cores_per_worker`` cores and
    ``memory_per_worker`` of executor memory each) on free 127.0.0.1 ports; :attr:`url` is
    ``spark://127.0.0.1:<port>`` once started. A context manager: ``with LocalSparkCluster() as c:``.

    A session on it must give its executors at most ``memory_per_worker`` (``spark.executor.memory``,
    Spark's default 1g) or no worker can launch one.
    """

    def __init__(
        self,
        workers: int = 2,
        cores_per_worker: int = 1,
        memory_per_worker: str = "1g",
        *,
        timeout_s: float = 90.0,
        daemon_memory: str = "256m",
    ) -> None:
        for name, value in (("workers", workers), ("cores_per_worker", cores_per_worker)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(name, value, "must be a whole number >= 1", f"pass e.g. {name}=2")
        for name, value in (("memory_per_worker", memory_per_worker), ("daemon_memory", daemon_memory)):
            if not isinstance(value, str) or not MEMORY.match(value):
                raise InputError(name, value, "is not a Spark memory size", "pass e.g. '1g' or '512m'")
        if not timeout_s > 0:
            raise InputError("timeout_s", timeout_s, "must be positive", "pass e.g. timeout_s=90")
        self.workers = workers
        self.cores_per_worker = cores_per_worker
        self.memory_per_worker = memory_per_worker
        self.timeout_s = timeout_s
        self.daemon_memory = daemon_memory  # the master's and workers' own heaps (Spark's default: 1g)
        self.url: str | None = None
        self.webui_url: str | None = None
        self._procs: list[subprocess.Popen] = []
        self._dir: Path | None = None

    @property
    def pids(self) -> list[int]:
        """The master's PID, then each worker's (their executors are their children)."""
        return [p.pid for p in self._procs]

    def status(self) -> dict:
        """The master's ``/json/`` status (``aliveworkers``, ``workers``, ``activeapps``, ...)."""
        if self.webui_url is None:
            raise SparkClusterStartError("the cluster is not started: call start() first")
        with urllib.request.urlopen(self.webui_url + "/json/", timeout=2.0) as resp:  # noqa: S310 - loopback
            return json.load(resp)

    def start(self) -> LocalSparkCluster:
        if self._procs:
            return self
        home = spark_home()
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise SparkClusterStartError("no java on the PATH and no JAVA_HOME: install a JDK 17")
        self._dir = Path(tempfile.mkdtemp(prefix="mlsd-spark-cluster-"))
        deadline = time.monotonic() + self.timeout_s
        env = {
            **os.environ,
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": HOST,  # every socket the daemons and executors open: UIs, RPC, block managers
            "SPARK_LOCAL_HOSTNAME": HOST,
            "SPARK_LOG_DIR": str(self._dir),
            "SPARK_WORKER_DIR": str(self._dir / "work"),
            "SPARK_DAEMON_MEMORY": self.daemon_memory,
            # The master's REST submission server listens on the fixed port 6066 (two clusters would
            # collide); sessions connect over spark://, which is all this cluster is for.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
            "PYSPARK_PYTHON": sys.executable,  # executors' python workers: this venv's
        }
        spark_class = str(home / "bin" / "spark-class")
        try:
            port, webui, *worker_ports = _free_ports(2 + 2 * self.workers)
            self.url, self.webui_url = f"spark://{HOST}:{port}", f"http://{HOST}:{webui}"
            self._spawn(env, "master", [spark_class, "org.apache.spark.deploy.master.Master",
                                        "--host", HOST, "--port", str(port), "--webui-port", str(webui)])  # fmt: skip
            self._wait(lambda: self._alive_workers() is not None, deadline, "the master's web UI")
            for i in range(self.workers):
                rpc, ui = worker_ports[2 * i : 2 * i + 2]
                # fmt: off
                self._spawn(env, f"worker-{i}", [
                    spark_class, "org.apache.spark.deploy.worker.Worker", self.url, "--host", HOST,
                    "--port", str(rpc), "--webui-port", str(ui), "--cores", str(self.cores_per_worker),
                    "--memory", self.memory_per_worker, "--work-dir", str(self._dir / f"work-{i}"),
                ])
                # fmt: on
            self._wait(lambda: (self._alive_workers() or 0) >= self.workers, deadline,
                       f"{self.workers} workers to register")  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, env: dict[str, str], name: str, args: list[str]) -> None:
        assert self._dir is not None
        log = open(self._dir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps writing it
        try:
            # A session of its own: the process group is the daemon and the executors it launches.
            proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        finally:
            log.close()
        self._procs.append(proc)

    def _alive_workers(self) -> int | None:
        try:
            return int(self.status().get("aliveworkers", 0))
        except (OSError, ValueError):
            return None

    def _log_tail(self, lines: int = 15) -> str:
        if self._dir is None:
            return ""
        tails = []
        for log in sorted(self._dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(tails)

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            dead = [p.pid for p in self._procs if p.poll() is not None]
            if dead:
                raise SparkClusterStartError(
                    f"a Spark daemon exited early (pids {dead}):\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise SparkClusterStartError(
                    f"timed out after {self.timeout_s:g} s waiting for {what}:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """End every process this cluster started, workers (and their executors) first, then the master:
        SIGTERM to each one's process group, SIGKILL after 10 s; then any descendant that left the group
        (pyspark's Python daemon makes its own) by PID; remove the log folder."""
        # Before the signals: an orphan is re-parented and no longer found under its worker.
        below = {p: [(c, _started(c)) for c in descendants(p.pid)] for p in self._procs}
        for proc in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for proc in reversed(self._procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            while _group_alive(proc.pid) and time.monotonic() < deadline:  # executors exit after their worker
                time.sleep(0.1)
            if proc.poll() is None or _group_alive(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for pid, started in below[proc]:
                if started is not None and _started(pid) == started:  # still that process, not a reused PID
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self._procs = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.url = self.webui_url = None

    def __enter__(self) -> LocalSparkCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
