"""The bench, run tiny: the JSON contract (not the figures, which depend on the machine)."""

from __future__ import annotations

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
