"""Decision engine: thresholds, rules raising the outcome, rules-only fallback, reasons, tuning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.config import FraudConfig, Thresholds
from mlsd.fraud.decision import BLOCK, REVIEW, DecisionEngine, tune_thresholds
from mlsd.fraud.rules import RuleSet
from mlsd.platform.errors import InputError

RULES = RuleSet.from_dict(
    {
        "version": 7,
        "rules": [
            {
                "id": "limit",
                "when": {"field": "amount", "op": ">", "value": 1000},
                "action": "block",
                "reason": "LIMIT",
            },
            {
                "id": "mid",
                "when": {"field": "amount", "op": ">", "value": 500},
                "action": "review",
                "reason": "MID",
            },
            {
                "id": "note",
                "when": {"field": "amount", "op": ">", "value": 100},
                "action": "flag",
                "reason": "NOTE",
            },
        ],
    }
)


def test_default_thresholds_match_the_issue():
    t = FraudConfig().thresholds
    assert (t.block, t.review) == (0.9, 0.5)
    assert FraudConfig().service.deadline_ms == 100.0


def test_bands_and_rules_only_raise():
    frame = pd.DataFrame({"amount": [10.0, 10.0, 10.0, 600.0, 2000.0, 200.0]})
    p = np.array([0.1, 0.5, 0.95, 0.1, 0.1, 0.1])
    d = DecisionEngine().decide(RULES.evaluate(frame), p)
    assert d.labels.tolist() == ["approve", "review", "block", "review", "block", "approve"]
    reasons = d.reasons()
    assert reasons[0] == ["SCORE_LOW"]
    assert reasons[2] == ["SCORE_BLOCK"]
    assert reasons[3] == ["SCORE_LOW", "MID", "NOTE"]
    assert reasons[5] == ["SCORE_LOW", "NOTE"]  # flag only annotates
    assert d.rules_version == 7 and not d.rules_only


def test_rules_only_fallback():
    frame = pd.DataFrame({"amount": [10.0, 600.0, 2000.0]})
    d = DecisionEngine().decide(RULES.evaluate(frame), None)
    assert d.rules_only
    assert d.decision.tolist() == [0, REVIEW, BLOCK]
    assert np.isnan(d.probability).all()
    rec = d.records(["a", "b", "c"])
    assert rec[0]["probability"] is None and rec[0]["rules_only"] is True
    assert rec[2]["reasons"] == ["RULES_ONLY", "LIMIT", "MID", "NOTE"]
    assert rec[0]["reasons"] == ["RULES_ONLY"]  # even an approval says why


def test_custom_thresholds():
    frame = pd.DataFrame({"amount": [1.0, 1.0]})
    d = DecisionEngine(Thresholds(block=0.3, review=0.2)).decide(
        RULES.evaluate(frame), np.array([0.25, 0.31])
    )
    assert d.labels.tolist() == ["review", "block"]


def test_top_model_contributions_are_positive_and_sorted():
    frame = pd.DataFrame({"amount": [1.0, 1.0]})
    contrib = np.array([[0.5, -1.0, 2.0, 0.1, -3.0], [-0.1, -0.2, -0.3, -0.4, 0.0]])  # last column = bias
    d = DecisionEngine(top_reasons=2).decide(
        RULES.evaluate(frame), np.array([0.6, 0.1]), contrib, ["a", "b", "c", "d"]
    )
    assert d.reasons()[0] == ["SCORE_REVIEW", "MODEL:c", "MODEL:a"]
    assert d.reasons()[1] == ["SCORE_LOW"]  # nothing pushed towards fraud


def _validation(seed=0, n_days=5, per_day=2000):
    rng = np.random.default_rng(seed)
    n = n_days * per_day
    y = rng.random(n) < 0.05
    p = np.where(y, rng.beta(5, 2, n), rng.beta(1, 8, n))
    day = np.repeat(np.arange(n_days), per_day)
    return y, p, day


def test_tune_thresholds_meets_fpr_and_capacity():
    y, p, day = _validation()
    res = tune_thresholds(y, p, day, max_fpr=0.01, daily_capacity=50)
    legit = ~y
    assert ((p >= res.block) & legit).sum() / legit.sum() < 0.01
    # the next lower grid point would break the FPR budget: the threshold is the lowest that fits
    assert ((p >= res.block - 0.001) & legit).sum() / legit.sum() >= 0.01
    in_review = (p >= res.review) & (p < res.block)
    assert max(in_review[day == d].sum() for d in range(5)) <= 50
    assert res.review <= res.block
    assert res.fpr == pytest.approx(((p >= res.block) & legit).sum() / legit.sum())
    assert res.recall_review_or_block >= res.recall_block > 0


def test_tune_thresholds_rejects_one_class():
    with pytest.raises(InputError) as err:
        tune_thresholds(np.zeros(10), np.zeros(10), np.zeros(10))
    assert err.value.field == "y"


def test_config_rejects_bad_thresholds_and_unknown_keys():
    with pytest.raises(InputError) as err:
        FraudConfig.from_dict({"thresholds": {"block": 0.4, "review": 0.5}})
    assert err.value.field == "config.thresholds"
    with pytest.raises(InputError) as err:
        FraudConfig.from_dict({"service": {"deadline": 5}})
    assert err.value.field == "config.service.deadline"


def test_tune_thresholds_warns_when_the_window_is_too_small_for_the_capacity():
    y, p, day = _validation()
    assert tune_thresholds(y, p, day, max_fpr=0.01, daily_capacity=50).warnings == ()
    # a capacity above the window's whole volume never binds: review would be 0.0 (issue 10's case)
    res = tune_thresholds(y, p, day, max_fpr=0.01, daily_capacity=10 * len(y))
    assert res.review == 0.0 and len(res.warnings) == 1
    assert "every payment below the block threshold" in res.warnings[0]
    # a capacity that lets more than 1 payment in 20 into review is flagged too
    res = tune_thresholds(y, p, day, max_fpr=0.01, daily_capacity=int(0.5 * len(y) / 5))
    assert res.review > 0.0 and any("of payments to review" in w for w in res.warnings)


def test_tune_thresholds_warns_when_the_fpr_target_is_missed():
    y = np.array([1, 0, 0, 0, 0] * 40, dtype=bool)
    p = np.ones(len(y))  # every payment scored 1.0: blocking any fraud blocks every legitimate one
    res = tune_thresholds(y, p, np.zeros(len(y)), max_fpr=0.01, daily_capacity=10)
    assert res.fpr >= 0.01 and any("FPR < 0.01" in w for w in res.warnings)


def test_an_unusable_probability_reviews_and_is_degraded_never_approved():
    frame = pd.DataFrame({"amount": [10.0, 10.0, 10.0, 2000.0, 10.0]})
    p = np.array([np.nan, np.inf, -0.2, np.nan, 0.1])
    d = DecisionEngine().decide(RULES.evaluate(frame), p)
    assert d.labels.tolist() == [
        "review",
        "review",
        "review",
        "block",
        "approve",
    ]  # a block rule still blocks
    assert d.degraded.tolist() == [True, True, True, True, False]
    rec = d.records(list("abcde"))
    assert [r["probability"] for r in rec[:4]] == [None] * 4 and rec[4]["probability"] == 0.1
    assert rec[0]["reasons"][0] == "MODEL_FAILED" and rec[0]["degraded_reason"]
    assert DecisionEngine().decision_only(RULES.evaluate(frame), p).tolist() == d.decision.tolist()


def test_a_failed_model_reviews_the_batch_and_a_deadline_fallback_says_degraded():
    frame = pd.DataFrame({"amount": [10.0, 2000.0]})
    failed = DecisionEngine().decide(RULES.evaluate(frame), None, model_failed="model error: OSError")
    assert failed.labels.tolist() == ["review", "block"] and not failed.rules_only
    assert {r["degraded_reason"] for r in failed.records(["a", "b"])} == {"model error: OSError"}
    late = DecisionEngine().decide(RULES.evaluate(frame), None, degraded="deadline: 0.1 ms left")
    assert late.rules_only and late.labels.tolist() == ["approve", "block"] and late.degraded.all()
    chosen = DecisionEngine().decide(RULES.evaluate(frame), None)  # rules only by the operator's choice
    assert not chosen.degraded.any()
