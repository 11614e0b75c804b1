"""Issue 10's acceptance for fraud on the shared handbook sample, through ``mlsd.cli.main``:
``import --format handbook`` -> ``train`` -> ``score --file`` / ``--payment`` -> ``serve`` (same answer
over HTTP). The script in docs/fraud.md ("Your own data") runs these same commands."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlsd.cli import main
from mlsd.platform.registry import ModelRegistry

pytestmark = pytest.mark.data


def run_json(capsys, *argv):
    capsys.readouterr()
    assert main(["fraud", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_handbook_sample_import_train_score_serve(tmp_path, capsys, monkeypatch, shared_data):
    sample = shared_data("fraud-sample")
    w = str(tmp_path / "W")
    first = run_json(capsys, "import", "--format", "handbook", "--path", str(sample), "--workdir", w)
    assert first["payments_new"] == 67_240 and first["labels_new"] == 598  # the README's counts
    again = run_json(capsys, "import", "--format", "handbook", "--path", str(sample), "--workdir", w)
    assert (again["payments_new"], again["labels_new"], again["changed"]) == (0, 0, False)

    report = run_json(capsys, "train", "--workdir", w)
    assert report["registered"] and report["promoted"] and report["version"] == 1
    ev = report["metrics"]["eval"]
    assert ev["frauds"] > 50 and ev["auc_roc"] > 0.6  # a week of real labels: a model, not a coin
    card = ModelRegistry(tmp_path / "W" / "fraud" / "registry").alias("fraud", "champion").params
    assert card["missing_columns"] == ["device_id", "ip", "email", "lat", "lon"]
    assert "card_new_device" in card["features_dropped"] and "ring_fraud_2hop" in card["features_dropped"]
    assert "terminal_risk_7d" in card["features_used"] and not set(card["features_used"]) & set(
        card["features_dropped"]
    )

    # issue 10 item 6: a capacity above the file's whole volume would send everything to review
    thresholds = tmp_path / "W" / "fraud" / "registry" / "thresholds.json"
    assert main(["fraud", "tune-thresholds", "--workdir", w, "--capacity", "100000"]) == 2
    assert "every payment below the block threshold" in capsys.readouterr().err and not thresholds.exists()
    tuned = run_json(capsys, "tune-thresholds", "--workdir", w)
    assert tuned["warnings"] == [] and 0.0 < tuned["review"] <= tuned["block"] and thresholds.exists()

    tx = pd.read_parquet(tmp_path / "W" / "fraud" / "data" / "transactions.parquet")
    few = pd.concat([tx.loc[tx["fraud"] == 0].tail(3), tx.loc[tx["fraud"] == 1].tail(2)])
    bodies = few.drop(columns=["fraud", "label_ts", "scenario"]).to_dict("records")
    bodies = [{k: (v.item() if hasattr(v, "item") else v) for k, v in b.items()} for b in bodies]
    jsonl = tmp_path / "payments.jsonl"
    jsonl.write_text("".join(json.dumps(b) + "\n" for b in bodies))

    scored = run_json(capsys, "score", "--workdir", w, "--file", str(jsonl))
    decisions = scored["decisions"]
    assert scored["model_version"] == 1 and [d["tx_id"] for d in decisions] == [b["tx_id"] for b in bodies]
    assert all(d["decision"] in ("approve", "review", "block") and d["reasons"] for d in decisions)
    one = run_json(capsys, "score", "--workdir", w, "--payment", json.dumps(bodies[0]))
    assert one["decisions"][0] == decisions[0]  # a batch of one: the same answer
    assert main(["fraud", "score", "--workdir", w, "--file", str(jsonl)]) == 0
    table = capsys.readouterr().out
    assert "decision" in table and str(bodies[-1]["tx_id"]) in table
    assert not list((tmp_path / "W" / "fraud" / "review").iterdir())  # a query opens no review case

    apps = []
    monkeypatch.setattr("mlsd.platform.serving.serve", lambda app, **kw: apps.append(app))
    assert main(["fraud", "serve", "--workdir", w]) == 0
    with TestClient(apps[0]) as client:
        assert client.get("/health").json()["model_version"] == 1
        r = client.post("/v1/score/batch", json={"payments": bodies})
        assert r.status_code == 200
        served = r.json()["decisions"]
    for http, cli in zip(served, decisions, strict=True):
        assert (http["tx_id"], http["decision"]) == (cli["tx_id"], cli["decision"])
        assert http["probability"] == pytest.approx(cli["probability"], abs=1e-9)
        assert http["reasons"][0] == cli["reasons"][0]


def test_score_without_a_champion_exits_2(tmp_path, capsys):
    code = main(["fraud", "score", "--workdir", str(tmp_path), "--payment", '{"tx_id": 1}'])
    assert code == 2
    assert "mlsd fraud" in capsys.readouterr().err
    assert not (tmp_path / "fraud").exists()  # a read path creates nothing


def test_a_later_slice_then_the_weekly_pipeline_gates_a_challenger(tmp_path, capsys, shared_data):
    """The handbook week in two slices (25-29 July, then 30-31 July): the second import lands beside
    the first, and `mlsd pipeline run weekly` trains on the data up to its end and gates the result."""
    sample = shared_data("fraud-sample")
    frame = pd.concat(pd.read_csv(p, dtype=str) for p in sorted(sample.glob("*.csv*")))
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir(), later.mkdir()
    early = frame["TX_DATETIME"] < "2018-07-30"
    frame.loc[early].to_csv(first / "2018-07-25_29.csv", index=False)
    frame.loc[~early].to_csv(later / "2018-07-30_31.csv", index=False)
    w = str(tmp_path / "W")
    assert (
        run_json(capsys, "import", "--format", "handbook", "--path", str(first), "--workdir", w)[
            "payments_new"
        ]
        > 0
    )
    assert run_json(capsys, "train", "--workdir", w)["version"] == 1
    out = run_json(capsys, "import", "--format", "handbook", "--path", str(later), "--workdir", w)
    assert out["payments_duplicate"] == 0 and out["payments_total"] == 67_240 and out["labels_total"] == 598
    assert main(["pipeline", "run", "weekly", "--workdir", w]) == 0
    runs = sorted((tmp_path / "W" / "fraud" / "runs").glob("*-v2.json"))
    assert len(runs) == 1
    report = json.loads(runs[0].read_text())
    assert report["registered"] and report["run_date"] == "2018-08-07"
    assert report["reason"].startswith("v2 vs champion v1")  # gated against the champion, not promoted blind
