"""Small schema checks shared by the dataset loaders: say which file, which line, what was expected.

Every check raises :class:`~mlsd.platform.errors.DataFormatError` (the CLI prints it and exits 2) instead of
letting a ``KeyError`` or a pandas traceback reach the user. ``line_offset`` maps a frame's row position
to the file's line number: 2 for a CSV with a header line (row 0 is line 2), 1 without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform.errors import DataFormatError


def require_columns(
    df: pd.DataFrame, columns: Sequence[str], path: Path | str, *, what: str = "table"
) -> None:
    """Raise unless ``df`` has every one of ``columns`` (the message lists the missing and the found ones)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataFormatError(
            path,
            1,
            f"the {what} lacks column(s) {missing}; found {list(df.columns)}",
            f"provide a header with {list(columns)}",
        )


def require_numeric(
    df: pd.DataFrame,
    column: str,
    path: Path | str,
    *,
    integer: bool = False,
    allow_missing: bool = False,
    line_offset: int = 2,
) -> np.ndarray:
    """``df[column]`` as float64 (or int64 with ``integer=True``); the first bad value names its line."""
    require_columns(df, [column], path)
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & (raw.notna().to_numpy() | (not allow_missing))
    if integer:
        bad |= np.isfinite(values) & (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind = "a whole number" if integer else "a number"
        raise DataFormatError(
            path,
            row + line_offset,
            f"column {column!r}: expected {kind}, got {raw.iloc[[row]].tolist()[0]!r}",
            f"write {kind} there",
        )
    if integer:
        return values.astype(np.int64)
    return values


def require_unique(df: pd.DataFrame, column: str, path: Path | str, *, line_offset: int = 2) -> None:
    """Raise on the first repeated value of ``column`` (an id column), naming the line of the repeat."""
    require_columns(df, [column], path)
    repeated = df[column].duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataFormatError(
            path,
            row + line_offset,
            f"column {column!r}: {df[column].iloc[[row]].tolist()[0]!r} appears more than once",
            "de-duplicate the file; ids must be unique",
        )
