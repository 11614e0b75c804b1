"""Loader for the simulated dataset of the Fraud Detection Handbook (Le Borgne et al.).

Input: one CSV (optionally ``.gz``) or a directory of them (daily files, read in name order) with the
columns TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_TIME_SECONDS,
TX_TIME_DAYS, TX_FRAUD, TX_FRAUD_SCENARIO. Output: the :mod:`mlsd.fraud.data` schema.

The format has no device, IP, email, location, category or currency: those columns stay absent and
every feature needing them is absent too (never faked). Labels follow the handbook's convention that
a payment's label is known ``LABEL_DELAY`` (7 days) after it: ``label_ts = ts + 7 days``.
``TX_FRAUD_SCENARIO`` (1 amount > 220, 2 compromised terminal, 3 compromised card) is ground truth
for per-scenario reporting, never a model input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform.errors import DataFormatError

COLUMNS: tuple[str, ...] = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
NUMERIC: tuple[str, ...] = (
    "TRANSACTION_ID",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
LABEL_DELAY = 7 * 86_400


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".csv", ".csv.gz")))
        if not files:
            raise DataFormatError(
                path,
                None,
                "the directory holds no .csv or .csv.gz file",
                "point --path at the handbook CSV file(s)",
            )
        return files
    if not path.exists():
        raise FileNotFoundError(2, "No such file", str(path))
    return [path]


def _read_one(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, OSError, EOFError, pd.errors.ParserError) as err:
        raise DataFormatError(
            path,
            None,
            f"cannot be read as CSV ({type(err).__name__}: {err})",
            "give a handbook CSV file, optionally gzip-compressed",
        ) from err
    except pd.errors.EmptyDataError as err:
        raise DataFormatError(path, 1, "is empty", "expected a header line: " + ",".join(COLUMNS)) from err
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(
            path, 1, f"the header lacks {', '.join(missing)}", "expected the header: " + ",".join(COLUMNS)
        )
    out = {}
    for column in NUMERIC:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataFormatError(
                path,
                row + 2,
                f"{column}={frame[column].iloc[row]!r} is not a number",
                f"expected a number in column {column}",
            )
        out[column] = values
    stamp = pd.to_datetime(frame["TX_DATETIME"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    if stamp.isna().any():
        row = int(np.flatnonzero(stamp.isna().to_numpy())[0])
        raise DataFormatError(
            path,
            row + 2,
            f"TX_DATETIME={frame['TX_DATETIME'].iloc[row]!r} is not a date-time",
            "expected YYYY-MM-DD HH:MM:SS",
        )
    if (out["TX_AMOUNT"] < 0).any():
        row = int(np.flatnonzero((out["TX_AMOUNT"] < 0).to_numpy())[0])
        raise DataFormatError(path, row + 2, "TX_AMOUNT is negative", "expected amounts >= 0")
    if not out["TX_FRAUD"].isin([0, 1]).all():
        row = int(np.flatnonzero(~out["TX_FRAUD"].isin([0, 1]).to_numpy())[0])
        raise DataFormatError(path, row + 2, "TX_FRAUD is not 0 or 1", "expected a 0/1 label")
    ts = stamp.to_numpy().astype("datetime64[s]").astype(np.int64)
    return pd.DataFrame(
        {
            "tx_id": out["TRANSACTION_ID"].to_numpy().astype(np.int64),
            "ts": ts,
            "card_id": out["CUSTOMER_ID"].to_numpy().astype(np.int64),
            "terminal_id": out["TERMINAL_ID"].to_numpy().astype(np.int64),
            "amount": out["TX_AMOUNT"].to_numpy().astype(np.float64),
            "fraud": out["TX_FRAUD"].to_numpy().astype(np.int8),
            "scenario": out["TX_FRAUD_SCENARIO"].to_numpy().astype(np.int8),
            "label_ts": ts + LABEL_DELAY,
        }
    )


def load_handbook(path: str | Path) -> pd.DataFrame:
    """Load one handbook CSV(.gz) or a directory of daily files; sorted by (ts, tx_id), duplicates dropped."""
    path = Path(path)
    frames = [_read_one(p) for p in _files(path)]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = frame.drop_duplicates("tx_id").sort_values(["ts", "tx_id"], kind="stable", ignore_index=True)
    return frame
