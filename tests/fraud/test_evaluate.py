"""Evaluation protocol pieces with known answers, and the command end to end on a tiny simulation."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud import evaluate
from mlsd.fraud.evaluate import Split, card_precision_at_k, choose_splits, rules_score, split_rows
from mlsd.platform.errors import InputError

D0 = int(np.datetime64("2018-07-25", "D").astype(np.int64))


def test_card_precision_removes_detected_cards_on_later_days():
    day = np.array([0, 0, 0, 1, 1, 1])
    card = np.array([1, 1, 2, 1, 3, 4])
    fraud = np.array([0, 1, 0, 1, 0, 1])
    score = np.array([0.1, 0.9, 0.5, 0.99, 0.2, 0.1])
    # day 0: top-1 card is 1 (max 0.9), a fraud -> 1.0; day 1: card 1 removed, top-1 is 3 (genuine) -> 0.0
    assert card_precision_at_k(day, card, fraud, score, k=1) == 0.5
    # k=2 on day 1: cards 3 and 4 -> 1 fraud of 2
    assert card_precision_at_k(day, card, fraud, score, k=2) == pytest.approx((0.5 + 0.5) / 2)


def test_split_removes_known_compromised_cards():
    s = Split(train_start=0, train_days=2, delay_days=1, test_days=2)
    day = np.array([0, 1, 2, 3, 3, 3, 4, 4])
    card = np.array([10, 11, 12, 10, 12, 13, 13, 11])
    fraud = np.array([1, 0, 1, 0, 0, 0, 1, 1])
    train, test = split_rows(day, card, fraud, s)
    assert train.tolist() == [0, 1]
    # test day 3: card 10 (fraud in training) removed; card 12's fraud on day 2 is only known from test day 4
    # test day 4: the delay-shifted day is day 2 -> card 12 known; cards 11 and 13 stay
    assert test.tolist() == [4, 5, 6, 7]


def test_full_protocol_dates_when_the_data_covers_them():
    days = np.arange(D0 - 30, D0 + 30)
    (split,) = choose_splits(days, "baseline")
    assert split.describe() == {
        "train": ["2018-07-25", "2018-07-31"],
        "delay_days": 7,
        "test": ["2018-08-08", "2018-08-14"],
    }
    folds = choose_splits(days, "prequential")
    assert [f.describe()["test"][0] for f in folds] == [
        "2018-08-08",
        "2018-08-01",
        "2018-07-25",
        "2018-07-18",
    ]


def test_scaled_protocol_inside_the_sample_week():
    days = np.arange(D0, D0 + 7)
    (split,) = choose_splits(days, "baseline")
    assert split.describe() == {
        "train": ["2018-07-25", "2018-07-27"],
        "delay_days": 1,
        "test": ["2018-07-29", "2018-07-31"],
    }
    folds = choose_splits(days, "prequential")
    assert [f.describe()["test"] for f in folds][0] == ["2018-07-31", "2018-07-31"]
    assert folds[-1].describe()["train"][0] == "2018-07-25"
    with pytest.raises(InputError):
        choose_splits(days, "baseline", train_days=7)


def test_rules_score_orders_fired_rules():
    f = pd.DataFrame(
        {
            "amount": [300.0, 50.0, 50.0, 10.0],
            "terminal_risk_7d": [0, 0.5, 0, 0],
            "card_amount_z": [0, 0, 5.0, 0],
        }
    )
    s = rules_score(f)
    assert s[0] > s[1] > s[2] > s[3]


def _args(**kw):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()] + ["--json"])


@pytest.mark.slow
def test_simulated_end_to_end(capsys):
    assert (
        evaluate.run(_args(dataset="simulated", cards=300, terminals=60, days=18, seq_epochs=1, trees=60))
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out["models"]) == {"rules", "lightgbm", "sequence", "ensemble"}
    for m in out["models"].values():
        assert set(m) == {"auc_roc", "average_precision", "card_precision@100"}
    assert out["models"]["ensemble"]["auc_roc"] > 0.8
    assert {"review", "block", "fpr_1pct"} <= set(out["thresholds"])
    assert out["thresholds"]["fpr_1pct"]["false_positive_rate"] <= 0.011
    assert set(out["recall_per_scenario"]) <= {
        "large_amount",
        "compromised_terminal",
        "compromised_card",
        "account_takeover",
        "fraud_ring",
    }


def test_handbook_needs_a_path():
    with pytest.raises(InputError) as err:
        evaluate.run(_args(dataset="handbook"))
    assert err.value.field == "--path"
