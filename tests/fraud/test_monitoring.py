"""Monitoring: performance on labels as they mature, and a drift report that reads without creating."""

from __future__ import annotations

import pandas as pd
import pytest

from mlsd.fraud.monitoring import drift_report, performance_by_label_age
from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir


def test_performance_by_label_age_counts_labels_known_at_each_age():
    day = 86_400

    class T:
        block, review = 0.8, 0.5

    scored = pd.DataFrame({"tx_id": [1, 2, 3, 4], "ts": [0, 0, 0, 0], "prediction": [0.9, 0.6, 0.7, 0.1]})
    truth = pd.DataFrame(
        {"tx_id": [1, 2, 3, 4], "fraud": [1, 1, 0, 0], "label_ts": [2 * 3600, 40 * day, 90 * day, 90 * day]}
    )
    out = performance_by_label_age(scored, truth, T, now=10 * day, ages_days=(1, 30, 60))
    rows = {r["age_days"]: r for r in out["by_label_age"]}
    assert [rows[a]["frauds_known"] for a in (1, 30, 60, "final")] == [1, 1, 2, 2]
    assert rows[1]["recall_at_block"] == 1.0 and rows[60]["recall_at_block"] == 0.5
    assert rows[60]["precision_at_review"] == pytest.approx(2 / 3)
    assert rows[1]["matured_share"] == 1.0 and rows[30]["matured_share"] == 0.0


def test_drift_report_without_a_champion_names_the_fix_and_creates_nothing(tmp_path):
    with pytest.raises(InputError) as err:
        drift_report(SystemDir(tmp_path / "W", "fraud"))
    assert "mlsd fraud train --workdir" in err.value.fix
    assert not (tmp_path / "W").exists()
