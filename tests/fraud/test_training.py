"""Training: leak-free training frames, versions with fixed roles, and the retrain job over the platform's
retrain() (labels known at the cut-off, a gate on the latest matured period, idempotent, --date checked)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.config import FraudConfig
from mlsd.fraud.engine import FraudDirs, load_engine
from mlsd.fraud.labels import SQLLabelStore
from mlsd.fraud.training import FraudRetrainSteps, retrain, train, train_version, training_frame
from mlsd.fraud.world import simulate, simulate_into
from mlsd.platform.errors import InputError
from mlsd.platform.retraining import retrain as platform_retrain
from mlsd.platform.system import SystemDir

DAY = 86_400
SMALL = {"n_estimators": 40}  # a small LightGBM: these tests check the loop, not the model


@pytest.fixture(scope="module")
def history():
    return simulate(n_cards=300, n_terminals=60, days=40, seed=4)


def _store(tmp_path, name, tx, known_at=None):
    store = SQLLabelStore.sqlite(tmp_path / f"{name}.sqlite")
    frauds = tx.loc[tx["fraud"] == 1]
    if known_at is not None:
        frauds = frauds.loc[frauds["label_ts"] <= known_at]
    store.add(
        frauds["tx_id"].to_numpy(), np.ones(len(frauds), int), frauds["label_ts"].to_numpy(np.int64), "cb"
    )
    return store


def test_training_frame_sees_only_labels_known_at_cutoff(tmp_path, history):
    tx = history
    cutoff = int(tx["ts"].min()) + 30 * DAY
    everything = _store(tmp_path, "all", tx)  # also holds chargebacks that arrive after the cut-off
    frame = training_frame(tx, everything, cutoff)
    hist = tx.loc[tx["ts"] <= cutoff].reset_index(drop=True)
    late = ((hist["fraud"] == 1) & (hist["label_ts"] > cutoff)).to_numpy()
    early = ((hist["fraud"] == 1) & (hist["label_ts"] <= cutoff)).to_numpy()
    usable = frame.split != ""
    assert late.sum() > 0 and early[usable].sum() > 0  # the fixture has both kinds of fraud
    # a fraud whose chargeback came after the cut-off was not known: it must not train as fraud
    assert (frame.y[late & usable] == 0).all()
    assert (frame.y[early & usable] == 1).all()
    # and nothing about the future changes the frame: a store holding only what was known then
    # gives the same features and targets, value for value
    then = _store(tmp_path, "then", tx, known_at=cutoff)
    same = training_frame(tx, then, cutoff)
    pd.testing.assert_frame_equal(frame.features, same.features)
    np.testing.assert_array_equal(frame.y, same.y)
    np.testing.assert_array_equal(frame.split, same.split)


def test_training_frame_split_respects_delay_and_eval_window(tmp_path, history):
    tx = history
    cutoff = int(tx["ts"].min()) + 30 * DAY
    frame = training_frame(tx, _store(tmp_path, "all", tx), cutoff)
    lo, hi = frame.eval_window
    assert hi == cutoff - 7 * DAY and lo == hi - 7 * DAY
    assert (frame.ts[frame.split == "train"] < lo).all()
    assert ((frame.ts[frame.split == "eval"] >= lo) & (frame.ts[frame.split == "eval"] <= hi)).all()
    assert np.isnan(frame.y[frame.ts > hi]).all() and (frame.split[frame.ts > hi] == "").all()


@pytest.mark.slow
def test_train_version_registers_under_its_alias_and_promotes_only_a_winner(tmp_path, history):
    tx = history
    dirs = SystemDir(tmp_path, "fraud")
    first_cut = int(tx["ts"].min()) + 33 * DAY
    never = FraudConfig.from_dict({"training": {"min_improvement": 1.0}})  # AP cannot improve by > 1
    ws = FraudDirs(dirs, config=never)
    ws.ingest_labels(tx, known_at=first_cut)
    first = train_version(tx, ws, cutoff=first_cut, sequence=False, lgbm_params=SMALL)
    assert first["promoted"] and first["champion_version"] == 1  # no champion yet: the first one wins
    assert first["labels_known"] == int(((tx["fraud"] == 1) & (tx["label_ts"] <= first_cut)).sum())
    # its suggested thresholds: chosen on the evaluation period (after the training days, matured),
    # with the labels known at the cut-off -- not the ground truth of those days
    hi = first_cut - 7 * DAY
    ev = tx.loc[(tx["ts"] >= hi - 7 * DAY) & (tx["ts"] <= hi)]
    known_frauds = int(((ev["fraud"] == 1) & (ev["label_ts"] <= first_cut)).sum())
    tuned = first["suggested_thresholds"]
    assert known_frauds < int(ev["fraud"].sum())  # some chargebacks of those days arrive later
    assert (tuned["n_payments"], tuned["n_fraud"]) == (len(ev), known_frauds)
    assert tuned["tuned_on"]["fraud_labels_known"] == known_frauds
    assert tuned["tuned_on"]["labels_known_at"] == pd.Timestamp(first_cut, unit="s").strftime("%Y-%m-%d")
    later = first_cut + 3 * DAY
    ws.ingest_labels(tx, known_at=later)
    second = train_version(tx, ws, cutoff=later, sequence=False, seed=1, lgbm_params=SMALL)
    assert second["challenger_version"] == 2 and not second["promoted"]
    assert ws.model_version("champion").version == 1 and ws.model_version("challenger").version == 2
    assert ws.model_version("challenger").parent == 1
    # the champion decides, the challenger is scored in shadow
    pipe = load_engine(ws, review=False)
    assert pipe.model_version == 1 and pipe.challenger.version == 2
    batch = pipe.score(tx.iloc[:200].drop(columns=["fraud", "scenario", "label_ts"]))
    assert batch.model_version == 1 and batch.shadow_probability is not None
    assert pipe.shadow_log.scored == 200
    ws.close()

    always = FraudDirs(dirs, config=FraudConfig.from_dict({"training": {"min_improvement": -1.0}}))
    third = train_version(tx, always, cutoff=later, sequence=False, seed=2, lgbm_params=SMALL)
    assert third["promoted"] and always.model_version("champion").version == 3
    variant = train_version(tx, always, cutoff=later, alias="variant", compete=False, lgbm_params=SMALL)
    assert not variant["promoted"] and always.model_version("variant").version == 4
    always.close()


@pytest.mark.slow
def test_weekly_retrain_is_idempotent_gated_and_validates_the_date(tmp_path):
    dirs = SystemDir(tmp_path, "fraud")
    with pytest.raises(InputError, match="mlsd fraud simulate"):  # no data yet: the command that makes it
        retrain(dirs, progress=False)
    tx = simulate_into(dirs, {"cards": 400, "terminals": 80, "days": 30, "seed": 5})
    last = pd.Timestamp(int(tx["ts"].max()), unit="s").date()
    first = retrain(dirs, last - dt.timedelta(days=2), progress=False)
    assert first["registered"] and first["promoted"] and first["version"] == 1  # no champion yet
    assert (dirs.runs / f"{first['run_date']}-v1.json").is_file()
    again = retrain(dirs, last - dt.timedelta(days=2), progress=False)
    assert not again["registered"] and again["version"] == 1 and "v1" in again["reason"]
    assert again["data_fingerprint"] == first["data_fingerprint"]
    later = retrain(dirs, progress=False)  # default: the data's last day
    assert later["registered"] and later["version"] == 2 and later["run_date"] == last.isoformat()
    gate = later["gate"]  # champion and challenger on the same matured period
    assert gate["champion_eval"]["n"] == gate["challenger_eval"]["n"] > 0
    assert later["promoted"] == (later["champion"] == 2)
    assert np.isfinite(later["metrics"]["eval"]["average_precision"])
    with pytest.raises(InputError, match="--date") as err:
        retrain(dirs, last + dt.timedelta(days=1), progress=False)
    assert last.isoformat() in str(err.value)
    # a window before the champion's cut-off is a backfill: registered, never gated or promoted
    champion = FraudDirs(dirs).model_version("champion").version
    back = platform_retrain(FraudRetrainSteps(seed=3), dirs, last - dt.timedelta(days=4), progress=False)
    assert back["registered"] and not back["promoted"] and "backfill" in back["reason"]
    assert FraudDirs(dirs).model_version("champion").version == champion


def test_train_refuses_too_little_history(tmp_path):
    dirs = SystemDir(tmp_path, "fraud")
    simulate_into(dirs, {"cards": 100, "terminals": 30, "days": 10, "seed": 1})
    with pytest.raises(InputError, match="--days"):
        train(dirs, progress=False)
