"""``mlsd fraud bench``: replay simulated payments at a fixed rate through three paths and time them.

* ``inproc`` - the in-process stream path: payments become due on a wall-clock schedule
  (``i / tps`` seconds after the start) and the loop scores whatever is due as one micro-batch
  (features -> rules -> model -> decision). Latency of a payment = decision time - its scheduled
  arrival, so queueing behind a slow batch counts: a path that cannot keep up shows it in p99.
* ``redis`` - a producer XADDs the payments on schedule to a Redis Stream; ``w`` worker processes in
  one consumer group score them with Redis-backed feature windows and write decisions to the output
  stream. Latency = the output entry's Redis time - the payment's send time.
* ``http`` - ``mlsd fraud serve``'s app under uvicorn on loopback; a client posts the due payments
  every few milliseconds to ``/v1/score/batch``. Latency = response time - scheduled arrival.

Everything is bounded (``seconds`` of schedule, then a drain limit) and loopback only; keys the run
creates on Redis live under a unique prefix and are deleted afterwards. Without a trained workdir,
:func:`bootstrap` simulates a small world and trains a champion in a temporary one.

:func:`bench_feature_engine` times the online feature engine alone (no rules, no model):
``python -m mlsd.fraud.bench --backend memory|redis --json``; :func:`bench_transport` times the
stream transports alone: ``python -m mlsd.fraud.bench --transport --json``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir


def _summary(latency_s: np.ndarray, n_done: int, elapsed_s: float, target: int) -> dict[str, Any]:
    lat = np.asarray(latency_s, dtype=np.float64) * 1000.0
    q = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
    return {
        "achieved_tps": round(n_done / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "p50_ms": round(float(q[0]), 3),
        "p95_ms": round(float(q[1]), 3),
        "p99_ms": round(float(q[2]), 3),
        "payments": int(n_done),
        "target_payments": int(target),
    }


def replay_payments(n: int, seed: int = 1, start: int | None = None) -> pd.DataFrame:
    """Simulated payments for a replay (sized to ``n``; the simulator's own time line)."""
    from mlsd.fraud.world import simulate

    days = 7
    cards = max(50, int(n / (1.5 * days)) + 1)
    kwargs = {"start": start} if start is not None else {}
    tx = simulate(n_cards=cards, n_terminals=max(20, cards // 4), days=days, seed=seed, **kwargs)
    while len(tx) < n:  # the simulator's volume is random: grow until there is enough
        cards = int(cards * 1.3) + 10
        tx = simulate(n_cards=cards, n_terminals=max(20, cards // 4), days=days, seed=seed, **kwargs)
    return tx.iloc[:n].drop(columns=["fraud", "scenario", "label_ts"], errors="ignore").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# in-process


def bench_inprocess(
    pipeline: Any,
    tx: pd.DataFrame,
    tps: float,
    seconds: float,
    *,
    max_batch: int = 2000,
    drain_s: float = 10.0,
) -> dict[str, Any]:
    """Score ``tx`` as it becomes due at ``tps``; micro-batch = everything due, up to ``max_batch``."""
    n = min(len(tx), int(tps * seconds))
    out, batches = _replay(
        n, tps, seconds, lambda i, j: pipeline.score(tx.iloc[i:j]), max_batch, drain_s, 0.002
    )
    out["batches"] = batches
    out["mean_batch"] = round(out["payments"] / max(batches, 1), 1)
    return out


def _replay(
    n: int,
    tps: float,
    seconds: float,
    send: Callable[[int, int], Any],
    max_batch: int,
    drain_s: float,
    tick_s: float,
) -> tuple[dict[str, Any], int]:
    """Drive ``send(i, j)`` with payments i..j-1 as they fall due on a ``tps`` schedule.

    A payment's latency runs from its scheduled arrival to the end of the ``send`` that carried it, so
    queueing behind a slow batch counts. Returns the summary and the number of batches sent.
    """
    latency = np.empty(n)
    start = time.perf_counter()
    sched = start + np.arange(n) / tps
    i = 0
    last = start
    batches = 0
    while i < n:
        now = time.perf_counter()
        if now - start > seconds + drain_s:
            break  # hopelessly behind: stop by itself, report what was done
        due = int(np.searchsorted(sched, now, side="right"))
        if due <= i:
            time.sleep(min(max(sched[i] - now, 0.0), tick_s))
            continue
        j = min(due, i + max_batch)
        send(i, j)
        last = time.perf_counter()
        latency[i:j] = last - sched[i:j]
        i = j
        batches += 1
    return _summary(latency[:i], i, last - start, n), batches


# ---------------------------------------------------------------------------------------------------
# Redis Streams


def _redis_worker(workdir: str, redis_url: str, prefix: str, ready_key: str, stop_key: str, idx: int) -> None:
    import redis

    from mlsd.fraud.engine import freeze_heap, load_engine
    from mlsd.fraud.stream import StreamWorker

    client = redis.Redis.from_url(redis_url)
    pipeline = load_engine(
        SystemDir(workdir, "fraud"), review=False, feature_backend="redis", redis_url=redis_url,
        redis_prefix=prefix + "fw:",
    )  # fmt: skip
    pipeline.warm_up()
    freeze_heap()  # as `mlsd fraud stream` does
    worker = StreamWorker(
        client,
        pipeline.handle,
        prefix=prefix,
        consumer=f"bench-{idx}",
        batch_size=1000,
        block_ms=20,
        claim_idle_ms=60_000,
    )
    client.incr(ready_key)
    worker.run(stop=lambda: client.exists(stop_key) == 1)


def bench_redis(
    dirs: SystemDir,
    tx: pd.DataFrame,
    tps: float,
    seconds: float,
    workers: int,
    redis_url: str,
    *,
    drain_s: float = 20.0,
) -> dict[str, Any]:
    import redis

    from mlsd.fraud.stream import ensure_group, stream_keys

    client = redis.Redis.from_url(redis_url)
    prefix = f"mlsd-bench:{uuid.uuid4().hex[:8]}:"
    keys = stream_keys(prefix)
    ready, stop = prefix + "ready", prefix + "stop"
    ensure_group(client, keys["input"], "scorers")
    ctx = mp.get_context("spawn")  # a clean interpreter per worker: no forked locks or threads
    procs = [
        ctx.Process(
            target=_redis_worker, args=(str(dirs.root), redis_url, prefix, ready, stop, k), daemon=True
        )
        for k in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 120
        while int(client.get(ready) or 0) < workers:
            if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
                raise RuntimeError("bench: Redis workers did not start")
            time.sleep(0.05)
        n = min(len(tx), int(tps * seconds))
        payloads = _json_payloads(tx.iloc[:n])
        start = time.perf_counter()
        wall0 = time.time()
        sched = np.arange(n) / tps
        i = 0
        pipe = client.pipeline(transaction=False)
        while i < n:
            elapsed = time.perf_counter() - start
            due = int(np.searchsorted(sched, elapsed, side="right"))
            if due <= i:
                time.sleep(min(max(sched[i] - elapsed, 0.0), 0.002))
                continue
            for k in range(i, due):
                pipe.xadd(keys["input"], {"p": _with_sent(payloads[k], (wall0 + sched[k]) * 1000.0)})
            pipe.execute()
            i = due
        end_by = time.monotonic() + seconds + drain_s
        while client.xlen(keys["output"]) < n and time.monotonic() < end_by:
            time.sleep(0.05)
        client.set(stop, 1)
        from mlsd.fraud.stream import read_decision_entries

        entries = read_decision_entries(client, keys["output"])
        lat = np.array([(e_ms - sent) / 1000.0 for e_ms, sent in entries])
        done = len(entries)
        elapsed = (max(e for e, _ in entries) / 1000.0 - wall0) if entries else 0.0
        out = _summary(np.maximum(lat, 0.0), done, elapsed, n)
        out["workers"] = workers
        return out
    finally:
        client.set(stop, 1)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        for key in client.scan_iter(match=prefix + "*", count=2000):
            client.delete(key)
        client.close()


# ---------------------------------------------------------------------------------------------------
# Redis Cluster: the stream partitioned by card, one worker per partition


def _cluster_worker(
    workdir: str, cluster_url: str, layout: Any, partition: int, ready: Any, stop: Any, results: Any
) -> None:
    import queue

    from mlsd.fraud.distributed import partition_worker_main

    overrides = {"batch_size": 1000, "block_ms": 20, "claim_idle_ms": 60_000}
    cpu_at_ready = []

    def on_ready() -> None:
        cpu_at_ready.append(time.process_time())  # the model loaded: from here on, the work measured
        ready.release()

    stats: Any = queue.Queue()
    partition_worker_main(
        workdir, cluster_url, layout, partition, None, stats, overrides, stop=stop.is_set, ready=on_ready
    )
    results.put({**stats.get(), "cpu_s": time.process_time() - cpu_at_ready[0]})


def bench_cluster(
    dirs: SystemDir,
    tx: pd.DataFrame,
    tps: float,
    seconds: float,
    workers: int,
    cluster_url: str,
    *,
    drain_s: float = 20.0,
) -> dict[str, Any]:
    """The Redis Streams path partitioned by card over a Redis Cluster: ``workers`` partitions, one
    worker process each; the producer XADDs each payment to its card's partition on schedule.
    Besides throughput and latency, each master's commands and CPU seconds over the run (the
    capacity model's per-shard cost)."""
    from mlsd.fraud.distributed import (
        ClusterLayout,
        cluster_client,
        node_client,
        partition_of,
        shard_stats,
    )
    from mlsd.fraud.stream import ensure_group, read_decision_entries

    layout = ClusterLayout(workers, f"mlsd-bench:{uuid.uuid4().hex[:8]}:")
    cluster = cluster_client(cluster_url)
    streams = [layout.partition_prefix(p) + "payments" for p in range(workers)]
    outputs = [layout.partition_prefix(p) + "decisions" for p in range(workers)]
    # one plain client per partition's master, pipelined: the producer's cost is one round trip per
    # partition per tick
    producers = [node_client(cluster, s) for s in streams]
    for stream in streams:
        ensure_group(cluster, stream, "scorers")
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_cluster_worker,
            args=(str(dirs.root), cluster_url, layout, p, ready, stop, results),
            daemon=True,
        )
        for p in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=180) or not all(proc.is_alive() for proc in procs):
                raise RuntimeError("bench: Redis Cluster workers did not start")
        n = min(len(tx), int(tps * seconds))
        payloads = _json_payloads(tx.iloc[:n])
        part = partition_of(tx["card_id"].iloc[:n], workers)
        before = shard_stats(cluster_url)
        start = time.perf_counter()
        wall0 = time.time()
        sched = np.arange(n) / tps
        pipes = [c.pipeline(transaction=False) for c in producers]
        i = 0
        while i < n:
            elapsed = time.perf_counter() - start
            due = int(np.searchsorted(sched, elapsed, side="right"))
            if due <= i:
                time.sleep(min(max(sched[i] - elapsed, 0.0), 0.002))
                continue
            for k, p in zip(range(i, due), part[i:due].tolist(), strict=True):
                pipes[p].xadd(streams[p], {"p": _with_sent(payloads[k], (wall0 + sched[k]) * 1000.0)})
            for pipe in pipes:
                pipe.execute()
            i = due
        end_by = time.monotonic() + seconds + drain_s
        while sum(cluster.xlen(o) for o in outputs) < n and time.monotonic() < end_by:
            time.sleep(0.05)
        after = shard_stats(cluster_url)
        stop.set()
        entries = [e for o in outputs for e in read_decision_entries(cluster, o)]
        lat = np.array([(e_ms - sent) / 1000.0 for e_ms, sent in entries])
        done = len(entries)
        elapsed = (max(e for e, _ in entries) / 1000.0 - wall0) if entries else 0.0
        out = _summary(np.maximum(lat, 0.0), done, elapsed, n)
        out["workers"] = workers
        out["partitions"] = workers
        wall = max(elapsed, 1e-9)
        # each worker's CPU per payment decided (model loaded, polling included): the rate one worker
        # reaches on a core of its own, which a shared, loaded machine's wall clock does not show
        worker_stats = [results.get(timeout=60) for _ in procs]
        cpu_s = sum(w["cpu_s"] for w in worker_stats)
        out["worker_cpu_ms_per_payment"] = round(1000.0 * cpu_s / max(done, 1), 4)
        out["shards"] = {
            node: {
                "ops_per_s": round((after[node]["commands"] - b["commands"]) / wall, 1),
                "cpu_ms_per_payment": round(1000.0 * (after[node]["cpu_s"] - b["cpu_s"]) / max(done, 1), 4),
            }
            for node, b in before.items()
        }
        return out
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
        from mlsd.platform.redis_cluster import delete_prefix

        delete_prefix(cluster, layout.prefix)
        for c in producers:
            c.close()
        cluster.close()


def capacity_model(runs: dict[str, dict[str, Any]], target_tps: float = 10_000) -> dict[str, Any]:
    """Workers and Redis masters for ``target_tps``, from measured runs (``{"workers=w": result}``).

    Per-worker rate: a run's achieved rate / its workers (a run that kept up with its target only
    bounds the rate from below: it says so). With the workers' CPU per payment measured, also the
    rate of a worker on a core of its own and the workers for ``target_tps`` at 70% busy. Masters:
    the runs' Redis CPU per payment (all masters) against one core per master at 50% utilisation
    (the headroom for failover and bursts).

    Examples:
        >>> runs = {"workers=1": {"workers": 1, "achieved_tps": 4000.0, "target_payments": 30000,
        ...                       "payments": 20000, "shards": {"a": {"cpu_ms_per_payment": 0.05}}}}
        >>> m = capacity_model(runs)
        >>> m["per_worker_tps"], m["workers_needed"], m["masters_needed"]
        (4000.0, 3, 1)
    """
    import math

    rates, cpu, worker_cpu = {}, [], []
    saturated = {}
    for run in runs.values():
        w = int(run["workers"])
        rates[w] = run["achieved_tps"] / w
        if run.get("worker_cpu_ms_per_payment"):
            worker_cpu.append(run["worker_cpu_ms_per_payment"])
        saturated[w] = run["payments"] < run["target_payments"] or run.get("p99_ms", 0) > 1000
        shards = run.get("shards") or {}
        if shards:
            cpu.append(sum(s["cpu_ms_per_payment"] for s in shards.values()))
    if not rates:
        return {}
    # the most workers measured: their per-worker rate includes the sharing (Redis, the producer)
    w_max = max(rates)
    per_worker = rates[w_max]
    out: dict[str, Any] = {
        "target_tps": target_tps,
        "per_worker_tps_by_workers": {str(w): round(r, 1) for w, r in sorted(rates.items())},
        "per_worker_tps": round(per_worker, 1),
        "per_worker_rate_is": "measured at saturation" if saturated[w_max] else "a lower bound (kept up)",
        "workers_needed": math.ceil(target_tps / per_worker) if per_worker > 0 else None,
    }
    if worker_cpu:
        # a worker with a core of its own, kept at 70% busy (headroom for bursts and reclaims)
        per_core = 1000.0 / float(np.median(worker_cpu))
        out["worker_cpu_ms_per_payment"] = round(float(np.median(worker_cpu)), 4)
        out["per_worker_tps_dedicated_core"] = round(per_core, 1)
        out["workers_needed_dedicated_cores"] = math.ceil(target_tps / (0.7 * per_core))
    if len(rates) > 1:
        w_min = min(rates)
        out["scaling_efficiency"] = round(rates[w_max] * w_max / (rates[w_min] * w_min) / (w_max / w_min), 3)
    if cpu:
        cpu_ms = float(np.median(cpu))
        out["redis_cpu_ms_per_payment"] = round(cpu_ms, 4)
        out["masters_needed"] = max(1, math.ceil(target_tps * cpu_ms / 1000.0 / 0.5))
    return out


def _with_sent(payload: str, sent_ms: float) -> str:
    return payload[:-1] + f',"sent_ms":{sent_ms:.3f}}}'


def _json_payloads(tx: pd.DataFrame) -> list[str]:
    # one vectorised to_json, split into lines: ~10x faster than json.dumps per record
    return tx.to_json(orient="records", lines=True).splitlines()


# ---------------------------------------------------------------------------------------------------
# HTTP


def _http_server(workdir: str, port: int) -> None:
    import uvicorn

    from mlsd.fraud.engine import FraudDirs, freeze_heap, load_engine
    from mlsd.fraud.service import build_app

    state = FraudDirs(SystemDir(workdir, "fraud"))
    app = build_app(load_engine(state, review=False), config=state.config)
    freeze_heap()  # as `mlsd fraud serve` does
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(
    dirs: SystemDir,
    tx: pd.DataFrame,
    tps: float,
    seconds: float,
    *,
    tick_s: float = 0.01,
    max_batch: int = 1000,
    drain_s: float = 10.0,
) -> dict[str, Any]:
    import httpx

    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_http_server, args=(str(dirs.root), port), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or not proc.is_alive():
                    raise RuntimeError("bench: HTTP server did not start")
                time.sleep(0.1)
            n = min(len(tx), int(tps * seconds))
            body_rows = tx.iloc[:n].to_dict("records")

            def post(i: int, j: int) -> None:
                resp = client.post("/v1/score/batch", json={"payments": body_rows[i:j]})
                if resp.status_code != 200:
                    raise RuntimeError(f"bench: HTTP {resp.status_code}: {resp.text[:300]}")

            out, requests = _replay(n, tps, seconds, post, max_batch, drain_s, tick_s)
        out["requests"] = requests
        out["mean_batch"] = round(out["payments"] / max(requests, 1), 1)
        return out
    finally:
        proc.terminate()
        proc.join(timeout=10)


# ---------------------------------------------------------------------------------------------------


def bootstrap(
    dirs: SystemDir,
    *,
    cards: int = 600,
    days: int = 35,
    seed: int = 0,
    lgbm_params: dict[str, Any] | None = None,
) -> SystemDir:
    """A workdir with a trained champion on simulated history (for the bench and tests)."""
    from mlsd.fraud.training import train
    from mlsd.fraud.world import simulate_into

    simulate_into(dirs, {"cards": cards, "terminals": max(50, cards // 4), "days": days, "seed": seed})
    # the model a deployment runs (LightGBM at its default size), not the scheduled job's small one
    train(dirs, seed=seed, lgbm_params=lgbm_params or {}, progress=False)
    return dirs


def run_bench(
    *,
    tps: float = 10_000,
    seconds: float = 30,
    paths: list[str] | None = None,
    workers: list[int] | None = None,
    redis_url: str = "redis://127.0.0.1:6379/0",
    dirs: SystemDir | None = None,
    redis_cluster: str = "local",
) -> dict[str, Any]:
    """Run the chosen paths; returns ``{"config": ..., "inproc": M, "redis": {"workers=1": M, ...},
    "cluster": {"workers=1": M, ..., "capacity": model}, "http": M}``.

    ``redis_cluster``: the cluster path's Redis Cluster (``redis+cluster://host:port,...``), or
    ``"local"``: a 3-master cluster started on free loopback ports for the run and stopped after it."""
    from mlsd.fraud.engine import MODEL_NAME, freeze_heap, load_engine

    paths = paths or ["inproc", "redis", "http"]
    unknown = set(paths) - {"inproc", "redis", "cluster", "http"}
    if unknown:
        raise InputError(
            "--paths", ",".join(sorted(unknown)), "unknown path", "use inproc, redis, cluster, http"
        )
    if not tps > 0 or not seconds > 0:
        raise InputError("--tps", tps, "rate and duration must be positive", "e.g. --tps 10000 --seconds 30")
    if dirs is None:
        dirs = SystemDir(Path(tempfile.mkdtemp(prefix="mlsd-fraud-bench-")), "fraud")
        print(f"bench: training a small model in {dirs.home}", file=sys.stderr)
        bootstrap(dirs)
    dirs.require_champion(MODEL_NAME)
    n = int(tps * seconds)
    warmup = 200
    replay = replay_payments(n + warmup, seed=11)
    tx = replay.iloc[warmup:].reset_index(drop=True)
    result: dict[str, Any] = {
        "config": {"tps": tps, "seconds": seconds, "payments": n, "model_version": None},
    }
    if "inproc" in paths:
        pipeline = load_engine(dirs, review=False)
        result["config"]["model_version"] = pipeline.model_version
        # size the window stores for the replayed population once, off the clock, as a deployment
        # sizes them for its card / terminal base: growing a store mid-stream copies all of it
        presize = getattr(pipeline.features, "presize", None)
        if presize is not None:
            presize(replay, headroom=1.0)
        # the first payments warm up (first LightGBM call, allocations); they come before the timed
        # ones in event time, so the windows stay in order
        pipeline.score(replay.iloc[:warmup])
        freeze_heap()  # as `mlsd fraud serve` / `stream` do after loading
        print("bench: in-process path", file=sys.stderr)
        result["inproc"] = bench_inprocess(pipeline, tx, tps, seconds)
    if "redis" in paths:
        result["redis"] = {}
        for w in workers or [1]:
            print(f"bench: Redis stream path, {w} worker(s)", file=sys.stderr)
            result["redis"][f"workers={w}"] = bench_redis(dirs, tx, tps, seconds, w, redis_url)
    if "cluster" in paths:
        from mlsd.platform.redis_cluster import LocalRedisCluster

        local = LocalRedisCluster(masters=3).start() if redis_cluster == "local" else None
        try:
            url = local.url if local is not None else redis_cluster
            runs: dict[str, Any] = {}
            for w in workers or [1]:
                print(f"bench: Redis Cluster path, {w} partition(s) / worker(s)", file=sys.stderr)
                runs[f"workers={w}"] = bench_cluster(dirs, tx, tps, seconds, w, url)
        finally:
            if local is not None:
                local.stop()
        result["cluster"] = {**runs, "capacity": capacity_model(runs, target_tps=tps)}
    if "http" in paths:
        print("bench: HTTP path", file=sys.stderr)
        result["http"] = bench_http(dirs, tx, tps, seconds)
    return result


# ---------------------------------------------------------------------------------------------------
# The feature engine alone


def bench_feature_engine(
    backend: str = "memory",
    n_cards: int = 20_000,
    n_terminals: int = 4_000,
    payments: int = 200_000,
    batch_size: int = 1_000,
    warmup: int = 50_000,
    redis_url: str = "redis://127.0.0.1:6379/15",
) -> dict:
    """Throughput of the feature engine alone (no rules, no model): wall and CPU-time payments/s.

    ``python -m mlsd.fraud.bench --backend memory|redis --json``; the full decision path is
    ``mlsd fraud bench``. A Redis run writes under a unique prefix and deletes it afterwards.
    """
    import time
    import uuid

    from mlsd.fraud.features import FeatureEngine
    from mlsd.fraud.world import simulate

    days = max(1, int(np.ceil((warmup + payments) / (n_cards * 1.5) * 1.2)))
    tx = simulate(n_cards=n_cards, n_terminals=n_terminals, days=days, seed=0).iloc[: warmup + payments]
    prefix = f"mlsd-engine-bench:{uuid.uuid4().hex[:12]}:"
    engine = FeatureEngine(backend=backend, redis_url=redis_url, prefix=prefix)
    try:
        for i in range(0, warmup, batch_size):
            engine.update_batch(tx.iloc[i : i + batch_size])
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(warmup, len(tx), batch_size):
            engine.update_batch(tx.iloc[i : i + batch_size])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if backend == "redis":
            for store in engine.stores.values():
                store.clear()  # type: ignore[attr-defined]
    n = len(tx) - warmup
    return {
        "backend": backend,
        "payments": n,
        "batch_size": batch_size,
        "tx_per_s_wall": round(n / wall, 1),
        "tx_per_s_cpu": round(n / cpu, 1),
        "features": len(engine.feature_names),
    }


# ---------------------------------------------------------------------------------------------------
# The transport alone: Redis Streams vs NATS JetStream (why the partitioned stream is on Redis)


def bench_transport(
    n: int = 50_000,
    *,
    batch: int = 1000,
    redis_url: str = "redis://127.0.0.1:6379/15",
    nats_url: str = "nats://127.0.0.1:4222",
) -> dict[str, dict[str, float]]:
    """``n`` payment bodies published, read in batches of ``batch`` and acknowledged, no scoring:
    on a Redis Stream (pipelined XADD, XREADGROUP, one XACK per batch) and on a NATS JetStream
    stream (memory storage, async publish with ``Nats-Msg-Id`` de-duplication, a durable pull
    consumer, explicit acks: JetStream acknowledges message by message). Messages per second and the
    client's CPU microseconds per message. Keys and streams it creates are deleted."""
    import asyncio
    import json
    import resource

    import redis

    payloads = [p.encode() for p in _json_payloads(replay_payments(n, seed=2))]

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def result(publish_s: float, consume_s: float, cpu_s: float) -> dict[str, float]:
        return {
            "publish_per_s": round(n / publish_s),
            "consume_ack_per_s": round(n / consume_s),
            "client_cpu_us_per_message": round(1e6 * cpu_s / n, 1),
        }

    client = redis.Redis.from_url(redis_url)
    key = f"mlsd-transport:{uuid.uuid4().hex[:8]}"
    try:
        t, c = time.perf_counter(), cpu()
        pipe = client.pipeline(transaction=False)
        for i, body in enumerate(payloads, start=1):
            pipe.xadd(key, {"p": body})
            if i % 2000 == 0:
                pipe.execute()
        pipe.execute()
        published = time.perf_counter() - t
        client.xgroup_create(key, "scorers", id="0")
        got, t = 0, time.perf_counter()
        while got < n:
            [[_, entries]] = client.xreadgroup("scorers", "c", {key: ">"}, count=batch)
            for _, fields in entries:
                json.loads(fields[b"p"])
            client.xack(key, "scorers", *[e[0] for e in entries])
            got += len(entries)
        out = {"redis_streams": result(published, time.perf_counter() - t, cpu() - c)}
    finally:
        client.delete(key)
        client.close()

    async def jetstream() -> dict[str, float]:
        try:
            import nats
            from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
        except ImportError as err:
            raise InputError("--transport", "nats", f"needs nats-py ({err})", "pip install nats-py") from err
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        name = f"MLSDTRANSPORT{uuid.uuid4().hex[:8]}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.p"], storage="memory"))
        try:
            t, c = time.perf_counter(), cpu()
            acks = []
            for i, body in enumerate(payloads):
                acks.append(await js.publish_async(f"{name}.p", body, headers={"Nats-Msg-Id": str(i)}))
                if len(acks) >= 2000:
                    await asyncio.gather(*acks)
                    acks = []
            await asyncio.gather(*acks)
            published = time.perf_counter() - t
            sub = await js.pull_subscribe(
                f"{name}.p", durable="scorers",
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=4 * batch),
            )  # fmt: skip
            got, t = 0, time.perf_counter()
            while got < n:
                messages = await sub.fetch(batch, timeout=10)
                for m in messages:
                    json.loads(m.data)
                await asyncio.gather(*(m.ack() for m in messages))
                got += len(messages)
            return result(published, time.perf_counter() - t, cpu() - c)
        finally:
            await js.delete_stream(name)
            await nc.close()

    out["nats_jetstream"] = asyncio.run(jetstream())
    return out


if __name__ == "__main__":  # python -m mlsd.fraud.bench --backend memory --json
    import argparse
    import json

    parser = argparse.ArgumentParser(description="feature engine throughput (no rules, no model)")
    parser.add_argument("--backend", choices=("memory", "redis"), default="memory")
    parser.add_argument("--payments", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--transport", action="store_true", help="time Redis Streams vs NATS JetStream alone (no scoring)"
    )
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    if a.transport:
        print(json.dumps(bench_transport(a.payments if a.payments != 200_000 else 50_000)))
        raise SystemExit(0)
    warm = 50_000 if a.backend == "memory" else 5_000
    print(
        json.dumps(
            bench_feature_engine(
                a.backend, payments=a.payments, batch_size=a.batch_size, warmup=warm, redis_url=a.redis_url
            )
        )
    )
