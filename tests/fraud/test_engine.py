"""Engine: one serving path over payment bodies, shadow scoring, labels into the windows at once, the
learned model cost, and the workdir state (FraudDirs, load_engine) that reading never creates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.engine import FraudDirs, FraudPipeline, load_engine
from mlsd.fraud.rules import RuleEngine
from mlsd.fraud.world import simulate
from mlsd.platform.errors import InputError
from mlsd.platform.serving import Deadline
from mlsd.platform.system import SystemDir

DAY = 86_400


@pytest.fixture(scope="module")
def history():
    return simulate(n_cards=300, n_terminals=60, days=40, seed=4)


class Const:
    feature_names = ("amount",)

    def __init__(self, p, version):
        self.p, self.version = p, version

    def predict(self, features):
        return np.full(len(features), self.p)

    def contributions(self, features):
        return np.zeros((len(features), 2))


def _bodies(tx: pd.DataFrame) -> list[dict]:
    import json

    rows = tx.drop(columns=["fraud", "scenario", "label_ts"], errors="ignore")
    return [json.loads(line) for line in rows.to_json(orient="records", lines=True).splitlines()]


def test_shadow_scoring_logs_challenger_and_never_decides(history):
    from mlsd.fraud.features import FeatureEngine

    tx = history.iloc[:300].drop(columns=["fraud", "scenario", "label_ts"])
    pipe = FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.1, 1), challenger=Const(0.95, 2))
    batch = pipe.score(tx)
    assert (batch.decisions.labels == "approve").sum() >= 290  # the champion decides (rules may add a few)
    np.testing.assert_allclose(batch.shadow_probability, 0.95)
    assert pipe.shadow_log.scored == 300 and pipe.shadow_log.disagreements == 300
    assert "shadow" in batch.timer.timings_ms
    row = pipe.shadow_log.rows[0]
    assert row["challenger_version"] == 2 and row["challenger_band"] == 2 and row["champion_band"] == 0


def test_handle_is_one_path_a_single_payment_is_a_batch_of_one(history):
    from mlsd.fraud.features import FeatureEngine

    bodies = _bodies(history.iloc[:50])
    batched = FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.7, 3)).handle(bodies)
    one_by_one = FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.7, 3))
    singles = [one_by_one.handle([b])[0] for b in bodies]
    assert len(batched) == 50 and batched[0].keys() == singles[0].keys()
    assert [r["decision"] for r in batched] == [r["decision"] for r in singles]  # same windows, same answers
    assert {r["model_version"] for r in batched} == {3} and batched[0]["rules_only"] is False
    with pytest.raises(InputError) as err:
        one_by_one.handle([*bodies[:2], {**bodies[2], "terminal_id": None}])
    assert err.value.field == "payments[2].terminal_id"


def test_model_cost_is_learned_and_a_skipped_model_is_tried_again(history):
    from mlsd.fraud.features import FeatureEngine

    pipe = FraudPipeline(FeatureEngine(), RuleEngine(), Const(0.2, 1))
    tx = history.drop(columns=["fraud", "scenario", "label_ts"])
    pipe.score(tx.iloc[:400])
    learned = pipe.model_cost.expect(400)
    assert learned > 0
    tight = Deadline(1e-6)  # nothing left: the model is skipped, the batch decided by rules
    batch = pipe.score(tx.iloc[400:500], deadline=tight)
    assert batch.decisions.rules_only and [s["stage"] for s in batch.timer.skipped] == ["model"]
    assert pipe.model_cost.expect(400) < learned  # not measured while skipped: the estimate decays


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


def test_no_champion_is_an_input_error_and_reading_creates_nothing(tmp_path):
    dirs = SystemDir(tmp_path / "W", "fraud")
    state = FraudDirs(dirs)
    assert state.model_version("champion") is None and state.scorer("champion") is None
    assert state.labels_known_at(2**40).empty
    with pytest.raises(InputError) as err:
        load_engine(dirs)
    assert err.value.field == "--workdir" and "mlsd fraud train --workdir" in err.value.fix
    assert not (tmp_path / "W").exists()
    rules_only = load_engine(dirs, rules_only=True, review=False)  # the deliberate choice
    assert rules_only.rules_only and rules_only.model_version is None
    assert not (tmp_path / "W").exists()


def test_the_layout_keeps_labels_in_features_and_cases_in_review(tmp_path, history):
    dirs = SystemDir(tmp_path, "fraud").create()
    state = FraudDirs(dirs)
    assert state.ingest_labels(history, known_at=int(history["ts"].min()) + 20 * DAY) > 0
    state.queue.enqueue([{"tx_id": "x1", "probability": 0.7, "amount": 50.0}])
    state.queue.claim("ana")
    state.queue.resolve("x1", "ana", "fraud")
    state.close()
    import sqlite3

    with sqlite3.connect(dirs.features / "labels.sqlite") as con:
        rows = con.execute("SELECT tx_id, source FROM labels").fetchall()
    with sqlite3.connect(dirs.review / "review.sqlite") as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert len(rows) > 1 and ("x1", "review") in rows  # the resolution landed in the label store
    assert tables == {"review_cases"}
    # the resolved label is what the next training set sees
    assert "x1" in set(FraudDirs(dirs).labels_known_at(2**40)["tx_id"])


def test_a_fresh_engine_starts_with_the_stored_history_in_its_windows(tmp_path):
    """A restarted service must not see every card as brand new: load-time warm-up replays the
    stored payments of the longest window, so a card's next payment gets the same card and terminal
    windows an offline computation over history + that payment gives."""
    from mlsd.fraud.engine import warm_windows
    from mlsd.fraud.features import FeatureEngine, compute_features
    from mlsd.fraud.world import simulate_size

    dirs = SystemDir(tmp_path / "W", "fraud")
    simulate_size(dirs, "tiny")
    state = FraudDirs(dirs)
    tx = pd.read_parquet(state.transactions_path)
    payment = tx.loc[[tx["ts"].idxmax()]].assign(tx_id=tx["tx_id"].max() + 1, ts=tx["ts"].max() + 60)
    payment = payment.drop(columns=["fraud", "label_ts", "scenario"], errors="ignore").reset_index(drop=True)

    warmed = FeatureEngine(state.feature_config())
    assert warm_windows(warmed, state)["payments"] > 0
    online = warmed.update_batch(payment).iloc[0]
    offline = compute_features(pd.concat([tx, payment], ignore_index=True), state.feature_config()).iloc[-1]
    for column in ("card_count_7d", "card_mean_7d", "terminal_count_1d", "terminal_sum_7d"):
        assert online[column] == pytest.approx(offline[column]), column
    assert online["card_count_7d"] > 1

    cold = FeatureEngine(state.feature_config()).update_batch(payment).iloc[0]
    assert cold["card_count_7d"] == 1  # what every card looked like to a restarted service before
