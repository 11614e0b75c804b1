"""The demo runs end to end (small, without the MiniLM model) and serves every kind of query."""

from __future__ import annotations

import json

import pytest

from mlsd.search.demo import DEMO_QUERIES, run


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path) -> None:
    out = run(
        tmp_path, products=600, sessions=4000, dense=False, quiet=True, parser_options={"intent_queries": 200}
    )
    labels = {a["label"] for a in out["answers"]}
    assert (
        labels == {label for label, _ in DEMO_QUERIES} >= {"typo", "synonym", "price constraint", "Spanish"}
    )
    assert all(a["status"] == 200 and a["top"] for a in out["answers"])
    typo = next(a for a in out["answers"] if a["label"] == "typo")
    assert typo["corrected"] == "wireless earbuds"
    assert out["events_accepted"] >= 3
    assert 0 < out["metrics"]["truth_ndcg@10"] <= 1 and out["propensity_eta"] > 0
    assert (tmp_path / "registry").exists() and (tmp_path / "data" / "clicklog").exists()
    # The experiment, drift and timings files the dashboard discovers.
    files = out["files"]
    report = json.loads((tmp_path / "experiments" / "search-ltr-vs-bm25.json").read_text())
    assert files["experiment"].endswith("search-ltr-vs-bm25.json") and report["system"] == "search"
    assert report["truth"]["clicks_per_search"]["bm25"] < 0 and "srm" in report and report["looks"]
    drift = json.loads((tmp_path / "monitoring" / "drift.json").read_text())
    assert {"features", "summary", "reference", "current"} <= set(drift)
    timings = json.loads((tmp_path / "monitoring" / "timings.json").read_text())
    assert timings["system"] == "search" and {"parse", "bm25", "rules"} <= set(timings["stages"])
    assert out["experiment"]["primary_metric"] == "clicks_per_search"
