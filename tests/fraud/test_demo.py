"""`mlsd fraud demo` end to end, run small: every step happens and the summary adds up."""

from __future__ import annotations

import io

import pytest
from rich.console import Console


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    from mlsd.fraud.demo import run

    buffer = io.StringIO()
    out = run(
        tmp_path,
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
    resolved = out["review"]["queue"]["resolved"]
    assert resolved == len(out["review"]["resolved"])
    if out["late_label"] is not None:
        assert out["late_label"]["known_after"] == out["late_label"]["known_before"] + 1
