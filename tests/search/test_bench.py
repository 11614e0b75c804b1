"""The bench, run tiny: the JSON contract (not the figures, which depend on the machine)."""

from __future__ import annotations

import pytest

from mlsd.platform.testing import require_extra
from mlsd.search.bench import run_bench


def test_bench_json_contract() -> None:
    out = run_bench(400, 12, sessions=1500, dense=False)
    for key in (
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "stages",
        "index_build_s",
        "index_memory_mb",
        "rss_mb",
        "products",
    ):
        assert key in out, key
    assert 0 < out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"]
    assert {"parse", "bm25", "rules"} <= set(out["stages"]) and all(v >= 0 for v in out["stages"].values())
    assert out["products"] == 400 and out["queries"] == 12 and out["skipped"].get("dense") == 12
    assert out["index_memory_mb"]["bm25"] > 0


def test_dense_shard_probe_contract() -> None:
    from mlsd.search.bench import probe_dense_shard

    out = probe_dense_shard(3000, queries=5, hnsw_sample=500)
    assert out["vectors"] == 3000 and out["flat_memory_mb"] == round(3000 * 384 * 4 / 1e6, 1)
    assert 0 < out["flat_search_p50_ms"] <= out["flat_search_p99_ms"]
    assert out["hnsw"]["vectors"] == 500 and out["hnsw"]["build_s"] >= 0


def test_understanding_probe_through_the_cli(capsys) -> None:
    import json

    from mlsd.cli import main

    argv = ["search", "bench", "--understanding", "--products", "600", "--queries", "120", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["products"] == 600 and report["queries"] == 120
    assert 0 < report["language_accuracy"] <= 1 and report["parse_ms_p50"] > 0


def test_bench_catalog_has_distinct_titles_and_queries_from_them() -> None:
    from mlsd.search.bench import bench_catalog, bench_queries
    from mlsd.search.text import analyze

    products = bench_catalog(20_000, seed=1)
    assert len(products) == 20_000 and products["title"].is_unique
    assert products["product_id"].tolist() == list(range(20_000))
    assert bench_catalog(20_000, seed=1).equals(products)  # deterministic per seed
    vocabulary = {t for title in products["title"] for t in analyze(title)}
    queries = bench_queries(products, 200, seed=1)
    assert len(queries) == 200 and all(q and set(analyze(q)) <= vocabulary for q in queries)


@pytest.mark.slow
def test_sharded_bench_json_contract(tmp_path) -> None:
    from mlsd.search.bench import run_sharded_bench
    from mlsd.search.shards import AnnSettings

    require_extra("distributed", "dask")
    out = run_sharded_bench(
        2000, 15, (2,), ann=AnnSettings(nlist=16, nprobe=4, flat_below=500), probe_sweep=(1 / 16, 1),
        cache_dir=tmp_path,
    )
    assert out["products"] == out["distinct_titles"] == 2000 and out["queries"] == 15
    [run] = out["runs"]
    assert run["shards"] == 2 and run["ann"]["index"] == "IndexIVFFlat"
    assert run["nprobe_sweep"]["16"]["recall_at_100"] == 1.0  # all 16 lists probed: exact
    assert 0 < run["recall_at_100"] <= 1 and run["recall_at_100"] == run["nprobe_sweep"]["4"]["recall_at_100"]
    assert 0 < run["p50_ms"] <= run["p99_ms"] and run["throughput_qps"] > 0
    assert run["memory"]["index_bytes_per_product"] > 384 * 4  # at least the float32 title vector
    assert run["build_s"]["total"] > 0 and len(run["shard_build_s"]) == 2


@pytest.mark.slow
def test_the_default_bench_is_the_sharded_one_over_distinct_titles(tmp_path, capsys) -> None:
    """The issue's command, ``mlsd search bench --products N --queries Q --json``, benches 2 shards over
    N distinct titles; the single-process pipeline bench is ``--pipeline``."""
    import json

    from mlsd.cli import main

    require_extra("distributed", "dask")
    argv = ["search", "bench", "--products", "1500", "--queries", "5", "--recall-queries", "5",
            "--cache-dir", str(tmp_path), "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["products"] == out["distinct_titles"] == 1500
    assert [run["shards"] for run in out["runs"]] == [2] and 0 < out["runs"][0]["recall_at_100"] <= 1


@pytest.mark.parametrize(
    ("extra", "named"), [(["--pipeline", "--shards", "2"], "--pipeline and --shards"), (["--no-dense"], "--no-dense")]
)
def test_bench_options_of_the_other_bench_are_refused_with_the_fix(extra, named, capsys) -> None:
    from mlsd.cli import main

    assert main(["search", "bench", "--products", "1500", "--queries", "5", *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and ("choose one" in err or "add --pipeline" in err)
