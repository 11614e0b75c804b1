"""Threshold tuning sees only what was known at the tuning time, on days the model did not learn.

``training.tuning_window`` picks the payments (after the champion's training window, matured past
the label delay) and their labels as known then; ``mlsd fraud tune-thresholds`` tunes there and says
which days and how many labels it used. A chargeback arriving after the tuning time is not seen."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlsd.cli import main
from mlsd.fraud.decision import tune_thresholds
from mlsd.fraud.training import DAY, tuning_window
from mlsd.platform.registry import ModelRegistry

DELAY = 7 * DAY
AT = 12 * DAY  # the tuning time: day 5 is the last matured one


def _history() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Payments, the labels known at ``AT`` and the model's scores.

    Days 0-1: the model's training days (a legit payment it scores 0.95). Days 2-4: 50 legit payments
    scored 0.0-0.5, 3 frauds labelled by review (0.8) and one fraud whose chargeback arrives on day 60
    (0.9): at the tuning time it is an unlabelled, matured payment, i.e. legitimate. Day 11: a payment
    too fresh for its label (0.97)."""
    legit = [(f"l{i}", 2 * DAY + i * 3_000, 0, 0, s) for i, s in enumerate(np.linspace(0.0, 0.5, 50))]
    rows = [
        ("t0", DAY // 2, 0, 0, 0.95),
        ("t1", DAY + 10, 1, DAY + 20, 0.99),
        *legit,
        *[(f"f{i}", 3 * DAY + i, 1, 3 * DAY + 3_600 + i, 0.8) for i in range(3)],
        ("late", 4 * DAY, 1, 60 * DAY, 0.9),
        ("fresh", 11 * DAY, 0, 0, 0.97),
    ]
    tx = pd.DataFrame(rows, columns=["tx_id", "ts", "fraud", "label_ts", "p"])
    known_now = (tx["fraud"] == 1) & (tx["label_ts"] <= AT)
    known = tx.loc[known_now, ["tx_id", "label_ts"]].assign(label=1, source="review")
    return tx.drop(columns="p"), known[["tx_id", "label", "label_ts", "source"]], tx["p"].to_numpy()


def test_a_late_chargeback_is_unseen_by_the_thresholds():
    tx, known, p = _history()
    w = tuning_window(tx, known, AT, delay_s=DELAY, trained_until=2 * DAY - 1)
    picked = tx.loc[w.rows].assign(y=w.y)
    assert picked.set_index("tx_id").loc["late", "y"] == 0  # ground truth says fraud; nobody knew yet
    assert int(w.y.sum()) == 3 and len(picked) == 54

    day = (tx["ts"].to_numpy()[w.rows] - w.start) // DAY
    tuned = tune_thresholds(w.y, p[w.rows], day, max_fpr=0.01, daily_capacity=100)
    # known answer: 51 legitimate payments, FPR < 1% blocks none of them, so block lies above the
    # unlabelled 0.9; ground truth (the chargeback counted as fraud) would have chosen 0.501
    assert (tuned.block, tuned.n_fraud, tuned.n_payments) == (0.901, 3, 54)
    truth = tx["fraud"].to_numpy()[w.rows]
    assert tune_thresholds(truth, p[w.rows], day, max_fpr=0.01, daily_capacity=100).block == 0.501


def test_training_days_and_unmatured_payments_are_left_out():
    tx, known, _ = _history()
    w = tuning_window(tx, known, AT, delay_s=DELAY, trained_until=2 * DAY - 1)
    ids = set(tx.loc[w.rows, "tx_id"])
    assert not ids & {"t0", "t1", "fresh"}
    assert (w.left_out_training, w.left_out_unmatured) == (2, 1)
    assert w.summary()["tuned_on"] == {
        "first_day": "1970-01-03",
        "last_day": "1970-01-06",
        "labels_known_at": "1970-01-13",
        "payments": 54,
        "fraud_labels_known": 3,
        "left_out_training_days": 2,
        "left_out_unmatured": 1,
    }
    # a window reaching back over the training days is cut at their end, not before
    wide = tuning_window(tx, known, AT, delay_s=DELAY, trained_until=2 * DAY - 1, valid_days=30)
    assert np.array_equal(wide.rows, w.rows)


@pytest.mark.slow
def test_tune_thresholds_uses_labels_known_now_on_days_after_training(tmp_path, capsys):
    w = str(tmp_path)
    assert (
        main(["fraud", "simulate", "--workdir", w, "--size", "tiny", "--cards", "200", "--terminals", "50"])
        == 0
    )
    assert main(["fraud", "train", "--workdir", w, "--trees", "30", "--json"]) == 0
    capsys.readouterr()
    assert main(["fraud", "tune-thresholds", "--workdir", w, "--capacity", "5", "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)

    tx = pd.read_parquet(tmp_path / "fraud" / "data" / "transactions.parquet")
    card = ModelRegistry(tmp_path / "fraud" / "registry").alias("fraud", "champion").params
    ts, at = tx["ts"].to_numpy(), int(tx["ts"].max())
    end = at - DELAY
    window = (ts > card["train_window"][1]) & (ts <= end)
    truth = int(tx.loc[window, "fraud"].sum())
    known = int((tx.loc[window, "fraud"] == 1).mul(tx.loc[window, "label_ts"] <= at).sum())
    assert known < truth  # the simulator's chargebacks of these days arrive after the tuning time
    assert (tuned["n_payments"], tuned["n_fraud"]) == (int(window.sum()), known)
    on = tuned["tuned_on"]
    # the training window ends mid-day: the tuning window starts right after it
    assert on["first_day"] == pd.Timestamp(card["train_window"][1] + 1, unit="s").strftime("%Y-%m-%d")
    assert on["left_out_training_days"] == int((ts <= card["train_window"][1]).sum())
    assert on["left_out_unmatured"] == int((ts > end).sum()) > 0

    assert main(["fraud", "tune-thresholds", "--workdir", w, "--capacity", "5"]) == 0
    out = capsys.readouterr().out
    assert f"tuned on {on['first_day']}..{on['last_day']}" in out
    assert f"{known} fraud labels known at {on['labels_known_at']}" in out
