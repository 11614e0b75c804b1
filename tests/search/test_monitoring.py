"""Drift of the search ranker against its training reference: stable on unchanged traffic, flags a shift."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir
from mlsd.search.clicklog import ClickLog
from mlsd.search.engine import FEATURE_NAMES
from mlsd.search.monitoring import drift_report
from mlsd.search.world import DAY, Simulation


def test_unchanged_traffic_is_stable(search_world) -> None:
    dirs, world = search_world
    report = drift_report(dirs, engine=world.engine)
    assert set(report["features"]) == {*FEATURE_NAMES, "prediction"}
    assert report["summary"]["significant"] == 0, report["summary"]
    assert "training pairs" in report["reference"] and "2025-12-25..2025-12-31" in report["current"]
    assert report["n_reference"] <= 20_000 and report["version"] == world.engine.ranker_version_


def test_a_shift_in_the_query_mix_is_flagged(search_world, tmp_path) -> None:
    dirs, world = search_world
    copy = SystemDir(tmp_path, "search")
    for part in ("data", "registry"):
        shutil.copytree(dirs.home / part, copy.home / part)
    sim = Simulation.load(copy.data)
    imp = sim.impressions
    price_queries = sim.queries.loc[sim.queries["intent"] == "price_category", "query_id"]
    week = imp[(imp["ts"] >= imp["ts"].max() - 7 * DAY) & imp["query_id"].isin(price_queries)]
    shifted = week.assign(ts=week["ts"] + 7 * DAY, search_id=week["search_id"] + 10_000_000)
    ClickLog(copy.data / "clicklog").append_impressions(pd.DataFrame(shifted))
    report = drift_report(copy, engine=world.engine)
    drifted = report["summary"]["drifted"]
    assert report["features"]["price_in_range"]["band"] == "significant", drifted
    assert report["summary"]["significant"] >= 2


def test_no_champion_is_an_input_error_and_creates_nothing(tmp_path) -> None:
    with pytest.raises(InputError) as err:
        drift_report(SystemDir(tmp_path / "w", "search"))
    assert err.value.field == "--workdir" and "mlsd search train --workdir" in err.value.fix
    assert not (tmp_path / "w").exists()


def test_mlsd_monitor_report_for_the_system(search_world, capsys) -> None:
    import json

    from mlsd.cli import main

    dirs, _ = search_world
    workdir = dirs.root
    assert main(["monitor", "report", "--system", "search", "--workdir", str(workdir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # one JSON object on stdout
    assert {"features", "summary", "reference", "current"} <= set(report)
    assert "prediction" in report["features"]  # prediction drift next to the features
    assert main(["monitor", "report", "--system", "search", "--workdir", str(workdir)]) == 0
    assert "stable" in capsys.readouterr().out
