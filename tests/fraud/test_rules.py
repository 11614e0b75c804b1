"""Rules engine: parsing, vectorised evaluation, hot reload, backtest, and bad files naming rule+field."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.fraud.rules import RuleEngine, RuleSet, backtest, default_rules_path
from mlsd.platform.errors import DataFormatError

RULES = {
    "version": 2,
    "rules": [
        {
            "id": "amount_limit",
            "when": {"field": "amount", "op": ">", "value": 1000},
            "action": "block",
            "reason": "AMOUNT_OVER_LIMIT",
        },
        {
            "id": "blocked_country",
            "when": {"field": "country", "op": "in", "value": ["KP", "IR"]},
            "action": "review",
            "reason": "BLOCKED_COUNTRY",
        },
        {
            "id": "velocity",
            "when": [
                {"field": "card_count_1h", "op": ">=", "value": 5},
                {"field": "amount", "op": ">", "value": 50},
            ],
            "action": "flag",
            "reason": "CARD_VELOCITY",
        },
    ],
}

FRAME = pd.DataFrame(
    {
        "amount": [10.0, 2000.0, 60.0, 60.0, np.nan],
        "country": ["FR", "KP", "IR", None, "KP"],
        "card_count_1h": [9, 0, 5, 4, 7],
    }
)


def test_known_answer_evaluation():
    rules = RuleSet.from_dict(RULES)
    hits = rules.evaluate(FRAME)
    expected = np.array(
        [[0, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 0], [0, 1, 0]], dtype=bool
    )  # NaN amount fires nothing numeric
    np.testing.assert_array_equal(hits.fired, expected)
    np.testing.assert_array_equal(hits.severity, [0, 3, 2, 0, 2])
    assert hits.reasons() == [
        [],
        ["AMOUNT_OVER_LIMIT", "BLOCKED_COUNTRY"],
        ["BLOCKED_COUNTRY", "CARD_VELOCITY"],
        [],
        ["BLOCKED_COUNTRY"],
    ]
    assert hits.version == 2 and hits.skipped == ()


def test_missing_column_skips_rule_instead_of_faking_a_value():
    hits = RuleSet.from_dict(RULES).evaluate(FRAME.drop(columns=["country"]))
    assert hits.skipped == ("blocked_country",)
    assert not hits.fired[:, 1].any()
    assert hits.fired[1, 0]


def test_mapping_of_arrays_equals_frame():
    rules = RuleSet.from_dict(RULES)
    as_dict = {c: FRAME[c].to_numpy() for c in FRAME.columns}
    np.testing.assert_array_equal(rules.evaluate(as_dict).fired, rules.evaluate(FRAME).fired)


@pytest.mark.parametrize(
    ("mutate", "names"),
    [
        (lambda d: d["rules"][0].update(action="explode"), ["amount_limit", "action"]),
        (lambda d: d["rules"][1]["when"].update(op="~"), ["blocked_country", "op"]),
        (lambda d: d["rules"][0]["when"].update(value="big"), ["amount_limit", "value"]),
        (lambda d: d["rules"][1]["when"].update(value="KP"), ["blocked_country", "value"]),
        (lambda d: d["rules"][2].update(id="amount_limit"), ["amount_limit", "id"]),
        (lambda d: d["rules"][2].update(colour="red"), ["velocity", "colour"]),
        (lambda d: d["rules"][2].pop("when"), ["velocity", "when"]),
        (lambda d: d.update(version="two"), ["version"]),
    ],
)
def test_bad_rule_file_names_rule_and_field(tmp_path, mutate, names):
    data = yaml.safe_load(yaml.safe_dump(RULES))
    mutate(data)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataFormatError) as err:
        RuleSet.from_yaml(path)
    for name in names:
        assert name in str(err.value)
    assert str(path) in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - id: [unclosed\n")
    with pytest.raises(DataFormatError) as err:
        RuleSet.from_yaml(path)
    assert err.value.line is not None


def test_packaged_default_rules_load():
    rules = RuleSet.from_yaml(default_rules_path())
    assert rules.version >= 1 and len(rules.rules) >= 3
    assert {r.action for r in rules.rules} <= {"flag", "review", "block"}


def _write(path, data, bump_ns):
    path.write_text(yaml.safe_dump(data))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns))  # filesystems with coarse mtime


def test_hot_reload_without_restart_and_bad_edit_keeps_old_rules(tmp_path):
    now = [0.0]
    path = tmp_path / "rules.yaml"
    _write(path, RULES, 0)
    engine = RuleEngine(path, poll_s=1.0, clock=lambda: now[0])
    assert engine.current().version == 2
    changed = yaml.safe_load(yaml.safe_dump(RULES))
    changed["version"] = 3
    changed["rules"][0]["when"]["value"] = 50
    _write(path, changed, 10**9)
    assert engine.current().version == 2  # not polled yet: no stat on the hot path
    now[0] = 1.5
    assert engine.current().version == 3
    assert engine.evaluate(FRAME).fired[2, 0]  # 60 > 50 now
    path.write_text("version: 4\nrules: [{id: broken}]\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    now[0] = 3.0
    assert engine.current().version == 3
    assert engine.reload_errors == 1 and "broken" in engine.last_error


def test_backtest_known_answer():
    y = np.array([0, 1, 1, 0, 0])
    report = backtest(RuleSet.from_dict(RULES), FRAME, y).set_index("rule")
    assert report.loc["amount_limit", "hits"] == 1
    assert report.loc["amount_limit", "precision"] == 1.0
    assert report.loc["amount_limit", "recall"] == 0.5
    assert report.loc["blocked_country", "hits"] == 3
    assert report.loc["blocked_country", "precision"] == pytest.approx(2 / 3)
    assert report.loc["blocked_country", "hit_rate"] == pytest.approx(3 / 5)
    assert report.loc["ANY", "recall"] == 1.0
