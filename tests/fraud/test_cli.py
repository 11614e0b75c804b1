"""`mlsd fraud ...` verbs on one --workdir W (state in W/fraud/...): one JSON object on stdout with --json,
bad input -> message + exit 2, and a read path (serve, review list, tune) on an empty W creates nothing."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main
from mlsd.fraud.engine import FraudDirs
from mlsd.fraud.review import SQLReviewQueue
from mlsd.platform.system import SystemDir


def run_json(capsys, *argv):
    capsys.readouterr()
    assert main(["fraud", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object: json.loads fails on anything else


def test_simulate_and_backtest(tmp_path, capsys):
    sim = run_json(
        capsys, "simulate", "--workdir", str(tmp_path), "--cards", "150", "--terminals", "40", "--days", "8"
    )
    assert sim["payments"] > 1000 and sim["frauds"] > 0
    assert sim["path"] == str(tmp_path / "fraud" / "data" / "transactions.parquet")
    report = run_json(capsys, "backtest", "--workdir", str(tmp_path))
    assert report == run_json(capsys, "backtest", "--data", str(tmp_path / "fraud" / "data"))
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
    run_json(
        capsys, "simulate", "--workdir", str(tmp_path), "--cards", "50", "--terminals", "20", "--days", "2"
    )
    assert main(["fraud", "backtest", "--rules", str(bad), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "r1" in err and "op" in err and err.startswith("mlsd: error:")


def test_review_list_claim_resolve(tmp_path, capsys):
    dirs = SystemDir(tmp_path, "fraud").create()
    db = FraudDirs(dirs).review_path
    q = SQLReviewQueue.sqlite(db, labels_path=FraudDirs(dirs).labels_path)
    q.enqueue(
        [
            {"tx_id": "t1", "probability": 0.6, "amount": 50.0},
            {"tx_id": "t2", "probability": 0.7, "amount": 500.0},
        ]
    )
    q.close()
    listed = run_json(capsys, "review", "--workdir", str(tmp_path), "list")
    assert [c["tx_id"] for c in listed["cases"]] == ["t2", "t1"]
    claimed = run_json(capsys, "review", "--workdir", str(tmp_path), "claim", "--reviewer", "ana")
    assert [c["tx_id"] for c in claimed["cases"]] == ["t2"]
    done = run_json(
        capsys,
        "review",
        "--workdir",
        str(tmp_path),
        "resolve",
        "t2",
        "--reviewer",
        "ana",
        "--outcome",
        "fraud",
    )
    assert done["case"]["status"] == "resolved" and done["label_recorded"] is True
    # the resolution's label is in the workdir's label store, where training reads it
    assert FraudDirs(dirs).labels_known_at(2**62)["tx_id"].tolist() == ["t2"]


def test_review_bad_input_exits_2(tmp_path, capsys):
    w = str(tmp_path)
    assert main(["fraud", "review", "--workdir", w, "list"]) == 2  # no queue yet: the fix, nothing created
    assert "mlsd fraud serve --workdir" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    SQLReviewQueue.sqlite(FraudDirs(SystemDir(tmp_path, "fraud").create()).review_path).close()
    assert (
        main(["fraud", "review", "--workdir", w, "resolve", "nope", "--reviewer", "a", "--outcome", "fraud"])
        == 2
    )
    assert "tx_id" in capsys.readouterr().err
    assert main(["fraud", "review", "--workdir", w, "list", "--status", "lost"]) == 2
    assert "status" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["fraud", "review", "--workdir", w, "resolve", "x", "--reviewer", "a", "--outcome", "maybe"])
    assert exc.value.code == 2


def test_read_verbs_on_an_empty_workdir_exit_2_with_the_fix_and_create_nothing(tmp_path, capsys):
    w = str(tmp_path)
    for argv in (["serve", "--workdir", w], ["tune-thresholds", "--workdir", w], ["stream", "--workdir", w]):
        assert main(["fraud", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "no champion of model 'fraud'" in err and f"mlsd fraud train --workdir {w}" in err
    assert main(["fraud", "train", "--workdir", w]) == 2
    assert f"mlsd fraud simulate --workdir {w}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bench_rejects_unknown_path(capsys):
    assert main(["fraud", "bench", "--paths", "carrier-pigeon", "--tps", "10", "--seconds", "1"]) == 2
    assert "--paths" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.services
def test_train_tune_and_stream(tmp_path, capsys, redis_url, redis_prefix):
    work = tmp_path / "work"
    run_json(
        capsys, "simulate", "--workdir", str(work), "--size", "tiny", "--cards", "200", "--terminals", "50"
    )
    report = run_json(capsys, "train", "--workdir", str(work), "--trees", "30")
    assert report["promoted"] and report["champion"] == 1 and report["version"] == 1
    assert (work / "fraud" / "runs").is_dir() and (work / "fraud" / "registry" / "registry.sqlite").is_file()
    tuned = run_json(capsys, "tune-thresholds", "--workdir", str(work), "--capacity", "5")
    assert tuned["fpr"] < 0.01 and tuned["review"] <= tuned["block"] and tuned["reviews_per_day_max"] <= 5
    # the service and stream pick the chosen thresholds up
    assert (work / "fraud" / "registry" / "thresholds.json").exists()
    assert FraudDirs(SystemDir(work, "fraud")).config.thresholds.block == pytest.approx(tuned["block"])
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
        str(work / "fraud" / "data"),
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
