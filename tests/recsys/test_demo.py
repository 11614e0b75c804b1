"""The recommender demo end to end at a tiny size: simulate, train, register, serve known, new and unknown users."""

from __future__ import annotations

import json

import pytest

from mlsd.platform.system import SystemDir
from mlsd.recsys.demo import DEMO_TIMED_REQUESTS, DEMO_UNITS, run


@pytest.mark.slow
def test_demo_runs_end_to_end_in_the_workdir_layout(tmp_path, capsys):
    dirs = SystemDir(tmp_path, "recsys")
    result = run(dirs, size="tiny")
    out = capsys.readouterr().out
    assert result["version"] == 1 and result["promoted"]
    kinds = {u["kind"]: u for u in result["users"]}
    assert "regular" in kinds and "unknown" in kinds
    assert kinds["unknown"]["cold_start"] is True and kinds["regular"]["cold_start"] is False
    assert set(kinds["regular"]["timings_ms"]) == {"candidates", "rules", "features", "ranking", "rerank"}
    assert dirs.registry.is_dir() and (dirs.data / "items.parquet").exists() and any(dirs.runs.iterdir())
    assert "cold start" in out and "stage ms" in out
    # The experiment, drift and timings files the dashboard discovers by content.
    report = json.loads((dirs.monitoring / "experiments" / "recsys-champion-vs-challenger.json").read_text())
    assert report["system"] == "recsys" and report["units"] == DEMO_UNITS
    assert set(report["truth"]["watch_minutes"]) == {"challenger"} and "truth_covered" in report
    assert report["world"]["model_versions"]["challenger"] != report["world"]["model_versions"]["champion"]
    drift = json.loads((dirs.monitoring / "drift.json").read_text())
    assert drift["system"] == "recsys" and "prediction" in drift["features"] and drift["current"]
    timings = json.loads((dirs.monitoring / "timings.json").read_text())
    assert timings["system"] == "recsys" and 0 < len(timings["stages"]["candidates"]) <= DEMO_TIMED_REQUESTS
    assert "verdict" in out and "SRM" in out
    assert {p.name for p in tmp_path.iterdir()} == {"recsys"}  # everything in W/recsys
    assert "mlsd recsys serve --workdir" in out.replace("\n", "")
