"""The recommender's data contract: the tables it consumes, as pyarrow schemas, and their validation.

Three tables (``SYSTEM.schemas``), the files of ``W/recsys/data`` (one Parquet file per table):

* ``interactions`` -- one event per row, key ``(user_id, item_id, timestamp)``;
* ``items`` -- the title catalogue, key ``item_id``;
* ``users`` -- optional viewer attributes, key ``user_id``.

Each field carries metadata: ``required`` ("true"/"false"), ``unit`` and ``doc``. Ids are int64
(any non-negative whole number: a source's string ids must be mapped to integers first); every
timestamp is UTC epoch **seconds** (int64; a value past year 2100 is rejected as milliseconds).
A missing optional column is a feature or rule the system does without (:func:`coverage` says
which); a missing required column, a value of the wrong type or out of range, an interaction naming
an unknown item, or two different rows under one key is a :class:`~mlsd.platform.errors.DataFormatError`
naming the file, the line (header = line 1 for CSV; row 1 = line 1 for Parquet and loaders), the
column, the value and the fix.

:func:`conform` turns one frame (from any reader) into the contract's columns and dtypes, the ones
the rest of the recommender reads (:mod:`mlsd.recsys.data`): int64 ids and timestamps, float64 for
ratings, weights and the nullable timestamps (NaN = unknown), object strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlsd.platform.data import contract_field as _f
from mlsd.platform.data import is_required, required_columns
from mlsd.platform.errors import DataFormatError

# Timestamps past this are not seconds (2100-01-01 UTC): most likely milliseconds.
MAX_EPOCH_S = 4_102_444_800
# Release dates and licence windows may lie before 1970 (a 1930 film): back to 1812, not further.
MIN_DATE_S = -5_000_000_000
EVENT_TIMES = ("timestamp", "signup_ts")  # when something happened on the platform: not before 1970


def _show(value: Any) -> str:
    """A value as it reads in the file (1.0 -> '1', no numpy reprs)."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return repr(int(value))
    return repr(value.item() if isinstance(value, np.generic) else value)


INTERACTIONS = pa.schema(
    [
        _f("user_id", pa.int64(), True, "id", "the viewer (non-negative integer)"),
        _f("item_id", pa.int64(), True, "id", "the title; must be in items"),
        _f("timestamp", pa.int64(), True, "epoch seconds UTC", "when the event happened"),
        _f("rating", pa.float64(), False, "stars", "explicit rating; null when the event has none"),
        _f(
            "event",
            pa.string(),
            False,
            "code",
            "what happened: watch, browse, onboarding, rating, ... (kept, not modelled)",
        ),
        _f(
            "weight",
            pa.float64(),
            False,
            "fraction 0..1",
            "implicit strength (watched fraction); default 1.0; > 0.7 is a positive",
        ),  # fmt: skip
    ],
    metadata={"key": "user_id,item_id,timestamp"},
)
ITEMS = pa.schema(
    [
        _f("item_id", pa.int64(), True, "id", "the title (non-negative integer)"),
        _f("title", pa.string(), True, "text", "display title"),
        _f("genres", pa.string(), False, "text", "'|'-separated genre names; default empty"),
        _f("year", pa.int64(), False, "year", "release year; default -1 (unknown)"),
        _f("release_ts", pa.int64(), False, "epoch seconds UTC", "release date; titles are shown after it"),
        _f(
            "region",
            pa.string(),
            False,
            "codes",
            "'|'-separated regions where it may be shown (US|EU|LATAM|APAC|IN)",
        ),
        _f("age_rating", pa.string(), False, "code", "G, PG, PG-13, R, NC-17 (unknown: adults only)"),
        _f("license_start", pa.int64(), False, "epoch seconds UTC", "licence window start (inclusive)"),
        _f("license_end", pa.int64(), False, "epoch seconds UTC", "licence window end (exclusive)"),
        _f("cast", pa.string(), False, "text", "'|'-separated names (content similarity)"),
    ],
    metadata={"key": "item_id"},
)
USERS = pa.schema(
    [
        _f("user_id", pa.int64(), True, "id", "the viewer"),
        _f("age", pa.int64(), False, "years", "age (age-rating rule, feature)"),
        _f("gender", pa.string(), False, "code", "feature"),
        _f("occupation", pa.string(), False, "text", "feature"),
        _f("region", pa.string(), False, "code", "US, EU, LATAM, APAC or IN (region rule)"),
        _f("signup_ts", pa.int64(), False, "epoch seconds UTC", "when the viewer joined"),
    ],
    metadata={"key": "user_id"},
)
SCHEMAS: dict[str, pa.Schema] = {"interactions": INTERACTIONS, "items": ITEMS, "users": USERS}
KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(schema.metadata[b"key"].decode().split(",")) for name, schema in SCHEMAS.items()
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "interactions": {"rating": np.nan, "weight": 1.0},
    "items": {"genres": "", "year": -1},
    "users": {},
}
_RANGES: dict[str, tuple[float, float, str]] = {
    "user_id": (0, np.iinfo(np.int64).max, "a non-negative integer id"),
    "item_id": (0, np.iinfo(np.int64).max, "a non-negative integer id"),
    "weight": (0.0, 1.0, "a fraction in 0..1"),
    "age": (0, 130, "an age in years 0..130"),
}
# What an optional column feeds, for "the data lacks X: trains without Y" (coverage()).
USES: dict[tuple[str, str], str] = {
    ("items", "region"): "region rule (every title shown in every region), content text",
    ("items", "age_rating"): "age-rating rule (no title is age-restricted), content text",
    ("items", "license_start"): "licence-window rule (titles never expire)",
    ("items", "license_end"): "licence-window rule (titles never expire)",
    ("items", "release_ts"): "release-date rule and i_release_days feature (year used for 'new')",
    ("items", "cast"): "cast in content similarity",
    ("users", "age"): "u_age feature (age-rating rule uses the service's default age)",
    ("users", "gender"): "gender feature",
    ("users", "occupation"): "occupation feature",
    ("users", "region"): "user region (the service's default region is used)",
}


def required(table: str) -> list[str]:
    """The required columns of ``table``."""
    return required_columns(SCHEMAS[table])


def _is_timestamp(field: pa.Field) -> bool:
    return field.metadata[b"unit"].startswith(b"epoch seconds")


def conform(
    frame: pd.DataFrame, table: str, source: Any, line_of: Callable[[int], int] | None = None
) -> pd.DataFrame:
    """``frame`` as the contract's ``table``: its columns (unknown ones dropped, absent optional ones
    left out), in the recommender's dtypes; raises DataFormatError at the first bad value.

    ``source`` names the file in errors, ``line_of(row)`` the line of a 0-based row (default
    ``row + 1``; a CSV with a header passes ``row + 2``).
    """
    line_of = line_of or (lambda row: row + 1)
    schema = SCHEMAS[table]
    missing = [c for c in required(table) if c not in frame.columns]
    if missing:
        raise DataFormatError(
            source, None, f"{table} lacks required column(s) {missing} (has {list(frame.columns)})",
            f"add the column(s); the {table} contract is {[f.name for f in schema]} (docs: recsys data contract)",
        )  # fmt: skip
    out = {}
    n = len(frame)
    for field in schema:
        if field.name not in frame.columns:
            continue
        values = frame[field.name].reset_index(drop=True)
        name = field.name
        must = is_required(field)
        blank = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
        if must and blank.any():
            row = int(np.flatnonzero(blank)[0])
            raise DataFormatError(source, line_of(row), f"column {name!r} is empty",
                                  f"every {table} row needs {name}")  # fmt: skip
        if pa.types.is_string(field.type):
            col = values.astype(object).where(~blank, None)
            if name in DEFAULTS[table]:
                col = col.where(~blank, DEFAULTS[table][name])
            out[name] = col.map(lambda v: v if v is None or isinstance(v, str) else str(v)).to_numpy(object)
            continue
        numbers = pd.to_numeric(values.where(~blank, np.nan), errors="coerce").to_numpy(np.float64)
        bad = np.isnan(numbers) & ~blank
        if pa.types.is_integer(field.type):
            bad |= ~np.isnan(numbers) & (np.floor(numbers) != numbers)
        kind = "a whole number" if pa.types.is_integer(field.type) else "a number"
        low, high, what = _RANGES.get(name, (-np.inf, np.inf, kind))
        if _is_timestamp(field):
            low = 0 if name in EVENT_TIMES else MIN_DATE_S
            high, what = MAX_EPOCH_S, f"UTC epoch seconds ({low} .. {MAX_EPOCH_S})"
        bad |= ~np.isnan(numbers) & ((numbers < low) | (numbers > high))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            fix = f"{name} must be {what}"
            if _is_timestamp(field) and not np.isnan(numbers[row]) and numbers[row] > MAX_EPOCH_S:
                fix += "; this looks like milliseconds: divide by 1000"
            raise DataFormatError(
                source, line_of(row), f"column {name!r} has value {_show(values.iloc[row])}", fix
            )
        if pa.types.is_integer(field.type) and (must or name in DEFAULTS[table]):
            numbers = np.where(np.isnan(numbers), DEFAULTS[table].get(name, 0), numbers)
            out[name] = numbers.astype(np.int64)
        elif name in DEFAULTS[table]:
            out[name] = np.where(np.isnan(numbers), DEFAULTS[table][name], numbers)
        else:
            out[name] = numbers  # a nullable integer (a timestamp, an age) stays float64 with NaN
    result = pd.DataFrame(out, index=pd.RangeIndex(n))
    for name, value in DEFAULTS[table].items():
        if name not in result.columns:
            result[name] = value
    return result


def check_unique(
    frame: pd.DataFrame, table: str, source: Any, line_of: Callable[[int], int] | None = None
) -> pd.DataFrame:
    """Rows repeated whole are dropped; two different rows under one key raise DataFormatError."""
    line_of = line_of or (lambda row: row + 1)
    key = list(KEYS[table])
    first = ~frame.duplicated(keep="first")
    clash = frame[first].duplicated(key, keep=False)
    if clash.any():
        rows = np.flatnonzero(first.to_numpy())[clash.to_numpy()]
        a, b = int(rows[0]), int(rows[1])
        value = ", ".join(f"{k}={_show(frame[k].iloc[a])}" for k in key)
        raise DataFormatError(
            source, line_of(b), f"{value} also on line {line_of(a)} with other values",
            f"keep one row per {'/'.join(key)} in {table}",
        )  # fmt: skip
    return frame[first].reset_index(drop=True)


def check_items_known(
    interactions: pd.DataFrame, item_ids: np.ndarray, source: Any, line_of: Callable[[int], int] | None = None
) -> None:
    """Every interaction's item_id must be a known title (this import's items or earlier ones)."""
    line_of = line_of or (lambda row: row + 1)
    unknown = ~np.isin(interactions["item_id"].to_numpy(np.int64), item_ids)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataFormatError(
            source, line_of(row), f"column 'item_id' has value {int(interactions['item_id'].iloc[row])}, "
            "which is in no items table", "import the title in items (this import or an earlier one) or drop the event",
        )  # fmt: skip


def coverage(items: pd.DataFrame, users: pd.DataFrame) -> dict[str, Any]:
    """Which optional columns the data has (used) and which it lacks or leaves empty, with what the
    system does without each (dropped): the model card's ``features_used`` / ``features_dropped``."""
    used, dropped = [], {}
    for (table, column), effect in USES.items():
        frame = items if table == "items" else users
        if column in frame.columns and frame[column].notna().any():
            used.append(f"{table}.{column}")
        else:
            dropped[f"{table}.{column}"] = effect
    return {"used": used, "dropped": dropped}
