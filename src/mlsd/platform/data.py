"""Small schema checks shared by the dataset loaders: say which file, which line, what was expected.

Every check raises :class:`~mlsd.platform.errors.DataFormatError` (the CLI prints it and exits 2) instead of
letting a ``KeyError`` or a pandas traceback reach the user. ``line_offset`` maps a frame's row position
to the file's line number: 2 for a CSV with a header line (row 0 is line 2), 1 without one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from mlsd.platform.errors import DataFormatError

T = TypeVar("T")


def require_columns(
    df: pd.DataFrame, columns: Sequence[str], path: Path | str, *, what: str = "table"
) -> None:
    """Raise unless ``df`` has every one of ``columns`` (the message lists the missing and the found ones).

    Examples:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 20]})
        >>> require_columns(df, ["user_id", "item_id"], "ratings.csv")   # all there: returns None
        >>> require_columns(df, ["user_id", "rating"], "ratings.csv", what="ratings file")
        Traceback (most recent call last):
            ...
        mlsd.platform.errors.DataFormatError: file='ratings.csv:1': the ratings file lacks column(s) ['rating']; found ['user_id', 'item_id']. Fix: provide a header with ['user_id', 'rating']
    """
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
    """``df[column]`` as float64 (or int64 with ``integer=True``); the first bad value names its line.

    Examples:
        >>> import pandas as pd
        >>> require_numeric(pd.DataFrame({"rating": ["4", "5"]}), "rating", "r.csv", integer=True).tolist()
        [4, 5]
        >>> df = pd.DataFrame({"rating": ["4", "4.5", "five"]})   # row 1 is line 3 (header = line 1)
        >>> require_numeric(df, "rating", "r.csv", integer=True)
        Traceback (most recent call last):
            ...
        mlsd.platform.errors.DataFormatError: file='r.csv:3': column 'rating': expected a whole number, got '4.5'. Fix: write a whole number there
    """
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
    """Raise on the first repeated value of ``column`` (an id column), naming the line of the repeat.

    Examples:
        >>> import pandas as pd
        >>> require_unique(pd.DataFrame({"item_id": [7, 8, 7]}), "item_id", "items.csv")
        Traceback (most recent call last):
            ...
        mlsd.platform.errors.DataFormatError: file='items.csv:4': column 'item_id': 7 appears more than once. Fix: de-duplicate the file; ids must be unique
    """
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


# ---------------------------------------------------------------------------------------------------
# Data contracts: one convention for every system's table schemas (docs/data.md)


def contract_field(name: str, type_: Any, required: bool = False, unit: str = "", doc: str = "") -> Any:
    """A pyarrow field of a data contract: nullable unless ``required``, with ``required``
    ("true"/"false"), ``unit`` and ``doc`` metadata (what docs/data.md and ``describe`` print).

    Examples:
        >>> import pyarrow as pa
        >>> f = contract_field("ts", pa.int64(), True, "epoch seconds UTC", "when it happened")
        >>> f.nullable, is_required(f), f.metadata[b"unit"].decode()
        (False, True, 'epoch seconds UTC')
        >>> required_columns(pa.schema([f, contract_field("note", pa.string())]))
        ['ts']
    """
    import pyarrow as pa

    meta = {"required": "true" if required else "false", "unit": unit, "doc": doc}
    return pa.field(name, type_, nullable=not required, metadata=meta)


def is_required(field: Any) -> bool:
    """Whether a contract field must be present and non-null in every row."""
    return (field.metadata or {}).get(b"required") == b"true"


def required_columns(schema: Any) -> list[str]:
    """The required columns of a contract table, in schema order."""
    return [f.name for f in schema if is_required(f)]


def merge_on_key(
    old: pd.DataFrame | None, new: pd.DataFrame, key: Sequence[str], *, keep: str = "new"
) -> pd.DataFrame:
    """``old`` plus ``new`` with one row per ``key``: what an import appends to a stored table.

    ``keep="new"``: a new row replaces the stored row(s) under its key (a corrected rating, an
    updated title); ``keep="old"``: the stored row stays and the new one is dropped (an immutable
    event log: a payment does not change). Rows the import does not name are kept as they are, so
    re-importing the same file changes nothing.

    Examples:
        >>> old = pd.DataFrame({"id": [1, 2], "v": ["a", "b"]})
        >>> new = pd.DataFrame({"id": [2, 3], "v": ["B", "c"]})
        >>> merge_on_key(old, new, ["id"])["v"].tolist()
        ['a', 'B', 'c']
        >>> merge_on_key(old, new, ["id"], keep="old")["v"].tolist()
        ['a', 'b', 'c']
    """
    if keep not in ("new", "old"):
        raise ValueError(f"keep={keep!r}: use 'new' or 'old'")
    key = list(key)
    new = new.drop_duplicates(key, keep="last")
    if old is None or not len(old):
        return new.reset_index(drop=True)
    if keep == "old":
        both = pd.concat([old, new], ignore_index=True)
        return both.drop_duplicates(key, keep="first").reset_index(drop=True)
    named = old[key].merge(new[key], how="left", indicator=True)["_merge"].to_numpy() == "both"
    return pd.concat([old[~named], new], ignore_index=True)


def write_atomically(targets: Sequence[tuple[Path, Any]]) -> list[Path]:
    """Write every ``(path, content)`` (a DataFrame or a pyarrow Table -> Parquet, a str -> text) to a
    temporary file
    beside its path, then rename them all into place: a failure while writing leaves nothing behind
    and nothing half-written (the renames themselves run in the given order: put the table others
    refer to first).

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> [p.name for p in write_atomically([(root / "a.parquet", pd.DataFrame({"x": [1]})),
        ...                                     (root / "meta.json", "{}")])]
        ['a.parquet', 'meta.json']
        >>> sorted(p.name for p in root.iterdir())   # no temporary file left
        ['a.parquet', 'meta.json']
    """
    import os

    written: list[tuple[Path, Path]] = []
    try:
        for path, content in targets:
            path = Path(path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            written.append((tmp, path))
            if isinstance(content, str):
                tmp.write_text(content)
            elif isinstance(content, pd.DataFrame):
                content.to_parquet(tmp, index=False)
            else:  # a pyarrow Table: written with its own (contract) schema
                import pyarrow.parquet as pq

                pq.write_table(content, tmp)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in written:
        os.replace(tmp, path)
    return [path for _, path in written]


def replace_folder(target: Path, build: Callable[[Path], T]) -> T:
    """Build ``target``'s new content with ``build(folder)`` in a fresh folder beside it, then swap it
    in for what ``target`` held (what ``simulate`` does: a new world replaces the old one, written
    through the import). A failure in ``build`` leaves ``target`` as it was and nothing behind.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "data"
        >>> target.mkdir(); _ = (target / "old.txt").write_text("old")
        >>> replace_folder(target, lambda folder: (folder / "new.txt").write_text("new"))
        3
        >>> sorted(p.name for p in target.iterdir()), sorted(p.name for p in target.parent.iterdir())
        (['new.txt'], ['data'])
    """
    import os
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = target.with_name(f".{target.name}.{os.getpid()}.new")
    stale = target.with_name(f".{target.name}.{os.getpid()}.old")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    try:
        result = build(fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, stale)
    os.replace(fresh, target)
    shutil.rmtree(stale, ignore_errors=True)
    return result
