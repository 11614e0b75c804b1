"""``mlsd recsys simulate`` writes through the import: the simulated workdir is an import of its tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir
from mlsd.recsys import world as sim
from mlsd.recsys.contract import KEYS
from mlsd.recsys.importing import import_data, import_tables

TABLES = ("items", "users", "interactions")


def _stored(data) -> dict[str, pd.DataFrame]:
    return {t: pd.read_parquet(data / f"{t}.parquet") for t in TABLES}


def test_simulated_events_meet_the_contract_key():
    ds, _ = sim.simulate(**sim.SIZES["tiny"].simulate_args())
    assert not ds.interactions.duplicated(list(KEYS["interactions"])).any()


def test_simulated_data_is_an_import_of_its_own_tables(tmp_path):
    dirs = SystemDir(tmp_path / "sim", "recsys")
    summary = sim.simulate_into(dirs, "tiny")
    ds, _ = sim.simulate(**sim.SIZES["tiny"].simulate_args())
    assert summary["events"] == len(ds.interactions)

    # the same tables written as Parquet files and imported by a user: the same stored tables
    files = tmp_path / "files"
    files.mkdir()
    for table, frame in sim.contract_tables(ds).items():
        frame.to_parquet(files / f"{table}.parquet", index=False)
    imported = SystemDir(tmp_path / "imported", "recsys")
    import_data(imported, "parquet", files)
    simulated = _stored(dirs.data)
    for table, frame in _stored(imported.data).items():
        pd.testing.assert_frame_equal(simulated[table], frame)

    # the world's calendar and training job ride in meta.json beside the import's record
    meta = json.loads((dirs.data / "meta.json").read_text())
    assert meta["end_ts"] == ds.meta["end_ts"] and meta["imports"][0]["format"] == "tables"
    assert meta["train"]["train_days"] == sim.SIZES["tiny"].train.train_days

    # re-importing the simulator's own tables changes nothing
    again = import_tables(dirs, sim.contract_tables(ds))
    assert again["written"] == [] and again["added"] == {t: 0 for t in TABLES}
    for table, frame in _stored(dirs.data).items():
        pd.testing.assert_frame_equal(simulated[table], frame)


def test_simulating_again_replaces_the_world(tmp_path):
    dirs = SystemDir(tmp_path, "recsys")
    sim.simulate_into(dirs, "tiny")
    small = sim.simulate_into(dirs, "tiny", n_users=50, days=8)
    assert len(pd.read_parquet(dirs.data / "users.parquet")) == small["users"] == 50
    assert sorted(p.name for p in dirs.root.iterdir()) == ["recsys"]  # no temporary folder left


def test_simulate_never_replaces_imported_data(tmp_path):
    dirs = SystemDir(tmp_path, "recsys")
    ds, _ = sim.simulate(n_users=20, n_items=30, days=3)
    import_tables(dirs, sim.contract_tables(ds))
    before = _stored(dirs.data)
    with pytest.raises(InputError) as err:
        sim.simulate_into(dirs, "tiny")
    assert err.value.field == "--workdir" and "imported" in err.value.problem and "fresh" in err.value.fix
    for table, frame in _stored(dirs.data).items():
        pd.testing.assert_frame_equal(frame, before[table])
