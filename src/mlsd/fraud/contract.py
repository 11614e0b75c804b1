"""The fraud data contract: the two tables the system consumes, their readers and the import.

``SCHEMAS`` (``SYSTEM.schemas``) holds one pyarrow schema per table; each field's metadata says
whether it is ``required``, its ``unit`` and what it means:

* ``payments`` -- one row per payment, key ``tx_id``. Required ``tx_id``, ``ts`` (int64 seconds
  since the epoch, UTC), ``card_id``, ``terminal_id`` (int64 ids), ``amount`` (float64, currency
  units, >= 0). Optional context (an absent column stays absent: the features that need it are
  dropped, never faked): ``currency`` (ISO 4217), ``device_id``, ``ip``, ``email``, ``mcc`` (merchant
  category, text), ``lat``/``lon`` (decimal degrees), ``country`` (ISO 3166 alpha-2, read by rules
  only), ``scenario`` (int8 ground-truth fraud scenario, for reports only, never a model input).
* ``labels`` -- one row per label *event*, key ``(tx_id, label_ts, source)``. ``tx_id``, ``label``
  (int8, 1 fraud / 0 legitimate), ``label_ts`` (int64 UTC epoch seconds, when the label became
  known, >= the payment's ``ts``), ``source`` (``chargeback``, ``review`` or ``report``). A later event
  may overturn an earlier one; a payment with no event counts as legitimate once it has matured.

Formats (``SYSTEM.import_formats``): ``handbook`` (the Fraud Detection Handbook's daily CSV files,
:mod:`mlsd.fraud.handbook`: labels known 7 days after each payment, source ``chargeback``), ``csv``
and ``parquet`` of the contract itself. A CSV / Parquet file is a labels table when its columns
include ``label`` and not ``amount``; otherwise a payments table, which may carry its labels inline
(``fraud`` 0/1 with ``label_ts``, the columns ``mlsd fraud simulate`` writes). ``--path`` is a file or
a folder of such files.

:func:`import_data` validates everything first (a :class:`~mlsd.platform.errors.DataFormatError`
names the file, line, column, value and fix), then merges with what ``W/fraud/data`` already holds
(dedup on each table's key: re-importing a file changes nothing; a new day lands beside the old) and
replaces ``labels.parquet``, ``transactions.parquet`` and ``imports.json`` atomically (temp file +
``os.replace``; labels first, so an interrupted import is completed by running it again).
``transactions.parquet`` keeps every payment with its latest label inline (``fraud``, ``label_ts``):
the frame every fraud module reads. ``imports.json`` records each slice and ``as_of``, the latest
time anything in the data was known (training may use labels up to then).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlsd.fraud.config import CURRENCIES
from mlsd.platform.data import contract_field as _field
from mlsd.platform.data import merge_on_key, write_atomically
from mlsd.platform.errors import DataFormatError, InputError

__all__ = [
    "FORMATS",
    "LABEL_SOURCES",
    "SCHEMAS",
    "import_data",
    "import_tables",
    "is_simulated",
    "read_labels_table",
    "read_manifest",
]

FORMATS: tuple[str, ...] = ("handbook", "csv", "parquet")
LABEL_SOURCES: tuple[str, ...] = ("chargeback", "review", "report")
MAX_AMOUNT = 1e9
# 2000-01-01 .. 2100-01-01: a ts outside is milliseconds (or a date typed as a number), not seconds
TS_RANGE = (946_684_800, 4_102_444_800)


PAYMENTS = pa.schema(
    [
        _field("tx_id", pa.int64(), True, "id", "payment id, unique (the table's key)"),
        _field("ts", pa.int64(), True, "s since epoch, UTC", "when the payment was authorised"),
        _field("card_id", pa.int64(), True, "id", "card (or customer account)"),
        _field("terminal_id", pa.int64(), True, "id", "merchant terminal"),
        _field("amount", pa.float64(), True, "currency units", "amount, >= 0 (12.50, not 1250 cents)"),
        _field("currency", pa.string(), False, "ISO 4217", "one of " + ", ".join(CURRENCIES)),
        _field("device_id", pa.string(), False, "id", "device fingerprint (ring and device features)"),
        _field("ip", pa.string(), False, "text", "client IP address (ring features)"),
        _field("email", pa.string(), False, "text", "account e-mail (ring features)"),
        _field("mcc", pa.string(), False, "text", "merchant category"),
        _field("lat", pa.float64(), False, "decimal degrees", "where the payment happened, [-90, 90]"),
        _field("lon", pa.float64(), False, "decimal degrees", "where the payment happened, [-180, 180]"),
        _field("country", pa.string(), False, "ISO 3166-1 alpha-2", "payment country (rules only)"),
        _field("scenario", pa.int8(), False, "code", "ground-truth fraud scenario: reports only"),
    ]
)
LABELS = pa.schema(
    [
        _field("tx_id", pa.int64(), True, "id", "the labelled payment"),
        _field("label", pa.int8(), True, "0/1", "1 fraud, 0 legitimate"),
        _field("label_ts", pa.int64(), True, "s since epoch, UTC", "when the label became known"),
        _field("source", pa.string(), True, "code", "one of " + ", ".join(LABEL_SOURCES)),
    ]
)
SCHEMAS: Mapping[str, pa.Schema] = {"payments": PAYMENTS, "labels": LABELS}
KEYS: Mapping[str, tuple[str, ...]] = {"payments": ("tx_id",), "labels": ("tx_id", "label_ts", "source")}
INLINE_LABELS = ("fraud", "label_ts")
CONTEXT_COLUMNS = (
    "device_id",
    "ip",
    "email",
    "lat",
    "lon",
)  # what the features beyond the handbook's read  # a payments table may carry its labels (mlsd's own files)

TRANSACTIONS_FILE = "transactions.parquet"
LABELS_FILE = "labels.parquet"
MANIFEST_FILE = "imports.json"


# ---------------------------------------------------------------------------------------------------
# Validation: coerce one table to its schema, or name the file, line, column, value and fix


class _Where:
    """How to name a row of a source: a CSV line (header = line 1) or a Parquet row."""

    def __init__(self, path: Path | str, csv: bool) -> None:
        self.path, self.csv = str(path), csv

    def error(self, row: int | None, problem: str, fix: str) -> DataFormatError:
        if row is None:
            return DataFormatError(self.path, 1 if self.csv else None, problem, fix)
        if self.csv:
            return DataFormatError(self.path, row + 2, problem, fix)
        return DataFormatError(self.path, None, f"row {row} (0-based): {problem}", fix)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _int_column(frame: pd.DataFrame, column: str, where: _Where, fix: str) -> np.ndarray:
    raw = frame[column]
    if pd.api.types.is_integer_dtype(raw):
        return raw.to_numpy(np.int64)
    parsed = pd.to_numeric(raw, errors="coerce")
    if pd.api.types.is_integer_dtype(parsed):  # parsed as integers: exact beyond 2**53 (long ids)
        return parsed.to_numpy(np.int64)
    values = parsed.to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values != np.floor(values))
    if bad.any():
        i = _first(bad)
        raise where.error(i, f"column {column}: {raw.iloc[i]!r} is not an integer", fix)
    return values.astype(np.int64)


def _text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column].astype("string")
    return values.where(values.str.len() > 0).astype(object)  # "" in a CSV is a missing value


def conform(frame: pd.DataFrame, table: str, where: _Where) -> pd.DataFrame:
    """``frame`` coerced to ``SCHEMAS[table]`` (contract columns only, plus inline labels for payments).

    Raises :class:`DataFormatError` on the first problem: a missing required column, an empty or
    unparsable value, a ts in milliseconds, a negative amount, an unknown currency or label source.
    """
    schema = SCHEMAS[table]
    missing = [f.name for f in schema if not f.nullable and f.name not in frame.columns]
    if missing:
        raise where.error(
            None, f"the {table} table lacks the required column(s) {', '.join(missing)}",
            f"give the columns {', '.join(f.name for f in schema if not f.nullable)} "
            f"(see docs/fraud.md, data contract); columns found: {', '.join(map(str, frame.columns))}",
        )  # fmt: skip
    out: dict[str, Any] = {}
    for f in schema:
        if f.name not in frame.columns:
            continue
        raw = frame[f.name]
        empty = (raw.isna() | (raw.astype("string").str.strip() == "")).to_numpy()
        if not f.nullable and empty.any():
            i = _first(empty)
            raise where.error(i, f"column {f.name}: empty value", f"give every row a {f.name}")
        if pa.types.is_integer(f.type):
            if f.nullable:
                vals = pd.to_numeric(raw.mask(empty), errors="coerce")
                if (vals.isna().to_numpy() & ~empty).any():
                    i = _first(vals.isna().to_numpy() & ~empty)
                    raise where.error(i, f"column {f.name}: {raw.iloc[i]!r} is not an integer",
                                      f"write {f.name} as an integer")  # fmt: skip
                out[f.name] = vals.fillna(0).astype(f.type.to_pandas_dtype())
            else:
                fix = (
                    "write ts as whole seconds since 1970-01-01 UTC"
                    if f.name in ("ts", "label_ts")
                    else f"write {f.name} as an integer id (map text ids to integers before importing)"
                )
                out[f.name] = _int_column(frame, f.name, where, fix)
        elif pa.types.is_floating(f.type):
            vals = pd.to_numeric(raw.mask(empty), errors="coerce").to_numpy(np.float64)
            bad = np.isnan(vals) & ~empty
            if bad.any():
                i = _first(bad)
                raise where.error(i, f"column {f.name}: {raw.iloc[i]!r} is not a number",
                                  f"write {f.name} as a number")  # fmt: skip
            out[f.name] = vals
        else:
            out[f.name] = _text_column(frame, f.name)
    result = pd.DataFrame(out)
    n = len(result)
    for column in ("ts", "label_ts"):
        if column in result and n:
            ts = result[column].to_numpy()
            bad = (ts < TS_RANGE[0]) | (ts > TS_RANGE[1])
            if bad.any():
                i = _first(bad)
                unit = " (milliseconds?)" if ts[i] > TS_RANGE[1] else ""
                raise where.error(
                    i, f"column {column}: {ts[i]} is not a time in 2000-2100 in epoch seconds{unit}",
                    f"write {column} as integer seconds since 1970-01-01 UTC (divide milliseconds by 1000)",
                )  # fmt: skip
    if table == "payments":
        amount = result["amount"].to_numpy()
        bad = ~np.isfinite(amount) | (amount < 0) | (amount > MAX_AMOUNT)
        if bad.any():
            i = _first(bad)
            raise where.error(i, f"column amount: {float(amount[i])!r} is not an amount in [0, 1e9)",
                              "write amounts in currency units, e.g. 12.50")  # fmt: skip
        if "currency" in result:
            cur = result["currency"].astype("string").str.upper()
            bad = (cur.notna() & ~cur.isin(CURRENCIES)).to_numpy(bool)
            if bad.any():
                i = _first(bad)
                raise where.error(i, f"column currency: {result['currency'].iloc[i]!r} is not supported",
                                  f"use one of {', '.join(CURRENCIES)}")  # fmt: skip
            result["currency"] = cur.astype(object)
        for column, limit in (("lat", 90.0), ("lon", 180.0)):
            if column in result:
                vals = result[column].to_numpy()
                bad = np.abs(np.nan_to_num(vals)) > limit
                if bad.any():
                    i = _first(bad)
                    raise where.error(i, f"column {column}: {vals[i]} is outside [-{limit:g}, {limit:g}]",
                                      f"write {column} in decimal degrees")  # fmt: skip
        result = _inline_labels(frame, result, where)
    else:
        label = result["label"].to_numpy()
        bad = ~np.isin(label, (0, 1))
        if bad.any():
            i = _first(bad)
            raise where.error(
                i, f"column label: {label[i]} is not 0 or 1", "write 1 for fraud, 0 for legitimate"
            )
        src = result["source"].astype("string").str.lower()
        bad = ~src.isin(LABEL_SOURCES).to_numpy(bool)
        if bad.any():
            i = _first(bad)
            raise where.error(i, f"column source: {result['source'].iloc[i]!r} is not a label source",
                              f"use one of {', '.join(LABEL_SOURCES)}")  # fmt: skip
        result["source"] = src.astype(object)
    return result


def _inline_labels(frame: pd.DataFrame, result: pd.DataFrame, where: _Where) -> pd.DataFrame:
    """A payments table's own ``fraud``/``label_ts`` columns (mlsd's files): both, or neither."""
    if "fraud" not in frame.columns:
        return result
    if "label_ts" not in frame.columns:
        raise where.error(None, "the payments carry a fraud column but no label_ts",
                          "add label_ts (when each label became known, epoch seconds UTC) "
                          "or import the labels as their own table (tx_id,label,label_ts,source)")  # fmt: skip
    fraud = pd.to_numeric(frame["fraud"], errors="coerce").to_numpy(np.float64)
    empty = frame["fraud"].isna().to_numpy() | (frame["fraud"].astype("string").str.strip() == "").to_numpy(
        bool
    )
    bad = ~empty & ~np.isin(fraud, (0.0, 1.0))
    if bad.any():
        i = _first(bad)
        raise where.error(
            i, f"column fraud: {frame['fraud'].iloc[i]!r} is not 0 or 1", "write fraud as 0 or 1"
        )
    label_ts = pd.to_numeric(frame["label_ts"], errors="coerce").to_numpy(np.float64)
    no_time = (frame["label_ts"].isna() | (frame["label_ts"].astype("string").str.strip() == "")).to_numpy(
        bool
    )
    bad = (~no_time & np.isnan(label_ts)) | (~empty & (fraud == 1) & no_time)
    if bad.any():
        i = _first(bad)
        raise where.error(i, f"column label_ts: {frame['label_ts'].iloc[i]!r} is not a time",
                          "write label_ts (integer seconds since 1970-01-01 UTC) for every fraud label")  # fmt: skip
    empty = empty | no_time  # fraud 0 without a time: no label event (legitimate by default)
    early = ~empty & (label_ts < result["ts"].to_numpy())
    if early.any():
        i = _first(early)
        raise where.error(i, f"column label_ts: {int(label_ts[i])} is before the payment's ts "
                          f"{int(result['ts'].iloc[i])}", "a label becomes known after its payment")  # fmt: skip
    result["fraud"] = np.where(empty, np.nan, fraud)
    result["label_ts"] = np.where(empty, np.nan, label_ts)
    return result


# ---------------------------------------------------------------------------------------------------
# Readers: one format -> (payments, labels) frames in the contract


def _sources(path: Path, suffixes: tuple[str, ...], fmt: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(suffixes))
        if not files:
            raise DataFormatError(path, None, f"the folder holds no {' / '.join(suffixes)} file",
                                  f"point --path at {fmt} file(s)")  # fmt: skip
        return files
    if not path.is_file():
        raise InputError("--path", str(path), "does not exist", "give an existing file or folder")
    return [path]


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise DataFormatError(path, 1, "is empty", "expected a header line naming the columns") from err
    except (UnicodeDecodeError, OSError, EOFError, pd.errors.ParserError) as err:
        raise DataFormatError(path, None, f"cannot be read as CSV ({type(err).__name__}: {err})",
                              "give a comma-separated file with a header line, optionally .gz") from err  # fmt: skip


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise DataFormatError(path, None, f"cannot be read as Parquet ({type(err).__name__})",
                              "give a Parquet file (or use --format csv)") from err  # fmt: skip


def _table_of(frame: pd.DataFrame, path: Path, fmt: str) -> str:
    columns = set(map(str, frame.columns))
    if "label" in columns and "amount" not in columns:
        return "labels"
    if {"TRANSACTION_ID", "TX_DATETIME", "TX_FRAUD"} <= columns:
        raise DataFormatError(path, 1, f"is a Fraud Detection Handbook file, not the {fmt} contract",
                              "import it with --format handbook")  # fmt: skip
    return "payments"


def read_source(fmt: str, path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Read ``path`` in format ``fmt`` into ``(payments, labels)`` frames in the contract, validated;
    also the files read. Inline labels of payments tables become label events here."""
    if fmt not in FORMATS:
        raise InputError("--format", fmt, "is not a fraud import format", f"use one of {', '.join(FORMATS)}")
    path = Path(path)
    payments: list[pd.DataFrame] = []
    labels: list[pd.DataFrame] = []
    if fmt == "handbook":
        from mlsd.fraud.handbook import load_handbook

        files = _sources(path, (".csv", ".csv.gz"), "handbook")
        tx = load_handbook(path)
        payments.append(tx.drop(columns=["fraud", "label_ts"]))
        # the handbook's fraud labels, as chargebacks; a payment without one is legitimate once matured
        labels.append(_events_from_inline(tx.loc[tx["fraud"].to_numpy() == 1], source="chargeback"))
    else:
        suffixes = (".csv", ".csv.gz") if fmt == "csv" else (".parquet",)
        files = _sources(path, suffixes, fmt)
        for file in files:
            raw = _read_csv(file) if fmt == "csv" else _read_parquet(file)
            where = _Where(file, csv=fmt == "csv")
            table = _table_of(raw, file, fmt)
            frame = conform(raw, table, where)
            if table == "labels":
                labels.append(frame)
            else:
                _check_unique(frame, where)
                if "fraud" in frame:
                    labels.append(_events_from_inline(frame.dropna(subset=["fraud"]), source=None))
                payments.append(frame.drop(columns=list(INLINE_LABELS), errors="ignore"))
    pay = pd.concat(payments, ignore_index=True) if payments else _empty("payments")
    lab = pd.concat(labels, ignore_index=True) if labels else _empty("labels")
    return pay, lab, files


def _check_unique(frame: pd.DataFrame, where: _Where) -> None:
    dup = frame["tx_id"].duplicated().to_numpy()
    if dup.any():
        i = _first(dup)
        raise where.error(i, f"column tx_id: {frame['tx_id'].iloc[i]} appears twice in the file",
                          "give every payment its own tx_id")  # fmt: skip


def _events_from_inline(tx: pd.DataFrame, source: str | None) -> pd.DataFrame:
    """Inline ``fraud``/``label_ts`` -> label events. Without a ``source``: a label known within a day
    came from review, a later one from a chargeback (what ``ingest_labels`` assumes for simulated data)."""
    label_ts = tx["label_ts"].to_numpy(np.float64).astype(np.int64)
    if source is None:
        src = np.where(label_ts - tx["ts"].to_numpy(np.int64) < 86_400, "review", "chargeback")
    else:
        src = np.full(len(tx), source, dtype=object)
    return pd.DataFrame(
        {
            "tx_id": tx["tx_id"].to_numpy(np.int64),
            "label": tx["fraud"].to_numpy(np.float64).astype(np.int8),
            "label_ts": label_ts,
            "source": src.astype(object),
        }
    )


def _empty(table: str) -> pd.DataFrame:
    return SCHEMAS[table].empty_table().to_pandas()


# ---------------------------------------------------------------------------------------------------
# The workdir's data: read, merge, write atomically


def read_manifest(data_dir: Path) -> dict[str, Any] | None:
    """``imports.json`` of ``W/fraud/data`` (None for simulated data: nothing was imported)."""
    path = Path(data_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


SIMULATION_FILE = "simulation.json"  # what `mlsd fraud simulate` writes beside its import: the world


def is_simulated(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a simulated world (its labels are the simulator's truth, future
    chargebacks included) rather than only imported data (labels as known at the export)."""
    data_dir = Path(data_dir)
    return (data_dir / SIMULATION_FILE).is_file() or (
        (data_dir / TRANSACTIONS_FILE).is_file() and not (data_dir / MANIFEST_FILE).is_file()
    )  # a workdir simulated before simulate wrote through the import has no manifest


def read_labels_table(data_dir: Path) -> pd.DataFrame | None:
    """The imported label events (None when the data was simulated and never imported into)."""
    path = Path(data_dir) / LABELS_FILE
    return pd.read_parquet(path) if path.is_file() else None


def _inline(payments: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Each payment with its latest label event inline (``fraud``, ``label_ts``); no event: fraud 0,
    label_ts missing (a payment without a fraud label is taken as legitimate)."""
    latest = labels.sort_values(["label_ts", "source"], kind="stable").drop_duplicates("tx_id", keep="last")
    latest = latest.set_index("tx_id")
    out = payments.copy()
    out["fraud"] = out["tx_id"].map(latest["label"]).fillna(0).astype(np.int8).to_numpy()
    out["label_ts"] = out["tx_id"].map(latest["label_ts"]).to_numpy(np.float64)
    return out


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def import_data(data_dir: Path, fmt: str, path: str | Path) -> dict[str, Any]:
    """Validate ``path`` (format ``fmt``), merge it into ``data_dir`` and write atomically.

    Appends: payments dedup on ``tx_id`` (a payment already there is kept as it was), label events
    on ``(tx_id, label_ts, source)``. Returns a summary: rows read, new, duplicates, the label events
    whose payment is not in the data, the time range and ``as_of``.
    """
    payments, labels, files = read_source(fmt, path)
    source = {"format": fmt, "path": str(Path(path).resolve()), "files": [f.name for f in files],
              "digest": _digest(files)}  # fmt: skip
    return _import(Path(data_dir), payments, labels, source, as_of=None)


def import_tables(
    data_dir: Path,
    payments: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    *,
    name: str = "tables",
    as_of: int | None = None,
) -> dict[str, Any]:
    """Import DataFrames in the contract into ``data_dir`` (``W/fraud/data``): the same validation,
    merge, atomic write and summary as :func:`import_data` (errors name ``<name>/<table>`` and the
    row). ``payments`` may carry inline labels (``fraud``, ``label_ts``) as a payments file may.

    ``as_of`` is when the tables were exported (default: the latest payment or label time in the
    data). ``mlsd fraud simulate`` passes its last payment: its later label events are the simulated
    future (chargebacks still to come), kept for the world's truth; training reads only the labels
    known at its cut-off, which is at most ``as_of``.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> pay = pd.DataFrame({"tx_id": [1, 2], "ts": [1700000000, 1700000100], "card_id": [5, 5],
        ...                     "terminal_id": [9, 9], "amount": [12.5, 80.0]})
        >>> lab = pd.DataFrame({"tx_id": [2], "label": [1], "label_ts": [1700090000], "source": ["review"]})
        >>> s = import_tables(folder, pay, lab)
        >>> s["payments_new"], s["labels_new"], s["as_of"]
        (2, 1, 1700090000)
        >>> import_tables(folder, pay, lab)["changed"]   # again: nothing new
        False
    """
    where = _Where(f"{name}/payments", csv=False)
    pay = conform(payments, "payments", where)
    _check_unique(pay, where)
    events = [] if labels is None else [conform(labels, "labels", _Where(f"{name}/labels", csv=False))]
    if "fraud" in pay:
        events.append(_events_from_inline(pay.dropna(subset=["fraud"]), source=None))
    pay = pay.drop(columns=list(INLINE_LABELS), errors="ignore")
    lab = pd.concat(events, ignore_index=True) if events else _empty("labels")
    digest = hashlib.sha256(pd.util.hash_pandas_object(pay, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(lab, index=False).to_numpy().tobytes())
    source = {"format": "tables", "path": name, "files": [], "digest": digest.hexdigest()[:16]}
    return _import(Path(data_dir), pay, lab, source, as_of=as_of)


def _import(
    data_dir: Path, payments: pd.DataFrame, labels: pd.DataFrame, source: dict[str, Any], *, as_of: int | None
) -> dict[str, Any]:
    path = source["path"]
    old_tx_path, old_labels_path = data_dir / TRANSACTIONS_FILE, data_dir / LABELS_FILE
    if old_tx_path.is_file():
        old_tx = pd.read_parquet(old_tx_path)
        if old_labels_path.is_file():
            old_labels = pd.read_parquet(old_labels_path)
        elif "fraud" in old_tx:  # simulated data: its inline labels become the label table
            frauds = (old_tx["fraud"].to_numpy() == 1) & old_tx.get(
                "label_ts", pd.Series(np.nan, old_tx.index)
            ).notna().to_numpy()
            known = old_tx.loc[frauds]  # what ingest_labels records of simulated data: the fraud labels
            old_labels = _events_from_inline(known, source=None)
        else:
            old_labels = _empty("labels")
        old_tx = old_tx.drop(columns=list(INLINE_LABELS), errors="ignore")
    else:
        old_tx, old_labels = _empty("payments"), _empty("labels")
    # payments are an immutable event log: one already there is kept as it was (keep="old")
    merged_tx = merge_on_key(old_tx, payments, KEYS["payments"], keep="old")
    new_tx = merged_tx.iloc[len(old_tx) :]
    merged_tx = merged_tx.sort_values(["ts", "tx_id"], kind="stable", ignore_index=True)
    merged_labels = merge_on_key(old_labels, labels, KEYS["labels"], keep="old")
    new_labels = len(merged_labels) - len(old_labels)
    # a label known before its payment happened is a unit or time-zone error, not a label
    ts = merged_tx.set_index("tx_id")["ts"]
    pay_ts = merged_labels["tx_id"].map(ts).to_numpy(np.float64)
    early = merged_labels["label_ts"].to_numpy(np.float64) < pay_ts
    if early.any():
        row = merged_labels.iloc[_first(early)]
        raise DataFormatError(
            path, None, f"the label of tx_id {row['tx_id']} is known at {row['label_ts']}, before the payment "
            f"(ts {int(ts[row['tx_id']])})", "label_ts is when the label became known: after the payment, UTC",
        )  # fmt: skip
    orphans = int(np.isnan(pay_ts).sum())
    out_tx = _inline(merged_tx, merged_labels)
    manifest = read_manifest(data_dir) or {"slices": []}
    all_ts = np.concatenate([out_tx["ts"].to_numpy(np.int64), merged_labels["label_ts"].to_numpy(np.int64)])
    summary = {
        **source,
        "payments_read": int(len(payments)),
        "payments_new": int(len(new_tx)),
        "payments_duplicate": int(len(payments) - len(new_tx)),
        "labels_read": int(len(labels)),
        "labels_new": int(new_labels),
        "labels_without_payment": orphans,
        "payments_total": int(len(out_tx)),
        "labels_total": int(len(merged_labels)),
        "first_ts": int(out_tx["ts"].min()) if len(out_tx) else None,
        "last_ts": int(out_tx["ts"].max()) if len(out_tx) else None,
        "as_of": int(as_of) if as_of is not None else int(all_ts.max()) if len(all_ts) else None,
        "columns": [c for c in out_tx.columns if c not in INLINE_LABELS],
        # the optional context the full feature set reads; without it those features are dropped
        "missing_context": [c for c in CONTEXT_COLUMNS if c not in out_tx.columns],
    }
    if len(new_tx) or new_labels:
        data_dir.mkdir(parents=True, exist_ok=True)
        # labels first: a crash between the two leaves labels ahead, and importing again completes it
        manifest["slices"].append({k: summary[k] for k in ("format", "path", "files", "digest",
                                                           "payments_new", "labels_new")})  # fmt: skip
        manifest["as_of"] = summary["as_of"]
        write_atomically([
            (data_dir / LABELS_FILE, merged_labels.reset_index(drop=True)),
            (data_dir / TRANSACTIONS_FILE, out_tx),
            (data_dir / MANIFEST_FILE, json.dumps(manifest, indent=2)),
        ])  # fmt: skip
    summary["changed"] = bool(len(new_tx) or new_labels)
    summary["data"] = str(data_dir)
    return summary
