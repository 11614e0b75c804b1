"""The demo runs end to end (small, without the MiniLM model) and serves every kind of query."""

from __future__ import annotations

import json

import pytest

from mlsd.platform.system import SystemDir
from mlsd.search.demo import DEMO_QUERIES, run


@pytest.mark.slow
def test_demo_runs_end_to_end_in_the_workdir_layout(tmp_path) -> None:
    dirs = SystemDir(tmp_path, "search")
    options = {"products": 600, "sessions": 4000, "dense": False, "quiet": True}
    out = run(dirs, **options)
    labels = {a["label"] for a in out["answers"]}
    assert (
        labels == {label for label, _ in DEMO_QUERIES} >= {"typo", "synonym", "price constraint", "Spanish"}
    )
    assert all(a["status"] == 200 and a["top"] for a in out["answers"])
    typo = next(a for a in out["answers"] if a["label"] == "typo")
    assert typo["corrected"] == "wireless earbuds"
    assert out["events_accepted"] >= 3
    assert 0 < out["metrics"]["truth_ndcg@10"] <= 1 and out["propensity_eta"] > 0
    assert dirs.require_champion("search-ltr").version == out["version"] == 1
    assert (dirs.data / "clicklog").is_dir() and any(dirs.runs.glob("*.json"))
    # The experiment, drift and timings files the dashboard discovers, in W/search/monitoring.
    files = out["files"]
    report = json.loads((dirs.monitoring / "experiments" / "search-ltr-vs-bm25.json").read_text())
    assert files["experiment"].endswith("search-ltr-vs-bm25.json") and report["system"] == "search"
    assert report["truth"]["clicks_per_search"]["bm25"] < 0 and "srm" in report and report["looks"]
    drift = json.loads((dirs.monitoring / "drift.json").read_text())
    assert {"features", "summary", "reference", "current"} <= set(drift)
    assert "2025-12-25..2025-12-31" in drift["current"]  # the showcase events ran on the simulated clock
    timings = json.loads((dirs.monitoring / "timings.json").read_text())
    assert timings["system"] == "search" and {"parse", "bm25", "rules"} <= set(timings["stages"])
    assert out["experiment"]["primary_metric"] == "blended"
    # a second run in the same workdir reuses the world; the demo's own events changed the click log,
    # so it trains a challenger that the gate compares with the champion
    again = run(dirs, **{**options, "experiment_units": 0})
    assert not out["world_reused"] and again["world_reused"]
    assert again["version"] == 2 and again["champion"] in (1, 2)
