"""Pipeline: leak-free training frames, shadow scoring, and the champion/challenger retraining loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.labels import SQLLabelStore
from mlsd.fraud.pipeline import FraudPipeline, training_frame
from mlsd.fraud.rules import RuleEngine
from mlsd.fraud.simulate import simulate

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


class Const:
    feature_names = ("amount",)

    def __init__(self, p, version):
        self.p, self.version = p, version

    def predict(self, features):
        return np.full(len(features), self.p)

    def contributions(self, features):
        return np.zeros((len(features), 2))


def test_shadow_scoring_logs_challenger_and_never_decides(tmp_path, history):
    from mlsd.fraud.features import FeatureEngine

    tx = history.iloc[:300].drop(columns=["fraud", "scenario", "label_ts"])
    pipe = FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.1, "1"), challenger=Const(0.95, "2"))
    batch = pipe.score(tx)
    assert (batch.decisions.labels == "approve").sum() >= 290  # the champion decides (rules may add a few)
    np.testing.assert_allclose(batch.shadow_probability, 0.95)
    assert pipe.shadow_log.scored == 300 and pipe.shadow_log.disagreements == 300
    assert "shadow" in batch.timer.timings_ms
    row = pipe.shadow_log.rows[0]
    assert row["challenger_version"] == "2" and row["challenger_band"] == 2 and row["champion_band"] == 0


@pytest.mark.slow
def test_retrain_registers_challenger_and_promotes_only_a_winner(tmp_path, history):
    from mlsd.fraud.config import FraudConfig
    from mlsd.fraud.pipeline import Workspace, retrain

    tx = history
    first_cut = int(tx["ts"].min()) + 33 * DAY
    never = FraudConfig.from_dict({"training": {"min_improvement": 1.0}})  # AP cannot improve by > 1
    ws = Workspace(tmp_path / "ws", config=never)
    ws.ingest_labels(tx, known_at=first_cut)
    first = retrain(tx, ws, cutoff=first_cut, sequence=False, lgbm_params=SMALL)
    assert first["promoted"] and first["champion_version"] == 1  # no champion yet: the first one wins
    assert first["labels_known"] == int(((tx["fraud"] == 1) & (tx["label_ts"] <= first_cut)).sum())
    later = first_cut + 3 * DAY
    ws.ingest_labels(tx, known_at=later)
    second = retrain(tx, ws, cutoff=later, sequence=False, seed=1, lgbm_params=SMALL)
    assert second["challenger_version"] == 2 and not second["promoted"]
    assert ws.model_version("champion").version == 1 and ws.model_version("challenger").version == 2
    assert ws.model_version("challenger").parent == 1
    # the champion decides, the challenger is scored in shadow
    pipe = ws.pipeline(review=False)
    assert pipe.champion.version == "1" and pipe.challenger.version == "2"
    batch = pipe.score(tx.iloc[:200].drop(columns=["fraud", "scenario", "label_ts"]))
    assert batch.model_version == "1" and batch.shadow_probability is not None
    assert pipe.shadow_log.scored == 200

    always = Workspace(tmp_path / "ws", config=FraudConfig.from_dict({"training": {"min_improvement": -1.0}}))
    third = retrain(tx, always, cutoff=later, sequence=False, seed=2, lgbm_params=SMALL)
    assert third["promoted"] and always.model_version("champion").version == 3


def test_review_outcome_feeds_terminal_risk_at_once():
    from mlsd.fraud.features import FeatureConfig, FeatureEngine

    pipe = FraudPipeline(FeatureEngine(FeatureConfig.handbook(delay=0)), RuleEngine())
    t0 = 1_770_000_000

    def pay(i, ts):
        return pd.DataFrame({"tx_id": [i], "ts": [ts], "card_id": [i], "terminal_id": [7], "amount": [10.0]})

    for i in range(4):
        pipe.score(pay(i, t0 + i))
    before = pipe.features.update_batch(pay(10, t0 + 100))["terminal_risk_1d"].iat[0]
    assert pipe.add_labels([0], [7], [t0 + 200]) == 1  # tx 0 resolved as fraud at t0 + 200
    after = pipe.features.update_batch(pay(11, t0 + 300))["terminal_risk_1d"].iat[0]
    assert before == 0.0 and after == pytest.approx(1 / 6)  # 1 known fraud among the terminal's 6 payments
