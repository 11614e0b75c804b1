"""``mlsd monitor report`` and ``mlsd experiment run`` on workdirs that hold only imported data (issue 10):
the report works and says what it cannot compute (no known truth), the experiment refuses with exit 2,
naming what the data lacks and what it supports instead, before anything is trained or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlsd.cli import main

pytestmark = pytest.mark.data


def ok(capsys, *argv: str) -> dict | None:
    capsys.readouterr()
    assert main(list(argv)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(out) if "--json" in argv else None


def refused_experiment(capsys, system: str, w: str) -> str:
    registry = Path(w) / system / "registry"
    before = sorted(p.name for p in registry.rglob("*"))
    capsys.readouterr()
    assert main(["experiment", "run", system, "--workdir", w, "--units", "200", "--json"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a simulated world" in err and "Fix:" in err
    assert sorted(p.name for p in registry.rglob("*")) == before  # nothing trained or registered
    return err


def test_recsys_movielens_monitor_report_and_experiment(tmp_path, capsys, shared_data):
    w = str(tmp_path)
    ok(capsys, "recsys", "import", "--format", "movielens", "--path", str(shared_data("movielens-100k")),
       "--workdir", w)  # fmt: skip
    ok(capsys, "recsys", "train", "--workdir", w)
    report = ok(capsys, "monitor", "report", "--system", "recsys", "--workdir", w, "--json")
    assert report["system"] == "recsys" and report["features"] and "prediction" in report["features"]
    assert "the data's last day" in report["current"]  # no served sample: the last day, scored
    err = refused_experiment(capsys, "recsys", w)
    assert "exposure log" in err and "mlsd pipeline run daily" in err


def test_fraud_handbook_monitor_report_and_experiment(tmp_path, capsys, shared_data):
    w = str(tmp_path)
    ok(capsys, "fraud", "import", "--format", "handbook", "--path", str(shared_data("fraud-sample")),
       "--workdir", w)  # fmt: skip
    ok(capsys, "fraud", "train", "--workdir", w)
    report = ok(capsys, "monitor", "report", "--system", "fraud", "--workdir", w, "--json")
    perf = report["performance"]
    # no known truth beyond the export: the labels known then, said so, measured to the export's date
    assert perf["truth"] == "imported labels as of the export" and perf["as_of"].startswith("2018-08-07")
    assert "final precision and recall" in report["not_computed"]
    final = perf["by_label_age"][-1]
    assert final["frauds_known"] > 0 and 0.5 < final["auc_roc"] <= 1.0
    capsys.readouterr()
    assert main(["monitor", "report", "--system", "fraud", "--workdir", w]) == 0
    assert "not computed: final precision and recall" in capsys.readouterr().out
    err = refused_experiment(capsys, "fraud", w)
    assert "known to 2018-08-07" in err and "mlsd pipeline run weekly" in err


def test_search_home_depot_monitor_report_and_experiment(tmp_path, capsys, shared_data):
    w = str(tmp_path)
    ok(capsys, "search", "import", "--format", "homedepot", "--path", str(shared_data("home-depot-sample")),
       "--workdir", w)  # fmt: skip
    ok(capsys, "search", "train", "--workdir", w, "--no-dense")
    report = ok(capsys, "monitor", "report", "--system", "search", "--workdir", w, "--json")
    assert report["features"] == {} and "no click log" in report["not_computed"]["feature and score drift"]
    assert report["quality"]["judged_queries"] == 40 and 0 < report["quality"]["truth_ndcg@10"] <= 1
    capsys.readouterr()
    assert main(["monitor", "report", "--system", "search", "--workdir", w]) == 0
    out = capsys.readouterr().out
    assert "no feature compared" in out and "not computed: feature and score drift" in out
    err = refused_experiment(capsys, "search", w)
    assert "click model" in err and "mlsd search train" in err
