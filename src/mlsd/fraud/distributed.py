"""Fraud beyond one Redis: the payment stream partitioned by card over a Redis Cluster.

**Layout.** The stream is split into ``N`` partitions by a stable hash of ``card_id``
(:func:`partition_of`); one worker consumes each partition. Everything a partition's worker writes
for its own cards lives under one hash tag, so in one cluster slot on one master: the input stream,
its consumer group, the decisions stream, the ``decided`` / ``applied`` sets, the dead letters, the
recorded feature rows and the **card** windows. The stream worker's Lua scripts (decisions + ack in
one script, the ordered-application guard, the window update) therefore run unchanged: each touches
one slot. A partition's tag is chosen so that its slot falls in the ``p``-th ``1/N`` of the slot
range (:func:`slot_tag`), which spreads partitions over the masters of an evenly sliced cluster.

Terminal, device and IP windows are shared by every partition (a terminal sees many cards). They
are split into ``B`` buckets by the same hash of the entity id (:func:`bucket_of`), each bucket a
window store under a hash tag of its own (:class:`BucketedWindowStore`): a micro-batch becomes one
atomic script call per bucket it touches, sent to every bucket's master before any reply is read.

**What is preserved.** Exactly-once decisions and replays that get the features they had (the
stream worker's guarantees, per partition); per-card ordered application (a card is in one
partition, applied in stream order). Shared windows take each partition's payments atomically and
idempotently (nothing lost, nothing counted twice), in the order the partitions' batches reach the
bucket: a terminal's features can count a payment of another partition that arrived first, as a
single worker counts by arrival. Bit-identical features across runs hold for card features; for
shared-entity features they hold with one partition.

**Connections.** Each store and stream talks to the one master holding its slot (a plain client,
found through ``RedisCluster``): no per-command slot lookup on the hot path. A resharding that moves
a slot answers ``MOVED``: the feature engine then rebuilds its stores from the new slot map and the
batch is retried as after an outage; the stream's own client (the partition's stream keys) is not
rebuilt: the worker exits and its restart looks the slot up again (its entries stay pending). ``N`` and ``B`` are part of the key names: changing them
is a rebuild of the windows (replay the horizon), as with a Kafka topic's partition count.

The cluster is any Redis Cluster named by a ``redis+cluster://`` URL (the platform's
:func:`~mlsd.platform.redis_cluster.connect`); tests and ``mlsd fraud bench --paths cluster`` start a
local 3-master one with :class:`~mlsd.platform.redis_cluster.LocalRedisCluster`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsd.fraud.features import FeatureConfig, FeatureEngine, RedisRecords
from mlsd.platform.errors import InputError
from mlsd.platform.streaming import NOT_STORED, PAD_TS
from mlsd.platform.streaming.windows import UNKNOWN, WindowView

__all__ = [
    "BucketedWindowStore",
    "ClusterLayout",
    "PartitionFeatureEngine",
    "bucket_of",
    "partition_of",
    "publish_partitioned",
    "slot_tag",
]

SLOTS = 16_384
SHARED_BUCKETS = 12  # buckets of each shared entity's windows: a multiple of 3 masters, part of key names


def _hash_ids(values: Any) -> np.ndarray:
    """A stable uint64 hash of ids, the same for ``7``, ``7.0`` and ``"7"`` (payments arrive as JSON)."""
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)
    as_text = arr.astype(str).astype(object)
    return pd.util.hash_array(as_text, categorize=False)


def partition_of(card_ids: Any, partitions: int) -> np.ndarray:
    """The partition of each card, in ``[0, partitions)``; stable across processes and machines.

    Examples:
        >>> partition_of([7, 8, 9, 7], 2).tolist() == partition_of(["7", "8", "9", 7.0], 2).tolist()
        True
        >>> sorted(set(partition_of(range(1000), 4).tolist()))
        [0, 1, 2, 3]
    """
    return (_hash_ids(card_ids) % np.uint64(partitions)).astype(np.int64)


bucket_of = partition_of  # shared-entity windows are bucketed by the same stable hash


def slot_tag(name: str, index: int, count: int) -> str:
    """A hash tag ``name-index-j`` whose slot lies in the ``index``-th of ``count`` equal slot ranges.

    Examples:
        >>> from redis.crc import key_slot
        >>> [key_slot(("{" + slot_tag("p", i, 3) + "}x").encode()) * 3 // 16384 for i in range(3)]
        [0, 1, 2]
    """
    from redis.crc import key_slot

    lo, hi = index * SLOTS // count, (index + 1) * SLOTS // count
    for j in range(1_000_000):
        tag = f"{name}-{index}-{j}"
        if lo <= key_slot(tag.encode()) < hi:
            return tag
    raise AssertionError("unreachable: a slot range of a few thousand slots is hit within tries")


@dataclass(frozen=True)
class ClusterLayout:
    """Key names of a partitioned fraud stream: ``partitions`` card partitions, ``buckets`` buckets
    of shared-entity windows, everything under ``prefix``."""

    partitions: int
    prefix: str = "mlsd:fraud:"
    buckets: int = SHARED_BUCKETS

    def __post_init__(self) -> None:
        if int(self.partitions) < 1:
            raise InputError("--partitions", self.partitions, "must be >= 1", "e.g. --partitions 2")
        if int(self.buckets) < 1:
            raise InputError("buckets", self.buckets, "must be >= 1", f"e.g. {SHARED_BUCKETS}")

    def partition_prefix(self, p: int) -> str:
        """The prefix of partition ``p``'s stream keys (its hash tag inside): pass to StreamWorker."""
        return f"{self.prefix}{{{slot_tag('fraud-p', p, self.partitions)}}}:"

    def bucket_prefix(self, kind: str, b: int) -> str:
        return f"{self.prefix}{{{slot_tag('fraud-' + kind, b, self.buckets)}}}:fw:{kind}:"


def node_client(cluster: Any, key: str, **options: Any) -> Any:
    """A plain client to the master holding ``key``'s slot (every key one script touches is there)."""
    import redis

    node = cluster.get_node_from_key(key)
    return redis.Redis(host=node.host, port=node.port, **options)


def cluster_client(url: str, **options: Any) -> Any:
    """The platform's cluster client for a ``redis+cluster://host:port[,host:port...]`` URL."""
    from mlsd.platform.redis_cluster import connect, is_cluster_url

    if not is_cluster_url(url):
        raise InputError(
            "--redis-cluster", url, "is not a Redis Cluster URL",
            "use redis+cluster://host:port (one or more of the cluster's nodes, comma separated)",
        )  # fmt: skip
    return connect(url, **options)


class BucketedWindowStore:
    """One shared entity's windows over ``len(stores)`` window stores (one per bucket, each on its
    own hash tag); a batch is split by :func:`bucket_of` and the views are merged back in the
    caller's order. Each bucket's call stays one atomic, idempotent script call."""

    def __init__(self, stores: list[Any]) -> None:
        self.stores = stores
        self.horizon_s = stores[0].horizon_s
        self.n_attrs = stores[0].n_attrs

    def _split(self, keys: list) -> list[tuple[int, np.ndarray]]:
        bucket = bucket_of(keys, len(self.stores))
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(len(self.stores) + 1))
        return [
            (b, order[bounds[b] : bounds[b + 1]])
            for b in range(len(self.stores))
            if bounds[b + 1] > bounds[b]
        ]

    def update_many_begin(self, keys, ids, ts, values, attrs=None) -> Callable[[], WindowView]:
        keys, ids = list(keys), [str(i) for i in ids]
        if not keys:
            return self.stores[0].update_many_begin(keys, ids, ts, values, attrs)
        ts = np.asarray(ts, dtype=np.int64)
        values = np.asarray(values)
        key_arr, id_arr = np.asarray(keys, dtype=object), np.asarray(ids, dtype=object)
        pending = []
        for b, rows in self._split(keys):
            part_attrs = None if attrs is None else np.asarray(attrs)[rows]
            finish = self.stores[b].update_many_begin(
                key_arr[rows].tolist(), id_arr[rows].tolist(), ts[rows], values[rows], part_attrs
            )
            pending.append((rows, finish))

        def finish_all() -> WindowView:
            parts = []
            error: BaseException | None = None
            for rows, finish in pending:  # read every reply, even after an error: no stale sockets
                try:
                    parts.append((rows, finish()))
                except BaseException as err:  # noqa: BLE001 - re-raised below
                    error = error or err
            if error is not None:
                raise error
            return _merge_views(len(keys), ts, parts, self.n_attrs)

        return finish_all

    def update_many(self, keys, ids, ts, values, attrs=None) -> WindowView:
        return self.update_many_begin(keys, ids, ts, values, attrs)()

    def view_many(self, keys, ts) -> WindowView:
        keys = list(keys)
        ts = np.asarray(ts, dtype=np.int64)
        if not keys:
            return self.stores[0].view_many(keys, ts)
        key_arr = np.asarray(keys, dtype=object)
        parts = [
            (rows, self.stores[b].view_many(key_arr[rows].tolist(), ts[rows]))
            for b, rows in self._split(keys)
        ]
        return _merge_views(len(keys), ts, parts, self.n_attrs)

    def _route(self, method: str, keys, *columns) -> int:
        keys = list(keys)
        arrays = [np.asarray(c, dtype=object if i == 0 else None) for i, c in enumerate(columns)]
        key_arr = np.asarray(keys, dtype=object)
        total = 0
        for b, rows in self._split(keys) if keys else []:
            total += getattr(self.stores[b], method)(key_arr[rows].tolist(), *[a[rows] for a in arrays])
        return total

    def set_labels(self, keys, ids, label_ts) -> int:
        return self._route("set_labels", keys, [str(i) for i in ids], np.asarray(label_ts, dtype=np.int64))

    def revert_many(self, keys, ids) -> int:
        return self._route("revert_many", keys, [str(i) for i in ids])

    def clear(self) -> None:
        for store in self.stores:
            store.clear()


def _merge_views(n: int, ts: np.ndarray, parts: list[tuple[np.ndarray, WindowView]], a: int) -> WindowView:
    """The per-bucket views as one view in the caller's row order (cells padded to the widest)."""
    k = max((v.ts.shape[1] for _, v in parts), default=0)
    out_ts = np.full((n, k), PAD_TS, dtype=np.int64)
    out_seq = np.full((n, k), -1, dtype=np.int64)
    out_val = np.zeros((n, k), dtype=np.int64)
    out_attr = np.zeros((n, k, a), dtype=np.float64)
    out_lab = np.full((n, k), UNKNOWN, dtype=np.int64)
    own = np.full(n, NOT_STORED, dtype=np.int64)
    inserted = np.zeros(n, dtype=bool)
    cut = np.full(n, PAD_TS, dtype=np.int64)  # no limit unless a bucket's view sets one
    bound = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    for rows, v in parts:
        w = v.ts.shape[1]
        out_ts[rows, :w], out_seq[rows, :w], out_val[rows, :w] = v.ts, v.seq, v.value
        out_attr[rows, :w], out_lab[rows, :w] = v.attrs, v.label_ts
        own[rows], inserted[rows] = v.own_seq, v.inserted
        if v.cut is not None:
            cut[rows] = v.cut
        if v.bound is not None:
            bound[rows] = v.bound
    return WindowView(
        t=ts, own_seq=own, inserted=inserted, ts=out_ts, seq=out_seq, value=out_val, attrs=out_attr,
        label_ts=out_lab, cut=cut, bound=bound,
    )  # fmt: skip


class PartitionFeatureEngine(FeatureEngine):
    """The online feature engine of one partition's worker on a Redis Cluster: card windows and
    feature records on the partition's slot, shared-entity windows bucketed (module docstring).
    Features, records and replays behave as :class:`~mlsd.fraud.features.FeatureEngine`'s."""

    def __init__(
        self,
        config: FeatureConfig | None,
        *,
        cluster_url: str,
        layout: ClusterLayout,
        partition: int,
        record_window_s: int = 120,
        retain_s: int = 86_400,
        socket_timeout_s: float | None = 10.0,
        redis_retries: int | None = 0,
    ) -> None:
        from mlsd.fraud.features import _retries

        # the memory backend builds nothing costly (a 1-row record ring); its stores are replaced here
        super().__init__(config, backend="memory", record_capacity=1)
        self.backend = "redis-cluster"
        if not 0 <= int(partition) < layout.partitions:
            raise InputError(
                "--partition", partition, f"is not a partition of {layout.partitions}",
                f"use 0..{layout.partitions - 1}",
            )  # fmt: skip
        self.cluster_url, self.layout, self.partition = cluster_url, layout, int(partition)
        self.record_window_s, self.retain_s = record_window_s, retain_s
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
        }
        if redis_retries is not None:
            self._options["retry"] = _retries(redis_retries)
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        """Build the stores on the masters that hold their slots now (the slot map read afresh)."""
        from mlsd.platform.streaming.redis_windows import RedisWindowStore

        cluster = cluster_client(self.cluster_url)
        own = self.layout.partition_prefix(self.partition)
        clients: dict[tuple[str, int], Any] = {}

        def client_for(prefix: str) -> Any:
            node = cluster.get_node_from_key(prefix)
            if (node.host, node.port) not in clients:
                clients[(node.host, node.port)] = node_client(cluster, prefix, **self._options)
            return clients[(node.host, node.port)]

        stores: dict[str, Any] = {}
        for kind in self.config.entities:
            horizon = self.config.horizon(kind)
            settings = {"retain_s": self.retain_s, "idle_ttl_s": 2 * horizon + self.retain_s}
            if kind == "card":
                stores[kind] = RedisWindowStore(
                    horizon, 4, prefix=f"{own}fw:card:", client=client_for(own), **settings
                )
            else:
                stores[kind] = BucketedWindowStore(
                    [
                        RedisWindowStore(
                            horizon, 0, prefix=(p := self.layout.bucket_prefix(kind, b)),
                            client=client_for(p), **settings,
                        )
                        for b in range(self.layout.buckets)
                    ]
                )  # fmt: skip
        self.stores = stores
        self.records = RedisRecords(client_for(own), own + "fw:", self.feature_names, self.record_window_s)
        cluster.close()

    def update_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """:meth:`FeatureEngine.update_matrix`; a slot that moved to another master (a reshard:
        ``MOVED`` / ``ASK`` / ``TRYAGAIN``) rebuilds the stores from the new slot map and raises a
        connection error, which the stream worker retries like an outage (the batch again,
        idempotent) instead of taking the payments for poison."""
        import redis

        try:
            return super().update_matrix(frame)
        except (
            redis.exceptions.MovedError,
            redis.exceptions.AskError,
            redis.exceptions.TryAgainError,
        ) as err:
            # TRYAGAIN: a multi-key call while its slot is half migrated; after the move it goes through
            self._connect()
            self.reconnects += 1
            raise redis.ConnectionError(f"a slot moved ({err}): stores rebuilt on the new masters") from err


def publish_partitioned(
    cluster: Any,
    layout: ClusterLayout,
    payments: Iterable[Mapping[str, Any]] | pd.DataFrame,
    *,
    chunk: int = 2000,
) -> list[int]:
    """XADD each payment to its card's partition stream (one JSON entry each, pipelined per master);
    returns how many went to each partition."""
    if not isinstance(payments, pd.DataFrame):
        payments = pd.DataFrame(list(payments))
    if payments.empty:
        return [0] * layout.partitions
    if "card_id" not in payments.columns:
        raise InputError("card_id", None, "is missing", "every payment needs a card_id (the partition key)")
    part = partition_of(payments["card_id"], layout.partitions)
    lines = payments.to_json(orient="records", lines=True).splitlines()
    streams = [layout.partition_prefix(p) + "payments" for p in range(layout.partitions)]
    pipe = cluster.pipeline(transaction=False)
    for i, (p, line) in enumerate(zip(part.tolist(), lines, strict=True), start=1):
        pipe.xadd(streams[p], {"p": line})
        if i % chunk == 0:
            pipe.execute()
    pipe.execute()
    return np.bincount(part, minlength=layout.partitions).tolist()


# ---------------------------------------------------------------------------------------------------
# `mlsd fraud stream --redis-cluster URL --partitions N`


def partition_worker_main(
    workdir: str,
    cluster_url: str,
    layout: ClusterLayout,
    partition: int,
    idle_exit_s: float | None,
    results: Any,
    overrides: Mapping[str, Any] | None = None,
    stop: Callable[[], bool] | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """One partition's worker: the workdir's champion over the partition's keys on the cluster."""
    from mlsd.fraud.engine import FraudDirs, freeze_heap, load_engine
    from mlsd.fraud.stream import StreamWorker, retry_transient
    from mlsd.platform.system import SystemDir

    ws = FraudDirs(SystemDir(workdir, "fraud"))
    timeout = 10.0
    features = retry_transient(
        lambda: PartitionFeatureEngine(
            ws.feature_config(), cluster_url=cluster_url, layout=layout, partition=partition,
            socket_timeout_s=timeout,
        ),
        f"partition worker {partition} start",
    )  # fmt: skip
    pipeline = load_engine(ws, features=features, review=False)
    pipeline.warm_up()
    freeze_heap()
    cfg = ws.config.stream
    settings: dict[str, Any] = {
        "group": cfg.group,
        "batch_size": cfg.batch_size,
        "block_ms": cfg.block_ms,
        "claim_idle_ms": cfg.claim_idle_ms,
        "dedup_window_s": cfg.dedup_window_s,
        **{k: v for k, v in (overrides or {}).items() if v is not None},
    }
    from mlsd.fraud.features import _retries

    own = layout.partition_prefix(partition)
    cluster = cluster_client(cluster_url)
    client = node_client(
        cluster, own, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_retries(0)
    )
    cluster.close()
    worker = retry_transient(
        lambda: StreamWorker(
            client, pipeline.handle, prefix=own, consumer=f"p{partition}-{os.getpid()}", **settings
        ),
        f"partition worker {partition} start",
    )
    if ready is not None:
        ready()
    try:
        stats = worker.run(idle_exit_s=idle_exit_s, stop=stop)
    except KeyboardInterrupt:
        stats = worker.stats
    results.put({"partition": partition, **stats.counts()})


def read_partitioned_decisions(cluster: Any, layout: ClusterLayout) -> list[dict[str, Any]]:
    """Every decision of every partition (partition by partition, each oldest first)."""
    from mlsd.fraud.stream import read_decisions

    return [
        d
        for p in range(layout.partitions)
        for d in read_decisions(cluster, layout.partition_prefix(p) + "decisions")
    ]


def run_partitioned_stream(args: Any) -> dict[str, Any]:
    """``mlsd fraud stream --redis-cluster URL --partitions N [--partition k ...]``: publish (optional),
    then one worker process per partition given (all of them by default)."""
    import multiprocessing as mp
    import queue

    from mlsd.fraud.data import load_history
    from mlsd.fraud.engine import MODEL_NAME
    from mlsd.platform.system import SystemDir

    layout = ClusterLayout(int(args.partitions), args.prefix)
    if getattr(args, "workers", 1) != 1:
        raise InputError(
            "--workers", args.workers, "is set by --partitions on a Redis Cluster (one worker per partition)",
            f"drop --workers; use --partitions {args.workers} (or --partition k to run one partition's worker)",
        )  # fmt: skip
    if getattr(args, "experiments", None):
        raise InputError(
            "--experiments", args.experiments, "shadow experiments are not wired into the partitioned stream yet",
            "run the shadow experiment on the single-Redis stream (--redis-url) or over HTTP (mlsd fraud serve)",
        )  # fmt: skip
    chosen = sorted(set(args.partition)) if args.partition else list(range(layout.partitions))
    for p in chosen:
        if not 0 <= p < layout.partitions:
            raise InputError(
                "--partition",
                p,
                f"is not a partition of {layout.partitions}",
                f"use 0..{layout.partitions - 1}",
            )
    overrides = {
        "batch_size": args.batch_size,
        "claim_idle_ms": args.claim_idle_ms,
        "ordered": False if getattr(args, "unordered", False) else None,
    }
    for name in ("batch_size", "claim_idle_ms"):
        if overrides[name] is not None and overrides[name] < (1 if name == "batch_size" else 0):
            flag = "--" + name.replace("_", "-")
            raise InputError(flag, overrides[name], "must be positive", f"e.g. {flag} 500")
    cluster = cluster_client(args.redis_cluster)  # a wrong URL fails here (no connection made yet)
    dirs = SystemDir(args.workdir, "fraud")
    dirs.require_champion(MODEL_NAME)
    published = [0] * layout.partitions
    if args.publish:
        tx = load_history(args.publish).sort_values("ts", kind="stable")
        if args.limit:
            tx = tx.iloc[: args.limit]
        published = publish_partitioned(
            cluster, layout, tx.drop(columns=["fraud", "scenario", "label_ts"], errors="ignore")
        )
    idle = args.idle_exit if args.idle_exit is not None else (2.0 if args.publish else None)
    started = time.perf_counter()
    stats: list[dict[str, Any]] = []
    if len(chosen) == 1:
        local: Any = queue.Queue()
        partition_worker_main(str(dirs.root), args.redis_cluster, layout, chosen[0], idle, local, overrides)
        stats.append(local.get())
    else:
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=partition_worker_main,
                args=(str(dirs.root), args.redis_cluster, layout, p, idle, results, overrides),
            )
            for p in chosen
        ]
        for proc in procs:
            proc.start()
        try:
            for proc in procs:
                proc.join()
        except KeyboardInterrupt:
            for proc in procs:
                proc.join(timeout=10)
        while not results.empty():
            stats.append(results.get())
    decisions = read_partitioned_decisions(cluster, layout)
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d["decision"]] = counts.get(d["decision"], 0) + 1
    cfg_group = "scorers"
    pending = sum(
        cluster.xpending(layout.partition_prefix(p) + "payments", cfg_group)["pending"] for p in chosen
    )
    return {
        "partitions": layout.partitions,
        "published": published,
        "decisions_in_output": len(decisions),
        "by_decision": counts,
        "workers": sorted(stats, key=lambda s: s["partition"]),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "pending": pending,
    }


# ---------------------------------------------------------------------------------------------------
# the capacity model's per-shard cost


def shard_stats(cluster_url: str) -> dict[str, dict[str, float]]:
    """Per master: commands processed and CPU seconds used so far (differences of two calls give a
    run's ops/s and CPU per payment: the capacity model's per-shard cost)."""
    cluster = cluster_client(cluster_url)
    out = {}
    for node in cluster.get_primaries():
        info = cluster.info(target_nodes=node)
        out[f"{node.host}:{node.port}"] = {
            "commands": float(info["total_commands_processed"]),
            "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        }
    cluster.close()
    return out
