"""Drift of the recommender against the champion's training reference: the reference travels with the
model, the current window is served requests (or the last day), and a planted score shift is caught."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.system import SystemDir
from mlsd.recsys.monitoring import drift_report, save_served
from mlsd.recsys.training import MODEL_NAME, REFERENCE_FILE


@pytest.fixture(scope="module")
def workdir(tiny):
    return tiny


def _reference(workdir) -> pd.DataFrame:
    return pd.read_parquet(
        ModelRegistry(workdir.registry).artifact_path(MODEL_NAME, "champion") / REFERENCE_FILE
    )


def test_reference_is_saved_with_the_model(workdir):
    ref = _reference(workdir)
    assert 0 < len(ref) <= 20_000 and "prediction" in ref.columns
    assert ref["prediction"].between(0, 1).all()  # the binary ranker's scores


def test_last_day_report_has_the_drift_monitor_shape(workdir):
    report = drift_report(workdir)
    assert {"features", "summary", "reference", "current", "n_reference", "n_current"} <= set(report)
    assert "last day" in report["current"] and "training rows" in report["reference"]
    assert "prediction" in report["features"] and report["prediction"]["psi"] >= 0
    json.dumps(report)  # JSON-ready for the dashboard


def test_served_rows_are_the_current_window_and_a_planted_shift_is_caught(tmp_path, workdir):
    ref = _reference(workdir)
    # The reference itself (re-sampled) is stable; the same rows with scores pushed up are not.
    same = ref.sample(len(ref), replace=True, random_state=0).reset_index(drop=True)
    local = SystemDir(tmp_path, "recsys")
    local.home.mkdir()
    (local.registry).symlink_to(workdir.registry)
    (local.data).symlink_to(workdir.data)
    save_served(local, same, source="a resample of the reference")
    stable = drift_report(local)
    assert stable["prediction"]["band"] == "stable" and "resample" in stable["current"]
    shifted = same.assign(prediction=np.clip(same["prediction"] + 0.3, 0, 1))
    save_served(local, shifted, source="scores pushed up by 0.3")
    drifted = drift_report(local)
    assert drifted["prediction"]["band"] == "significant" and "prediction" in drifted["summary"]["drifted"]
    assert drifted["features"]["u_events"]["psi"] == pytest.approx(stable["features"]["u_events"]["psi"])


def test_a_workdir_without_a_champion_is_an_input_error_and_creates_nothing(tmp_path):
    with pytest.raises(InputError) as err:
        drift_report(SystemDir(tmp_path, "recsys"))
    assert err.value.field == "--workdir" and "mlsd recsys train --workdir" in err.value.fix
    assert list(tmp_path.iterdir()) == []
