"""The bench's JSON contract, at a tiny size (the figures themselves come from the real run)."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main
from mlsd.recsys.bench import STAGES, summarize

KEYS = {"p50_ms", "p95_ms", "p99_ms", "throughput_rps", "stages"}


@pytest.mark.slow
def test_bench_json_contract(capsys):
    code = main(["recsys", "bench", "--users", "300", "--items", "80", "--requests", "24", "--concurrency", "8",
                 "--train-users", "300", "--events-per-user", "10", "--k", "20", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert set(result) == {"in_process", "http"}
    for mode in ("in_process", "http"):
        b = result[mode]
        assert set(b) == KEYS
        assert 0 < b["p50_ms"] <= b["p95_ms"] <= b["p99_ms"]
        assert b["throughput_rps"] > 0
        assert {"candidates", "rules"} <= set(b["stages"]) <= set(STAGES)
        assert all(v >= 0 for v in b["stages"].values())


def test_summarize_percentiles_are_exact():
    out = summarize([float(i) for i in range(1, 101)], {"ranking": [1.0, 2.0, 3.0]}, wall_s=2.0)
    assert out["p50_ms"] == 50.5 and out["p99_ms"] == 99.01 and out["throughput_rps"] == 50.0
    assert out["stages"] == {"ranking": 2.98}
