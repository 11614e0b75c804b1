"""One Redis connection factory for single Redis and Redis Cluster, hash-tag key helpers, a local cluster.

mlsd's Redis-backed pieces (the online store, the streaming windows, the exposure log) take a URL and
build their client with :func:`connect`:

* ``redis://host:port/db`` (or ``rediss://``, ``unix://``): one Redis server, a ``redis.Redis`` client.
* ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): a Redis Cluster, a
  ``redis.RedisCluster`` client made on first use (:class:`LazyCluster`) from any of the nodes named
  (name several: a client made while the first one is down starts from the next); it discovers the
  other nodes and follows MOVED / ASK. A cluster has one database: a path other than ``/0`` is refused.

On a cluster every key that one atomic operation touches must hash to one slot. mlsd wraps the entity
in a hash tag, ``<prefix><namespace>:{<entity>}``: Redis hashes only what is between the braces, so all
keys of one entity share a slot whatever follows (:func:`tagged`). Prefixes and namespaces therefore
must not contain braces themselves (:func:`check_untagged`).

:class:`LocalRedisCluster` starts a real cluster of ``redis-server`` processes on free loopback ports
(tests, benches), and stops them by PID.

Examples:
    >>> is_cluster_url("redis+cluster://127.0.0.1:7000"), is_cluster_url("redis://127.0.0.1:6379/0")
    (True, False)
    >>> tagged("mlsd:user_features:", "42")
    'mlsd:user_features:{42}'
    >>> key_slot(tagged("p:", "42", ":h")) == key_slot(tagged("p:", "42", ":z")) == key_slot("42")
    True
    >>> check_untagged("prefix", "mlsd:{x}:")
    Traceback (most recent call last):
    ...
    mlsd.platform.errors.InputError: prefix='mlsd:{x}:': must not contain '{' or '}' (Redis Cluster hash-tag braces). Fix: use a prefix without braces (mlsd adds the entity's hash tag itself)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlsd.platform.errors import InputError

__all__ = [
    "CLUSTER_SCHEMES",
    "ClusterStartError",
    "LazyCluster",
    "LocalRedisCluster",
    "check_untagged",
    "connect",
    "delete_prefix",
    "group_by_slot",
    "is_cluster",
    "is_cluster_url",
    "key_slot",
    "run_script",
    "tagged",
    "used_memory",
]

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SLOTS = 16384


def is_cluster_url(url: str) -> bool:
    """True for a ``redis+cluster://`` / ``rediss+cluster://`` URL."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect(url: str, **kwargs: Any) -> Any:
    """A client for ``url``: ``redis.RedisCluster`` for a ``redis+cluster://`` URL, else ``redis.Redis``.

    ``kwargs`` go to the client (``decode_responses``, ``socket_timeout``, ...). ``retry=None`` means
    *no retries* on both (the serving path's bounded waits): a cluster client otherwise retries a
    failed command and re-reads the slot map several times.

    Examples:
        >>> client = connect("redis://127.0.0.1:6379/0")   # lazy: no connection is made yet
        >>> type(client).__name__
        'Redis'
        >>> connect("redis+cluster://127.0.0.1:7000/3")
        Traceback (most recent call last):
        ...
        mlsd.platform.errors.InputError: url='redis+cluster://127.0.0.1:7000/3': a Redis Cluster has only database 0. Fix: drop the '/3' (or use /0)
    """
    import redis

    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return redis.Redis.from_url(url, **kwargs)
    path = parts.path.strip("/")
    if path not in ("", "0"):
        raise InputError("url", url, "a Redis Cluster has only database 0", f"drop the '/{path}' (or use /0)")
    plain = urlunsplit((CLUSTER_SCHEMES[parts.scheme], parts.netloc, "", parts.query, ""))
    if "retry" in kwargs and kwargs["retry"] is None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs["retry"] = Retry(NoBackoff(), 0)
    return LazyCluster(plain, kwargs)


class LazyCluster:
    """A ``redis.RedisCluster`` made on first use, as ``redis.Redis`` connects on first use.

    ``RedisCluster`` reads the slot map from a node as it is constructed; a service that builds its
    stores at startup would then fail to start while the cluster is down, where on a single Redis it
    starts and serves degraded. An unreachable cluster raises ``redis.ConnectionError`` (what every
    outage handler already catches), at the first call, and the next call tries again.
    """

    def __init__(self, url: str, kwargs: dict[str, Any]) -> None:
        self.url = url
        self._kwargs = kwargs
        self._client: Any = None

    @property
    def cluster_client(self) -> Any:
        if self._client is None:
            import redis

            parts = urlsplit(self.url)
            user, at, hosts = parts.netloc.rpartition("@")
            first, *more = hosts.split(",")  # more nodes to start from: any one of them may be down
            kwargs = dict(self._kwargs)
            if more:
                kwargs["startup_nodes"] = [redis.cluster.ClusterNode(*_host_port(h)) for h in more]
            url = urlunsplit((parts.scheme, f"{user}{at}{first}", "", parts.query, ""))
            try:
                self._client = redis.RedisCluster.from_url(url, **kwargs)
            except redis.RedisClusterException as err:  # no node answered
                where = self.url.split("@")[-1]  # never print a password
                raise redis.ConnectionError(f"Redis Cluster {where} unreachable ({err})") from None
        return self._client

    def configure(self, **connection_kwargs: Any) -> None:
        """Connection settings (``socket_timeout``, ...) for every node: the constructor's before the
        client is made, then every node's pool and the nodes found later (after a reshard)."""
        if self._client is None:
            self._kwargs.update(connection_kwargs)
            return
        self._client.nodes_manager.connection_kwargs.update(connection_kwargs)
        for node in self._client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.connection_kwargs.update(connection_kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster_client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)


def is_cluster(client: Any) -> bool:
    """True when ``client`` talks to a Redis Cluster (``redis.RedisCluster``, its pipeline, or the
    :class:`LazyCluster` that :func:`connect` returns)."""
    import redis

    return isinstance(client, LazyCluster | redis.RedisCluster)


def tagged(prefix: str, entity: Any, suffix: str = "") -> str:
    """``<prefix>{<entity>}<suffix>``: every key of one entity hashes to the same cluster slot."""
    return f"{prefix}{{{entity}}}{suffix}"


def key_slot(key: str | bytes) -> int:
    """The cluster slot (0..16383) of ``key``, hash tag honoured (what the server computes)."""
    from redis.crc import key_slot as slot_of

    return slot_of(key.encode() if isinstance(key, str) else key)


def group_by_slot(keys: Sequence[str | bytes]) -> dict[int, list[int]]:
    """Positions of ``keys`` per cluster slot (first-seen order): one script or transaction per slot.

    Examples:
        >>> keys = [tagged("w:", "a", ":h"), tagged("w:", "b", ":h"), tagged("w:", "a", ":z")]
        >>> sorted(group_by_slot(keys).values())
        [[0, 2], [1]]
    """
    from redis.crc import key_slot as slot_of

    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(slot_of(key.encode() if isinstance(key, str) else key), []).append(i)
    return groups


def check_untagged(field: str, value: str) -> str:
    """Refuse a prefix / namespace holding braces: it would become the hash tag of every key under it,
    putting all of them on one slot (one shard) instead of spreading entities over the cluster."""
    if "{" in value or "}" in value:
        raise InputError(
            field,
            value,
            "must not contain '{' or '}' (Redis Cluster hash-tag braces)",
            f"use a {field} without braces (mlsd adds the entity's hash tag itself)",
        )
    return value


def run_script(client: Any, script: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """``EVALSHA script`` once per ``(keys, args)`` in ``calls``, pipelined (non-transactional), the replies
    in order; on a cluster the pipeline is split by node, so each call's keys must share a slot.

    A node that lacks the script (a restart, a failover, a node added by resharding) answers NOSCRIPT and
    runs nothing: the script is loaded (on every primary) and only those calls are sent again, so a call
    never runs twice. Any other error is raised once every reply is in.
    """
    import hashlib

    from redis.exceptions import NoScriptError

    sha = hashlib.sha1(script.encode()).hexdigest()

    def send(indices: Sequence[int]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for i in indices:
            keys, args = calls[i]
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)

    replies = send(range(len(calls))) if calls else []
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        client.script_load(script)
        for i, reply in zip(missing, send(missing), strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


# ---------------------------------------------------------------------------------------------------
# A local cluster of real redis-server processes (tests, benches).


class ClusterStartError(RuntimeError):
    """The local cluster did not come up (no redis-server, no free ports, cluster_state never ok)."""


def _free_port(host: str, taken: set[int]) -> int:
    """A port free on ``host`` whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port in taken or port + 10000 in taken or port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind((host, port + 10000))
        except OSError:
            continue
        return port
    raise ClusterStartError(f"no free port pair (port, port + 10000) on {host}")


class LocalRedisCluster:
    """``masters`` x (1 + ``replicas``) ``redis-server`` processes on free ports of ``host``, joined
    into a Redis Cluster with ``redis-cli --cluster create``; :meth:`stop` ends them by PID.

    Each node runs in its own folder under a temporary directory, persistence off (``--save ''``,
    no AOF), bound to ``host`` only. :meth:`start` returns when every node reports ``cluster_state:ok``.

    Examples:
        >>> cluster = LocalRedisCluster(masters=3)   # nothing starts before start()
        >>> cluster.url is None, cluster.pids
        (True, [])
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        host: str = "127.0.0.1",
        redis_server: str = "redis-server",
        redis_cli: str = "redis-cli",
        timeout_s: float = 20.0,
        node_timeout_ms: int = 5000,
    ) -> None:
        self.masters = masters
        self.replicas = replicas
        self.host = host
        self.redis_server = redis_server
        self.redis_cli = redis_cli
        self.timeout_s = timeout_s
        self.node_timeout_ms = node_timeout_ms  # how long a master may be silent before its failover
        self.ports: list[int] = []
        self.url: str | None = None
        self._procs: list[subprocess.Popen] = []
        self._dir: Path | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def pid_of(self, port: int) -> int:
        """PID of the node on ``port`` (tests kill one to force a failover)."""
        return self._procs[self.ports.index(port)].pid

    def ready(self) -> bool:
        """Every node still running reports ``cluster_state:ok``."""
        alive = [p for p, proc in zip(self.ports, self._procs, strict=True) if proc.poll() is None]
        try:
            return all("cluster_state:ok" in self._info(p) for p in alive)
        except OSError:
            return False

    def start(self) -> LocalRedisCluster:
        if self.masters < 3:
            raise InputError("masters", self.masters, "a Redis Cluster needs at least 3 masters", "pass 3+")
        server, cli = shutil.which(self.redis_server), shutil.which(self.redis_cli)
        if server is None or cli is None:
            raise ClusterStartError(
                f"{self.redis_server} / {self.redis_cli} not found on PATH; install redis-server "
                "(apt-get install redis-server, or redis-stack)"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="mlsd-redis-cluster-"))
        deadline = time.monotonic() + self.timeout_s
        try:
            taken: set[int] = set()
            for _ in range(self.masters * (1 + self.replicas)):
                port = _free_port(self.host, taken)
                taken |= {port, port + 10000}
                self.ports.append(port)
            for port in self.ports:
                node_dir = self._dir / str(port)
                node_dir.mkdir()
                # fmt: off
                args = [
                    server, "--port", str(port), "--bind", self.host, "--dir", str(node_dir),
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "", "--appendonly", "no",
                    "--logfile", str(node_dir / "redis.log"), "--daemonize", "no",
                ]
                # fmt: on
                self._procs.append(
                    subprocess.Popen(
                        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
                    )  # fmt: skip
                )
            for port in self.ports:
                self._wait(lambda p=port: self._ping(p), deadline, f"redis-server on port {port}")
            nodes = [f"{self.host}:{p}" for p in self.ports]
            create = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *nodes,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                input="yes\n",  # a redis-cli older than --cluster-yes asks on stdin
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            if create.returncode != 0:
                raise ClusterStartError(
                    f"redis-cli --cluster create failed: {create.stdout[-500:]}{create.stderr}"
                )
            self._wait(self._all_ok, deadline, "cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"{self.host}:{p}" for p in self.ports[: self.masters])
        return self

    def _ping(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _info(self, port: int) -> str:
        with socket.create_connection((self.host, port), timeout=1.0) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            data = b""
            while b"cluster_state" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace")

    def _all_ok(self) -> bool:
        try:
            return all("cluster_state:ok" in self._info(p) for p in self.ports)
        except OSError:
            return False

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            dead = [p.pid for p in self._procs if p.poll() is not None]
            if dead:
                raise ClusterStartError(
                    f"redis-server exited early (pids {dead}); see {self._dir}/*/redis.log"
                )
            if time.monotonic() > deadline:
                raise ClusterStartError(f"timed out after {self.timeout_s:g} s waiting for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        """End every process this cluster started (SIGTERM, then SIGKILL after 5 s) and remove its folder."""
        for proc in self._procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.url = None

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def used_memory(client: Any) -> int:
    """``used_memory`` of a single Redis, or summed over a cluster's primaries (memory-per-key figures)."""
    if not is_cluster(client):
        return int(client.info("memory")["used_memory"])
    return sum(
        int(client.execute_command("INFO", "memory", target_nodes=node)["used_memory"])
        for node in client.get_primaries()
    )


def delete_prefix(client: Any, prefix: str) -> int:
    """Delete every key under ``prefix`` on a single Redis or on every primary of a cluster; the count."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    deleted = 0
    for i in range(0, len(keys), 1000):
        deleted += int(client.delete(*keys[i : i + 1000]))  # a cluster client splits a DEL by slot
    return deleted
