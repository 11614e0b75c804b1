"""Daily retraining: click-log windows by run date, idempotent by data fingerprint, challenger + gate."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.client import ExperimentClient
from mlsd.platform.experiments.online import arms_from_presets, make_experiment
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.retraining import REPORT_KEYS as KEYS
from mlsd.search.experiment import ARM_PRESETS, METRICS
from mlsd.search.pipeline import MODEL_NAME
from mlsd.search.routing import SearchRouter
from mlsd.search.schedule import run_scheduled


def test_windows_register_a_challenger_gate_it_and_rerun_idempotently(search_world, tmp_path) -> None:
    shutil.copytree(search_world[0] / "data", tmp_path / "data")  # data only: no registry yet
    first = run_scheduled(tmp_path, progress=False)  # default: the log's last day
    assert set(first) >= KEYS and first["system"] == "search" and first["run_date"] == "2025-12-31"
    assert first["registered"] and first["promoted"] and first["version"] == 1
    again = run_scheduled(tmp_path, dt.date(2025, 12, 31), progress=False)
    assert not again["registered"] and not again["promoted"] and "v1" in again["reason"]
    assert again["data_fingerprint"] == first["data_fingerprint"]
    early = run_scheduled(tmp_path, dt.date(2025, 12, 8), progress=False)  # a week of data only
    assert early["registered"] and early["version"] == 2
    assert early["data_fingerprint"] != first["data_fingerprint"]
    assert early["window"]["impressions"] < first["window"]["impressions"]
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.aliases(MODEL_NAME)["challenger"] == 2
    m = early["metrics"]
    # The gate compared both on the same judged set; the week-old model does not beat the champion.
    assert m["truth_ndcg@10"] < m["champion_truth_ndcg@10"] and not early["promoted"]
    assert registry.aliases(MODEL_NAME)["champion"] == 1 and "does not beat" in early["reason"]
    assert (registry.artifact_path(MODEL_NAME, 2) / "reference.parquet").exists()
    # An experiment arm with alias "challenger" now serves v2 next to the champion.
    arms = arms_from_presets(ARM_PRESETS, ["ltr", "challenger"])
    client = ExperimentClient(make_experiment("search", arms, list(METRICS)), registry=False)
    router = SearchRouter(search_world[1].engine, client, registry_dir=tmp_path / "registry")
    users = [str(u) for u in range(20)]
    served = router.search_many(["lamp"] * 20, users, 5)
    for resp, arm in zip(served, client.assign("search-ltr-vs-challenger", users).tolist(), strict=True):
        assert resp["model_version"] == (2 if arm == 1 else search_world[1].engine.ranker_version_)


def test_simulates_the_default_world_when_data_is_absent_and_rejects_dates_outside_it(tmp_path) -> None:
    with pytest.raises(InputError) as err:
        run_scheduled(tmp_path, dt.date(2030, 1, 1), progress=False)
    assert err.value.field == "--date" and "2025-12-02" in str(err.value) and "2025-12-31" in str(err.value)
    assert (tmp_path / "data" / "simulation.json").exists()  # simulated deterministically before the check
    assert not (tmp_path / "registry").exists()
