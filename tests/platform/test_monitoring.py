"""Prometheus helpers (checked against prometheus_client's own Histogram) and the monitor CLI verb."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.monitoring.cli import add_commands
from mlsd.platform.monitoring.metrics import (
    PROBABILITY_BUCKETS,
    count_decisions,
    count_exposures,
    observe_scores,
    set_drift,
)


def _bucket_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name) and "_created" not in line]


def test_batch_histogram_exposes_what_prometheus_histogram_would():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.beta(1, 10, 999), [0.05, 0.1, 1.0, 1.5]])  # edges and an overflow
    ours = CollectorRegistry()
    observe_scores("fraud", scores[:500], registry=ours)
    observe_scores("fraud", scores[500:], registry=ours)  # accumulates across batches
    observe_scores("fraud", [np.nan], registry=ours)  # no bucket for NaN: dropped
    reference = CollectorRegistry()
    hist = Histogram(
        "mlsd_score", "model scores", ("system", "model"), registry=reference, buckets=PROBABILITY_BUCKETS
    )
    for value in scores:
        hist.labels(system="fraud", model="champion").observe(value)
    mine = _bucket_lines(generate_latest(ours).decode(), "mlsd_score")
    theirs = _bucket_lines(generate_latest(reference).decode(), "mlsd_score")
    assert len(mine) == len(PROBABILITY_BUCKETS) + 3  # buckets, +Inf, _count, _sum
    count_line = [x for x in mine if x.startswith("mlsd_score_count")]
    assert count_line == [x for x in theirs if x.startswith("mlsd_score_count")]
    assert [x for x in mine if "_bucket" in x] == [x for x in theirs if "_bucket" in x]
    ours_sum = float(next(x for x in mine if x.startswith("mlsd_score_sum")).split()[-1])
    assert ours_sum == pytest.approx(scores.sum())


def test_decisions_exposures_and_drift_gauges():
    registry = CollectorRegistry()
    mix = count_decisions(
        "fraud", np.array(["approve"] * 97 + ["review"] * 2 + ["decline"]), registry=registry
    )
    count_decisions("fraud", ["approve"], registry=registry)
    assert mix == {"approve": 97, "decline": 1, "review": 2}
    assert registry.get_sample_value("mlsd_decisions_total", {"system": "fraud", "decision": "approve"}) == 98
    count_exposures(
        "ranker", ["control", "treatment"], [True, True, False, True], [0, 1, 1, -1], registry=registry
    )
    assert (
        registry.get_sample_value(
            "mlsd_experiment_exposures_total", {"experiment": "ranker", "arm": "control"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "mlsd_experiment_exposures_total", {"experiment": "ranker", "arm": "treatment"}
        )
        == 1
    )
    set_drift("fraud", {"features": {"amount": {"psi": 0.31}, "hour": {"psi": 0.01}}}, registry=registry)
    assert registry.get_sample_value("mlsd_feature_psi", {"system": "fraud", "feature": "amount"}) == 0.31


def test_default_registry_is_the_services_metrics_endpoint():
    from mlsd.platform.serving import REGISTRY

    observe_scores("test-monitoring", [0.2, 0.4], model="challenger")
    text = generate_latest(REGISTRY).decode()
    assert 'mlsd_score_count{model="challenger",system="test-monitoring"} 2.0' in text


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlsd monitor")
    add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_report_json_and_table(tmp_path, capsys):
    rng = np.random.default_rng(1)
    reference = pd.DataFrame({"amount": rng.lognormal(3, 1, 3000), "country": rng.choice(["US", "GB"], 3000)})
    current = reference.copy()
    current["amount"] *= 2
    reference.to_parquet(tmp_path / "ref.parquet")
    current.to_csv(tmp_path / "cur.csv", index=False)
    ref, cur = str(tmp_path / "ref.parquet"), str(tmp_path / "cur.csv")
    assert _run(["report", "--reference", ref, "--current", cur, "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report["features"]["amount"]["band"] == "significant"
    assert report["features"]["country"]["band"] == "stable"
    assert _run(["report", "--reference", ref, "--current", cur, "--features", "country"]) == 0
    table = capsys.readouterr().out
    assert "country" in table and "amount" not in table and "1 stable" in table


def test_cli_bad_input(tmp_path):
    good = tmp_path / "ref.parquet"
    pd.DataFrame({"a": [1.0, 2.0]}).to_parquet(good)
    with pytest.raises(InputError) as err:
        _run(["report", "--reference", str(tmp_path / "nope.parquet"), "--current", str(good)])
    assert err.value.field == "--reference"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataFormatError):
        _run(["report", "--reference", str(good), "--current", str(broken)])
    with pytest.raises(InputError) as err:
        _run(["report", "--reference", str(good), "--current", str(good), "--features", "b"])
    assert err.value.field == "reference.b"


def test_unbounded_ranking_scores_go_to_their_own_histogram():
    from mlsd.platform.monitoring.metrics import RANK_SCORE_BUCKETS

    ours = CollectorRegistry()
    observe_scores("search", [-9.0, -0.2, 0.3, 2.6, 12.0], model="ltr", registry=ours, bounded=False)
    text = generate_latest(ours).decode()
    assert "mlsd_score_bucket" not in text
    lines = _bucket_lines(text, "mlsd_rank_score_bucket")
    assert len(lines) == len(RANK_SCORE_BUCKETS) + 1
    le = {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in lines}
    assert le["-8.0"] == 1 and le["0.0"] == 2 and le["0.5"] == 3 and le["8.0"] == 4 and le["+Inf"] == 5
