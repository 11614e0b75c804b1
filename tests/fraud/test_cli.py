"""`mlsd fraud ...` verbs: one JSON object on stdout with --json, bad input -> message + exit 2."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main
from mlsd.fraud.review import SQLReviewQueue


def run_json(capsys, *argv):
    capsys.readouterr()
    assert main(["fraud", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object: json.loads fails on anything else


def test_simulate_and_backtest(tmp_path, capsys):
    sim = run_json(
        capsys, "simulate", "--out", str(tmp_path), "--cards", "150", "--terminals", "40", "--days", "8"
    )
    assert sim["payments"] > 1000 and sim["frauds"] > 0
    report = run_json(capsys, "backtest", "--data", str(tmp_path))
    rules = {r["rule"]: r for r in report["rules"]}
    assert report["rules_version"] >= 1 and "ANY" in rules
    assert rules["blocked_country"]["skipped"] is True  # the simulator has no country: skipped, not faked
    assert rules["amount_limit"]["skipped"] is False
    assert 0.0 <= rules["ANY"]["hit_rate"] <= 1.0


def test_backtest_bad_rules_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "version: 1\nrules:\n  - id: r1\n    when: {field: amount, op: '>>', value: 1}\n    action: block\n"
    )
    run_json(capsys, "simulate", "--out", str(tmp_path), "--cards", "50", "--terminals", "20", "--days", "2")
    assert main(["fraud", "backtest", "--rules", str(bad), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "r1" in err and "op" in err and err.startswith("mlsd: error:")


def test_review_list_claim_resolve(tmp_path, capsys):
    db = tmp_path / "q.sqlite"
    q = SQLReviewQueue.sqlite(db)
    q.enqueue(
        [
            {"tx_id": "t1", "probability": 0.6, "amount": 50.0},
            {"tx_id": "t2", "probability": 0.7, "amount": 500.0},
        ]
    )
    q.close()
    listed = run_json(capsys, "review", "--db", str(db), "list")
    assert [c["tx_id"] for c in listed["cases"]] == ["t2", "t1"]
    claimed = run_json(capsys, "review", "--db", str(db), "claim", "--reviewer", "ana")
    assert [c["tx_id"] for c in claimed["cases"]] == ["t2"]
    done = run_json(
        capsys, "review", "--db", str(db), "resolve", "t2", "--reviewer", "ana", "--outcome", "fraud"
    )
    assert done["case"]["status"] == "resolved" and done["label_recorded"] is True
    q = SQLReviewQueue.sqlite(db)
    assert q.labels.labels_known_at(2**62)["tx_id"].tolist() == ["t2"]
    q.close()


def test_review_bad_input_exits_2(tmp_path, capsys):
    db = str(tmp_path / "q.sqlite")
    assert (
        main(["fraud", "review", "--db", db, "resolve", "nope", "--reviewer", "a", "--outcome", "fraud"]) == 2
    )
    assert "tx_id" in capsys.readouterr().err
    assert main(["fraud", "review", "--db", db, "list", "--status", "lost"]) == 2
    assert "status" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["fraud", "review", "--db", db, "resolve", "x", "--reviewer", "a", "--outcome", "maybe"])
    assert exc.value.code == 2


def test_bench_rejects_unknown_path(capsys):
    assert main(["fraud", "bench", "--paths", "carrier-pigeon", "--tps", "10", "--seconds", "1"]) == 2
    assert "--paths" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.services
def test_train_tune_and_stream(tmp_path, capsys, redis_url, redis_prefix):
    data, work = tmp_path / "data", tmp_path / "work"
    run_json(capsys, "simulate", "--out", str(data), "--cards", "200", "--terminals", "50", "--days", "30")
    report = run_json(
        capsys, "train", "--data", str(data), "--workdir", str(work), "--no-sequence", "--trees", "30"
    )
    assert report["promoted"] and report["champion_version"] == 1
    tuned = run_json(
        capsys, "tune-thresholds", "--data", str(data), "--workdir", str(work), "--capacity", "5"
    )
    assert tuned["fpr"] < 0.01 and tuned["review"] <= tuned["block"] and tuned["reviews_per_day_max"] <= 5
    assert (work / "thresholds.json").exists()  # the service and stream pick the chosen thresholds up
    out = run_json(
        capsys,
        "stream",
        "--workdir",
        str(work),
        "--redis-url",
        redis_url,
        "--prefix",
        redis_prefix,
        "--publish",
        str(data),
        "--limit",
        "300",
        "--idle-exit",
        "0.5",
    )
    assert out["published"] == 300 == out["decisions_in_output"] and out["pending"] == 0
    assert sum(out["by_decision"].values()) == 300


def test_evaluate_options_come_from_the_evaluate_module(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fraud", "evaluate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--dataset" in out and "--protocol" in out
