"""``mlsd fraud simulate`` writes through the import: the simulated workdir is an import of its tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mlsd.fraud import world
from mlsd.fraud.contract import import_data, import_tables
from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir


def _stored(data) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(data / f"{name}.parquet") for name in ("transactions", "labels")}


def test_simulated_data_is_an_import_of_its_own_tables(tmp_path):
    dirs = SystemDir(tmp_path / "sim", "fraud")
    summary = world.simulate_size(dirs, "tiny", seed=3)
    tx = world.simulate(n_cards=300, n_terminals=60, days=30, seed=3)
    payments, labels, as_of = world.contract_tables(tx)
    assert summary["payments"] == len(tx) and summary["frauds"] == int(tx["fraud"].sum())

    # the same tables imported by a user, as Parquet files: the same stored data
    files = tmp_path / "files"
    files.mkdir()
    payments.to_parquet(files / "payments.parquet", index=False)
    labels.to_parquet(files / "labels.parquet", index=False)
    imported = tmp_path / "imported"
    import_data(imported, "parquet", files)
    simulated = _stored(dirs.data)
    for name, frame in _stored(imported).items():
        pd.testing.assert_frame_equal(simulated[name], frame)
    # the truth the world reads stays on the rows: every fraud with the time its label arrives
    stored = simulated["transactions"]
    assert (stored["fraud"].to_numpy() == tx["fraud"].to_numpy()).all()
    assert (
        stored.loc[stored["fraud"] == 1, "label_ts"].to_numpy().tolist()
        == tx.loc[tx["fraud"] == 1, "label_ts"].to_numpy().tolist()
    )
    # exported at the last payment: training's cut-off is the simulated "today", as before
    assert json.loads((dirs.data / "imports.json").read_text())["as_of"] == as_of == int(tx["ts"].max())

    # re-importing the simulator's own tables changes nothing
    again = import_tables(dirs.data, payments, labels)
    assert not again["changed"] and again["payments_new"] == 0 and again["labels_new"] == 0
    for name, frame in _stored(dirs.data).items():
        pd.testing.assert_frame_equal(simulated[name], frame)


def test_simulating_again_replaces_the_data(tmp_path):
    dirs = SystemDir(tmp_path, "fraud")
    world.simulate_size(dirs, "tiny", seed=1)
    second = world.simulate_size(dirs, "tiny", seed=2, cards=200)
    stored = pd.read_parquet(dirs.data / "transactions.parquet")
    assert len(stored) == second["payments"]  # the second world only, not merged with the first
    assert len(json.loads((dirs.data / "imports.json").read_text())["slices"]) == 1
    assert sorted(p.name for p in dirs.root.iterdir()) == ["fraud"]  # no temporary folder left


def test_simulate_never_replaces_imported_payments(tmp_path):
    dirs = SystemDir(tmp_path, "fraud")
    tx = world.simulate(n_cards=50, n_terminals=10, days=3, seed=0)
    payments, labels, _ = world.contract_tables(tx)
    import_tables(dirs.data, payments, labels)
    before = pd.read_parquet(dirs.data / "transactions.parquet")
    with pytest.raises(InputError) as err:
        world.simulate_size(dirs, "tiny")
    assert err.value.field == "--workdir" and "imported" in err.value.problem and "fresh" in err.value.fix
    pd.testing.assert_frame_equal(pd.read_parquet(dirs.data / "transactions.parquet"), before)
