"""The scheduled daily retrain: trains on the data up to the run date, is idempotent per window,
rejects dates outside the data, and never promotes a backfill over a champion that saw that day."""

from __future__ import annotations

import datetime as dt

import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.retraining import REPORT_KEYS as KEYS
from mlsd.recsys.demo import TINY_SIZE, TINY_TRAIN
from mlsd.recsys.experiment import ensure_world
from mlsd.recsys.pipeline import MODEL_NAME
from mlsd.recsys.schedule import run_scheduled


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recsys-schedule")
    ensure_world(root, size=TINY_SIZE, train=TINY_TRAIN)  # data + champion v1 (trained on the last day)
    return root


def test_same_window_registers_nothing_and_a_new_day_trains(workdir):
    again = run_scheduled(workdir, progress=False)  # default: the data's last day, as the champion
    assert set(again) >= KEYS
    assert again["system"] == "recsys" and again["run_date"] == "2026-02-28"
    assert again["registered"] is False and again["version"] == 1 and "v1" in again["reason"]
    assert (
        again["data_fingerprint"] == ModelRegistry(workdir / "registry").get(MODEL_NAME, 1).data_fingerprint
    )
    earlier = run_scheduled(workdir, dt.date(2026, 2, 26), progress=False)
    assert earlier["registered"] and earlier["version"] == 2
    # v1 trained on data up to 02-28, including 02-26: the gate would be a leak, so no promotion.
    assert earlier["promoted"] is False and "backfill" in earlier["reason"]
    assert earlier["data_fingerprint"] != again["data_fingerprint"]
    reg = ModelRegistry(workdir / "registry")
    assert (
        reg.current_version(MODEL_NAME, "champion") == 1
        and reg.current_version(MODEL_NAME, "challenger") == 2
    )
    repeat = run_scheduled(workdir, dt.date(2026, 2, 26), progress=False)
    assert repeat["registered"] is False and repeat["version"] == 2
    assert len(reg.versions(MODEL_NAME)) == 2


@pytest.mark.parametrize("day", [dt.date(2025, 1, 1), dt.date(2026, 3, 1), dt.date(2026, 2, 13)])
def test_a_date_outside_the_data_names_the_valid_range(workdir, day):
    with pytest.raises(InputError) as err:
        run_scheduled(workdir, day, progress=False)
    assert err.value.field == "--date" and "2026-02-28" in err.value.problem


def test_an_empty_workdir_simulates_its_world_first(tmp_path, monkeypatch):
    import mlsd.recsys.experiment as experiment

    # The default world, shrunk so the test stays fast (same code path).
    monkeypatch.setattr(experiment, "WORLD_SIZE", TINY_SIZE)
    monkeypatch.setattr(experiment, "WORLD_TRAIN", TINY_TRAIN)
    report = run_scheduled(tmp_path, progress=False)
    assert (tmp_path / "data" / "items.parquet").exists()
    assert report["registered"] and report["promoted"] and report["reason"] == "no champion yet"
