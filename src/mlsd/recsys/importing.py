"""``mlsd recsys import``: read a data source, conform it to the contract, append it to ``W/recsys/data``.

Formats (``FORMATS``, ``SYSTEM.import_formats``):

* ``movielens`` -- a MovieLens folder (100K, 1M, latest-small / 20M / 25M CSV layouts), read by
  :func:`mlsd.recsys.movielens.load_movielens`;
* ``csv`` / ``parquet`` -- the contract itself (:mod:`mlsd.recsys.contract`): a folder holding
  ``interactions.csv`` (required) and optionally ``items.csv`` and ``users.csv`` (or ``.parquet``),
  or one such file. CSV has a header line; ids and timestamps are whole numbers, timestamps UTC
  epoch seconds; an empty field is a null.

Appending: the new rows are merged with what ``W/recsys/data`` holds, deduplicated on each table's
key (``KEYS``; an imported row replaces the stored row under its key, other stored rows are kept), and written back only when something
changed: re-importing the same file writes nothing. Each table file is written to a temporary file and
moved into place with ``os.replace`` (atomic), items first, then users, interactions and
``meta.json``: every table only grows, so a crash between two moves still leaves a valid dataset
(items cover every interaction) and a failed validation leaves the folder untouched.

With no training settings in ``meta.json`` yet, a MovieLens import writes :data:`MOVIELENS_TRAIN`
(the job for a months-long ratings log); other sources get the calendar-fitted default of
:func:`mlsd.recsys.training.config_for`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlsd.platform.data import merge_on_key, write_atomically
from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.jsonio import write_json
from mlsd.platform.system import SystemDir
from mlsd.recsys.contract import KEYS, SCHEMAS, check_items_known, check_unique, conform, coverage

FORMATS = ("movielens", "csv", "parquet")
TABLES = ("items", "users", "interactions")  # the write order: what is referenced lands first
# MovieLens 100K spans 7 months (1M: ~3 years) of ratings, sparse at the end (100K's last week has
# ~2,300 ratings by 53 users, its last day ~540 by 11): the whole log trains (365 days reaches back
# past its start), the last 28 days before the evaluation week label the ranker, and the last 7 days
# evaluate (a single day would leave about ten users to compare models on).
MOVIELENS_TRAIN = {"train_days": 365.0, "label_days": 28.0, "eval_days": 7.0}


def _line_csv(row: int) -> int:
    return row + 2  # the header is line 1


def _line_row(row: int) -> int:
    return row + 1


def _read_contract_file(file: Path, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        try:
            return pq.read_table(file).to_pandas()
        except (pa.ArrowInvalid, OSError) as err:
            raise DataFormatError(
                file, None, f"is not a readable Parquet file ({err})", "write it with pandas/pyarrow"
            ) from err
    try:
        return pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.ParserError as err:
        raise DataFormatError(file, None, f"is not a readable CSV file ({err})", "fix that line") from err
    except pd.errors.EmptyDataError as err:
        raise DataFormatError(file, None, "is empty", "write a header line and rows") from err


def read_source(fmt: str, path: str | Path) -> dict[str, tuple[pd.DataFrame, Any, Any]]:
    """``{table: (frame in the contract, source file, line_of)}`` for the tables ``path`` holds."""
    if fmt not in FORMATS:
        raise InputError("--format", fmt, "is not a recsys import format", f"use one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise InputError(
            "--path", str(path), "does not exist", "point --path at the file or folder to import"
        )
    if fmt == "movielens":
        from mlsd.recsys.movielens import detect_format, load_movielens

        dataset = load_movielens(path)
        files = {"100k": ("u.data", "u.item", "u.user"), "1m": ("ratings.dat", "movies.dat", "users.dat"),
                 "csv": ("ratings.csv", "movies.csv", "ratings.csv")}[detect_format(path)]  # fmt: skip
        frames = {"interactions": dataset.interactions, "items": dataset.items, "users": dataset.users}
        return {
            table: (
                check_unique(conform(frame, table, path / file), table, path / file),
                path / file,
                _line_row,
            )
            for (table, frame), file in zip(frames.items(), (files[0], files[1], files[2]), strict=True)
        }
    ext = fmt
    if path.is_file():
        table = path.name.removesuffix(f".{ext}")
        if table not in SCHEMAS:
            raise InputError("--path", str(path), f"is not named after a table ({', '.join(f'{t}.{ext}' for t in SCHEMAS)})",
                             f"rename it, or pass the folder holding interactions.{ext}")  # fmt: skip
        found = {table: path}
    else:
        found = {t: path / f"{t}.{ext}" for t in SCHEMAS if (path / f"{t}.{ext}").exists()}
    if not found:
        raise InputError("--path", str(path), f"holds none of {', '.join(f'{t}.{ext}' for t in SCHEMAS)}",
                         f"write interactions.{ext} (and items.{ext}, users.{ext}) in the contract's columns")  # fmt: skip
    line_of = _line_csv if fmt == "csv" else _line_row
    out = {}
    for table, file in found.items():
        frame = conform(_read_contract_file(file, fmt), table, file, line_of)
        out[table] = (check_unique(frame, table, file, line_of), file, line_of)
    return out


def _arrow(frame: pd.DataFrame, table: str) -> pa.Table:
    """The contract's types for its columns; columns the stored data already had beyond the contract
    (the simulator's truth-bearing extras) are kept with their own types, never dropped on a rewrite."""
    contract = [f for f in SCHEMAS[table] if f.name in frame.columns]
    names = {f.name for f in contract}
    extra = [c for c in frame.columns if c not in names]
    fields = contract + [pa.Schema.from_pandas(frame[extra], preserve_index=False).field(c) for c in extra]
    return pa.Table.from_pandas(
        frame[[f.name for f in fields]], schema=pa.schema(fields), preserve_index=False
    )


def _normal(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """The frame as it reads back from its Parquet file (the form the stored data is compared in)."""
    return _arrow(frame, table).to_pandas()


def _sorted(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    key = list(KEYS[table]) if table != "interactions" else ["timestamp", "user_id", "item_id"]
    return frame.sort_values(key, kind="stable").reset_index(drop=True)


def _merge(old: pd.DataFrame | None, new: pd.DataFrame | None, table: str) -> pd.DataFrame | None:
    """``old`` plus ``new``: a new row replaces the old row(s) under its key (a corrected rating, an
    updated title); old rows the import does not name are kept as they are."""
    if new is None:
        return old
    return _sorted(merge_on_key(old, new, KEYS[table], keep="new"), table)


def import_data(dirs: SystemDir, fmt: str, path: str | Path) -> dict[str, Any]:
    """Import ``path`` (format ``fmt``) into ``dirs.data``; returns a summary (rows read, rows added
    per table, whether anything was written, the optional columns used and dropped)."""
    return _import(dirs.data, read_source(fmt, path), fmt, path)


def import_tables(
    dirs: SystemDir | Path, tables: Mapping[str, pd.DataFrame], *, name: str = "tables"
) -> dict[str, Any]:
    """Import DataFrames in the contract (``{"interactions": ..., "items": ..., "users": ...}``) into
    ``dirs.data`` (or into the data folder ``dirs`` itself): the same validation, merge, atomic write and summary as :func:`import_data`
    (errors name ``<name>/<table>`` and the 1-based row). ``mlsd recsys simulate`` writes through it.

    Examples:
        >>> import tempfile
        >>> dirs = SystemDir(tempfile.mkdtemp(), "recsys")
        >>> items = pd.DataFrame({"item_id": [1, 2], "title": ["Heat", "Up"]})
        >>> seen = pd.DataFrame({"user_id": [7, 7], "item_id": [1, 2], "timestamp": [1700000000, 1700000060]})
        >>> import_tables(dirs, {"items": items, "interactions": seen})["rows"]
        {'items': 2, 'users': 1, 'interactions': 2}
        >>> import_tables(dirs, {"items": items, "interactions": seen})["written"]   # again: nothing new
        []
    """
    source = {}
    for table, frame in tables.items():
        if table not in SCHEMAS:
            raise InputError("tables", table, "is not a recsys table", f"use {', '.join(SCHEMAS)}")
        where = f"{name}/{table}"
        source[table] = (check_unique(conform(frame, table, where), table, where), where, _line_row)
    return _import(dirs.data if isinstance(dirs, SystemDir) else Path(dirs), source, "tables", name)


def _import(data: Path, source: Mapping[str, tuple[pd.DataFrame, Any, Any]], fmt: str,
            path: str | Path) -> dict[str, Any]:  # fmt: skip
    old = {t: pd.read_parquet(data / f"{t}.parquet") for t in TABLES if (data / f"{t}.parquet").exists()}
    meta = json.loads((data / "meta.json").read_text()) if (data / "meta.json").exists() else {}

    merged = {t: _merge(old.get(t), source[t][0] if t in source else None, t) for t in TABLES}
    if merged["interactions"] is None:
        raise InputError("--path", str(path), "has no interactions and W/recsys/data has none yet",
                         "import interactions (and their items) first")  # fmt: skip
    if merged["items"] is None:
        raise InputError("--path", str(path), "has no items and W/recsys/data has none yet",
                         "import items.csv / items.parquet with the interactions")  # fmt: skip
    known = merged["items"]["item_id"].to_numpy(np.int64)
    if "interactions" in source:
        frame, file, line_of = source["interactions"]
        check_items_known(frame, known, file, line_of)
    # Every viewer has a users row (attributes null when the source has none).
    users = merged["users"]
    seen = pd.DataFrame({"user_id": np.unique(merged["interactions"]["user_id"].to_numpy(np.int64))})
    users = seen if users is None else _merge(users, seen[~seen["user_id"].isin(users["user_id"])], "users")
    merged["users"] = users

    normal = {t: _normal(merged[t], t) for t in TABLES}
    changed = [t for t in TABLES if t not in old or not normal[t].equals(old[t])]
    added = {t: len(normal[t]) - (len(old[t]) if t in old else 0) for t in TABLES}
    cover = coverage(normal["items"], normal["users"])
    summary = {
        "format": fmt, "path": str(Path(path)), "data": str(data),
        "read": {t: len(source[t][0]) for t in source}, "added": added,
        "rows": {t: len(normal[t]) for t in TABLES}, "written": changed,
        "features_used": cover["used"], "features_dropped": cover["dropped"],
    }  # fmt: skip
    if not changed:
        summary["note"] = "nothing new: every row is already in the data (re-import)"
        return summary
    data.mkdir(parents=True, exist_ok=True)
    write_atomically([(data / f"{t}.parquet", _arrow(merged[t], t)) for t in TABLES if t in changed])
    meta.pop("end_ts", None)  # new events may lie past a simulated end: the data's end is its last event
    meta.setdefault("name", f"import:{Path(path).name}")
    if fmt == "movielens" and "train" not in meta:
        meta["train"] = dict(MOVIELENS_TRAIN)
    imports = meta.setdefault("imports", [])
    where = str(Path(path).resolve()) if fmt in FORMATS else str(path)  # DataFrames have no file
    imports.append({"format": fmt, "path": where, "added": added})
    ts = normal["interactions"]["timestamp"]
    meta["span"] = {"first_ts": int(ts.min()), "last_ts": int(ts.max())}
    write_json(data / "meta.json", meta)  # atomic too, and last: it names what the tables hold
    return summary
