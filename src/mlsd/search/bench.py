"""``mlsd search bench``: index build time and memory, and per-request latency at catalog scale.

The command's default is the sharded bench (:func:`run_sharded_bench`, 2 shards over ``--products``
distinct titles on Dask: :mod:`mlsd.search.shards`). ``--pipeline`` runs :func:`run_bench`, the whole
search path in one process over the simulator's catalog. What that one measures, in order:

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError

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


# -- the sharded bench: 1M distinct titles, BM25 + ANN per shard, a broker on Dask --------------------

SERIES: tuple[str, ...] = (
    "Nova", "Orbit", "Vertex", "Atlas", "Nimbus", "Quasar", "Zephyr", "Helix", "Prism", "Fusion", "Titan",
    "Aero", "Echo", "Flux", "Glide", "Halo", "Ion", "Jet", "Krypto", "Lynx", "Matrix", "Neo", "Onyx", "Pulse",
)  # fmt: skip
MODEL_NUMBERS: tuple[str, ...] = tuple(str(n) for n in range(100, 1000, 50))


def bench_catalog(n_products: int, seed: int = 0) -> pd.DataFrame:
    """``n_products`` products with **distinct** titles, built from the simulator's vocabularies:
    brand x modifier x product noun x series-model number x colour x material x size (some 10^8
    combinations; a million drawn without repeats). Columns: product_id, title, brand, category."""
    from mlsd.search.world import (
        BRANDS,
        CATEGORY_SEPARATOR,
        COLORS,
        DEPARTMENTS,
        MATERIALS,
        MODIFIERS,
        SIZES,
        TAXONOMY,
    )

    slots = _catalog_slots(TAXONOMY, BRANDS, MODIFIERS, MATERIALS, SIZES, COLORS, DEPARTMENTS)
    space = int(np.prod([s[1] for s in slots]))
    rng = np.random.default_rng(seed)
    if n_products > space // 4:
        raise InputError("--products", n_products, f"too many for this catalog's title space ({space} codes)",
                         "ask for fewer products")  # fmt: skip
    codes = rng.permutation(np.unique(rng.integers(0, space, int(n_products * 1.3) + 1000)))
    digits = {}
    rest = codes
    for name, radix in reversed(slots):
        rest, digits[name] = np.divmod(rest, radix)
    leaf = digits["leaf"]
    dept_of_leaf = np.array([DEPARTMENTS.index(t[0]) for t in TAXONOMY])
    dept = dept_of_leaf[leaf]

    def pick(table: list[list[str]], row: np.ndarray, col: np.ndarray) -> pd.Series:
        """table[row][col mod len(table[row])] for every product, vectorised over a padded 2-D array."""
        width = max(len(r) for r in table)
        lengths = np.array([len(r) for r in table])
        grid = np.array([list(r) + [""] * (width - len(r)) for r in table], dtype=object)
        return pd.Series(grid[row, col % lengths[row]])

    brand = pick([list(BRANDS[d]) for d in DEPARTMENTS], dept, digits["brand"])
    modifier = pick([[m.title() for m in MODIFIERS[d]] for d in DEPARTMENTS], dept, digits["modifier"])
    noun = pick([[n.title() for n in t[3]] for t in TAXONOMY], leaf, digits["noun"])
    material = pick([list(MATERIALS[d]) for d in DEPARTMENTS], dept, digits["material"])
    size = pick([list(SIZES[d]) for d in DEPARTMENTS], dept, digits["size"])
    series = pd.Series(np.array(SERIES, dtype=object)[digits["series"]])
    number = pd.Series(np.array(MODEL_NUMBERS, dtype=object)[digits["number"]])
    color = pd.Series(np.array([c.title() for c in COLORS], dtype=object)[digits["color"]])
    title = (brand + " " + modifier + " " + noun + " " + series + "-" + number + ", " + color + ", "
             + material + ", size " + size)  # fmt: skip
    categories = np.array([CATEGORY_SEPARATOR.join(t[:3]) for t in TAXONOMY], dtype=object)
    first = np.flatnonzero(~title.duplicated().to_numpy())[:n_products]  # codes that render a new title
    if len(first) < n_products:
        raise InputError("--products", n_products, "the draw gave too few distinct titles",
                         "ask for fewer products")  # fmt: skip
    return pd.DataFrame(
        {
            "product_id": np.arange(n_products, dtype=np.int64),
            "title": title.to_numpy()[first],
            "brand": brand.to_numpy()[first],
            "category": categories[leaf[first]],
        }
    )


def _catalog_slots(taxonomy, brands, modifiers, materials, sizes, colors, departments) -> list[tuple[str, int]]:
    """Mixed-radix digits of a title code. A slot's radix is its longest list; a shorter list (another
    department's) wraps, so two codes can render one title: :func:`bench_catalog` keeps a code's product
    only when its title is new."""
    return [
        ("leaf", len(taxonomy)),
        ("brand", max(len(brands[d]) for d in departments)),
        ("modifier", max(len(modifiers[d]) for d in departments)),
        ("noun", max(len(t[3]) for t in taxonomy)),
        ("series", len(SERIES)),
        ("number", len(MODEL_NUMBERS)),
        ("color", len(colors)),
        ("material", max(len(materials[d]) for d in departments)),
        ("size", max(len(sizes[d]) for d in departments)),
    ]


def bench_queries(products: pd.DataFrame, n_queries: int, seed: int = 0) -> list[str]:
    """Query texts shoppers type, made from random products' titles: a few of the title's words (noun and
    colour, modifier and noun, brand and noun, series-model, noun material size ...), lower-cased."""
    rng = np.random.default_rng(seed + 11)
    rows = rng.integers(0, len(products), n_queries)
    parts = products["title"].iloc[rows].str.replace(", size ", ", ").str.split(r",\s*", regex=True)
    head = parts.str[0].str.split(" ")  # brand, modifier(s), noun(s), series-number
    color, material, size = parts.str[1], parts.str[2], parts.str[3]
    noun = head.str[-2]
    brand, modifier, model = head.str[0], head.str[1], head.str[-1]
    templates = [
        noun + " " + color,
        modifier + " " + noun,
        brand + " " + noun,
        noun + " " + material + " " + size,
        brand + " " + model,
        modifier + " " + noun + " " + color + " " + material,
    ]
    which = rng.integers(0, len(templates), n_queries)
    texts = np.select([which == i for i in range(len(templates))], [t.to_numpy() for t in templates], "")
    return [str(t).lower() for t in texts]


def _static_encoder(titles: pd.Series, cache_dir: str | Path | None) -> tuple[Any, float]:
    """The static-word encoder of the titles' vocabulary (MiniLM per term), cached by the term list."""
    import hashlib
    import pickle

    from mlsd.search.embeddings import StaticWordEncoder
    from mlsd.search.text import analyze_batch

    terms = analyze_batch(titles).terms
    t = time.perf_counter()
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256("\x1f".join(terms).encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / f"static-words-{digest}.pkl"
        if cache_file.exists():
            with cache_file.open("rb") as fh:
                return pickle.load(fh), time.perf_counter() - t
    encoder = StaticWordEncoder().fit(pd.Series(terms))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with cache_file.open("wb") as fh:
            pickle.dump(encoder, fh)
    return encoder, time.perf_counter() - t


def run_sharded_bench(
    n_products: int,
    n_queries: int,
    shard_counts: Sequence[int] = (2,),
    *,
    seed: int = 0,
    deadline_ms: float = 100.0,
    ann: Any = None,
    probe_sweep: Sequence[float] = (1 / 64, 1 / 32, 1 / 16, 1 / 8),
    recall_queries: int | None = None,
    cache_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The sharded bench (module docstring of :mod:`mlsd.search.shards`); one result per shard count.

    Per shard count: a Dask LocalCluster of that many single-threaded worker processes; the index built as
    a Dask batch job (statistics, then one build task per shard); the workers restarted (clean memory),
    the shards loaded as actors and their resident memory measured; recall@100 of the merged ANN against
    exact IndexFlatIP search over every title vector; then ``n_queries`` searches, one at a time, through
    the broker under ``deadline_ms``.
    """
    import shutil
    import tempfile

    from mlsd.search.shards import (
        AnnSettings,
        ShardedSearch,
        build_sharded_index,
        exact_top_k,
        local_cluster,
        recall_at_k,
        require_distributed,
        write_partitions,
    )

    require_distributed()
    ann = ann or AnnSettings()

    def say(msg: str) -> None:
        if log is not None:
            log(msg)

    t = time.perf_counter()
    products = bench_catalog(n_products, seed)
    catalog_s = time.perf_counter() - t
    distinct = int(products["title"].nunique())
    queries = bench_queries(products, n_queries + WARMUP, seed)
    say(f"{n_products} products, {distinct} distinct titles; embedding the title vocabulary with MiniLM")
    encoder, vocab_s = _static_encoder(products["title"], cache_dir)
    query_vectors = encoder.encode(queries)
    n_recall = min(recall_queries or n_queries, n_queries)
    recall_vectors = query_vectors[WARMUP : WARMUP + n_recall]
    say(f"exact top-100 of {n_recall} queries over {n_products} title vectors (faiss IndexFlatIP, in blocks)")
    t = time.perf_counter()
    exact = exact_top_k(encoder, products["title"], products["product_id"].to_numpy(), recall_vectors, 100)
    exact_s = time.perf_counter() - t
    root = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="mlsd-search-shards-"))
    runs = []
    try:
        for n_shards in shard_counts:
            runs.append(
                _one_shard_count(
                    products, queries, query_vectors, recall_vectors, exact, encoder, n_shards, ann,
                    deadline_ms, probe_sweep, root / f"{n_shards}-shards", say,
                    (local_cluster, build_sharded_index, write_partitions, ShardedSearch, recall_at_k),
                )
            )  # fmt: skip
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "products": n_products,
        "distinct_titles": distinct,
        "queries": n_queries,
        "encoder": "static: MiniLM per title term, title = normalised mean of its terms' vectors",
        "vocabulary_terms": len(encoder.terms_),
        "catalog_s": round(catalog_s, 2),
        "vocabulary_embed_s": round(vocab_s, 2),
        "exact_search_s": round(exact_s, 2),
        "recall_queries": n_recall,
        "deadline_ms": deadline_ms,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }


def _one_shard_count(
    products, queries, query_vectors, recall_vectors, exact, encoder, n_shards, ann, deadline_ms,
    probe_sweep, folder, say, api,
) -> dict[str, Any]:  # fmt: skip
    from distributed import Client

    local_cluster, build_sharded_index, write_partitions, ShardedSearch, recall_at_k = api
    say(f"{n_shards} shard(s): starting a Dask LocalCluster of {n_shards} worker process(es)")
    with local_cluster(n_shards) as cluster, Client(cluster) as client:
        t = time.perf_counter()
        partitions = write_partitions(products, folder / "catalog", n_shards)
        write_s = time.perf_counter() - t
        say(f"{n_shards} shard(s): building the index as a Dask batch job")
        build = build_sharded_index(client, partitions, folder / "index", encoder, ann)
        # Fresh worker processes, so resident memory counts the loaded shard and not the build's leftovers.
        client.restart()
        baseline = client.run(_worker_rss)
        t = time.perf_counter()
        broker = ShardedSearch(client, build.shard_dirs, encoder, deadline_ms=deadline_ms).start()
        load_s = time.perf_counter() - t
        shard_rss = broker.shard_rss()
        rss_delta = sum(shard_rss) - sum(baseline.values())
        say(f"{n_shards} shard(s): recall@100 of the ANN against exact search")
        served = build.shards[0]["ann"]
        nlist = served.get("nlist")
        sweep = {}
        probes = {served.get("nprobe")} | ({max(1, round(f * nlist)) for f in probe_sweep} if nlist else set())
        for nprobe in sorted(p for p in probes if p is not None) or [None]:
            t = time.perf_counter()
            approx = broker.dense_top_k(recall_vectors, 100, nprobe=nprobe)
            sweep[str(nprobe)] = {
                "recall_at_100": round(recall_at_k(approx, exact, 100), 4),
                # a batch of queries on each shard's single thread: the dense stage's cost, not a latency
                "ms_per_query_in_batch": round((time.perf_counter() - t) * 1000 / len(recall_vectors), 3),
            }
        say(f"{n_shards} shard(s): replaying {len(queries) - WARMUP} searches (+{WARMUP} warm-up)")
        totals, partial, shard_ms = [], 0, []
        started = time.perf_counter()
        for i, q in enumerate(queries):
            if i == WARMUP:
                started = time.perf_counter()
            out = broker.search(q)
            if i < WARMUP:
                continue
            totals.append(out["total_ms"])
            partial += out["partial"]
            shard_ms.extend(out["shard_ms"].values())
        wall = time.perf_counter() - started
    totals_arr = np.asarray(totals)
    n = len(products)
    index_bytes = sum(sum(s["bytes"].values()) for s in build.shards)
    return {
        "shards": n_shards,
        "workers": n_shards,
        "build_s": {"write_partitions": round(write_s, 2), **build.seconds, "load_actors": round(load_s, 2)},
        "shard_build_s": [s["timings_s"] for s in build.shards],
        "ann": build.shards[0]["ann"],
        "memory": {
            "index_bytes_per_product": round(index_bytes / n, 1),
            "rss_bytes_per_product": round(rss_delta / n, 1),
            "shard_rss_mb": [round(r / 2**20, 1) for r in shard_rss],
            "worker_rss_before_load_mb": [round(r / 2**20, 1) for r in baseline.values()],
        },
        "recall_at_100": sweep[str(served.get("nprobe"))]["recall_at_100"],
        "nlist": nlist,
        "nprobe": served.get("nprobe"),
        "nprobe_sweep": sweep,
        "p50_ms": round(float(np.percentile(totals_arr, 50)), 3),
        "p95_ms": round(float(np.percentile(totals_arr, 95)), 3),
        "p99_ms": round(float(np.percentile(totals_arr, 99)), 3),
        "shard_p99_ms": round(float(np.percentile(shard_ms, 99)), 3) if shard_ms else None,
        "throughput_qps": round(len(totals) / wall, 1),
        "partial_answers": int(partial),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _worker_rss() -> int:
    from mlsd.search.shards import rss_bytes

    return rss_bytes()
