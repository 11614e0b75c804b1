"""The recommender demo end to end at a tiny size: simulate, train, register, serve known, new and unknown users."""

from __future__ import annotations

import json

import pytest

from mlsd.recsys.demo import DEMO_TIMED_REQUESTS, DEMO_UNITS, TINY_SIZE, TINY_TRAIN, run


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    result = run(tmp_path, size=TINY_SIZE, train=TINY_TRAIN)
    out = capsys.readouterr().out
    assert result["version"] == 1 and result["promoted"]
    kinds = {u["kind"]: u for u in result["users"]}
    assert "regular" in kinds and "unknown" in kinds
    assert kinds["unknown"]["cold_start"] is True and kinds["regular"]["cold_start"] is False
    assert set(kinds["regular"]["timings_ms"]) == {"candidates", "rules", "features", "ranking", "rerank"}
    assert (tmp_path / "registry").is_dir() and (tmp_path / "data" / "items.parquet").exists()
    assert "cold start" in out and "stage ms" in out
    # The experiment, drift and timings files the dashboard discovers by content.
    report = json.loads((tmp_path / "experiments" / "recsys-champion-vs-challenger.json").read_text())
    assert report["system"] == "recsys" and report["units"] == DEMO_UNITS
    assert set(report["truth"]["watch_minutes"]) == {"challenger"} and "truth_covered" in report
    assert report["world"]["model_versions"]["challenger"] != report["world"]["model_versions"]["champion"]
    drift = json.loads((tmp_path / "monitoring" / "drift.json").read_text())
    assert drift["system"] == "recsys" and "prediction" in drift["features"] and drift["current"]
    timings = json.loads((tmp_path / "monitoring" / "timings.json").read_text())
    assert timings["system"] == "recsys" and 0 < len(timings["stages"]["candidates"]) <= DEMO_TIMED_REQUESTS
    assert "verdict" in out and "SRM" in out
