"""`mlsd fraud demo` end to end, run small: every step happens, the summary adds up, and everything lands
in the platform layout W/fraud/{data,features,registry,runs,monitoring,review}."""

from __future__ import annotations

import io

import pytest
from rich.console import Console


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    from mlsd.fraud.demo import run
    from mlsd.platform.system import SystemDir

    dirs = SystemDir(tmp_path, "fraud")
    buffer = io.StringIO()
    out = run(
        dirs,
        cards=250,
        days=36,
        sequence=False,
        lgbm_params={"n_estimators": 30},
        console=Console(file=buffer, width=120),
    )
    text = buffer.getvalue()
    for step in ("1. simulate", "2. labels", "3. train", "one live day", "5. review", "7. retrain"):
        assert step in text
    stream = out["stream"]
    assert sum(stream["decisions"].values()) == stream["payments"] == out["simulated"]["live_payments"]
    assert out["train"]["champion_version"] == 1 and out["retrain"]["challenger_version"] == 2
    assert out["retrain"]["labels_known"] > out["train"]["labels_known"]  # labels arrived meanwhile
    # the live thresholds: tuned on the evaluation period with the labels known at the cut-off
    tuned = out["thresholds"]
    assert tuned["tuned_on"]["fraud_labels_known"] == tuned["n_fraud"] > 0
    assert tuned["tuned_on"]["payments"] == out["train"]["challenger_eval"]["n"]
    assert "later chargebacks unseen" in text and tuned["tuned_on"]["first_day"] in text
    resolved = out["review"]["queue"]["resolved"]
    assert resolved == len(out["review"]["resolved"])
    if out["late_label"] is not None:
        assert out["late_label"]["known_after"] == out["late_label"]["known_before"] + 1
    # contract point 6: the files the dashboard finds by content
    import json

    exp = json.loads((dirs.monitoring / "experiments" / f"{out['experiment']['name']}.json").read_text())
    assert exp["mode"] == "shadow" and exp["system"] == "fraud" and exp["primary_metric"] == "fraud_loss"
    assert exp["srm"]["counts"][0] > 0 and "8. shadow experiment" in text
    drift = json.loads((dirs.monitoring / "drift.json").read_text())
    assert {"features", "summary", "reference", "current", "performance"} <= set(drift)
    timings = json.loads((dirs.monitoring / "timings.json").read_text())
    assert timings["system"] == "fraud" and len(timings["stages"]["model"]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fraud"]
    assert (dirs.features / "labels.sqlite").is_file() and (dirs.review / "review.sqlite").is_file()
    assert (dirs.data / "transactions.parquet").is_file() and (dirs.registry / "thresholds.json").is_file()
