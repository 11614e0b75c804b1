"""``mlsd recsys bench``: training time and the latency and throughput of the recommendation service,
in-process and over HTTP.

1. simulate ``users`` x ``items`` (the whole catalogue and user base);
2. train the served model -- the model definition for this catalogue
   (:func:`~mlsd.recsys.model.model_spec`, what ``mlsd recsys evaluate`` measures and ``mlsd recsys
   train`` serves) -- on **every** user (:func:`train_on_all_users`): stage one (candidate sources, the
   user and item feature tables, seen titles) on all the window's events, the ranker's labelled rows
   from ``ranker_users`` of them; register it as champion;
3. **in-process**: ``requests`` single requests through :meth:`RecsysEngine.handle` (k=50), users drawn
   from all simulated users (those without events in the window are served from their seeds) and 5%
   ids never seen at all (cold start), after a short warm-up;
4. **http**: a real uvicorn server on 127.0.0.1 (a free port) and an httpx client with ``concurrency``
   requests in flight (a closed loop: saturation), or with ``rate`` an open loop of Poisson arrivals at
   that rate (the latency at a stated load), the same mix and count; the server stops when the run
   ends. ``workers=1``
   serves from a thread of this process (the in-process engine); ``workers>1`` starts ``uvicorn
   --workers N`` as a child process, each worker loading the champion from the workdir.

Prints ``{"train": T, "in_process": B, "http": B}``: ``T`` the training's sizes and seconds, ``B =
{"p50_ms", "p95_ms", "p99_ms", "throughput_rps", "stages": {stage: p99_ms}}``; progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("user_state", "candidates", "rules", "features", "ranking", "rerank")


def _log(message: str) -> None:
    print(f"[recsys bench] {message}", file=sys.stderr, flush=True)


def summarize(latencies_ms: list[float], stage_ms: dict[str, list[float]], wall_s: float) -> dict[str, Any]:
    """The B object: latency percentiles, throughput, and the p99 of each stage."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    pct = lambda a, q: round(float(np.percentile(a, q)), 3) if len(a) else None  # noqa: E731
    return {
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "throughput_rps": round(len(lat) / wall_s, 2) if wall_s > 0 else None,
        "stages": {
            s: pct(np.asarray(stage_ms.get(s, []), dtype=np.float64), 99) for s in STAGES if stage_ms.get(s)
        },
    }


def request_users(
    simulated: np.ndarray, n: int, rng: np.random.Generator, cold_share: float = 0.05
) -> np.ndarray:
    """``n`` user ids drawn from every ``simulated`` user (trained or not: a user without events in the
    training window is served as cold start from seeds), and ``cold_share`` ids never seen at all."""
    users = rng.choice(simulated, size=n)
    cold = rng.random(n) < cold_share
    users[cold] = int(simulated.max()) + 1 + rng.integers(0, 1_000_000, int(cold.sum()))
    return users


def bench_in_process(engine, users: np.ndarray, k: int) -> dict[str, Any]:
    for u in users[: min(20, len(users))]:  # warm-up: lazy imports, first FAISS/LightGBM calls
        engine.handle([{"user_id": int(u), "k": k}])
    latencies, stages = [], {s: [] for s in STAGES}
    started = time.perf_counter()
    for u in users:
        t0 = time.perf_counter()
        out = engine.handle([{"user_id": int(u), "k": k}])[0]  # a single request: a batch of one
        latencies.append((time.perf_counter() - t0) * 1000.0)
        for s, ms in out["timings_ms"].items():
            stages.setdefault(s, []).append(ms)
    return summarize(latencies, stages, time.perf_counter() - started)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A real uvicorn server in a background thread; ``with`` starts it and stops it."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="recsys-bench-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the uvicorn server did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _http_run(
    url: str, users: np.ndarray, k: int, concurrency: int, rate: float | None = None
) -> tuple[list, dict, float, int]:
    import httpx

    latencies: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    errors = 0
    queue = list(map(int, users))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        for u in queue[: min(20, len(queue))]:  # warm-up
            await client.get(f"/v1/recommendations/{u}", params={"k": k})
        position = iter(range(len(queue)))

        async def send(i: int, since: float) -> None:
            """Request ``i``; its latency counted from ``since``."""
            nonlocal errors
            try:
                response = await client.get(f"/v1/recommendations/{queue[i]}", params={"k": k})
            except httpx.HTTPError:  # e.g. the pool's wait ran out: a failed request, not a lost one
                errors += 1
                return
            latencies.append((time.perf_counter() - since) * 1000.0)
            if response.status_code != 200:
                errors += 1
                return
            for s, ms in response.json()["timings_ms"].items():
                stages.setdefault(s, []).append(ms)

        async def worker() -> None:
            for i in position:  # workers share one iterator: each request is sent exactly once
                await send(i, time.perf_counter())

        async def scheduled(i: int, at: float) -> None:
            await asyncio.sleep(max(at - time.perf_counter(), 0.0))
            # from the time the request was due, not sent: a client that fell behind must not hide the
            # wait (coordinated omission); the connection pool bounds what is in flight
            await send(i, at)

        started = time.perf_counter()
        if rate is None:  # closed loop: `concurrency` clients, each sends when its answer is in
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:  # open loop: Poisson arrivals at `rate` a second, whatever the answers take
            gaps = np.random.default_rng(len(queue)).exponential(1.0 / rate, len(queue))
            due = started + np.cumsum(gaps)
            await asyncio.gather(*(scheduled(i, float(at)) for i, at in enumerate(due)))
        wall = time.perf_counter() - started
    return latencies, stages, wall, errors


class ServerProcess:
    """``uvicorn --workers N`` serving the champion of workdir ``W`` (``W/recsys/registry``) in a child
    process; ``with`` starts it, waits until every worker answers /health (each loads the model
    itself), and stops it."""

    def __init__(
        self, workdir: str | Path, workers: int, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.workdir, self.workers = Path(workdir), int(workers)
        self.port = port or _free_port()
        self.env = dict(env or {})
        self.proc = None
        self.pids: set[int] = set()

    def __enter__(self) -> ServerProcess:
        import os
        import subprocess

        import httpx

        from mlsd.recsys.service import WORKDIR_ENV

        cmd = [sys.executable, "-m", "uvicorn", "mlsd.recsys.service:app_from_env", "--factory",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
        env = {**os.environ, WORKDIR_ENV: str(self.workdir), **self.env}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        pids = self.pids
        deadline = time.monotonic() + 300
        while len(pids) < self.workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"uvicorn with {self.workers} workers did not come up ({len(pids)} ready)")
            try:
                pids.add(int(httpx.get(f"{self.url}/health", timeout=5).json()["pid"]))
            except (httpx.HTTPError, KeyError, ValueError):
                time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a stuck server must not outlive the bench
                self.proc.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux /proc), in MB; None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def bench_http(
    engine,
    users: np.ndarray,
    k: int,
    concurrency: int,
    workers: int = 1,
    workdir: str | Path | None = None,
    env: dict[str, str] | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """``env``: what the worker processes' environment adds (the user-state store of ``--user-state``).
    ``rate``: an open loop at this many requests a second (Poisson arrivals, at most ``concurrency``
    connections) instead of ``concurrency`` clients each waiting for its answer: latency at a stated load
    below saturation, the way a latency objective is stated; the closed loop measures saturation."""
    from mlsd.recsys.service import create_service_app

    if workers > 1:
        server = ServerProcess(workdir, workers, env=env)
    else:
        server = ServerThread(create_service_app(engine))
    with server:
        # The load generator lives in the bench's process, next to the in-process engine's objects: a full
        # collection over them stalled every request in flight by tens of ms (measured: p99 125 ms at 80
        # requests/s against 61 ms from a bare client process). Frozen, the collector skips them.
        gc.collect()
        gc.freeze()
        try:
            latencies, stages, wall, errors = asyncio.run(_http_run(server.url, users, k, concurrency, rate))
        finally:
            gc.unfreeze()
        worker_rss = [rss_mb(pid) for pid in sorted(getattr(server, "pids", ()))]
    if errors:
        _log(f"{errors} HTTP requests failed")
    load = {"load": "closed", "concurrency": concurrency} if rate is None else {
        "load": "open", "offered_rps": rate, "max_connections": concurrency}  # fmt: skip
    out = {**summarize(latencies, stages, wall), "workers": workers, **load}
    if worker_rss:
        out["worker_rss_mb"] = worker_rss
    return out


def train_on_all_users(
    dataset,
    registry_root: str | Path,
    *,
    sources: dict[str, int] | None = None,
    n_estimators: int | None = None,
    ranker_users: int = 3_000,
    eval_users: int = 2_000,
    seed: int = 0,
    als_engine: str = "implicit",
    spark_master: str | None = None,
) -> dict[str, Any]:
    """The daily job's model (:func:`~mlsd.recsys.training.model_for`: the definition ``evaluate`` measures,
    temporal split; ``sources``/``n_estimators`` None keep the definition's, as ``mlsd recsys train``
    does; ALS trained by ``als_engine`` on ``spark_master``) with its stage one fitted on **every** user
    of the window, registered as champion.

    Stage one (ALS, content profiles, popularity, the user and item feature tables, the seen titles) is
    fitted on all the window's events. The ranker's labelled rows come from ``ranker_users`` of the
    window's users: each labelled user costs ~1,000 candidate rows x ~100 features, so labelling every
    one of 1M users would be a billion-row frame (the ranker needs thousands of users, not millions).
    The next-day metrics are measured on ``eval_users`` of the eval day's users. Timings per step go to
    stderr, and into the report (``seconds``)."""
    import tempfile as _tempfile

    from tqdm import tqdm

    from mlsd.platform.registry import ModelRegistry, fingerprint
    from mlsd.recsys.config import MODEL_NAME, TrainConfig
    from mlsd.recsys.training import (
        DAY_S,
        REFERENCE_FILE,
        evaluate_model,
        model_for,
        relevant_on,
        split_days,
        write_catalog,
    )

    inter = dataset.interactions
    ts = inter["timestamp"].to_numpy()
    days = (int(dataset.meta.get("end_ts") or ts.max() + 1) - int(ts.min())) / DAY_S
    cfg = TrainConfig(sources=sources, n_estimators=n_estimators).fit(days)
    bounds = split_days(
        dataset, train_days=cfg.train_days, label_days=cfg.label_days, eval_days=cfg.eval_days
    )
    window = (ts >= bounds["train_start"]) & (ts < bounds["eval_start"])
    train = inter[window].reset_index(drop=True)
    held_out = inter[(ts >= bounds["eval_start"]) & (ts < bounds["end"])]
    rng = np.random.default_rng(seed)
    seconds: dict[str, float] = {}
    steps = tqdm(total=4, desc="recsys bench train", file=sys.stderr)

    steps.set_postfix_str(f"ranker on {ranker_users:,} users' labelled rows")
    t0 = time.perf_counter()
    model = model_for(dataset, cfg, progress=True, als_engine=als_engine, spark_master=spark_master)
    window_users = np.unique(train["user_id"].to_numpy())
    labelled = rng.choice(window_users, size=min(ranker_users, len(window_users)), replace=False)
    sample = dataset.with_interactions(train[train["user_id"].isin(labelled)].reset_index(drop=True))
    model.fit(sample, cutoff=bounds["cutoff"])
    seconds["ranker"] = time.perf_counter() - t0
    steps.update()

    steps.set_postfix_str(f"stage one on all {len(window_users):,} users, {len(train):,} events")
    t0 = time.perf_counter()
    model._fit_stage_one(dataset.with_interactions(train))  # what fit() ends with, on every user
    seconds["stage_one"] = time.perf_counter() - t0
    steps.update()

    steps.set_postfix_str("next-day metrics")
    t0 = time.perf_counter()
    users, relevant = relevant_on(train, held_out)
    if len(users) > eval_users:
        pick = np.sort(rng.choice(len(users), size=eval_users, replace=False))
        users, relevant = users[pick], [relevant[i] for i in pick]
    metrics = evaluate_model(model, users, relevant, cfg.k, len(dataset.items))
    seconds["evaluate"] = time.perf_counter() - t0
    steps.update()

    steps.set_postfix_str("register")
    t0 = time.perf_counter()
    registry = ModelRegistry(Path(registry_root))
    with _tempfile.TemporaryDirectory(prefix="recsys-bench-model-") as tmp:
        out = Path(tmp) / "model"
        model.save(out)
        write_catalog(out / "catalog", dataset, train, bounds["eval_start"])
        model.reference_.to_parquet(out / REFERENCE_FILE, index=False)
        version = registry.register(
            MODEL_NAME, out, params={**{k: v for k, v in vars(cfg).items()}, **bounds, "ranker_users": ranker_users},
            metrics={**metrics, "eval_users": len(users)}, data_fingerprint=fingerprint(train),
        )  # fmt: skip
    registry.promote(MODEL_NAME, version.version, alias="champion")
    seconds["register"] = time.perf_counter() - t0
    steps.update()
    steps.close()
    return {
        "version": version.version,
        "model": model,
        "metrics": metrics,
        "train_events": len(train),
        "train_users": len(window_users),
        "ranker_users": len(labelled),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def run_bench(
    users: int = 1_000_000,
    items: int = 50_000,
    requests: int = 2_000,
    concurrency: int = 8,
    *,
    events_per_user: float = 8.0,
    ranker_users: int = 3_000,
    k: int = 50,
    workdir: str | Path | None = None,
    seed: int = 0,
    sources: dict[str, int] | None = None,
    n_estimators: int | None = None,
    workers: int = 1,
    user_state: str | None = None,
    als_engine: str = "implicit",
    spark_master: str | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Set up (simulate, train on every user, register in ``W/recsys/registry``) and measure; returns
    ``{"train": T, "in_process": B, "http": B}`` (and ``"user_state": S`` with ``user_state``).

    ``user_state``: a Redis URL (``redis+cluster://`` too). The model's per-user tables are exported there (a key prefix of this
    run, deleted at the end) and every serving process (the in-process engine, each uvicorn worker)
    keeps only the item side, reading each request's users from Redis. ``S`` has the export time and
    the memory per user: ``redis_bytes_per_user`` (Redis ``used_memory`` growth / users) and
    ``process_bytes_per_user`` (the per-user tables' bytes in a process that holds them)."""
    from mlsd.platform.system import SystemDir
    from mlsd.recsys.config import RecsysConfig, ServiceConfig
    from mlsd.recsys.engine import RecsysEngine
    from mlsd.recsys.world import simulate

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlsd-recsys-bench-"))
    dirs = SystemDir(root, "recsys").create()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    dataset, _ = simulate(users, items, days=60, seed=seed, events_per_user=events_per_user)
    simulate_s = time.perf_counter() - t0
    _log(
        f"simulated {users:,} users x {items:,} titles, {len(dataset.interactions):,} events in {simulate_s:.1f} s"
    )
    t0 = time.perf_counter()
    trained = train_on_all_users(dataset, dirs.registry, sources=sources, n_estimators=n_estimators,
                                 ranker_users=ranker_users, seed=seed, als_engine=als_engine,
                                 spark_master=spark_master)  # fmt: skip
    train_s = time.perf_counter() - t0
    _log(f"trained stage one on all {trained['train_users']:,} users of the window ({trained['train_events']:,} "
         f"events), the ranker on {trained['ranker_users']:,} users' labelled rows, in {train_s:.1f} s "
         f"{trained['seconds']} (next-day ndcg@10 {trained['metrics']['ndcg@10']:.3f})")  # fmt: skip
    simulated_users = dataset.users["user_id"].to_numpy(np.int64)
    store, state, worker_env = None, None, {}
    if user_state:
        store, state, worker_env = _export_user_state(trained["model"], trained["version"], user_state)
    del dataset, trained["model"]  # the engine loads the registered artifact, as a service does
    try:
        config = RecsysConfig(service=ServiceConfig(reload_poll_s=0))
        engine = RecsysEngine(dirs.registry, config=config, seed=seed, user_state=store)
        in_users = request_users(simulated_users, requests, rng)
        http_users = request_users(simulated_users, requests, rng)
        where = "from Redis" if store is not None else "in process memory"
        _log(f"in-process: {requests} requests, k={k}, user state {where}")
        in_process = bench_in_process(engine, in_users, k)
        load = f"concurrency {concurrency}" if rate is None else f"{rate:g} requests/s (open loop)"
        _log(f"http: {requests} requests, {load}, uvicorn ({workers} worker(s)) on 127.0.0.1, "
             f"user state {where}")  # fmt: skip
        http = bench_http(engine, http_users, k, concurrency, workers, root, env=worker_env, rate=rate)
        engine.close()
    finally:
        if store is not None:
            _delete_prefix(store)
    train = {
        "simulate_s": round(simulate_s, 1),
        "train_s": round(train_s, 1),
        "als_engine": als_engine,
        "steps_s": trained["seconds"],
        "users": trained["train_users"],
        "events": trained["train_events"],
        "ranker_users": trained["ranker_users"],
        "ndcg@10": round(trained["metrics"]["ndcg@10"], 4),
    }
    out = {"train": train, "in_process": in_process, "http": http}
    if state is not None:
        out["user_state"] = state
    return out


def _export_user_state(model, version: int, url: str):
    """Export the model's per-user tables to Redis at ``url`` under a prefix of this run; returns the
    store, the figures (time, bytes per user in Redis and in a process) and the workers' environment."""
    import uuid

    from mlsd.platform.features.online import RedisStore
    from mlsd.platform.redis_cluster import used_memory
    from mlsd.recsys.config import USER_STATE_ENV, USER_STATE_PREFIX_ENV
    from mlsd.recsys.engine import export_user_state, user_state_namespace, user_state_nbytes

    prefix = f"mlsd-recsys-bench:{uuid.uuid4().hex[:10]}:"
    store = RedisStore(url, prefix=prefix)
    before = used_memory(store.client)
    t0 = time.perf_counter()
    exported = export_user_state(model, store, user_state_namespace(version), progress=True)
    seconds = time.perf_counter() - t0
    grown = used_memory(store.client) - before
    in_process = user_state_nbytes(model)
    n = max(exported["users"], 1)
    state = {
        "prefix": prefix,
        "users": exported["users"],
        "tables": len(exported["tables"]),
        "export_s": round(seconds, 1),
        "payload_bytes_per_user": exported["bytes_per_user"],
        "redis_bytes_per_user": round(grown / n, 1),
        "process_bytes_per_user": round(in_process / n, 1),
    }
    _log(f"user state: {state}")
    return store, state, {USER_STATE_ENV: url, USER_STATE_PREFIX_ENV: prefix}


def _delete_prefix(store) -> None:
    """Remove this run's keys (its own prefix only: the shared Redis is never flushed)."""
    from mlsd.platform.redis_cluster import delete_prefix

    delete_prefix(store.client, store.prefix)
    store.close()
