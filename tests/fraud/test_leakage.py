"""No training or evaluation row sees the future: labels and links that arrive after a row leave its
features unchanged, for every feature family that uses labels (ring features, terminal risk)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.evaluate import simulated_features
from mlsd.fraud.features import FeatureConfig, compute_features
from mlsd.fraud.graph import RingGraph, ring_features_as_of
from mlsd.fraud.labels import SQLLabelStore
from mlsd.fraud.training import training_frame
from mlsd.fraud.world import simulate

HOUR = 3_600
DAY = 86_400
T0 = 1_767_225_600  # an hour boundary (2026-01-01 00:00 UTC)
LABEL_FAMILIES = ("ring_fraud_2hop", "terminal_risk_1d", "terminal_risk_7d")


def test_the_issue_example_a_row_sees_neither_a_later_link_nor_a_later_label():
    # card 1 pays at t=0; card 2 first uses the same device at t=50h and is labelled fraud at t=100h
    frame = pd.DataFrame(
        {
            "card_id": [1, 2, 1, 1, 1],
            "ts": [T0, T0 + 50 * HOUR, T0 + 60 * HOUR, T0 + 100 * HOUR, T0 + 101 * HOUR],
            "device_id": ["d1"] * 5,
            "fraud": [0, 1, 0, 0, 0],
            "label_ts": [np.nan, T0 + 100 * HOUR, np.nan, np.nan, np.nan],
        }
    )
    f = ring_features_as_of(frame)
    # t=0: alone on its device, nothing nearby, no fraud known
    assert f.loc[0, ["ring_device_accounts", "ring_component_size", "ring_fraud_2hop"]].tolist() == [1, 1, 0]
    # t=50h: card 2 sees card 1 on the device (from t=0) and counts itself once
    assert f.loc[1, "ring_device_accounts"] == 2
    # t=60h: the link is there, the label is not yet
    assert f.loc[2, ["ring_device_accounts", "ring_component_size", "ring_fraud_2hop"]].tolist() == [2, 2, 0]
    # t=100h: the label arrives in this very second: strictly before means not yet
    assert f.loc[3, "ring_fraud_2hop"] == 0
    # t=101h: now it is known
    assert f.loc[4, "ring_fraud_2hop"] == 1
    # the graph a batch job fits at the cut-off (what training rows used to get) tells t=0 everything
    leaky = RingGraph().fit(frame, as_of=T0 + 200 * HOUR).lookup(frame.iloc[:1])
    assert leaky.loc[0, ["ring_device_accounts", "ring_fraud_2hop"]].tolist() == [2, 1]


def test_terminal_risk_sees_a_label_only_from_its_arrival():
    # a fraud at terminal 7 at t=0 whose label arrives at 30h; payments there at 10h and 31h
    frame = pd.DataFrame(
        {
            "tx_id": [0, 1, 2],
            "ts": [T0, T0 + 10 * HOUR, T0 + 31 * HOUR],
            "card_id": [1, 2, 3],
            "terminal_id": [7, 7, 7],
            "amount": [10.0, 20.0, 30.0],
            "fraud": [1, 0, 0],
            "label_ts": [T0 + 30 * HOUR, 0, 0],
        }
    )
    risk = compute_features(frame, FeatureConfig.handbook(delay=0))["terminal_risk_7d"]
    assert risk.tolist() == [0.0, 0.0, pytest.approx(1 / 3)]


@pytest.fixture(scope="module")
def history():
    return simulate(n_cards=300, n_terminals=60, days=40, seed=4)


def _store(path, tx, extra=()):
    store = SQLLabelStore.sqlite(path)
    frauds = tx.loc[tx["fraud"] == 1]
    store.add(
        frauds["tx_id"].to_numpy(), np.ones(len(frauds), int), frauds["label_ts"].to_numpy(np.int64), "cb"
    )
    for tx_id, label_ts in extra:
        store.add(np.array([tx_id]), np.array([1]), np.array([label_ts]), "cb")
    return store


def test_training_frame_rows_cannot_see_a_label_or_link_planted_after_them(tmp_path, history):
    tx = history
    cutoff = int(tx["ts"].min()) + 30 * DAY
    # the row R: a genuine payment of a card that pays again later, in the training period
    genuine = tx.loc[
        (tx["fraud"] == 0) & (tx["ts"] > tx["ts"].min() + 5 * DAY) & (tx["ts"] < cutoff - 15 * DAY)
    ]
    r = genuine.iloc[0]
    t = int(r["ts"])
    # a stranger pays at R's terminal from R's device two hours before R (a link R may see), and is
    # labelled fraud a day after R; another stranger first uses R's device an hour after R
    x = r.copy()
    x["tx_id"], x["card_id"], x["ts"] = tx["tx_id"].max() + 1, tx["card_id"].max() + 1, t - 2 * HOUR
    x2 = r.copy()
    x2["tx_id"], x2["card_id"], x2["ts"] = tx["tx_id"].max() + 2, tx["card_id"].max() + 2, t + HOUR
    label_ts = t + DAY
    planted = pd.concat([tx, x.to_frame().T, x2.to_frame().T]).astype(tx.dtypes)
    planted = planted.sort_values("ts", kind="stable").reset_index(drop=True)
    without = pd.concat([tx, x.to_frame().T]).astype(tx.dtypes).sort_values("ts", kind="stable")
    without = without.reset_index(drop=True)

    late = training_frame(planted, _store(tmp_path / "late.sqlite", tx, [(x["tx_id"], label_ts)]), cutoff)
    none = training_frame(without, _store(tmp_path / "none.sqlite", tx), cutoff)
    hist = planted.loc[planted["ts"] <= cutoff].reset_index(drop=True)
    base = without.loc[without["ts"] <= cutoff].reset_index(drop=True)
    # every row before the planted link (t + 1h), R included, has the same features either way
    before_p = np.flatnonzero(hist["ts"].to_numpy() < t + HOUR)
    before_b = np.flatnonzero(base["ts"].to_numpy() < t + HOUR)
    pd.testing.assert_frame_equal(
        late.features.iloc[before_p].reset_index(drop=True),
        none.features.iloc[before_b].reset_index(drop=True),
    )
    i = int(np.flatnonzero(hist["tx_id"].to_numpy() == r["tx_id"])[0])
    assert late.split[i] == "train" and late.features.loc[i, "ring_device_accounts"] >= 2  # R sees x's link
    # ...and rows after the label can see it: exactly one more fraud two hops from R's card, and a
    # riskier terminal (rows matched by tx_id across the two frames)
    after = hist["ts"].to_numpy() > label_ts
    pos = pd.Series(np.arange(len(base)), index=base["tx_id"].to_numpy())
    same_card = np.flatnonzero(after & (hist["card_id"].to_numpy() == r["card_id"]))
    assert same_card.size
    np.testing.assert_array_equal(
        late.features.loc[same_card, "ring_fraud_2hop"].to_numpy(),
        none.features["ring_fraud_2hop"].to_numpy()[pos[hist["tx_id"].to_numpy()[same_card]]] + 1,
    )
    same_terminal = after & (hist["ts"].to_numpy() < int(x["ts"]) + 7 * DAY)
    same_terminal &= hist["terminal_id"].to_numpy() == r["terminal_id"]
    rows = np.flatnonzero(same_terminal)
    assert rows.size
    assert (
        late.features.loc[rows, "terminal_risk_7d"].to_numpy()
        > none.features["terminal_risk_7d"].to_numpy()[pos[hist["tx_id"].to_numpy()[rows]]]
    ).all()


def test_training_frame_features_do_not_depend_on_the_cutoff(tmp_path, history):
    # the same row in a frame built at an earlier and at a later cut-off: the later one knows more
    # labels (and the old batch graph handed them to every row); the row's features must not change
    tx = history
    store = _store(tmp_path / "all.sqlite", tx)
    early_cut = int(tx["ts"].min()) + 20 * DAY
    early = training_frame(tx, store, early_cut)
    later = training_frame(tx, store, early_cut + 12 * DAY)
    rows = np.flatnonzero(early.ts < early_cut)
    pd.testing.assert_frame_equal(early.features.iloc[rows], later.features.iloc[rows])
    # not vacuous: the labels the later cut-off adds reach these rows through the batch graph
    leaky = later.ring.lookup(tx.loc[tx["ts"] <= early_cut].reset_index(drop=True)).iloc[rows]
    assert not np.allclose(leaky["ring_fraud_2hop"], early.features["ring_fraud_2hop"].iloc[rows])


def test_evaluation_features_do_not_depend_on_the_future(history):
    # evaluate's rows (training and test): dropping every payment and label from T on changes nothing
    # before T, in any label-using family
    tx = history
    cut = int(tx["ts"].min()) + 25 * DAY
    full = simulated_features(tx)
    past = tx.loc[tx["ts"] < cut].copy()
    late = past["label_ts"].to_numpy() >= cut
    past["fraud"] = np.where(late, 0, past["fraud"])  # the label is not known before T
    past["label_ts"] = np.where(late, 0, past["label_ts"])
    pd.testing.assert_frame_equal(full.loc[: len(past) - 1], simulated_features(past))
    assert set(LABEL_FAMILIES) <= set(full.columns)
    assert (full.loc[: len(past) - 1, "ring_fraud_2hop"] > 0).any()  # labels do reach these rows
