"""The internal payment schema every fraud module speaks, and its validation.

One row per payment. Required: ``tx_id``, ``ts`` (int64 seconds since the epoch, UTC), ``card_id``,
``terminal_id``, ``amount``. Optional context (absent columns stay absent, they are never faked):
``device_id``, ``ip``, ``email``, ``lat``/``lon`` (where the payment happened), ``mcc`` (merchant
category), ``currency``. Ground truth, only in training data: ``fraud`` (0/1), ``scenario`` (0 genuine,
1..5 the simulator's fraud scenarios) and ``label_ts`` (when the label became known; a label is usable
only by decisions taken at or after ``label_ts``).

:func:`validate_transactions` coerces a frame to that schema and raises
:class:`~mlsd.platform.errors.InputError` naming the first bad field; :func:`from_records` does the same
for the JSON payloads of the HTTP service and the stream worker. :func:`load_history` reads payments
from a folder, a Parquet file or the handbook's CSV files (``backtest --data``, ``stream --publish``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.fraud.config import CURRENCIES
from mlsd.platform.errors import InputError

REQUIRED: tuple[str, ...] = ("tx_id", "ts", "card_id", "terminal_id", "amount")
OPTIONAL: tuple[str, ...] = ("device_id", "ip", "email", "lat", "lon", "mcc", "currency")
LABELS: tuple[str, ...] = ("fraud", "scenario", "label_ts")
COLUMNS: tuple[str, ...] = REQUIRED + OPTIONAL + LABELS

# Scenario ids shared by the simulator, the handbook loader (1..3 match the handbook's) and evaluate.
SCENARIOS: dict[int, str] = {
    0: "genuine",
    1: "large_amount",
    2: "compromised_terminal",
    3: "compromised_card",
    4: "account_takeover",
    5: "fraud_ring",
}
MAX_AMOUNT = 1e9  # anything larger is a unit error (cents sent as units), not a payment
# Identifier fields: a JSON string or integer each. Strings are stored as TEXT (review cases, labels)
# and keyed in Redis: a NUL byte is refused by PostgreSQL, so it is refused here, before anything.
IDS: tuple[str, ...] = ("tx_id", "card_id", "terminal_id", "device_id", "ip", "email", "mcc")
MAX_ID_CHARS = 256
INT64 = (-(2**63), 2**63 - 1)
MAX_TS = 2**53  # seconds; beyond this a float cannot hold the value exactly (and it is no date)


def json_safe(value: Any) -> Any:
    """A bad value as an error body can carry it: numpy scalars as Python numbers, a non-finite
    float as ``"Infinity"`` / ``"-Infinity"`` / ``"NaN"`` (a body holding ``inf`` cannot be encoded).

    Examples:
        >>> json_safe(np.float64("inf")), json_safe(float("nan")), json_safe(np.int64(3)), json_safe("x")
        ('Infinity', 'NaN', 3, 'x')
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


def _numeric(frame: pd.DataFrame, column: str, dtype: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        raise InputError(
            column, json_safe(frame[column][bad].iloc[0]), "is not a number", f"send {column} as a number"
        )
    return values.astype(dtype) if not values.isna().any() else values.astype("float64")


def _first(values: pd.Series, bad: Any) -> Any:
    """The first offending value, JSON-safe (an ``inf`` echoed in an error body cannot be encoded)."""
    return json_safe(values[bad].iloc[0])


def validate_transactions(frame: pd.DataFrame, *, require_labels: bool = False) -> pd.DataFrame:
    """Return ``frame`` coerced to the schema (a copy); raise :class:`InputError` naming the bad field.

    Checks: required columns present and non-null, ``ts`` integral, ``amount`` numeric, finite and
    >= 0, ``currency`` one of :data:`~mlsd.fraud.config.CURRENCIES`, ``lat``/``lon`` in range, and (with
    ``require_labels``) ``fraud`` in {0, 1} with ``label_ts >= ts`` for frauds.
    """
    if not isinstance(frame, pd.DataFrame):
        raise InputError("transactions", type(frame).__name__, "is not a table", "pass a pandas DataFrame")
    needed = REQUIRED + (("fraud",) if require_labels else ())
    for column in needed:
        if column not in frame.columns:
            raise InputError(column, None, "is missing", f"add the field {column!r} to every payment")
        if frame[column].isna().any():
            raise InputError(
                column, None, "is missing (null) in some payments", f"give every payment a {column}"
            )
    out = frame.copy()
    _check_ids(out)
    ts = _numeric(out, "ts", "float64")
    if not np.all(np.isfinite(ts)) or np.any(ts != np.floor(ts)):
        raise InputError(
            "ts",
            _first(ts, ~np.isfinite(ts) | (ts != np.floor(ts))),
            "is not whole seconds",
            "send ts as integer seconds since the epoch (UTC)",
        )
    if ((ts < 0) | (ts >= MAX_TS)).any():
        raise InputError(
            "ts", _first(ts, (ts < 0) | (ts >= MAX_TS)), "is not a date (negative or out of range)",
            "send ts as integer seconds since the epoch (UTC), e.g. 1767225600",
        )  # fmt: skip
    out["ts"] = ts.astype("int64")
    amount = _numeric(out, "amount", "float64")
    bad = ~np.isfinite(amount) | (amount < 0) | (amount > MAX_AMOUNT)
    if bad.any():
        raise InputError(
            "amount",
            _first(amount, bad),
            "must be a finite number >= 0 (and < 1e9)",
            "send the payment amount in currency units, e.g. 12.50",
        )
    out["amount"] = amount
    if "currency" in out.columns:
        currency = out["currency"].astype("string").str.upper()
        # null: the currency is unknown (optional context, as an absent column is); never guessed
        unknown = currency.notna() & ~currency.isin(CURRENCIES)
        if unknown.any():
            raise InputError(
                "currency",
                out["currency"][unknown].iloc[0],
                "is not a supported currency",
                f"use one of {', '.join(CURRENCIES)}",
            )
        out["currency"] = currency.astype(object).where(currency.notna(), None)
    for column, limit in (("lat", 90.0), ("lon", 180.0)):
        if column in out.columns:
            values = _numeric(out, column, "float64")
            if (~(values.abs() <= limit) & values.notna()).any():
                raise InputError(
                    column,
                    _first(values, ~(values.abs() <= limit) & values.notna()),
                    f"is outside [-{limit:g}, {limit:g}]",
                    f"send {column} in decimal degrees",
                )
            out[column] = values
    if "fraud" in out.columns:
        fraud = _numeric(out, "fraud", "float64")
        if fraud.notna().any() and not fraud.dropna().isin([0, 1]).all():
            raise InputError(
                "fraud", _first(fraud, ~fraud.isin([0, 1])), "must be 0 or 1", "label payments 0/1"
            )
        out["fraud"] = fraud
        if not fraud.isna().any():
            out["fraud"] = fraud.astype("int8")
    if "label_ts" in out.columns:
        out["label_ts"] = _numeric(out, "label_ts", "float64")
        early = out["label_ts"] < out["ts"]
        if early.any():
            raise InputError(
                "label_ts",
                _first(out["label_ts"], early),
                "is before the payment's ts",
                "a label becomes known after the payment",
            )
    if "scenario" in out.columns:
        out["scenario"] = _numeric(out, "scenario", "float64").fillna(0).astype("int8")
    return out


def _check_ids(frame: pd.DataFrame) -> None:
    """Every identifier a string (1..256 characters, no NUL) or an integer within int64.

    Numeric columns are checked by dtype; a text column by one C-level ``map`` over its values
    (pandas' ``.str`` methods cost ~1 ms of fixed overhead per column: a single payment's budget).
    Numbers of any other kind (a float id) keep working as before."""
    for column in (c for c in IDS if c in frame.columns):
        values = frame[column]
        if values.dtype.kind in "iub":
            if values.dtype.kind == "u" and len(values) and values.max() > INT64[1]:
                raise InputError(
                    column, json_safe(values.max()), "is beyond int64", f"send {column} as a string"
                )
            continue
        if values.dtype.kind == "f":
            bad = np.isinf(values.to_numpy())
        else:  # object or pandas' string dtype (a missing value is NaN there: fine, optional)
            text = values.to_numpy(dtype=object)
            bad = ~np.fromiter(map(_good_id, text), dtype=bool, count=len(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _id_error(column, values.iat[i], i, len(values))


def _good_id(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return 0 < len(value) <= MAX_ID_CHARS and "\x00" not in value
    if kind is int:
        return INT64[0] <= value <= INT64[1]
    if kind is float:
        return value not in (float("inf"), float("-inf"))  # NaN: a missing optional id
    return value is None or isinstance(value, np.integer | np.floating)


def _id_error(column: str, value: Any, i: int, n: int) -> InputError:
    where = f"payments[{i}].{column}" if n > 1 else column
    if isinstance(value, str):
        problem = f"must be 1..{MAX_ID_CHARS} characters without NUL bytes"
    elif isinstance(value, int) and not isinstance(value, bool):
        problem = "is beyond int64"
    else:
        problem = f"is a {type(value).__name__}, not a string or an integer"
    return InputError(where, json_safe(value), problem, f"send {column} as a string or an integer")


FUTURE_STEP_S = 3600  # the latest accepted ts moves in whole hours (see future_limit)


def future_limit(now: float, max_skew_s: float) -> int:
    """The latest ``ts`` a live payment may carry: ``now + max_skew_s`` rounded up to the hour.

    Rounding up makes the limit a step that holds for up to an hour, so the OpenAPI document can
    state it exactly (``Payment.ts.maximum``) and a client checking against the document agrees
    with the service; the tolerance is between ``max_skew_s`` and ``max_skew_s`` + 1 h.

    Examples:
        >>> future_limit(7200.0, 300), future_limit(7199.0, 300), future_limit(6900.0, 300)
        (10800, 10800, 7200)
    """
    return int(math.ceil((now + max_skew_s) / FUTURE_STEP_S) * FUTURE_STEP_S)


def check_not_future(ts: np.ndarray, *, now: float, max_skew_s: float) -> None:
    """Refuse payments dated after :func:`future_limit` (the live clock + ``max_skew_s``, to the hour).

    A payment from the future becomes its card's newest event: every real payment after it looks
    out of order to the windows. Refusing it (422) is the deterministic answer.

    Examples:
        >>> check_not_future(np.array([100, 3600]), now=100.0, max_skew_s=300)
        >>> check_not_future(np.array([100, 32503680000]), now=100.0, max_skew_s=300)
        Traceback (most recent call last):
        ...
        mlsd.platform.errors.InputError: payments[1].ts=32503680000: is after 3600, the service's clock (100) + 300 s rounded up to the hour. Fix: send ts as the payment's own time in seconds since the epoch (UTC), not a future or millisecond timestamp
    """
    limit = future_limit(now, max_skew_s)
    ahead = np.asarray(ts) > limit
    if ahead.any():
        i = int(np.flatnonzero(ahead)[0])
        raise InputError(
            f"payments[{i}].ts" if len(ahead) > 1 else "ts",
            int(ts[i]),
            f"is after {limit}, the service's clock ({int(now)}) + {max_skew_s:g} s rounded up to the hour",
            "send ts as the payment's own time in seconds since the epoch (UTC), "
            "not a future or millisecond timestamp",
        )


def from_records(records: Sequence[Mapping[str, Any]], *, max_batch: int | None = None) -> pd.DataFrame:
    """Validate JSON-like payment records (the service's payload) into a schema frame.

    Field errors name the field and, for a batch, the record index (``payments[3].amount``).
    Fields outside the payment schema, ground truth (``fraud``, ``label_ts``, ``scenario``)
    included, are dropped.
    """
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise InputError("payments", type(records).__name__, "is not a list", "send a JSON list of payments")
    if max_batch is not None and len(records) > max_batch:
        raise InputError(
            "payments", len(records), f"batch larger than {max_batch}", "split the batch", status=413
        )
    if not records:
        raise InputError("payments", 0, "is empty", "send at least one payment")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InputError(
                f"payments[{i}]", record, "is not an object", "send each payment as a JSON object"
            )
        for column in REQUIRED:
            if record.get(column) is None:
                raise InputError(
                    f"payments[{i}].{column}" if len(records) > 1 else column,
                    None,
                    "is missing",
                    f"add the field {column!r}",
                )
    frame = pd.DataFrame.from_records(list(records))
    # ground truth never comes with a live payment (labels arrive by review and the label store):
    # a payment's own "fraud" or "label_ts" is ignored, like any other unknown field
    frame = frame[[c for c in frame.columns if c in REQUIRED + OPTIONAL]]
    for column in frame.columns:
        _check_json_type(frame[column], JSON_TYPES.get(column, (str, int, float, type(None))))
    return validate_transactions(frame)


# What each field may be in a JSON payment (the OpenAPI document says the same): a number sent as a
# string, a float ts or a float id is refused rather than guessed at.
_ID = (str, int, type(None))
_NUMBER = (int, float, type(None))
JSON_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(IDS, _ID),
    "ts": (int,),
    "amount": (int, float),
    "lat": _NUMBER,
    "lon": _NUMBER,
    "currency": (str, type(None)),
}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", type(None): "null"}


def _check_json_type(values: pd.Series, allowed: tuple[type, ...]) -> None:
    """Every value of one payment field is one of ``allowed`` JSON types; as in JSON Schema, a number
    with a zero fraction (``3.0``) is an integer. Column-wise: one pass over the value types, the
    offending row searched for only when there is one."""
    kind = values.dtype.kind
    if kind in "iu" and int in allowed:
        return
    if kind == "f":  # numbers, NaN where a null was sent (or an int column with a null in it)
        v = values.to_numpy()
        integral = np.isfinite(v) & (v == np.round(v))
        ok = np.isnan(v) if type(None) in allowed else np.zeros(len(v), dtype=bool)
        ok |= (integral & (int in allowed)) | (float in allowed)
    elif kind == "O":
        types = np.fromiter(map(type, values.to_numpy()), dtype=object, count=len(values))
        ok = np.fromiter(map(set(allowed).__contains__, types), dtype=bool, count=len(values))
        floats = np.flatnonzero(np.equal(types, float))  # elementwise: which rows hold a float
        if int in allowed and float not in allowed and floats.size:
            ok[floats] = [float(x).is_integer() for x in values.to_numpy()[floats]]
        if type(None) in allowed:  # a field one payment of the batch left out is NaN in the frame
            ok |= values.isna().to_numpy()
    else:  # pandas' string dtype: strings; booleans are never a payment field
        ok = np.full(len(values), str in allowed and kind != "b")
    if ok.all():
        return
    i = int(np.flatnonzero(~ok)[0])
    value, name = values.iat[i], str(values.name)
    expected = " or ".join(_JSON_NAMES[t] for t in allowed if t is not type(None))
    raise InputError(
        f"payments[{i}].{name}" if len(values) > 1 else name,
        json_safe(value),
        f"is {_JSON_NAMES.get(type(value), 'a ' + type(value).__name__)}, not {expected}",
        f"send {name} as {expected}",
    )


def to_cents(amount: np.ndarray | pd.Series) -> np.ndarray:
    """Amounts as int64 cents: window sums over integers are exact, so batch and online agree bit for bit."""
    return np.rint(np.asarray(amount, dtype=np.float64) * 100.0).astype(np.int64)


def load_history(path: str | Path) -> pd.DataFrame:
    """Payments from a folder holding ``transactions.parquet``, a Parquet file or the handbook's CSV file(s)."""
    from mlsd.fraud.handbook import load_handbook

    path = Path(path)
    if path.is_dir() and (path / "transactions.parquet").exists():
        path = path / "transactions.parquet"
    if path.suffix == ".parquet":
        if not path.exists():
            raise FileNotFoundError(2, "No such file", str(path))
        return validate_transactions(pd.read_parquet(path))
    return load_handbook(path)
