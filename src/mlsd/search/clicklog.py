"""The click log: search events (impressions, clicks, add-to-cart, purchases) that training reads.

Events are rows of one narrow schema (:data:`EVENT_COLUMNS`), appended as Parquet parts under
``root/events/`` and read back with DuckDB, so the service's ``POST /v1/events`` and the simulator
write the same thing and training sees one table. :meth:`ClickLog.impressions` pivots the events into
one row per shown result with its outcomes, the frame the propensity estimators and the ranker train on.

Appends are buffered in memory and flushed as one Parquet part when the buffer is large or on read, so a
busy service writes a few files, not one per request. Parts are written to a temporary name and renamed
(atomic on POSIX), so a reader never sees half a file.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError

EVENT_TYPES: tuple[str, ...] = ("impression", "click", "add_to_cart", "purchase")
EVENT_COLUMNS: dict[str, str] = {
    "type": "string",
    "ts": "int64",
    "search_id": "string",
    "user_id": "string",
    "query": "string",
    "product_id": "int64",
    "position": "int32",  # 1-based rank as shown; impressions only (-1 otherwise)
    "logged_position": "int32",  # rank before a randomised swap; = position when there was none
    "value": "float64",  # order value of a purchase, 0 otherwise
}
IMPRESSION_COLUMNS: tuple[str, ...] = (
    "search_id", "ts", "user_id", "query", "product_id", "position", "logged_position",
    "clicked", "added_to_cart", "purchased", "order_value",
)  # fmt: skip


def validate_events(
    events: Sequence[Mapping[str, Any]] | pd.DataFrame, *, now: int | None = None
) -> pd.DataFrame:
    """Check and type raw events; the first bad one raises :class:`InputError` naming ``events[i].field``.

    Required: ``type`` (one of :data:`EVENT_TYPES`), ``search_id``, ``product_id`` (int >= 0); impressions
    also need ``position`` (int >= 1) and ``query``; purchases may carry ``value`` (>= 0). ``ts`` defaults
    to now, ``user_id`` to ``""``, ``logged_position`` to ``position``.
    """
    frame = events if isinstance(events, pd.DataFrame) else _records_frame(events)
    if len(frame) == 0:
        raise InputError("events", [], "no events", "send a non-empty list of events")
    n = len(frame)

    def col(name: str, default: Any) -> pd.Series:
        return (
            frame[name]
            if name in frame.columns
            else pd.Series([default] * n, index=frame.index, dtype=object)
        )

    def bad(mask: np.ndarray, field: str, problem: str, fix: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            value = frame[field].iloc[i] if field in frame.columns else None
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not np.isfinite(value):
                value = None  # missing (JSON has no NaN)
            raise InputError(f"events[{i}].{field}", value, problem, fix)

    def number(name: str, default: float) -> tuple[pd.Series, np.ndarray]:
        """Numeric column with ``default`` where the event omitted it; second: sent but not a number."""
        raw = col(name, None)
        sent = raw.notna().to_numpy()
        num = pd.to_numeric(raw.where(raw.map(lambda v: not isinstance(v, bool)), "x"), errors="coerce")
        return num.where(sent, default), sent & num.isna().to_numpy()

    etype = col("type", None)
    bad(
        ~etype.isin(EVENT_TYPES).to_numpy(),
        "type",
        "unknown or missing event type",
        f"use one of {', '.join(EVENT_TYPES)}",
    )
    sid = col("search_id", None)
    bad(
        (sid.isna() | (sid.astype(str).str.len() == 0)).to_numpy(),
        "search_id",
        "missing",
        "pass the search_id the search returned",
    )
    pid, pid_bad = number("product_id", np.nan)
    bad(
        pid_bad | (pid.isna() | (pid < 0) | (pid != np.floor(pid))).to_numpy(),
        "product_id",
        "must be an integer >= 0",
        "pass a product id",
    )
    is_imp = (etype == "impression").to_numpy()
    pos, pos_bad = number("position", -1)
    bad(pos_bad, "position", "must be an integer >= 1", "pass the 1-based rank shown")
    bad(
        is_imp & ((pos < 1) | (pos != np.floor(pos))).to_numpy(),
        "position",
        "impressions need a 1-based integer position",
        "pass position >= 1",
    )
    bad(
        ~is_imp & (pos != -1).to_numpy() & ((pos < 1) | (pos != np.floor(pos))).to_numpy(),
        "position",
        "must be an integer >= 1",
        "omit it or pass >= 1",
    )
    logged, logged_bad = number("logged_position", np.nan)
    logged = logged.where(logged.notna(), pos)
    bad(
        logged_bad | ((logged < 1) & (pos >= 1)).to_numpy(),
        "logged_position",
        "must be an integer >= 1",
        "omit it or pass the pre-swap rank",
    )
    query = col("query", "")
    query = query.where(query.notna(), "").astype(str)
    bad(
        is_imp & (query.str.len() == 0).to_numpy(),
        "query",
        "impressions need the query text",
        "pass the query that was searched",
    )
    value, value_bad = number("value", 0.0)
    bad(
        value_bad | (value < 0).to_numpy() | ~np.isfinite(value.to_numpy(np.float64)),
        "value",
        "must be a number >= 0",
        "pass the order value",
    )
    ts_default = int(time.time()) if now is None else now
    ts, ts_bad = number("ts", ts_default)
    bad(
        ts_bad | (ts < 0).to_numpy(),
        "ts",
        "must be seconds since the epoch",
        "pass an int timestamp or omit it",
    )
    user = col("user_id", "")
    out = pd.DataFrame(
        {
            "type": etype.astype(str),
            "ts": ts.astype(np.int64),
            "search_id": sid.astype(str),
            "user_id": user.where(user.notna(), "").astype(str),
            "query": query,
            "product_id": pid.astype(np.int64),
            "position": pos.astype(np.int32),
            "logged_position": logged.astype(np.int32),
            "value": value.astype(np.float64),
        }
    )
    return out.astype(EVENT_COLUMNS)


def _records_frame(events: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    if not isinstance(events, list | tuple):
        raise InputError(
            "events", events, "expected a list of event objects", 'send {"events": [{...}, ...]}'
        )
    for i, e in enumerate(events):
        if not isinstance(e, Mapping):
            raise InputError(f"events[{i}]", e, "expected an object", "send each event as a JSON object")
    return pd.DataFrame.from_records(list(events))


def impressions_to_events(impressions: pd.DataFrame) -> pd.DataFrame:
    """Narrow events from a wide impression frame (the simulator's output): one impression per row plus
    one click / add_to_cart / purchase event where the outcome happened."""
    base = pd.DataFrame(
        {
            "ts": impressions["ts"].to_numpy(np.int64),
            "search_id": impressions["search_id"].astype(str).to_numpy(),
            "user_id": impressions["user_id"].astype(str).to_numpy(),
            "query": impressions["query"].astype(str).to_numpy(),
            "product_id": impressions["product_id"].to_numpy(np.int64),
            "position": impressions["position"].to_numpy(np.int32),
            "logged_position": impressions["logged_position"].to_numpy(np.int32),
        }
    )
    parts = [base.assign(type="impression", value=0.0)]
    for kind, column in (("click", "clicked"), ("add_to_cart", "added_to_cart"), ("purchase", "purchased")):
        mask = impressions[column].to_numpy(bool)
        value = impressions["order_value"].to_numpy(np.float64)[mask] if kind == "purchase" else 0.0
        parts.append(base[mask].assign(type=kind, value=value, position=-1, logged_position=-1))
    return pd.concat(parts, ignore_index=True)[list(EVENT_COLUMNS)].astype(EVENT_COLUMNS)


class ClickLog:
    """Append-only search event log in ``root/events/*.parquet``; read with DuckDB.

    ``append(events)`` validates and buffers; ``flush()`` writes one part; ``events()`` and
    ``impressions()`` flush first, so a reader always sees every accepted event. The folder is made
    by the first write, never by opening or reading the log (a read path creates nothing).
    """

    def __init__(self, root: Path | str, *, flush_every: int = 5000) -> None:
        self.root = Path(root)
        self.flush_every = flush_every
        self._dir = self.root / "events"
        self._buffer: list[pd.DataFrame] = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._counter = itertools.count()

    def append(self, events: Sequence[Mapping[str, Any]] | pd.DataFrame, *, validated: bool = False) -> int:
        """Validate and buffer ``events``; returns how many were accepted (all or none)."""
        frame = events if validated else validate_events(events)
        with self._lock:
            self._buffer.append(frame)
            self._buffered += len(frame)
            if self._buffered >= self.flush_every:
                self._flush_locked()
        return len(frame)

    def append_impressions(self, impressions: pd.DataFrame) -> int:
        """Append a wide impression frame (simulator output) as narrow events, written at once."""
        events = impressions_to_events(impressions)
        with self._lock:
            self._buffer.append(events)
            self._buffered += len(events)
            self._flush_locked()
        return len(events)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        frame = pd.concat(self._buffer, ignore_index=True)
        self._dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{next(self._counter):06d}-{uuid.uuid4().hex[:6]}"
        tmp = self._dir / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(self._dir / f"{name}.parquet")
        self._buffer.clear()
        self._buffered = 0

    def _glob(self) -> str | None:
        return (
            str(self._dir / "*.parquet") if self._dir.is_dir() and any(self._dir.glob("*.parquet")) else None
        )

    def __len__(self) -> int:
        self.flush()
        pattern = self._glob()
        if pattern is None:
            return 0
        import duckdb

        return int(duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchall()[0][0])

    def events(self) -> pd.DataFrame:
        """Every event, in the order written."""
        self.flush()
        pattern = self._glob()
        if pattern is None:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in EVENT_COLUMNS.items()})
        import duckdb

        return duckdb.sql(f"SELECT * FROM read_parquet('{pattern}')").df()

    def impressions(self, *, since_ts: int | None = None, until_ts: int | None = None) -> pd.DataFrame:
        """One row per impression with its outcomes (:data:`IMPRESSION_COLUMNS`), ``ts`` in ``[since, until)``.

        Outcome events join to impressions on ``(search_id, product_id)``; an outcome without an
        impression (a click on a result the client never reported showing) is dropped, since without a
        position it carries no usable examination probability.
        """
        self.flush()
        pattern = self._glob()
        if pattern is None:
            return pd.DataFrame(columns=list(IMPRESSION_COLUMNS))
        import duckdb

        where = []
        if since_ts is not None:
            where.append(f"i.ts >= {int(since_ts)}")
        if until_ts is not None:
            where.append(f"i.ts < {int(until_ts)}")
        cond = ("WHERE " + " AND ".join(where)) if where else ""
        sql = f"""
            WITH e AS (SELECT * FROM read_parquet('{pattern}')),
            i AS (
                SELECT search_id, product_id, min(ts) AS ts, any_value(user_id) AS user_id,
                       any_value(query) AS query, min(position) AS position,
                       min(logged_position) AS logged_position
                FROM e WHERE type = 'impression' GROUP BY search_id, product_id
            ),
            o AS (
                SELECT search_id, product_id,
                       bool_or(type = 'click') AS clicked,
                       bool_or(type = 'add_to_cart') AS added_to_cart,
                       bool_or(type = 'purchase') AS purchased,
                       sum(CASE WHEN type = 'purchase' THEN value ELSE 0 END) AS order_value
                FROM e WHERE type <> 'impression' GROUP BY search_id, product_id
            )
            SELECT i.search_id, i.ts, i.user_id, i.query, i.product_id, i.position, i.logged_position,
                   coalesce(o.clicked, false) AS clicked,
                   -- a purchase implies a click and a cart even when the client did not send them
                   coalesce(o.added_to_cart OR o.purchased, false) AS added_to_cart,
                   coalesce(o.purchased, false) AS purchased,
                   coalesce(o.order_value, 0.0) AS order_value
            FROM i LEFT JOIN o USING (search_id, product_id) {cond}
            ORDER BY i.ts, i.search_id, i.position
        """
        out = duckdb.sql(sql).df()
        out["clicked"] = out["clicked"] | out["purchased"]
        return out
