"""``mlsd search simulate`` writes through the import: the simulated workdir is an import of its tables."""

from __future__ import annotations

import pandas as pd

from mlsd.platform.system import SystemDir
from mlsd.search.clicklog import ClickLog
from mlsd.search.contract import import_data, import_tables
from mlsd.search.world import Simulation, simulate, simulate_into

SMALL = {"products": 300, "sessions": 400, "queries": 20, "users": 30}
FILES = {"catalog": "catalog", "queries": "queries", "judgements": "judgements", "events": "events"}


def _stored(data) -> dict[str, pd.DataFrame]:
    frames = {n: pd.read_parquet(data / f"{n}.parquet") for n in ("products", "queries", "qrels")}
    events = ClickLog(data / "clicklog").events()
    frames["events"] = events.sort_values(["type", "search_id", "product_id"], ignore_index=True)
    return frames


def test_simulated_data_is_an_import_of_its_own_tables(tmp_path):
    dirs = SystemDir(tmp_path / "sim", "search")
    summary = simulate_into(dirs, size="tiny", seed=4, **SMALL)
    sim = simulate(
        SMALL["products"], SMALL["sessions"], 4, n_queries=SMALL["queries"], n_users=SMALL["users"]
    )
    tables = sim.contract_tables()
    assert summary["events"] == len(tables["events"]) and summary["products"] == len(tables["catalog"])

    # the same tables written as Parquet files and imported by a user: the same stored data
    files = tmp_path / "files"
    files.mkdir()
    for table, frame in tables.items():
        frame.to_parquet(files / f"{FILES[table]}.parquet", index=False)
    imported = SystemDir(tmp_path / "imported", "search")
    import_data(imported, "parquet", files)
    simulated = _stored(dirs.data)
    for name, frame in _stored(imported.data).items():
        pd.testing.assert_frame_equal(simulated[name], frame)

    # the simulation's own frames (its truth) lie beside the import, and load back whole
    back = Simulation.load(dirs.data)
    pd.testing.assert_frame_equal(back.truth, sim.truth)
    assert list(back.products.columns) == list(sim.products.columns)

    # re-importing the simulator's own tables changes nothing
    again = import_tables(dirs, tables)
    assert not again["changed"] and again["added"]["events"] == 0
    for name, frame in _stored(dirs.data).items():
        pd.testing.assert_frame_equal(simulated[name], frame)
