"""The simulator: seeded, valid schema, five scenarios, delayed labels."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.fraud.data import validate_transactions
from mlsd.fraud.features import haversine_km
from mlsd.fraud.simulate import DAY, simulate
from mlsd.platform.errors import InputError


@pytest.fixture(scope="module")
def tx():
    return simulate(n_cards=1500, n_terminals=200, days=20, seed=3, rings=2, takeovers_per_day=0.003)


def test_seeded_and_valid(tx):
    again = simulate(n_cards=1500, n_terminals=200, days=20, seed=3, rings=2, takeovers_per_day=0.003)
    assert tx.equals(again)
    assert not tx.equals(simulate(n_cards=1500, n_terminals=200, days=20, seed=4, rings=2))
    validate_transactions(tx, require_labels=True)
    assert (np.diff(tx["ts"].to_numpy()) >= 0).all() and tx["tx_id"].is_unique


def test_every_scenario_is_present_and_labelled(tx):
    counts = tx["scenario"].value_counts()
    assert set(counts.index) == {0, 1, 2, 3, 4, 5}
    assert ((tx["scenario"] > 0) == (tx["fraud"] == 1)).all()


def test_label_arrival_review_same_day_or_chargeback(tx):
    fraud = tx[tx["fraud"] == 1]
    delay = fraud["label_ts"] - fraud["ts"]
    review = delay < DAY
    assert review.any() and (~review).any()
    assert (delay[review] >= 3600).all() and (delay[review] < 6 * 3600).all()
    assert ((delay[~review] >= 30 * DAY) & (delay[~review] < 90 * DAY)).all()


def test_takeover_is_new_device_far_away(tx):
    ato = tx[tx["scenario"] == 4]
    genuine = tx[tx["scenario"] == 0]
    assert not ato["device_id"].isin(genuine["device_id"]).any()
    home = genuine.groupby("card_id")[["lat", "lon"]].median()
    h = home.reindex(ato["card_id"]).to_numpy()
    km = haversine_km(h[:, 0], h[:, 1], ato["lat"], ato["lon"])
    assert np.nanmedian(km) > 200


def test_rings_share_devices_ips_emails(tx):
    ring = tx[tx["scenario"] == 5]
    per_device = ring.groupby("device_id")["card_id"].nunique()
    assert per_device.max() >= 3
    assert ring.groupby("email")["card_id"].nunique().max() >= 2


def test_compromised_card_amounts_are_inflated(tx):
    card = tx[tx["scenario"] == 3]["amount"].median()
    assert card > 2 * tx[tx["scenario"] == 0]["amount"].median()


def test_bad_sizes_are_input_errors():
    with pytest.raises(InputError) as err:
        simulate(n_cards=0)
    assert err.value.field == "n_cards"
