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


def _numeric(frame: pd.DataFrame, column: str, dtype: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        raise InputError(column, frame[column][bad].iloc[0], "is not a number", f"send {column} as a number")
    return values.astype(dtype) if not values.isna().any() else values.astype("float64")


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
    ts = _numeric(out, "ts", "float64")
    if not np.all(np.isfinite(ts)) or np.any(ts != np.floor(ts)):
        raise InputError(
            "ts",
            ts[~np.isfinite(ts) | (ts != np.floor(ts))].iloc[0],
            "is not whole seconds",
            "send ts as integer seconds since the epoch (UTC)",
        )
    out["ts"] = ts.astype("int64")
    amount = _numeric(out, "amount", "float64")
    bad = ~np.isfinite(amount) | (amount < 0) | (amount > MAX_AMOUNT)
    if bad.any():
        raise InputError(
            "amount",
            amount[bad].iloc[0],
            "must be a finite number >= 0 (and < 1e9)",
            "send the payment amount in currency units, e.g. 12.50",
        )
    out["amount"] = amount
    if "currency" in out.columns:
        currency = out["currency"].astype("string").str.upper()
        unknown = currency.isna() | ~currency.isin(CURRENCIES)
        if unknown.any():
            raise InputError(
                "currency",
                out["currency"][unknown].iloc[0],
                "is not a supported currency",
                f"use one of {', '.join(CURRENCIES)}",
            )
        out["currency"] = currency.astype(object)
    for column, limit in (("lat", 90.0), ("lon", 180.0)):
        if column in out.columns:
            values = _numeric(out, column, "float64")
            if (values.abs() > limit).any():
                raise InputError(
                    column,
                    values[values.abs() > limit].iloc[0],
                    f"is outside [-{limit:g}, {limit:g}]",
                    f"send {column} in decimal degrees",
                )
            out[column] = values
    if "fraud" in out.columns:
        fraud = _numeric(out, "fraud", "float64")
        if fraud.notna().any() and not fraud.dropna().isin([0, 1]).all():
            raise InputError(
                "fraud", fraud[~fraud.isin([0, 1])].iloc[0], "must be 0 or 1", "label payments 0/1"
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
                out["label_ts"][early].iloc[0],
                "is before the payment's ts",
                "a label becomes known after the payment",
            )
    if "scenario" in out.columns:
        out["scenario"] = _numeric(out, "scenario", "float64").fillna(0).astype("int8")
    return out


def from_records(records: Sequence[Mapping[str, Any]], *, max_batch: int | None = None) -> pd.DataFrame:
    """Validate JSON-like payment records (the service's payload) into a schema frame.

    Field errors name the field and, for a batch, the record index (``payments[3].amount``).
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
        amount = record["amount"]
        if isinstance(amount, bool) or not isinstance(amount, int | float | str):
            raise InputError(
                f"payments[{i}].amount" if len(records) > 1 else "amount",
                amount,
                "is not a number",
                "send amount as a number",
            )
    frame = pd.DataFrame.from_records(list(records))
    frame = frame[[c for c in frame.columns if c in COLUMNS]]
    return validate_transactions(frame)


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
