"""The sharded search index: BM25 + ANN per product partition, a broker that scatter-gathers under the
request deadline, shards placed, watched and restarted by Dask distributed.

Layout (docs/scaling.md, "Search")::

    catalog --(hash of product_id)--> N partitions (Parquet)
    batch job on Dask: phase 1, one task per partition: BM25 corpus statistics -> merged (global idf)
                       phase 2, one task per partition: BM25 (global statistics) + ANN over the partition's
                       distinct title vectors, written to <index>/shard-<i>/
    serving:  one Dask actor per shard (:class:`Shard`, loaded from its folder) on worker i mod W
              broker (:class:`ShardedSearch`): encode the query once, call every shard's ``search``
              at once, wait until the deadline, merge what answered, fuse (RRF), top 48

Why these choices:

* BM25 uses the **whole catalog's** statistics (the distributed-IDF of search engines), so a shard's
  scores are comparable across shards and the merged lexical list equals a single index's.
* Each list is merged by (score desc, product id asc) -- a total order -- so ties never depend on how the
  catalog was split; with an exhaustive dense index the broker's answer equals one index over the whole
  catalog (a test checks), and with the ANN it differs only by the ANN's recall (measured).
* Actors, not futures, hold shards: an actor call goes client -> worker directly (3 ms p50 for two shards
  here, under load), a task goes through the scheduler (22 ms p50). A worker that dies is restarted by its
  Dask nanny; the actor on it is lost (Dask does not recompute actors), so the broker sees the actor's
  future in error and asks Dask to place the shard again on the same worker slot -- placement waits for
  the restarted worker, and meanwhile answers are partial.

Dask (``distributed``) is an optional dependency: ``pip install mlsd[dask]``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.search.retrieval import BM25Index, BM25Stats

DASK_INSTALL = "pip install mlsd[dask]"
SHARD_FIELDS: tuple[str, ...] = ("title", "brand", "category")
DEFAULT_DEPTH = 100  # candidates per list (BM25, dense) each shard returns and the broker merges
RESULTS = 48  # what a search page shows


def require_distributed() -> Any:
    """``distributed``, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"the sharded search index runs its shards on Dask distributed, which is not installed: "
            f"{DASK_INSTALL}"
        ) from exc
    return distributed


def local_cluster(n_workers: int, **options: Any) -> Any:
    """A Dask ``LocalCluster`` of ``n_workers`` single-threaded worker processes on 127.0.0.1 only (no
    dashboard): one process per shard slot, each watched and restarted by its nanny. Call it under
    ``if __name__ == "__main__"`` in a script: worker processes re-import the main module."""
    distributed = require_distributed()
    return distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        **options,
    )


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc), what a Dask worker reports for a shard."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - not Linux


# -- the ANN ------------------------------------------------------------------------------------------


@dataclass
class AnnSettings:
    """Which ANN a shard builds over its distinct vectors.

    ``ivf`` (default): IVF-Flat, ``nlist`` lists (default ~4 sqrt(n), a power of two), k-means trained on
    up to ``train_size`` vectors, ``nprobe`` lists searched; ``hnsw``: HNSW-Flat (``hnsw_m``,
    ``ef_search``); ``flat``: exact. Below ``flat_below`` vectors a shard is exact whatever the kind.
    """

    kind: str = "ivf"
    nlist: int | None = None
    nprobe: int | None = None
    probe_fraction: float = 1 / 16
    train_size: int = 65_536
    hnsw_m: int = 32
    ef_search: int = 128
    flat_below: int = 20_000

    def __post_init__(self) -> None:
        if self.kind not in ("ivf", "hnsw", "flat"):
            raise InputError("ann", self.kind, "unknown ANN kind", "use ivf, hnsw or flat")
        if self.nprobe is not None and self.nprobe < 1:
            raise InputError("nprobe", self.nprobe, "must be >= 1", "pass a positive number of lists")
        if not 0 < self.probe_fraction <= 1:
            raise InputError("probe_fraction", self.probe_fraction, "must be in (0, 1]", "pass e.g. 0.0625")

    def lists_for(self, n: int) -> int:
        if self.nlist:
            return int(self.nlist)
        return int(2 ** np.clip(np.round(np.log2(4 * np.sqrt(max(n, 1)))), 4, 16))

    def probes_for(self, nlist: int) -> int:
        """``nprobe``, or ``probe_fraction`` of the lists: the share of a shard scanned per query, which is
        what recall follows (measured: docs/scaling.md), whatever the shard's size."""
        return int(min(nlist, self.nprobe or max(1, round(nlist * self.probe_fraction))))


def build_ann(vectors: np.ndarray, ann: AnnSettings, *, seed: int = 0) -> Any:
    """The faiss inner-product index of ``vectors`` (unit rows) as ``ann`` says."""
    import faiss

    n, dim = vectors.shape
    if ann.kind == "flat" or n < ann.flat_below:
        index = faiss.IndexFlatIP(dim)
    elif ann.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, ann.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ann.ef_search
    else:
        nlist = ann.lists_for(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, min(n, ann.train_size), replace=False))]
        index.cp.seed = seed
        index.train(sample)
        index.nprobe = ann.probes_for(nlist)
    index.add(vectors)
    return index


def _set_search_depth(index: Any, nprobe: int | None, exhaustive: bool) -> None:
    """IVF: ``nprobe`` lists, or all of them (an exhaustive IVF-Flat scan is exact search)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, faiss.IndexFlat) else None
    if ivf is not None:
        ivf.nprobe = ivf.nlist if exhaustive else (nprobe or ivf.nprobe)


def _ivf_shape(index: Any) -> dict[str, int]:
    import faiss

    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, faiss.IndexFlat) else None
    return {} if ivf is None else {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)}


# -- merging ------------------------------------------------------------------------------------------


def top_k_ordered(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``(ids, scores)`` by score descending then id ascending: a total order, so the
    answer does not depend on how candidates were split across shards."""
    if len(ids) > k:
        # The k-th largest score. Selecting near the front of the negated scores: numpy's introselect at the
        # back of a list with many equal BM25 scores took 25x longer (16 ms vs 0.65 ms on 135K hits).
        kth = -np.partition(-scores, k - 1)[k - 1]
        keep = scores >= kth
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


def merge_lists(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """One ranked list from the shards' ranked lists (scores comparable across shards)."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    scores = np.concatenate([p[1] for p in parts]).astype(np.float32)
    return top_k_ordered(ids, scores, k)


def rrf(lists: Sequence[np.ndarray], k: int, rrf_k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of ranked id lists: sum of 1 / (rrf_k + rank); ties by id."""
    lists = [np.asarray(ids, np.int64) for ids in lists if len(ids)]
    if not lists:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    ids = np.concatenate(lists)
    contrib = np.concatenate([1.0 / (rrf_k + 1.0 + np.arange(len(ids_))) for ids_ in lists])
    uniq, inverse = np.unique(ids, return_inverse=True)
    fused = np.bincount(inverse, weights=contrib, minlength=len(uniq))
    order = np.lexsort((uniq, -fused))[:k]
    return uniq[order], fused[order]


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (rows padded with -1)."""
    approx, exact = np.asarray(approx)[:, :k], np.asarray(exact)[:, :k]
    if approx.shape[0] != exact.shape[0]:
        raise InputError("approx", approx.shape, "one row per query of exact", "pass the same queries")
    hits, total = 0, 0
    for a, e in zip(approx, exact, strict=True):  # per query of a small evaluation set
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e, assume_unique=True))
        total += len(e)
    return hits / max(total, 1)


def exact_top_k(
    encoder: Any, titles: Sequence[str] | pd.Series, ids: np.ndarray, queries: np.ndarray, k: int,
    *, block: int = 100_000,
) -> np.ndarray:  # fmt: skip
    """Exact inner-product top ``k`` product ids per query vector over every title (faiss IndexFlatIP),
    encoded and searched ``block`` titles at a time so memory stays bounded: the ground truth the ANN's
    recall is measured against."""
    import faiss

    titles = pd.Series(np.asarray(titles, dtype=object))
    ids = np.asarray(ids, np.int64)
    best_ids = np.full((len(queries), 0), -1, np.int64)
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    for lo in range(0, len(titles), block):
        vectors = encoder.encode(titles.iloc[lo : lo + block])
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        scores, rows = flat.search(np.ascontiguousarray(queries, np.float32), min(k, len(vectors)))
        cand_ids = np.where(rows >= 0, ids[lo + np.maximum(rows, 0)], -1)
        all_ids = np.hstack([best_ids, cand_ids])
        all_scores = np.hstack([best_scores, np.where(rows >= 0, scores, -np.inf).astype(np.float32)])
        order = np.lexsort((all_ids, -all_scores), axis=1)[:, :k]  # per row: score desc, id asc
        best_ids = np.take_along_axis(all_ids, order, axis=1)
        best_scores = np.take_along_axis(all_scores, order, axis=1)
    return best_ids


# -- building (the batch job's tasks) -----------------------------------------------------------------


def write_partitions(products: pd.DataFrame, folder: str | Path, n_shards: int) -> list[Path]:
    """Split the catalog by ``product_id mod n_shards`` into one Parquet file per shard."""
    if n_shards < 1:
        raise InputError("shards", n_shards, "must be >= 1", "pass --shards 1 or more")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    part = products["product_id"].to_numpy(np.int64) % n_shards
    paths = []
    for i in range(n_shards):
        path = folder / f"part-{i}.parquet"
        products.loc[part == i, ["product_id", *[f for f in SHARD_FIELDS if f in products]]].to_parquet(
            path, index=False
        )
        paths.append(path)
    return paths


def partition_stats(path: str | Path, fields: Sequence[str] = SHARD_FIELDS) -> BM25Stats:
    """Phase 1 task: one partition's BM25 statistics (merged by the job into the catalog's)."""
    return BM25Index(fields).corpus_stats(pd.read_parquet(path))


def build_shard(
    path: str | Path,
    out_dir: str | Path,
    stats: BM25Stats,
    encoder: Any,
    ann: AnnSettings,
    fields: Sequence[str] = SHARD_FIELDS,
) -> dict[str, Any]:
    """Phase 2 task: one shard's BM25 (the catalog's statistics) and ANN (over its distinct title vectors),
    written to ``out_dir``; returns what was built and how long each part took."""
    import faiss

    faiss.omp_set_num_threads(1)  # one core per worker process
    timings: dict[str, float] = {}
    t = time.perf_counter()
    products = pd.read_parquet(path)
    bm25 = BM25Index(fields).fit(products, stats=stats).compact()
    timings["bm25_s"] = time.perf_counter() - t
    t = time.perf_counter()
    vectors = encoder.encode(products["title"])
    timings["encode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index = build_ann(vectors, ann)
    timings["ann_s"] = time.perf_counter() - t
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = bm25.combined_T_
    np.savez(out / "bm25.npz", data=m.data, indices=m.indices, indptr=m.indptr, shape=np.array(m.shape))
    (out / "vocab.json").write_text(json.dumps(list(bm25.vocab_)))
    np.save(out / "ids.npy", bm25.product_ids_)
    faiss.write_index(index, str(out / "ann.faiss"))
    meta = {
        "products": len(products),
        "distinct_titles": int(products["title"].nunique()),
        "ann": asdict(ann) | {"index": type(index).__name__, **_ivf_shape(index)},
        "fields": list(fields),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "bytes": {
            "bm25": int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes),
            "ann": os.path.getsize(out / "ann.faiss"),  # the serialised index: its vectors and lists
            "ids": int(bm25.product_ids_.nbytes),
        },
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


@dataclass
class ShardedIndexBuild:
    """What :func:`build_sharded_index` wrote: one folder per shard and each shard's build report."""

    shard_dirs: list[Path]
    shards: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)


def build_sharded_index(
    client: Any,
    partitions: Sequence[str | Path],
    out_dir: str | Path,
    encoder: Any,
    ann: AnnSettings | None = None,
    *,
    fields: Sequence[str] = SHARD_FIELDS,
) -> ShardedIndexBuild:
    """The index build as a batch job on Dask: phase 1 (statistics) and phase 2 (shards), one task per
    partition each, spread over the cluster's workers; the driver only merges the statistics."""
    require_distributed()
    ann = ann or AnnSettings()
    out = Path(out_dir)
    workers = _worker_names(client)
    where = [[workers[i % len(workers)]] for i in range(len(partitions))]
    t = time.perf_counter()
    stats_futures = [
        client.submit(partition_stats, str(p), tuple(fields), workers=w, pure=False)
        for p, w in zip(partitions, where, strict=True)
    ]
    stats = BM25Stats.merge(client.gather(stats_futures))
    stats_s = time.perf_counter() - t
    dirs = [out / f"shard-{i}" for i in range(len(partitions))]
    [encoder_future] = client.scatter([encoder], broadcast=True)
    [stats_future] = client.scatter([stats], broadcast=True)
    build_futures = [
        client.submit(build_shard, str(p), str(d), stats_future, encoder_future, ann, tuple(fields),
                      workers=w, pure=False)  # fmt: skip
        for p, d, w in zip(partitions, dirs, where, strict=True)
    ]
    shards = client.gather(build_futures)
    total = time.perf_counter() - t
    return ShardedIndexBuild(dirs, shards, {"statistics": round(stats_s, 2), "total": round(total, 2)})


def _worker_names(client: Any) -> list[Any]:
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted((w["name"] for w in info.values()), key=str)


# -- serving ------------------------------------------------------------------------------------------


class Shard:
    """One shard in memory: the compact BM25 (term-major fused weights) and the ANN over its titles.

    Built by :func:`build_shard`, loaded from its folder; held by a Dask actor in serving (its methods
    are what the broker calls) or used directly in one process.
    """

    def __init__(self, folder: str | Path, nprobe: int | None = None) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # one core per shard process: threads would wait on each other
        self.folder = str(folder)
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        z = np.load(folder / "bm25.npz")
        self.bm25_T_ = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        self.vocab_ = {t: i for i, t in enumerate(json.loads((folder / "vocab.json").read_text()))}
        self.ids_ = np.load(folder / "ids.npy")
        self.index_ = faiss.read_index(str(folder / "ann.faiss"))
        _set_search_depth(self.index_, nprobe, exhaustive=False)
        self.nprobe_ = _ivf_shape(self.index_).get("nprobe")  # what serving searches with

    def pid(self) -> int:
        return os.getpid()

    def rss(self) -> int:
        return rss_bytes()

    def nbytes(self) -> int:
        b = self.bm25_T_
        return int(b.data.nbytes + b.indices.nbytes + b.indptr.nbytes + self.ids_.nbytes + self.meta["bytes"]["ann"])

    def __sizeof__(self) -> int:  # what Dask believes moving this shard would cost: keep it where it is
        return self.nbytes()

    def n_products(self) -> int:
        return len(self.ids_)

    def lexical(self, text: str, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top ``depth`` (ids, scores) of one query, ties by id."""
        from mlsd.search.text import analyze

        # Terms in text order (each once), not vocabulary order: a shard's vocabulary is its own first-seen
        # order, and the float32 sum must add the same terms in the same order on every shard.
        terms = [t for t in dict.fromkeys(analyze(text)) if t in self.vocab_]
        if not terms:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = np.zeros(self.bm25_T_.shape[1], np.float32)
        indptr, indices, data = self.bm25_T_.indptr, self.bm25_T_.indices, self.bm25_T_.data
        for t in terms:  # per query term: its posting list added to the products it holds
            lo, hi = indptr[self.vocab_[t]], indptr[self.vocab_[t] + 1]
            scores[indices[lo:hi]] += data[lo:hi]
        hit = np.flatnonzero(scores > 0)
        return top_k_ordered(self.ids_[hit], scores[hit], depth)

    def dense(
        self, query_vectors: np.ndarray, depth: int, *, exhaustive: bool = False, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """ANN (or, ``exhaustive``, exact) top ``depth`` (ids, scores) per query vector; rows padded -1."""
        qv = np.ascontiguousarray(np.atleast_2d(query_vectors), np.float32)
        _set_search_depth(self.index_, nprobe, exhaustive)
        try:
            scores, rows = self.index_.search(qv, min(depth, len(self.ids_)))
        finally:
            _set_search_depth(self.index_, self.nprobe_, exhaustive=False)
        ids = np.where(rows >= 0, self.ids_[np.maximum(rows, 0)], -1)
        return ids, np.where(rows >= 0, scores, -np.inf).astype(np.float32)

    def search(self, text: str, query_vector: np.ndarray | None, depth: int) -> dict[str, Any]:
        """One query: the shard's BM25 and dense top ``depth`` lists (the broker merges and fuses)."""
        started = time.perf_counter()
        lexical = self.lexical(text, depth)
        semantic = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if query_vector is not None and np.any(query_vector):
            ids, scores = self.dense(query_vector, depth)
            keep = ids[0] >= 0
            semantic = (ids[0][keep], scores[0][keep])
        return {"bm25": lexical, "dense": semantic, "ms": (time.perf_counter() - started) * 1000}

    def search_many(self, texts: Sequence[str], query_vectors: np.ndarray, depth: int, repeat: int = 1) -> int:
        """A batch of searches, ``repeat`` times over (a heavy caller sharing the shard, e.g. an offline
        job); returns how many ran. The shard's actor runs one call at a time: requests wait behind it."""
        for _ in range(repeat):
            for text, qv in zip(texts, query_vectors, strict=True):
                self.search(text, qv, depth)
        return len(texts) * repeat


def answer(parts: dict[int, dict[str, Any]], k: int, depth: int, rrf_k: float = 60.0) -> dict[str, Any]:
    """The broker's merge: each list over the shards that answered, then RRF, top ``k``."""
    lexical = merge_lists([p["bm25"] for p in parts.values()], depth)
    semantic = merge_lists([p["dense"] for p in parts.values()], depth)
    ids, scores = rrf([lexical[0], semantic[0]], k, rrf_k)
    return {"product_ids": ids.tolist(), "scores": [round(float(s), 6) for s in scores]}


class ShardedSearch:
    """The broker: one Dask actor per shard, scatter-gather under a deadline, merge, top ``k``.

    ``search(q)`` encodes the query once, calls every placed shard at once, waits for answers until the
    deadline, and merges what came back; the answer says ``partial`` and which shards answered. A shard
    whose actor was lost (its worker died; the nanny restarts the process) is placed again through Dask on
    its worker slot, and answers are partial until it is back.
    """

    def __init__(
        self,
        client: Any,
        shard_dirs: Sequence[str | Path],
        encoder: Any,
        *,
        deadline_ms: float = 100.0,
        depth: int = DEFAULT_DEPTH,
        rrf_k: float = 60.0,
        nprobe: int | None = None,
    ) -> None:
        if deadline_ms <= 0:
            raise InputError("deadline_ms", deadline_ms, "must be > 0", "pass a deadline in milliseconds")
        self.client = client
        self.shard_dirs = [str(d) for d in shard_dirs]
        self.encoder = encoder
        self.deadline_ms = deadline_ms
        self.depth = depth
        self.rrf_k = rrf_k
        self.nprobe = nprobe

    def start(self, timeout: float = 600.0) -> ShardedSearch:
        """Place every shard (one actor each, shard i on worker slot i mod W) and wait until all are loaded."""
        require_distributed()
        self.slots_ = _worker_names(self.client)
        self.placements_ = [self._place(i) for i in range(len(self.shard_dirs))]
        self.actors_: list[Any] = [f.result(timeout=timeout) for f in self.placements_]
        self.replaced_ = [0] * len(self.shard_dirs)
        self.lost_ = [False] * len(self.shard_dirs)
        self._slots_checked, self._alive = 0.0, set(self.slots_)
        return self

    def _place(self, i: int) -> Any:
        slot = self.slots_[i % len(self.slots_)]
        return self.client.submit(
            Shard, self.shard_dirs[i], self.nprobe, actor=True, workers=[slot], allow_other_workers=False,
            pure=False, key=f"shard-{i}-{time.time_ns()}",
        )  # fmt: skip

    def _slots_alive(self) -> set[Any]:
        """Worker slots the scheduler knows now (asked at most every 0.25 s, only while a shard is down)."""
        now = time.monotonic()
        if now - self._slots_checked >= 0.25:
            self._slots_checked = now
            self._alive = set(_worker_names(self.client))
        return self._alive

    def _watch(self) -> list[int]:
        """Shards ready to call; re-place those whose actor was lost once their worker slot is back (the
        nanny restarts it). While every shard is up this reads future states only: no network call."""
        ready = []
        for i, fut in enumerate(self.placements_):
            # Lost: the actor's future is in error (the scheduler saw its worker die), or a call to it failed
            # before the scheduler noticed. Either way the shard is placed again once its slot is back.
            if fut.status == "error" or (self.lost_[i] and fut.status == "finished"):
                self.actors_[i] = None
                if self.slots_[i % len(self.slots_)] in self._slots_alive():
                    fut.release()
                    self.placements_[i] = self._place(i)
                    self.replaced_[i] += 1
                    self.lost_[i] = False
            elif fut.status == "finished":
                if self.actors_[i] is None:
                    self.actors_[i] = fut.result()
                ready.append(i)
        return ready

    def search(self, query: str, k: int = RESULTS, *, deadline_ms: float | None = None) -> dict[str, Any]:
        """Top ``k`` product ids for ``query`` from every shard that answers within the deadline."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("q", query, "must be a non-empty string", "pass the search text")
        started = time.perf_counter()
        budget = (deadline_ms or self.deadline_ms) / 1000.0
        qv = self.encoder.encode([query])[0]
        calls, missing = {}, {}
        for i in self._watch():
            try:
                calls[i] = self.actors_[i].search(query, qv, self.depth)
            except RuntimeError as exc:  # "Worker holding Actor was lost": re-placed on the next request
                missing[i] = f"error: {exc}"
                self.lost_[i] = True
        parts = {}
        for i, call in calls.items():
            remaining = budget - (time.perf_counter() - started)
            try:
                parts[i] = call.result(timeout=max(remaining, 0.0))
            except TimeoutError:
                missing[i] = "deadline"
            except Exception as exc:  # the worker went away mid-call: re-placed on the next request
                missing[i] = f"error: {type(exc).__name__}: {exc}"
                self.lost_[i] = True
        for i in range(len(self.shard_dirs)):
            if i not in calls and i not in missing:
                missing[i] = "not placed (its worker is restarting)"
        out = answer(parts, k, self.depth, self.rrf_k)
        out.update(
            partial=bool(missing),
            shards_answered=sorted(parts),
            shards_missing={str(i): why for i, why in sorted(missing.items())},
            shard_ms={str(i): round(p["ms"], 3) for i, p in parts.items()},
            total_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return out

    def dense_top_k(
        self, query_vectors: np.ndarray, k: int, *, exhaustive: bool = False, nprobe: int | None = None
    ) -> np.ndarray:
        """Merged dense top ``k`` ids of a batch of query vectors from every shard (offline: no deadline)."""
        self._watch()
        results = [a.dense(query_vectors, k, exhaustive=exhaustive, nprobe=nprobe) for a in self.actors_]
        parts = [r.result() for r in results]
        out = np.full((len(query_vectors), k), -1, np.int64)
        for q in range(len(query_vectors)):  # per query of an evaluation batch
            ids, _ = merge_lists([(p[0][q][p[0][q] >= 0], p[1][q][p[0][q] >= 0]) for p in parts], k)
            out[q, : len(ids)] = ids
        return out

    def shard_pids(self) -> list[int]:
        return [a.pid().result() for a in self.actors_]

    def shard_rss(self) -> list[int]:
        return [a.rss().result() for a in self.actors_]

    def wait_ready(self, timeout: float) -> bool:
        """Poll until every shard is placed again (after a worker restart), up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self._watch()) == len(self.shard_dirs):
                return True
            time.sleep(0.1)
        return False
