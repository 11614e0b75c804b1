"""Loaders for public relevance datasets into :class:`~mlsd.search.data.SearchDataset`.

- CrowdFlower Search Results Relevance (``train.csv``: id, query, product_title, product_description,
  median_relevance 1-4). Quoted CSV with newlines inside fields; there is no product id, so every row
  is its own product (``product_id`` = the row's ``id``). grade = median_relevance - 1 (0..3).
- Home Depot Product Search Relevance (``train.csv``: id, product_uid, product_title, search_term,
  relevance = mean of 1..3). Latin-1. grade = relevance - 1 (0..2, continuous).
- WANDS (Wayfair): TAB-separated ``product.csv``, ``query.csv``, ``label.csv``.
  grade: Exact 2, Partial 1, Irrelevant 0.

Files are read with the ``csv`` module (not split on newlines) so a malformed record is reported
with the file, the line it starts on and what was expected there (:class:`DataFormatError`).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.search.data import CATEGORY_SEPARATOR, SearchDataset

DATASETS = ("crowdflower", "homedepot", "wands")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_delimited(
    path: Path, columns: tuple[str, ...] = (), *, delimiter: str = ",", encoding: str = "utf-8"
):
    """Read a delimited file; return (frame of str with ``columns``, start line of each record).

    Every record must have as many fields as the header; the header must contain ``columns``
    (no ``columns``: every column of the header, e.g. a contract table checked later). Each
    malformed line is a :class:`DataFormatError` naming the file and the line.
    """
    if not path.exists():
        raise DataFormatError(
            path, None, "file not found", f"check the path; expected a file with columns {', '.join(columns)}"
        )
    rows: list[list[str]] = []
    starts: list[int] = []
    sep_name = "TAB" if delimiter == "\t" else repr(delimiter)
    try:
        with path.open(newline="", encoding=encoding) as handle:
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            try:
                header = next(reader)
            except StopIteration:
                raise DataFormatError(
                    path, 1, "empty file", f"write a header line with {', '.join(columns) or 'the columns'}"
                ) from None
            header = [h.strip().lstrip("\ufeff") for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataFormatError(
                    path,
                    1,
                    f"header lacks column(s) {', '.join(missing)} (found: {', '.join(header)})",
                    f"expected a {sep_name}-separated header with {', '.join(columns)}",
                )
            width = len(header)
            previous_end = reader.line_num
            for record in reader:
                start = previous_end + 1
                previous_end = reader.line_num
                if not record:  # blank line
                    continue
                if len(record) != width:
                    raise DataFormatError(
                        path,
                        start,
                        f"record has {len(record)} field(s), header has {width}",
                        f"expected {sep_name}-separated fields {', '.join(header)}; quote fields that contain the separator",
                    )
                rows.append(record)
                starts.append(start)
    except csv.Error as err:
        raise DataFormatError(
            path, reader.line_num, f"malformed CSV: {err}", "close every quoted field with a double quote"
        ) from None
    except UnicodeDecodeError as err:
        raise DataFormatError(
            path,
            None,
            f"not {encoding} text ({err.reason} at byte {err.start})",
            f"save the file as {encoding}",
        ) from None
    frame = pd.DataFrame(rows, columns=header)
    return (frame[list(columns)] if columns else frame), np.asarray(starts, dtype=np.int64)


def _numeric(
    frame: pd.DataFrame,
    column: str,
    lines: np.ndarray,
    path: Path,
    *,
    lo: float,
    hi: float,
    integer: bool = False,
) -> np.ndarray:
    """Parse ``column`` as numbers in [lo, hi]; the first bad value is reported with its line."""
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) | (values < lo) | (values > hi)
    if integer:
        bad |= ~np.isnan(values) & (values != np.round(values))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "an integer" if integer else "a number"
        raise DataFormatError(
            path,
            int(lines[i]),
            f"{column}={frame[column].iloc[i]!r} is not {kind} in [{lo:g}, {hi:g}]",
            f"fix or drop that record ({column} must be {kind} in [{lo:g}, {hi:g}])",
        )
    return values


def _csv_file(path: str | Path, name: str = "train.csv") -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def _query_ids(texts: pd.Series) -> tuple[np.ndarray, pd.DataFrame]:
    """Query ids numbered in order of first appearance, and the queries frame."""
    codes, uniques = pd.factorize(texts, sort=False)
    queries = pd.DataFrame(
        {"query_id": np.arange(len(uniques), dtype=np.int64), "text": np.asarray(uniques, dtype=object)}
    )
    return codes.astype(np.int64), queries


def load_crowdflower(path: str | Path) -> SearchDataset:
    """CrowdFlower ``train.csv`` (a file or the folder holding it); each row is its own product."""
    file = _csv_file(path)
    frame, lines = read_delimited(
        file, ("id", "query", "product_title", "product_description", "median_relevance")
    )
    ids = _numeric(frame, "id", lines, file, lo=0, hi=2**62, integer=True).astype(np.int64)
    labels = _numeric(frame, "median_relevance", lines, file, lo=1, hi=4, integer=True)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataFormatError(
            file, int(lines[i]), f"id {ids[i]} repeats", "ids must be unique (one per judged pair)"
        )
    query_ids, queries = _query_ids(frame["query"])
    products = pd.DataFrame(
        {
            "product_id": ids,
            "title": frame["product_title"].to_numpy(),
            "description": frame["product_description"].to_numpy(),
        }
    )
    judgements = pd.DataFrame({"query_id": query_ids, "product_id": ids, "grade": labels - 1.0})
    return SearchDataset("crowdflower", products, queries, judgements, max_grade=3.0)


def load_homedepot(path: str | Path) -> SearchDataset:
    """Home Depot ``train.csv`` (Latin-1); products deduplicated by ``product_uid``."""
    file = _csv_file(path)
    frame, lines = read_delimited(
        file, ("id", "product_uid", "product_title", "search_term", "relevance"), encoding="latin-1"
    )
    uids = _numeric(frame, "product_uid", lines, file, lo=0, hi=2**62, integer=True).astype(np.int64)
    relevance = _numeric(frame, "relevance", lines, file, lo=1, hi=3)
    query_ids, queries = _query_ids(frame["search_term"])
    products = pd.DataFrame({"product_id": uids, "title": frame["product_title"].to_numpy()}).drop_duplicates(
        "product_id", keep="first"
    )
    judgements = (
        pd.DataFrame({"query_id": query_ids, "product_id": uids, "grade": relevance - 1.0})
        .groupby(["query_id", "product_id"], as_index=False, sort=False)["grade"]
        .mean()
    )
    return SearchDataset("homedepot", products, queries, judgements, max_grade=2.0)


WANDS_GRADES = {"Exact": 2.0, "Partial": 1.0, "Irrelevant": 0.0}


def _wands_attributes(features: pd.Series) -> pd.Series:
    """``"color:white|material:oak"`` -> ``"color: white; material: oak"``."""
    return features.fillna("").str.replace("|", "; ", regex=False).str.replace(":", ": ", regex=False)


def load_wands(path: str | Path) -> SearchDataset:
    """WANDS folder with TAB-separated ``product.csv``, ``query.csv`` and ``label.csv``."""
    root = Path(path)
    if not root.is_dir():
        raise DataFormatError(
            root, None, "WANDS is a folder", "pass the folder holding product.csv, query.csv and label.csv"
        )
    pfile, qfile, lfile = root / "product.csv", root / "query.csv", root / "label.csv"
    pframe, plines = read_delimited(
        pfile,
        (
            "product_id",
            "product_name",
            "product_class",
            "category hierarchy",
            "product_description",
            "product_features",
        ),
        delimiter="\t",
    )
    qframe, qlines = read_delimited(qfile, ("query_id", "query"), delimiter="\t")
    lframe, llines = read_delimited(lfile, ("query_id", "product_id", "label"), delimiter="\t")
    pids = _numeric(pframe, "product_id", plines, pfile, lo=0, hi=2**62, integer=True).astype(np.int64)
    qids = _numeric(qframe, "query_id", qlines, qfile, lo=0, hi=2**62, integer=True).astype(np.int64)
    lq = _numeric(lframe, "query_id", llines, lfile, lo=0, hi=2**62, integer=True).astype(np.int64)
    lp = _numeric(lframe, "product_id", llines, lfile, lo=0, hi=2**62, integer=True).astype(np.int64)
    grade = lframe["label"].str.strip().map(WANDS_GRADES)
    if grade.isna().any():
        i = int(np.flatnonzero(grade.isna().to_numpy())[0])
        raise DataFormatError(
            lfile,
            int(llines[i]),
            f"label={lframe['label'].iloc[i]!r} is unknown",
            "use one of Exact, Partial, Irrelevant",
        )
    for ids, known, lines, what in ((lq, qids, llines, "query_id"), (lp, pids, llines, "product_id")):
        unknown = ~np.isin(ids, known)
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataFormatError(
                lfile,
                int(lines[i]),
                f"{what} {ids[i]} is not in the {what.split('_')[0]} file",
                f"every label must refer to a {what} present in product.csv / query.csv",
            )
    category = (
        pframe["category hierarchy"]
        .fillna("")
        .str.split("/")
        .map(lambda parts: CATEGORY_SEPARATOR.join(p.strip() for p in parts if p.strip()))
    )
    products = pd.DataFrame(
        {
            "product_id": pids,
            "title": pframe["product_name"].to_numpy(),
            "category": category.to_numpy(),
            "product_class": pframe["product_class"].to_numpy(),
            "attributes": _wands_attributes(pframe["product_features"]).to_numpy(),
            "description": pframe["product_description"].to_numpy(),
        }
    )
    queries = pd.DataFrame({"query_id": qids, "text": qframe["query"].to_numpy()})
    judgements = pd.DataFrame(
        {"query_id": lq, "product_id": lp, "grade": grade.to_numpy(dtype=np.float64)}
    ).drop_duplicates(["query_id", "product_id"], keep="last")
    return SearchDataset("wands", products, queries, judgements, max_grade=2.0)


def load_dataset(name: str, path: str | Path) -> SearchDataset:
    """Load ``name`` (crowdflower | homedepot | wands) from ``path``."""
    loaders = {"crowdflower": load_crowdflower, "homedepot": load_homedepot, "wands": load_wands}
    if name not in loaders:
        raise InputError("--dataset", name, "unknown dataset", f"choose from {', '.join(DATASETS)}")
    return loaders[name](path)
