"""``mlsd recsys bench``: latency and throughput of the recommendation service, in-process and over HTTP.

1. simulate ``users`` x ``items`` (the whole catalogue and user base: rules, features and candidate
   indexes are sized by it);
2. train the two-stage model on the events of ``train_users`` of them (training cost is not what this
   measures; serving cost depends on the catalogue, not on how many users trained the ranker) and
   register it;
3. **in-process**: ``requests`` single requests through :meth:`RecsysEngine.handle` (k=50), 95% users the model
   knows and 5% brand-new ids (cold start), after a short warm-up;
4. **http**: a real uvicorn server on 127.0.0.1 (a free port) and an httpx client with ``concurrency``
   requests in flight, the same mix and count; the server stops when the run ends. ``workers=1``
   serves from a thread of this process (the in-process engine); ``workers>1`` starts ``uvicorn
   --workers N`` as a child process, each worker loading the champion from the workdir.

Prints ``{"in_process": B, "http": B}`` with ``B = {"p50_ms", "p95_ms", "p99_ms", "throughput_rps",
"stages": {stage: p99_ms}}``; what was run (sizes, timings of the set-up) goes to stderr.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("candidates", "rules", "features", "ranking", "rerank")
BENCH_SOURCES = {"als": 500, "content": 300, "popular": 200, "trending": 100, "new": 50}


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


def request_users(engine, n: int, rng: np.random.Generator, cold_share: float = 0.05) -> np.ndarray:
    """``n`` user ids: known users of the champion model, and ``cold_share`` ids it has never seen."""
    known = engine.snapshot().model.users_.ids
    users = rng.choice(known, size=n)
    cold = rng.random(n) < cold_share
    users[cold] = int(known.max()) + 1 + rng.integers(0, 1_000_000, int(cold.sum()))
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


async def _http_run(url: str, users: np.ndarray, k: int, concurrency: int) -> tuple[list, dict, float, int]:
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

        async def worker() -> None:
            nonlocal errors
            for i in position:  # workers share one iterator: each request is sent exactly once
                t0 = time.perf_counter()
                response = await client.get(f"/v1/recommendations/{queue[i]}", params={"k": k})
                latencies.append((time.perf_counter() - t0) * 1000.0)
                if response.status_code != 200:
                    errors += 1
                    continue
                for s, ms in response.json()["timings_ms"].items():
                    stages.setdefault(s, []).append(ms)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, stages, wall, errors


class ServerProcess:
    """``uvicorn --workers N`` serving the champion of workdir ``W`` (``W/recsys/registry``) in a child
    process; ``with`` starts it, waits until every worker answers /health (each loads the model
    itself), and stops it."""

    def __init__(self, workdir: str | Path, workers: int, port: int | None = None) -> None:
        self.workdir, self.workers = Path(workdir), int(workers)
        self.port = port or _free_port()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        import os
        import subprocess

        import httpx

        from mlsd.recsys.service import WORKDIR_ENV

        cmd = [sys.executable, "-m", "uvicorn", "mlsd.recsys.service:app_from_env", "--factory",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
        env = {**os.environ, WORKDIR_ENV: str(self.workdir)}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        pids: set[int] = set()
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


def bench_http(
    engine, users: np.ndarray, k: int, concurrency: int, workers: int = 1, workdir: str | Path | None = None
) -> dict[str, Any]:
    from mlsd.recsys.service import create_service_app

    server = ServerProcess(workdir, workers) if workers > 1 else ServerThread(create_service_app(engine))
    with server:
        latencies, stages, wall, errors = asyncio.run(_http_run(server.url, users, k, concurrency))
    if errors:
        _log(f"{errors} HTTP requests failed")
    return {**summarize(latencies, stages, wall), "workers": workers, "concurrency": concurrency}


def run_bench(
    users: int = 1_000_000,
    items: int = 50_000,
    requests: int = 2_000,
    concurrency: int = 8,
    *,
    events_per_user: float = 8.0,
    train_users: int = 3_000,
    k: int = 50,
    workdir: str | Path | None = None,
    seed: int = 0,
    sources: dict[str, int] | None = None,
    n_estimators: int = 100,
    workers: int = 1,
) -> dict[str, Any]:
    """Set up (simulate, train, register in ``W/recsys/registry``) and measure; returns
    ``{"in_process": B, "http": B}``."""
    from mlsd.platform.system import SystemDir
    from mlsd.recsys.config import RecsysConfig, ServiceConfig, TrainConfig
    from mlsd.recsys.engine import RecsysEngine
    from mlsd.recsys.training import train_daily
    from mlsd.recsys.world import simulate

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlsd-recsys-bench-"))
    dirs = SystemDir(root, "recsys").create()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    dataset, _ = simulate(users, items, days=60, seed=seed, events_per_user=events_per_user)
    _log(f"simulated {users:,} users x {items:,} titles, {len(dataset.interactions):,} events "
         f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    inter = dataset.interactions
    if train_users < users:
        chosen = rng.choice(dataset.users["user_id"].to_numpy(), size=train_users, replace=False)
        train_set = dataset.with_interactions(inter[inter["user_id"].isin(chosen)].reset_index(drop=True))
    else:
        train_set = dataset
    t0 = time.perf_counter()
    cfg = TrainConfig(sources=sources or dict(BENCH_SOURCES), n_estimators=n_estimators)
    report = train_daily(train_set, dirs.registry, cfg, progress=True)
    _log(f"trained on {report['train_events']:,} events of {train_users:,} users in {time.perf_counter() - t0:.1f} s "
         f"(next-day ndcg@10 {report['metrics']['ndcg@10']:.3f})")  # fmt: skip
    config = RecsysConfig(service=ServiceConfig(reload_poll_s=0))
    engine = RecsysEngine(dirs.registry, config=config, seed=seed)
    in_users = request_users(engine, requests, rng)
    http_users = request_users(engine, requests, rng)
    _log(f"in-process: {requests} requests, k={k}")
    in_process = bench_in_process(engine, in_users, k)
    _log(f"http: {requests} requests, concurrency {concurrency}, uvicorn ({workers} worker(s)) on 127.0.0.1")
    http = bench_http(engine, http_users, k, concurrency, workers, root)
    engine.close()
    return {"in_process": in_process, "http": http}
