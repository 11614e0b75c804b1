"""Schema validation: every bad field is named."""

from __future__ import annotations

import pandas as pd
import pytest

from mlsd.fraud.data import from_records, to_cents, validate_transactions
from mlsd.platform.errors import InputError

GOOD = {"tx_id": 1, "ts": 1_700_000_000, "card_id": 7, "terminal_id": 3, "amount": 12.5, "currency": "EUR"}


def _frame(**changes):
    row = {**GOOD, **changes}
    return pd.DataFrame([{k: v for k, v in row.items() if v is not ...}])


def test_valid_frame_is_coerced():
    out = validate_transactions(_frame(ts="1700000000", amount="12.50", currency="eur"))
    assert out["ts"].dtype == "int64" and out["amount"].iloc[0] == 12.5 and out["currency"].iloc[0] == "EUR"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": ...}, "amount"),
        ({"card_id": ...}, "card_id"),
        ({"amount": -1.0}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({"currency": "XYZ"}, "currency"),
        ({"ts": 1.5}, "ts"),
        ({"lat": 123.0}, "lat"),
    ],
)
def test_bad_field_is_named(changes, field):
    with pytest.raises(InputError) as err:
        validate_transactions(_frame(**changes))
    assert err.value.field == field


def test_labels_checked_when_required():
    with pytest.raises(InputError) as err:
        validate_transactions(_frame(), require_labels=True)
    assert err.value.field == "fraud"
    with pytest.raises(InputError) as err:
        validate_transactions(_frame(fraud=1, label_ts=GOOD["ts"] - 1), require_labels=True)
    assert err.value.field == "label_ts"


def test_from_records_names_the_record_and_limits_the_batch():
    with pytest.raises(InputError) as err:
        from_records([GOOD, {**GOOD, "amount": None}])
    assert err.value.field == "payments[1].amount"
    with pytest.raises(InputError) as err:
        from_records([{**GOOD, "amount": True}])
    assert err.value.field == "amount"
    with pytest.raises(InputError) as err:
        from_records([GOOD] * 3, max_batch=2)
    assert err.value.status == 413
    assert len(from_records([GOOD, {**GOOD, "tx_id": 2, "extra": 1}])) == 2


def test_cents_are_exact_integers():
    assert to_cents(pd.Series([0.1, 12.345, 19.99])).tolist() == [10, 1234, 1999]
