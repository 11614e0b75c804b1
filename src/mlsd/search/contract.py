"""The search data contract and ``mlsd search import``: the tables search consumes, typed, and how files
become them.

Four tables (pyarrow schemas in :data:`SCHEMAS`, ``SYSTEM.schemas``); ids are int64 product ids and
free-text query strings, times UTC epoch seconds, money in the catalog's one currency:

* ``catalog`` -- one row per product, key ``product_id``: ``product_id`` and ``title`` required;
  ``description``, ``brand``, ``category`` (path joined by ``" / "``), ``attributes``, ``price``
  (>= 0), ``stock`` (units, >= 0), ``language`` optional.
* ``queries`` -- one row per judged query text, key ``text`` (``query_id`` is assigned on import).
* ``judgements`` -- graded (query, product) pairs, key ``(query, product_id)``: ``query``,
  ``product_id``, ``grade`` (float >= 0, 0 = irrelevant). The **evaluation set**: the gate and the
  reported nDCG read it; nothing trains on it.
* ``events`` -- the click log, key ``(type, search_id, product_id)``: ``type`` (impression | click |
  add_to_cart | purchase), ``ts``, ``search_id``, ``product_id``, ``query`` and ``position`` (1-based,
  impressions); ``user_id``, ``logged_position``, ``value`` (a purchase's revenue) optional.

:func:`import_data` converts a file of a format (:data:`FORMATS`) to these tables, validates
every row (a bad one raises :class:`~mlsd.platform.errors.DataFormatError` naming the file, line,
column, value and fix), and only then writes ``W/search/data``: each table is rewritten to a temporary
file and renamed over the old one (``os.replace``), events land as one new click-log part. Appending
is the default and deduplicates on each table's key, so re-importing a file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlsd.platform.data import is_required, merge_on_key, required_columns, write_atomically
from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.system import SystemDir

# what `mlsd search import --format` reads (SYSTEM.import_formats, checked equal by a test)
FORMATS: tuple[str, ...] = ("homedepot", "crowdflower", "wands", "csv", "parquet")

CATALOG = pa.schema(
    [
        pa.field(
            "product_id",
            pa.int64(),
            nullable=False,
            metadata={"required": "true", "doc": "product id, unique"},
        ),
        pa.field(
            "title",
            pa.string(),
            nullable=False,
            metadata={"required": "true", "doc": "product name, non-empty"},
        ),
        pa.field("description", pa.string(), metadata={"doc": "free text"}),
        pa.field("brand", pa.string()),
        pa.field("category", pa.string(), metadata={"doc": "path, most general first, joined by ' / '"}),
        pa.field("attributes", pa.string(), metadata={"doc": "'color: black; material: oak'"}),
        pa.field("price", pa.float64(), metadata={"doc": "unit price in the catalog's currency, >= 0"}),
        pa.field("stock", pa.int64(), metadata={"doc": "units in stock, >= 0 (0 = not shown)"}),
        pa.field("language", pa.string(), metadata={"doc": "ISO 639-1 code of the title, e.g. en"}),
        # Ranker signals, optional: a feature whose column is absent is dropped (the model card says so).
        pa.field("rating", pa.float64(), metadata={"doc": "mean review rating, >= 0"}),
        pa.field("review_count", pa.int64(), metadata={"doc": "number of reviews"}),
        pa.field("return_rate", pa.float64(), metadata={"doc": "share of orders returned, 0..1"}),
        pa.field(
            "margin", pa.float64(), metadata={"doc": "unit margin in the catalog's currency", "signed": "1"}
        ),
        pa.field("last_review_ts", pa.int64(), metadata={"doc": "UTC epoch seconds of the latest review"}),
        pa.field("color", pa.string(), metadata={"doc": "the product's main colour, e.g. black"}),
        pa.field("promoted", pa.int64(), metadata={"doc": "1 when the product is promoted"}),
    ]
)
QUERIES = pa.schema(
    [
        pa.field(
            "text", pa.string(), nullable=False, metadata={"required": "true", "doc": "the query as typed"}
        )
    ]
)
JUDGEMENTS = pa.schema(
    [
        pa.field("query", pa.string(), nullable=False, metadata={"required": "true"}),
        pa.field(
            "product_id", pa.int64(), nullable=False, metadata={"required": "true", "doc": "in the catalog"}
        ),
        pa.field(
            "grade",
            pa.float64(),
            nullable=False,
            metadata={"required": "true", "doc": ">= 0; 0 = irrelevant"},
        ),
    ]
)
EVENTS = pa.schema(
    [
        pa.field("type", pa.string(), nullable=False, metadata={"required": "true", "doc": "impression|click|add_to_cart|purchase"}),
        pa.field("ts", pa.int64(), nullable=False, metadata={"required": "true", "doc": "UTC epoch seconds"}),
        pa.field("search_id", pa.string(), nullable=False, metadata={"required": "true", "doc": "one search's results page"}),
        pa.field("product_id", pa.int64(), nullable=False, metadata={"required": "true"}),
        pa.field("query", pa.string(), metadata={"doc": "required for impressions"}),
        pa.field("position", pa.int32(), metadata={"doc": "1-based rank shown; required for impressions"}),
        pa.field("user_id", pa.string()),
        pa.field("logged_position", pa.int32(), metadata={"doc": "rank before a randomised swap"}),
        pa.field("value", pa.float64(), metadata={"doc": "purchase revenue, >= 0"}),
    ]
)  # fmt: skip
SCHEMAS: dict[str, pa.Schema] = {
    "catalog": CATALOG,
    "queries": QUERIES,
    "judgements": JUDGEMENTS,
    "events": EVENTS,
}
KEYS: dict[str, tuple[str, ...]] = {
    "catalog": ("product_id",),
    "queries": ("text",),
    "judgements": ("query", "product_id"),
    "events": ("type", "search_id", "product_id"),
}
# Contract files a csv/parquet folder may hold, by table (the first name found wins).
TABLE_FILES: dict[str, tuple[str, ...]] = {
    "catalog": ("catalog", "products"),
    "queries": ("queries",),
    "judgements": ("judgements", "qrels"),
    "events": ("events",),
}


def required(table: str) -> list[str]:
    return required_columns(SCHEMAS[table])


# --------------------------------------------------------------------------------------------------
# Validation: a frame -> the table's typed frame, or the first bad row named


class _Where:
    """Where a frame's rows came from: ``file`` and the line of each row (None: not a line file)."""

    def __init__(self, file: str | Path, lines: np.ndarray | None = None) -> None:
        self.file, self.lines = str(file), lines

    def line(self, i: int) -> int | None:
        return None if self.lines is None else int(self.lines[i])

    def fail(self, i: int, column: str, value: Any, problem: str, fix: str) -> DataFormatError:
        row = "" if self.lines is not None else f"row {i}: "
        return DataFormatError(self.file, self.line(i), f"{row}{column}={value!r} {problem}", fix)


def validate_table(table: str, frame: pd.DataFrame, where: _Where) -> pd.DataFrame:
    """``frame`` as ``table`` (:data:`SCHEMAS`): required columns present, every value typed and in
    range, keys unique (the last row of a repeated key wins). Unknown columns are dropped."""
    schema = SCHEMAS[table]
    missing = [c for c in required(table) if c not in frame.columns]
    if missing:
        raise DataFormatError(where.file, 1 if where.lines is not None else None,
                              f"no column(s) {', '.join(missing)} (found: {', '.join(map(str, frame.columns))})",
                              f"a {table} table needs {', '.join(required(table))}; see docs/search.md")  # fmt: skip
    if table == "events":
        return _validate_events(frame, where)
    out = pd.DataFrame(index=frame.index)
    for field in schema:
        if field.name not in frame.columns:
            continue
        col = frame[field.name]
        if pa.types.is_string(field.type):
            out[field.name] = col.where(col.notna(), "").astype(str)
            if not field.nullable:
                _check(where, out[field.name].str.strip().str.len() == 0, field.name, col, "is empty",
                       f"give every row a {field.name}")  # fmt: skip
            continue
        num = pd.to_numeric(col.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
        blank = col.isna() | col.map(lambda v: isinstance(v, str) and not v.strip())
        if not field.nullable:
            _check(where, blank, field.name, col, "is missing", f"give every row a {field.name}")
        bad = num.isna() & ~blank
        integer = pa.types.is_integer(field.type)
        if integer:
            bad |= num.notna() & (num != np.floor(num))
        signed = (field.metadata or {}).get(b"signed") == b"1"
        if not signed:
            bad |= num < 0
        kind = ("a whole number" if integer else "a number") + ("" if signed else " >= 0")
        _check(
            where, bad, field.name, col, f"is not {kind}", f"write {field.name} as {kind} (or leave it empty)"
        )
        out[field.name] = num.astype(
            "Int64" if integer and field.nullable else "int64" if integer else "float64"
        )
    out = out.reset_index(drop=True)
    return out.drop_duplicates(list(KEYS[table]), keep="last").reset_index(drop=True)


def _check(where: _Where, mask: pd.Series, column: str, values: pd.Series, problem: str, fix: str) -> None:
    hits = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(hits):
        i = int(hits[0])
        raise where.fail(i, column, values.iloc[i], problem, fix)


def _validate_events(frame: pd.DataFrame, where: _Where) -> pd.DataFrame:
    """The click log's own validation (:func:`mlsd.search.clicklog.validate_events`, what
    ``POST /v1/events`` runs), its ``events[i].field`` turned into the file's line."""
    from mlsd.search.clicklog import validate_events

    frame = frame.reset_index(drop=True)
    clean = frame.map(lambda v: None if isinstance(v, str) and not v.strip() else v)
    if "ts" in clean.columns and clean["ts"].isna().any():  # ts is required here (the service defaults it)
        i = int(np.flatnonzero(clean["ts"].isna().to_numpy())[0])
        raise where.fail(
            i, "ts", frame["ts"].iloc[i], "is missing", "give every event its UTC epoch-second time"
        )
    try:
        out = validate_events(clean, now=0)
    except InputError as err:
        field = str(err.field)
        i = int(field[field.index("[") + 1 : field.index("]")]) if field.startswith("events[") else 0
        column = field.split(".", 1)[-1]
        raise where.fail(i, column, err.value, err.problem, err.fix) from None
    return out.drop_duplicates(list(KEYS["events"]), keep="last").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Formats -> contract tables


def read_file(path: Path) -> tuple[pd.DataFrame, _Where]:
    """A contract table from a CSV (header on line 1, UTF-8) or Parquet file, with where each row is."""
    if not path.is_file():
        raise DataFormatError(path, None, "file not found", "check --path")
    if path.suffix.lower() == ".parquet":
        try:
            return pd.read_parquet(path), _Where(path)
        except Exception as err:  # noqa: BLE001 -- any unreadable file is the same user error
            raise DataFormatError(
                path,
                None,
                f"not a Parquet file ({type(err).__name__})",
                "write it with pandas.to_parquet / pyarrow",
            ) from None
    from mlsd.search.loaders import read_delimited  # the loaders' reader: one CSV dialect, one set of errors

    frame, lines = read_delimited(path)
    return frame.astype(object), _Where(path, lines)


def _table_of(path: Path, table: str | None) -> str:
    if table is not None:
        return table
    stem = path.name.split(".")[0].lower()
    for name, stems in TABLE_FILES.items():
        if stem in stems:
            return name
    raise InputError("--table", None, f"cannot tell which table {path.name} holds",
                     f"pass --table {'|'.join(SCHEMAS)} or name the file catalog/queries/judgements/events")  # fmt: skip


def convert(fmt: str, path: str | Path, table: str | None = None) -> dict[str, pd.DataFrame]:
    """The contract tables of ``path`` in format ``fmt``, validated (``{table: frame}``)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError("--format", fmt, "unknown format", f"use one of {', '.join(FORMATS)}")
    if table is not None and table not in SCHEMAS:
        raise InputError("--table", table, "unknown table", f"use one of {', '.join(SCHEMAS)}")
    if fmt in ("csv", "parquet"):
        ext = f".{fmt}"
        if path.is_dir():
            files = {}
            for name, stems in TABLE_FILES.items():
                found = [path / f"{s}{ext}" for s in stems if (path / f"{s}{ext}").is_file()]
                if found:
                    files[name] = found[0]
            if not files:
                raise DataFormatError(path, None, f"holds no contract {fmt} file",
                                      f"put catalog{ext}, queries{ext}, judgements{ext} and/or events{ext} there")  # fmt: skip
        else:
            files = {_table_of(path, table): path}
        out = {}
        for name, file in files.items():
            frame, where = read_file(file)
            out[name] = validate_table(name, frame, where)
        if "judgements" in out and "queries" not in out:
            out["queries"] = pd.DataFrame({"text": out["judgements"]["query"].drop_duplicates().to_numpy()})
        return out
    from mlsd.search.loaders import load_dataset

    ds = load_dataset(fmt, path)  # the loaders name the file and line of a malformed record
    text = ds.queries.set_index("query_id")["text"]
    judgements = pd.DataFrame({"query": text.reindex(ds.judgements["query_id"]).to_numpy(),
                               "product_id": ds.judgements["product_id"].to_numpy(),
                               "grade": ds.judgements["grade"].to_numpy()})  # fmt: skip
    catalog = ds.products[[c for c in ds.products.columns if c in CATALOG.names]]
    where = _Where(path)
    return {
        "catalog": validate_table("catalog", catalog, where),
        "queries": validate_table("queries", ds.queries[["text"]], where),
        "judgements": validate_table("judgements", judgements, where),
    }


# --------------------------------------------------------------------------------------------------
# Appending to W/search/data, atomically


def import_data(dirs: SystemDir, fmt: str, path: str | Path, *, table: str | None = None) -> dict[str, Any]:
    """``mlsd search import``: convert ``path`` (format ``fmt``) to the contract, validate it, and append
    it to ``dirs.data`` (dedup on each table's key). Returns counts of rows added per table."""

    started = time.perf_counter()
    tables = convert(fmt, path, table)
    return _import(dirs.data, tables, fmt, str(Path(path).resolve()), started)


def import_tables(
    dirs: SystemDir | Path, tables: Mapping[str, pd.DataFrame], *, name: str = "tables"
) -> dict[str, Any]:
    """Import DataFrames in the contract (``{"catalog": ..., "queries": ..., "judgements": ...,
    "events": ...}``, any of them) into ``dirs.data`` (or the data folder ``dirs`` itself): the same
    validation (errors name ``<name>/<table>`` and the row), merge, atomic write and summary as
    :func:`import_data`. ``mlsd search simulate`` writes through it.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> catalog = pd.DataFrame({"product_id": [1, 2], "title": ["oak desk", "steel lamp"]})
        >>> judged = pd.DataFrame({"query": ["desk"], "product_id": [1], "grade": [2.0]})
        >>> import_tables(folder, {"catalog": catalog, "judgements": judged})["added"]
        {'catalog': 2, 'queries': 1, 'judgements': 1}
        >>> import_tables(folder, {"catalog": catalog, "judgements": judged})["changed"]   # again
        False
    """
    started = time.perf_counter()
    unknown = sorted(set(tables) - set(SCHEMAS))
    if unknown:
        raise InputError("tables", unknown[0], "is not a search table", f"use {', '.join(SCHEMAS)}")
    valid = {t: validate_table(t, frame, _Where(f"{name}/{t}")) for t, frame in tables.items()}
    if "judgements" in valid and "queries" not in valid:
        valid["queries"] = pd.DataFrame({"text": valid["judgements"]["query"].drop_duplicates().to_numpy()})
    data = dirs.data if isinstance(dirs, SystemDir) else Path(dirs)
    return _import(data, valid, "tables", name, started)


def _import(
    data: Path, tables: Mapping[str, pd.DataFrame], fmt: str, path: str, started: float
) -> dict[str, Any]:
    from mlsd.search.clicklog import EVENT_COLUMNS, ClickLog

    products_f, queries_f, qrels_f = (
        data / "products.parquet",
        data / "queries.parquet",
        data / "qrels.parquet",
    )
    old_products = pd.read_parquet(products_f) if products_f.exists() else None
    catalog = tables.get("catalog")
    # Judgements and events must name products of the catalog (the old one or the one imported now).
    known = pd.Index([], dtype=np.int64)
    for frame in (old_products, catalog):
        if frame is not None:
            known = known.union(pd.Index(frame["product_id"].astype(np.int64)))
    if "judgements" in tables:
        unknown = ~tables["judgements"]["product_id"].isin(known)
        if unknown.any():
            pid = int(tables["judgements"]["product_id"][unknown].iloc[0])
            raise DataFormatError(Path(path), None, f"judgement of product_id={pid}, not in the catalog "
                                  f"({int(unknown.sum())} such pair(s))", "import the catalog first (or with it)")  # fmt: skip
    added: dict[str, int] = {}
    writes: list[tuple[Path, pd.DataFrame]] = []  # written atomically once everything is validated
    if catalog is not None:
        merged = merge_on_key(old_products, catalog, ["product_id"], keep="new")
        if old_products is None or not merged.equals(old_products):
            writes.append((products_f, merged))
        added["catalog"] = len(merged) - (0 if old_products is None else len(old_products))
    if "queries" in tables:
        old_q = pd.read_parquet(queries_f) if queries_f.exists() else None
        old_j = pd.read_parquet(qrels_f) if qrels_f.exists() else None
        texts = (
            old_q[["query_id", "text"]]
            if old_q is not None
            else pd.DataFrame({"query_id": pd.Series(dtype=np.int64), "text": pd.Series(dtype=str)})
        )
        fresh = (
            tables["queries"].loc[~tables["queries"]["text"].isin(texts["text"]), "text"].drop_duplicates()
        )
        start = int(texts["query_id"].max()) + 1 if len(texts) else 0
        new_q = pd.DataFrame(
            {"query_id": np.arange(start, start + len(fresh), dtype=np.int64), "text": fresh.to_numpy()}
        )
        queries = pd.concat([old_q, new_q], ignore_index=True) if old_q is not None else new_q
        if len(new_q):
            writes.append((queries_f, queries))
        added["queries"] = len(new_q)
        if "judgements" in tables:
            qid = queries.drop_duplicates("text").set_index("text")["query_id"]
            j = tables["judgements"]
            new_j = pd.DataFrame({"query_id": qid.reindex(j["query"]).to_numpy(np.int64),
                                  "product_id": j["product_id"].to_numpy(np.int64), "grade": j["grade"].to_numpy()})  # fmt: skip
            merged = merge_on_key(old_j, new_j, ["query_id", "product_id"], keep="new")
            if old_j is None or not merged.equals(old_j):
                writes.append((qrels_f, merged))
            added["judgements"] = int(len(merged) - (0 if old_j is None else len(old_j)))
    if "events" in tables:
        events = tables["events"]
        unknown = ~events["product_id"].isin(known)
        if unknown.any():  # training drops them; say so rather than refuse a whole day of log
            added["events_unknown_products"] = int(unknown.sum())
        log = ClickLog(data / "clicklog")
        old = log.events()[list(KEYS["events"])] if len(log) else None
        if old is not None:
            seen = pd.MultiIndex.from_frame(old.astype({"product_id": np.int64}))
            events = events[~pd.MultiIndex.from_frame(events[list(KEYS["events"])]).isin(seen)]
        added["events"] = len(events)
        if len(events):
            part_dir = data / "clicklog" / "events"
            digest = hashlib.sha256(
                pd.util.hash_pandas_object(events, index=False).to_numpy().tobytes()
            ).hexdigest()[:12]
            target = part_dir / f"part-{time.time_ns():020d}-import-{digest}.parquet"
            writes.append((target, events[list(EVENT_COLUMNS)].astype(EVENT_COLUMNS)))
    # Everything is converted and validated: write to temporary files, then rename them into place.
    for target, _ in writes:
        target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(writes)
    record = {"format": fmt, "path": path, "added": added, "at": int(time.time())}
    if writes:
        log_file = data / "imports.jsonl"
        with log_file.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    return {
        **record,
        "data": str(data),
        "changed": bool(writes),
        "seconds": round(time.perf_counter() - started, 2),
    }


def describe() -> dict[str, Mapping[str, Any]]:
    """Each table's columns: type, required, doc (for docs and ``--help``)."""
    return {
        name: {
            f.name: {
                "type": str(f.type),
                "required": is_required(f),
                "doc": (f.metadata or {}).get(b"doc", b"").decode(),
            }
            for f in schema
        }  # fmt: skip
        for name, schema in SCHEMAS.items()
    }
