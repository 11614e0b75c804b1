"""``mlsd search bench``: index build time and memory, and per-request latency at catalog scale.

What is measured, in order:

1. simulate a catalog of ``n_products`` (plus queries, users and a click log of ``sessions`` searches);
2. build the engine, timing each index: query understanding, BM25 (5 fields), dense (MiniLM over the
   distinct titles, cached on disk by the title set's hash -- a first run encodes, later runs load), history
   features; resident memory before/after and the bytes held by each index;
3. train the IPS LambdaMART on the click log (not timed as serving);
4. replay ``n_queries`` searches drawn from the simulated query stream (Zipf: head queries repeat, as in
   production; the query-vector cache hit rate is reported) with random users, one at a time, through
   the full pipeline under its 200 ms deadline; 10 warm-up requests are not counted.

The output is one JSON object with ``p50_ms``, ``p95_ms``, ``p99_ms`` (end to end, in-process) and
``stages`` (p99 per stage, over the requests that ran it), plus what was skipped. Numbers come from
whatever machine runs it: on a shared box they include other processes' load (``load_avg`` is recorded).

Two narrower probes: ``--dense-probe N`` (:func:`probe_dense_shard`: flat dense search over N distinct
vectors) and ``--understanding`` (:func:`understanding_bench`: accuracy and cost of query
understanding against simulated queries whose specs are known).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WARMUP = 10


def _rss_mb() -> float:
    """Resident set size of this process (Linux /proc; falls back to peak RSS)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sparse_mb(m: Any) -> float:
    return (m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) / 1e6


def probe_dense_shard(
    n_vectors: int, *, dim: int = 384, queries: int = 50, seed: int = 0, hnsw_sample: int = 0
) -> dict[str, Any]:
    """Per-query cost of exact (flat) inner-product search over ``n_vectors`` *distinct* unit vectors:
    what one shard of a catalog with unique titles pays for dense retrieval without the title-grouping
    trick. Random vectors: the cost of a flat scan does not depend on what the vectors mean. Optionally
    also an HNSW index over the first ``hnsw_sample`` vectors (build time and per-query search)."""
    import faiss

    rng = np.random.default_rng(seed)
    xb = np.empty((n_vectors, dim), dtype=np.float32)
    for start in range(0, n_vectors, 100_000):  # generate in blocks: bounded temporary memory
        block = rng.standard_normal((min(100_000, n_vectors - start), dim), dtype=np.float32)
        xb[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    xq = rng.standard_normal((queries, dim), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    faiss.omp_set_num_threads(1)  # one core per request, as in serving
    index = faiss.IndexFlatIP(dim)
    index.add(xb)
    times = []
    for i in range(queries):
        t = time.perf_counter()
        index.search(xq[i : i + 1], 500)
        times.append((time.perf_counter() - t) * 1000)
    out: dict[str, Any] = {
        "vectors": n_vectors,
        "dim": dim,
        "flat_memory_mb": round(xb.nbytes / 1e6, 1),
        "flat_search_p50_ms": round(float(np.percentile(times, 50)), 3),
        "flat_search_p99_ms": round(float(np.percentile(times, 99)), 3),
    }
    if hnsw_sample:
        sample = xb[:hnsw_sample]
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(sample)
        build = time.perf_counter() - t
        hnsw.hnsw.efSearch = 128
        times = []
        for i in range(queries):
            t = time.perf_counter()
            hnsw.search(xq[i : i + 1], 500)
            times.append((time.perf_counter() - t) * 1000)
        out["hnsw"] = {
            "vectors": hnsw_sample,
            "build_s": round(build, 2),
            "search_p50_ms": round(float(np.percentile(times, 50)), 3),
            "search_p99_ms": round(float(np.percentile(times, 99)), 3),
        }
    return out


def run_bench(
    n_products: int,
    n_queries: int,
    *,
    seed: int = 0,
    dense: bool = True,
    sessions: int = 20_000,
    n_distinct_queries: int = 2000,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result (see the module docstring)."""
    from mlsd.search.config import SearchConfig
    from mlsd.search.engine import SearchEngine
    from mlsd.search.training import train_ranker
    from mlsd.search.world import simulate

    def say(msg: str) -> None:
        if log is not None:
            log(msg)

    rss0 = _rss_mb()
    t = time.perf_counter()
    say(f"simulating {n_products} products and {sessions} logged searches")
    sim = simulate(
        n_products, sessions, seed, n_queries=min(n_distinct_queries, max(10, n_products // 10)), n_users=5000
    )
    simulate_s = time.perf_counter() - t
    rss_catalog = _rss_mb()
    config = SearchConfig.from_dict({"ltr": {"n_estimators": 100}})
    impressions = sim.impressions.assign(user_id=sim.impressions["user_id"].astype(str))
    say("building indexes (BM25 over 5 fields" + (", MiniLM over distinct titles)" if dense else ")"))
    t = time.perf_counter()
    engine = SearchEngine(config, dense=dense, cache_dir=cache_dir).fit(
        sim.products, query_log=sim.queries["text"].tolist(), progress=progress
    )
    build_s = time.perf_counter() - t
    rss_index = _rss_mb()
    ranker = None
    if len(impressions):
        say("training the IPS LambdaMART on the simulated click log")
        ranker, _ = train_ranker(engine, impressions, ips=True, config=config)
        engine.refit_history(impressions, engine.propensity_)
        engine.set_ranker(ranker, 0)

    rng = np.random.default_rng(seed + 7)
    q = rng.choice(len(sim.queries), size=n_queries + WARMUP, p=sim.queries["weight"].to_numpy())
    texts = sim.queries["text"].to_numpy()[q]
    users = rng.integers(0, len(sim.users), n_queries + WARMUP).astype(str)
    say(f"replaying {n_queries} searches (+{WARMUP} warm-up)")
    # Start cold: training parsed and encoded every logged query; the replay must pay for its own.
    engine.parser_._cache.clear()
    if engine.dense_ is not None:
        engine.dense_._qcache.clear()
        engine.dense_.cache_hits_ = engine.dense_.cache_misses_ = 0
    totals, stages, skipped, ranked_by = [], {}, {}, {}
    iterator = range(n_queries + WARMUP)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="searches", file=__import__("sys").stderr)
    for i in iterator:
        started = time.perf_counter()
        out = engine.search(str(texts[i]), str(users[i]), 48)
        elapsed = (time.perf_counter() - started) * 1000
        if i < WARMUP:
            continue
        totals.append(elapsed)
        for stage, ms in out["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
        for s in out["skipped"]:
            skipped[s["stage"]] = skipped.get(s["stage"], 0) + 1
        ranked_by[out["ranked_by"]] = ranked_by.get(out["ranked_by"], 0) + 1
    totals_arr = np.asarray(totals)

    index_mb: dict[str, float] = {
        "bm25": round(
            sum(_sparse_mb(m) for m in engine.bm25_.matrices_.values())
            + _sparse_mb(engine.bm25_.combined_)
            + _sparse_mb(engine.bm25_.combined_T_),
            1,
        ),
    }
    if engine.dense_ is not None:
        index_mb["dense"] = round(
            (engine.dense_.vectors_.nbytes + engine.dense_.members_.nbytes + engine.dense_.codes_.nbytes)
            / 1e6,
            1,
        )
    result: dict[str, Any] = {
        "products": n_products,
        "queries": n_queries,
        "distinct_query_texts": len(sim.queries),
        "dense": engine.dense_ is not None,
        "dense_groups": engine.dense_.n_groups if engine.dense_ is not None else 0,
        "simulate_s": round(simulate_s, 2),
        "index_build_s": round(build_s, 2),
        "index_build_stages_s": {k: round(v, 2) for k, v in engine.build_timings_.items()},
        "index_memory_mb": index_mb,
        "rss_mb": {
            "start": round(rss0, 1),
            "catalog": round(rss_catalog, 1),
            "indexes": round(rss_index, 1),
            "end": round(_rss_mb(), 1),
        },
        "p50_ms": round(float(np.percentile(totals_arr, 50)), 3),
        "p95_ms": round(float(np.percentile(totals_arr, 95)), 3),
        "p99_ms": round(float(np.percentile(totals_arr, 99)), 3),
        "mean_ms": round(float(totals_arr.mean()), 3),
        "stages": {s: round(float(np.percentile(v, 99)), 3) for s, v in stages.items()},
        "stages_p50": {s: round(float(np.percentile(v, 50)), 3) for s, v in stages.items()},
        "skipped": skipped,
        "ranked_by": ranked_by,
        "ltr": ranker is not None,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    if engine.dense_ is not None:
        hits, misses = engine.dense_.cache_hits_, engine.dense_.cache_misses_
        result["query_vector_cache_hit_rate"] = round(hits / max(hits + misses, 1), 3)
    return result


def understanding_bench(n_products: int = 5000, n_queries: int = 1000, *, seed: int = 0) -> dict[str, Any]:
    """:func:`mlsd.search.query.understanding_report` on a simulated catalog and query stream (the
    figures of docs/search.md, "Query understanding")."""
    from mlsd.search.query import understanding_report
    from mlsd.search.world import simulate_catalog, simulate_queries

    products, _ = simulate_catalog(n_products, seed)
    queries = simulate_queries(products, n_queries, seed)
    return understanding_report(products, queries, seed=seed)
