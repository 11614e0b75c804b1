"""The click log: search events (impressions, clicks, add-to-cart, purchases) that training reads.

Events are rows of one narrow schema (:data:`EVENT_COLUMNS`), appended as Parquet parts under
``root/events/`` and read back with DuckDB, so the service's ``POST /v1/events`` and the simulator
write the same thing and training sees one table. :meth:`ClickLog.impressions` pivots the events into
one row per shown result with its outcomes, the frame the propensity estimators and the ranker train on.

Durability: :meth:`ClickLog.append` returns only once the events are on disk. Each writer process
appends JSON lines to its own write-ahead segment ``root/events/part-<time>-<pid>-<id>.jsonl`` and fsyncs it
(one fsync per call, i.e. per HTTP request), so a ``200`` from ``POST /v1/events`` survives SIGTERM,
SIGKILL and a power cut. When a segment holds ``flush_every`` events, on :meth:`ClickLog.flush` and at
shutdown, it is compacted into ``part-<time>-<pid>-<id>.parquet`` (temporary name, fsync, rename: atomic on
POSIX) and the segment is deleted; a reader skips a segment whose Parquet twin exists, so a crash
between the two steps never counts an event twice. Readers (any process) see the Parquet parts plus
every live segment; a torn last line (a write cut short by a crash, never acknowledged) is ignored.

Values out of range are refused, never wrapped: ids, positions and timestamps must be JSON integers
within the column's type: ``1e30``, ``3.5``, ``"12"`` are a 422 naming the field (a float is taken only
when it is a whole number below 2^53, which JSON Schema counts as an integer and a double holds exactly).
"""

from __future__ import annotations

import io
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
# Integer columns: what a JSON value must lie in to be stored exactly (upper bounds exclusive).
# ts: seconds since the epoch, before the year 3000 (a millisecond or microsecond timestamp is a mistake).
MAX_TS = 32_503_680_000
# An order value beyond this is a unit or encoding mistake; 1e308 would overflow revenue sums to inf.
MAX_VALUE = 1e12
INT_RANGES: dict[str, tuple[int, int]] = {
    # below 2^53: every such id is exact as a JSON number in any client (a double), so the documented
    # bound and the checked one agree (a bound near 2^63 rounds differently in float and in int)
    "product_id": (0, 2**53),
    "position": (1, 2**31),
    "logged_position": (1, 2**31),
    "ts": (0, MAX_TS),
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

    def number(
        name: str, default: float, none_marker: np.ndarray | None = None
    ) -> tuple[pd.Series, np.ndarray]:
        """Numeric column with ``default`` where the event omitted it; second: sent but not a number
        (for the integer columns of :data:`INT_RANGES`: not an integer in range, e.g. ``1e30``, ``3.5``;
        ``none_marker``: rows where -1, the stored "no position", is accepted too)."""
        raw = col(name, None)
        sent = raw.notna().to_numpy()
        usable = raw.map(lambda v: not isinstance(v, bool))
        if name in INT_RANGES and raw.dtype == object:
            # JSON floats (and strings) where an integer belongs are refused: 1e30 would wrap to
            # INT64_MIN on the cast
            usable &= raw.map(_exact_integer)
        num = pd.to_numeric(raw.where(usable, "x"), errors="coerce")
        wrong = sent & num.isna().to_numpy()
        if name in INT_RANGES:
            lo, hi = INT_RANGES[name]
            ok = ((num >= lo) & (num < hi)).to_numpy(copy=True)
            if none_marker is not None:
                ok |= none_marker & (num == -1).to_numpy()
            wrong |= sent & ~ok
        return num.where(sent, default), wrong

    etype = col("type", None)
    bad(
        ~etype.isin(EVENT_TYPES).to_numpy(),
        "type",
        "unknown or missing event type",
        f"use one of {', '.join(EVENT_TYPES)}",
    )
    for name in ("search_id", "user_id", "query"):
        if name in frame.columns and frame[name].dtype == object:
            # Text fields take a JSON string: a number, list or object would be stored as its repr.
            bad(
                ~frame[name].map(_is_text).to_numpy(),
                name,
                "must be a string",
                f"send {name} as a JSON string",
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
        "must be an integer in 0..2^53-1",
        "pass the product id as a JSON integer",
    )
    is_imp = (etype == "impression").to_numpy()
    pos, pos_bad = number("position", -1, none_marker=~is_imp)
    bad(
        pos_bad,
        "position",
        "must be an integer in 1..2^31-1",
        "pass the 1-based rank shown as a JSON integer",
    )
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
    logged, logged_bad = number("logged_position", np.nan, none_marker=~is_imp)
    logged = logged.where(logged.notna(), pos)
    bad(
        logged_bad | (is_imp & (logged < 1).to_numpy()),
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
        value_bad | ~((value >= 0) & (value < MAX_VALUE)).to_numpy(),
        "value",
        f"must be a number in [0, {MAX_VALUE:.0e})",
        "pass the order value in the shop's currency",
    )
    ts_default = int(time.time()) if now is None else now
    ts, ts_bad = number("ts", ts_default)
    bad(
        ts_bad | (ts < 0).to_numpy(),
        "ts",
        f"must be whole seconds since the epoch, 0..{MAX_TS - 1}",
        "pass an integer timestamp in seconds (not ms) or omit it",
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


def _exact_integer(value: Any) -> bool:
    """An int, or a float holding a whole number a double represents exactly (|v| < 2^53), or missing."""
    if value is None or (isinstance(value, int | np.integer) and not isinstance(value, bool)):
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value)) or (float(value).is_integer() and abs(value) < 2**53)
    return False


def _is_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _records_frame(events: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    if not isinstance(events, list | tuple):
        raise InputError(
            "events", events, "expected a list of event objects", 'send {"events": [{...}, ...]}'
        )
    for i, e in enumerate(events):
        if not isinstance(e, Mapping):
            raise InputError(f"events[{i}]", e, "expected an object", "send each event as a JSON object")
    # One object column per key (not from_records): an int next to a missing value would become a
    # float there, and the integer columns must tell 2**60 from a rounded float.
    keys = dict.fromkeys(k for e in events for k in e)
    return pd.DataFrame({k: pd.Series([e.get(k) for e in events], dtype=object) for k in keys})


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
    """Append-only search event log under ``root/events/``: fsync'd JSON-line segments compacted into
    Parquet parts (see the module docstring); read with DuckDB.

    ``append(events)`` validates and writes durably (it returns once the events are fsync'd);
    ``flush()`` compacts this process's segment into a Parquet part (``close()`` at shutdown does the
    same); ``events()`` and ``impressions()`` read every part and every segment, of any process. The
    folder is made by the first write, never by opening or reading the log (a read path creates nothing).
    """

    def __init__(self, root: Path | str, *, flush_every: int = 5000) -> None:
        self.root = Path(root)
        self.flush_every = flush_every
        self._dir = self.root / "events"
        self._lock = threading.Lock()
        self._segment: Path | None = None  # this process's open write-ahead segment
        self._fd: int | None = None
        self._in_segment = 0

    def append(self, events: Sequence[Mapping[str, Any]] | pd.DataFrame, *, validated: bool = False) -> int:
        """Validate ``events`` and write them durably; returns how many were accepted (all or none)."""
        frame = events if validated else validate_events(events)
        data = _jsonl(frame)
        with self._lock:
            fd = self._open_segment_locked()
            _write_all(fd, data)
            os.fsync(fd)  # the acknowledgement below promises the events are on disk
            self._in_segment += len(frame)
            if self._in_segment >= self.flush_every:
                self._compact_locked()
        return len(frame)

    def append_impressions(self, impressions: pd.DataFrame) -> int:
        """Append a wide impression frame (simulator output) as narrow events, as one Parquet part."""
        events = impressions_to_events(impressions)
        with self._lock:
            self._write_part_locked(
                events, f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            )
        return len(events)

    def flush(self) -> None:
        """Compact this process's segment into a Parquet part (the events were durable already)."""
        with self._lock:
            self._compact_locked()

    close = flush  # at shutdown (the service's lifespan): nothing is lost without it, it only tidies

    def _open_segment_locked(self) -> int:
        if self._fd is None:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._segment = (
                self._dir / f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            )
            self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _fsync_dir(self._dir)  # the new file's name must survive a crash too
            self._in_segment = 0
        return self._fd

    def _compact_locked(self) -> None:
        if self._fd is None or self._segment is None:
            return
        os.close(self._fd)
        segment, self._fd, self._segment, self._in_segment = self._segment, None, None, 0
        frame = _read_segment(segment)
        if frame is not None and len(frame):
            self._write_part_locked(frame, segment.stem)
        segment.unlink()
        _fsync_dir(self._dir)

    def _write_part_locked(self, frame: pd.DataFrame, name: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self._dir / f"{name}.parquet")
        _fsync_dir(self._dir)

    def _snapshot(self) -> tuple[list[str], pd.DataFrame]:
        """The Parquet parts and the live segments' events, as one consistent view while writers
        compact: the parts are listed first; a segment whose twin is among them is skipped, and one
        compacted after the listing (gone now) is read from its twin instead, so no event is missed
        or counted twice."""
        if not self._dir.is_dir():
            return [], _empty_events()
        parts = sorted(str(p) for p in self._dir.glob("*.parquet"))
        listed = set(parts)
        frames = []
        for segment in sorted(self._dir.glob("part-*.jsonl")):
            twin = segment.with_suffix(".parquet")
            if str(twin) in listed:
                continue
            frame = _read_segment(segment)
            if frame is None:  # compacted since the listing: its events are in the twin now
                parts.append(str(twin))
            elif len(frame):
                frames.append(frame)
        return sorted(parts), (pd.concat(frames, ignore_index=True) if frames else _empty_events())

    def _relation(self):
        """A DuckDB connection with the view ``e``: every event, Parquet parts then live segments."""
        import duckdb

        parts, live = self._snapshot()
        con = duckdb.connect()
        con.register("live", live)
        if parts:  # the relation API takes the file list as data: no path is spliced into SQL
            con.read_parquet(parts).create_view("parts")
            con.execute("CREATE VIEW e AS SELECT * FROM parts UNION ALL BY NAME SELECT * FROM live")
        else:
            con.execute("CREATE VIEW e AS SELECT * FROM live")
        return con

    def __len__(self) -> int:
        return int(self._relation().execute("SELECT count(*) FROM e").fetchall()[0][0])

    def events(self) -> pd.DataFrame:
        """Every event: the Parquet parts in name (time) order, then the live segments."""
        return self._relation().execute("SELECT * FROM e").df().astype(EVENT_COLUMNS)

    def impressions(self, *, since_ts: int | None = None, until_ts: int | None = None) -> pd.DataFrame:
        """One row per impression with its outcomes (:data:`IMPRESSION_COLUMNS`), ``ts`` in ``[since, until)``.

        Outcome events join to impressions on ``(search_id, product_id)``; an outcome without an
        impression (a click on a result the client never reported showing) is dropped, since without a
        position it carries no usable examination probability.
        """
        con = self._relation()
        where = []
        if since_ts is not None:
            where.append(f"i.ts >= {int(since_ts)}")
        if until_ts is not None:
            where.append(f"i.ts < {int(until_ts)}")
        cond = ("WHERE " + " AND ".join(where)) if where else ""
        sql = f"""
            WITH i AS (
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
        out = con.execute(sql).df()
        out["clicked"] = out["clicked"] | out["purchased"]
        return out


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in EVENT_COLUMNS.items()})


def _jsonl(frame: pd.DataFrame) -> bytes:
    """Typed events as JSON lines (vectorised; 15 significant digits keep order values exact in cents)."""
    text = frame[list(EVENT_COLUMNS)].to_json(orient="records", lines=True, double_precision=15)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _read_segment(path: Path) -> pd.DataFrame | None:
    """A segment's events (None: it is gone, compacted by its writer since the folder was listed); a
    torn last line (no newline: a write the crash cut short, so never acknowledged) is dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    data = data[: data.rfind(b"\n") + 1]
    if not data:
        return _empty_events()
    frame = pd.read_json(io.BytesIO(data), lines=True, orient="records", dtype=False, convert_dates=False)
    return frame[list(EVENT_COLUMNS)].astype(EVENT_COLUMNS)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
