"""Fraud features, twice: an offline batch computation (training) and an online engine (serving).

Both compute the same columns from the same definitions and agree value for value (a test replays a
generated stream through the online engine, on the in-process and the Redis backend, and compares):

- per entity (card, terminal, device, IP) and window ``w`` - the payments in ``(t - w, t]``, the
  current one included: ``{e}_count_{w}``, ``{e}_sum_{w}``, ``{e}_mean_{w}``, ``{e}_std_{w}`` of the amount;
- card history (the card's payments in the last ``history`` seconds, the current one excluded):
  ``card_secs_since_last``, ``card_amount_z`` / ``card_amount_ratio`` (z-score of the amount against
  that history, and its ratio to the history's mean),
  ``card_new_terminal`` / ``card_new_device`` (1 if not used by the card within the history),
  ``card_distance_km`` / ``card_geo_velocity_kmh`` (from the previous payment's location);
- ``terminal_risk_{w}``: the share of the terminal's payments in ``(t - d - w, t - d]`` whose fraud
  label was KNOWN at decision time (``label_ts <= t``), with ``d`` the ``risk_delay`` (0 in the live
  system where labels carry their own arrival time; 7 days for the handbook's convention);
- ``amount``, ``is_night``, ``is_weekend``; and the card's last ``seq_len`` payments for the sequence
  model as ``seq{i}_{log_amount,log_age,same_terminal,present}`` (``i = 0`` is the current payment).

Columns whose inputs the data lacks (device, IP, location in the handbook format) are absent, never
faked. Amounts enter the windows as integer cents, so sums are exact and the float operations that
follow (:func:`~mlsd.platform.streaming.mean_std`) are the same on both paths.

The offline path sorts by (entity, ts) and answers every window with ``searchsorted`` + prefix sums;
the online path (:class:`FeatureEngine`) keeps per-entity window state in a
:class:`~mlsd.platform.streaming.WindowStore` and reduces each micro-batch's views with masks. Rows
are processed in event-time order (ties by arrival) - the order both paths define the windows by.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from mlsd.fraud.data import to_cents
from mlsd.platform.errors import InputError
from mlsd.platform.streaming import NOT_STORED, PAD_TS, MemoryWindowStore, WindowStore, WindowView, mean_std

HOUR = 3_600
DAY = 86_400
ENTITY_COLUMNS = {"card": "card_id", "terminal": "terminal_id", "device": "device_id", "ip": "ip"}
SEQ_FEATURES = ("log_amount", "log_age", "same_terminal", "present")
_MASK52 = (1 << 52) - 1  # hashed ids stored as float attrs must be exact in a float64
_BIG = np.int64(1) << np.int64(32)  # (entity code, relative ts) packed in one sortable int64


@dataclass(frozen=True)
class FeatureConfig:
    """Which windows and entities to compute. :meth:`handbook` gives the handbook protocol's set."""

    windows: tuple[int, ...] = (HOUR, DAY, 7 * DAY)
    entities: tuple[str, ...] = ("card", "terminal", "device", "ip")
    risk_windows: tuple[int, ...] = (DAY, 7 * DAY)
    risk_delay: int = 0
    history: int = 30 * DAY
    seq_len: int = 8
    extras: tuple[str, ...] = field(default=("device", "geo"))  # card-history extras the data supports

    @classmethod
    def handbook(cls, delay: int = 7 * DAY) -> FeatureConfig:
        """Windows 1/7/30 days, card and terminal only, terminal risk with the handbook's label delay."""
        return cls(
            windows=(DAY, 7 * DAY, 30 * DAY),
            entities=("card", "terminal"),
            risk_windows=(DAY, 7 * DAY, 30 * DAY),
            risk_delay=delay,
            extras=(),
        )

    def horizon(self, kind: str) -> int:
        """How long ``kind``'s window state must remember events."""
        horizon = max(self.windows)
        if kind == "card":
            horizon = max(horizon, self.history)
        if kind == "terminal":
            horizon = max(horizon, self.risk_delay + max(self.risk_windows, default=0))
        return int(horizon)

    def feature_names(self) -> list[str]:
        names = ["amount", "is_night", "is_weekend"]
        for kind in self.entities:
            for w in self.windows:
                names += [f"{kind}_{s}_{window_name(w)}" for s in ("count", "sum", "mean", "std")]
        names += ["card_secs_since_last", "card_amount_z", "card_amount_ratio", "card_new_terminal"]
        if "device" in self.extras:
            names.append("card_new_device")
        if "geo" in self.extras:
            names += ["card_distance_km", "card_geo_velocity_kmh"]
        names += [f"terminal_risk_{window_name(w)}" for w in self.risk_windows]
        names += sequence_names(self.seq_len)
        return names


def window_name(seconds: int) -> str:
    return f"{seconds // HOUR}h" if seconds < DAY else f"{seconds // DAY}d"


def sequence_names(seq_len: int) -> list[str]:
    return [f"seq{i}_{f}" for i in range(seq_len) for f in SEQ_FEATURES]


def _hash52(values) -> np.ndarray:
    """Entity ids as exact-in-float64 hashes (NaN where missing), for 'same terminal/device' tests.

    Integer ids hash as integers (60x faster than as strings); an id must keep its type over time.
    ``values`` is a Series or a 1-d array (the online engine passes arrays: no Series per batch).
    """
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    out = np.full(len(arr), np.nan)
    if arr.dtype.kind in "iub":
        hashed = pd.util.hash_array(arr.astype(np.int64, copy=False))
        out[:] = (hashed & np.uint64(_MASK52)).astype(np.float64)
        return out
    present = ~pd.isna(arr)
    if not present.any():
        return out
    vals = arr[present] if not present.all() else arr
    kind = pd.api.types.infer_dtype(vals, skipna=False)
    if kind == "integer":  # nullable integers: hashed as integers, like the plain int64 column
        hashed = pd.util.hash_array(vals.astype(np.int64))
    else:
        if kind != "string":
            vals = vals.astype(str)
        hashed = pd.util.hash_array(np.asarray(vals, dtype=object), categorize=False)
    out[present] = (hashed & np.uint64(_MASK52)).astype(np.float64)
    return out


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _calendar(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hour = (ts % DAY) // HOUR
    weekday = ((ts // DAY) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return (hour < 6).astype(np.float64), (weekday >= 5).astype(np.float64)


def _card_attrs(frame, config: FeatureConfig) -> np.ndarray:
    """Per payment: [terminal hash, device hash, lat, lon] (NaN where the data lacks it).

    ``frame`` is a DataFrame or a mapping of column arrays.
    """
    n = len(frame["terminal_id"])
    device = (
        _hash52(frame["device_id"])
        if "device_id" in frame and "device" in config.extras
        else np.full(n, np.nan)
    )
    geo = "geo" in config.extras and "lat" in frame and "lon" in frame
    lat = np.asarray(frame["lat"], dtype=np.float64) if geo else np.full(n, np.nan)
    lon = np.asarray(frame["lon"], dtype=np.float64) if geo else np.full(n, np.nan)
    return np.column_stack([_hash52(frame["terminal_id"]), device, lat, lon])


def _check(frame: pd.DataFrame) -> None:
    for column in ("tx_id", "ts", "card_id", "terminal_id", "amount"):
        if column not in frame.columns:
            raise InputError(column, None, "is missing", f"add the field {column!r} to every payment")


# ------------------------------------------------------------------------------------------------
# offline: vectorised batch computation
# ------------------------------------------------------------------------------------------------
class _Sorted:
    """One entity's payments sorted by (entity, ts, arrival), with packed keys for window searches."""

    def __init__(self, codes: np.ndarray, rel_ts: np.ndarray) -> None:
        self.order = np.argsort(codes, kind="stable")  # input is in (ts, arrival) order already
        self.codes = codes[self.order]
        self.rel = rel_ts[self.order]
        self.key = self.codes * _BIG + self.rel
        self.pos = np.arange(len(codes))

    def first_after(self, bound: np.ndarray, side: str = "right") -> np.ndarray:
        """Per sorted row, index of the first row of its entity with rel ts > bound (>= if side='left')."""
        return np.searchsorted(self.key, self.codes * _BIG + np.maximum(bound, -1), side=side)

    def previous(self, k: int, horizon: int) -> np.ndarray:
        """Sorted index of the k-th previous payment of the same entity within ``horizon`` (-1 if none)."""
        prev = self.pos - k
        ok = prev >= 0
        prev_c = np.where(ok, prev, 0)
        ok &= (self.codes[prev_c] == self.codes) & (self.rel[prev_c] > self.rel - horizon)
        return np.where(ok, prev, -1)


def _window_offline(s: _Sorted, cents: np.ndarray, width: int):
    lo = s.first_after(s.rel - width)
    c1 = np.r_[0, np.cumsum(cents)]
    c2 = np.r_[0, np.cumsum(cents * cents)]
    hi = s.pos + 1
    return hi - lo, c1[hi] - c1[lo], c2[hi] - c2[lo]


def compute_features(
    frame: pd.DataFrame, config: FeatureConfig | None = None, *, windows: str = "numpy"
) -> pd.DataFrame:
    """Offline features for every payment of ``frame`` (rows in the input's order).

    ``fraud`` / ``label_ts`` columns, when present, feed the terminal risk - each label only from its
    ``label_ts`` on. Vectorised: a few sorts and ``searchsorted`` calls per entity and window.
    ``windows="duckdb"``: the entity window columns from :func:`window_features_duckdb` (bounded
    memory for long histories), the same values.
    """
    config = config or FeatureConfig()
    _check(frame)
    if windows not in ("numpy", "duckdb"):
        raise InputError("windows", windows, "unknown window engine", "use 'numpy' or 'duckdb'")
    n = len(frame)
    # Process in (ts, arrival) order, as the stream would; map back to the input order at the end.
    arrival = np.argsort(frame["ts"].to_numpy(np.int64), kind="stable")
    f = frame.iloc[arrival].reset_index(drop=True)
    ts = f["ts"].to_numpy(np.int64)
    t0 = ts.min() if n else 0
    rel = ts - t0
    cents = to_cents(f["amount"])
    out: dict[str, np.ndarray] = {"amount": f["amount"].to_numpy(np.float64)}
    out["is_night"], out["is_weekend"] = _calendar(ts)
    sorted_by: dict[str, tuple[_Sorted, np.ndarray]] = {}
    if windows == "duckdb":  # in stream order, as f: the (ts, arrival) order
        frame_windows = window_features_duckdb(f, config)
        for kind in config.entities:  # an entity the data lacks: its columns all missing, as below
            for w in config.windows:
                for stat in ("count", "sum", "mean", "std"):
                    name = f"{kind}_{stat}_{window_name(w)}"
                    has = name in frame_windows.columns
                    out[name] = frame_windows[name].to_numpy(np.float64) if has else np.full(n, np.nan)
    for kind in config.entities:
        column = ENTITY_COLUMNS[kind]
        present = f[column].notna().to_numpy() if column in f else np.zeros(n, bool)
        rows = np.flatnonzero(present)
        codes = pd.factorize(f[column].to_numpy()[rows])[0].astype(np.int64) if rows.size else rows
        s = _Sorted(codes, rel[rows])
        sorted_by[kind] = (s, rows)
        c = cents[rows][s.order]
        for w in config.windows if windows == "numpy" else ():
            count, total, squares = _window_offline(s, c, w)
            mean, std = mean_std(count, total, squares, 100.0)
            name = window_name(w)
            for stat, values in (
                ("count", count.astype(np.float64)),
                ("sum", total / 100.0),
                ("mean", mean),
                ("std", std),
            ):
                col = np.full(n, np.nan)
                col[rows[s.order]] = values
                out[f"{kind}_{stat}_{name}"] = col
    out.update(_card_offline(f, config, sorted_by["card"][0], cents, ts))
    out.update(_risk_offline(f, config, sorted_by["terminal"][0], sorted_by["terminal"][1], t0))
    result = pd.DataFrame(out)[config.feature_names()]
    inverse = np.empty(n, dtype=np.int64)
    inverse[arrival] = np.arange(n)
    return result.iloc[inverse].reset_index(drop=True)


def window_features_duckdb(
    source: pd.DataFrame | str | Any,
    config: FeatureConfig | None = None,
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """The entity window columns (``{e}_{count,sum,mean,std}_{w}``) of every payment, on DuckDB.

    For training frames over histories longer than memory: ``source`` is a DataFrame or Parquet
    file(s) (a path or glob, read out-of-core; DuckDB spills its window sorts to disk past
    ``memory_limit``). Returns ``tx_id`` and the window columns, one row per payment in stream order
    (by ``ts``, ties by arrival: the DataFrame's row order, or file name then row number).

    The same definition as the online windows, exactly: per entity, the payments in ``(t - w, t]``
    that arrived no later than this one (a SQL ``RANGE (w - 1) PRECEDING`` frame over integer
    seconds, minus the same-second payments that arrived after it), amounts as integer cents with
    NumPy's rounding (``round_even``), integer moments summed in SQL and turned into mean / std by
    the one :func:`~mlsd.platform.streaming.mean_std` both paths use (tests/fraud/test_features.py
    checks them against the online engine value for value).
    """
    import duckdb

    config = config or FeatureConfig()
    con = duckdb.connect()
    try:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        if isinstance(source, pd.DataFrame):
            _check(source)
            frame = source.assign(__file="", __row=np.arange(len(source), dtype=np.int64))
            con.register("payments_src", frame)
            relation = "payments_src"
            columns = set(frame.columns)
        else:
            path = str(source).replace("'", "''")
            relation = f"read_parquet('{path}', filename = true, file_row_number = true)"
            columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
            relation = f"(SELECT *, filename AS __file, file_row_number AS __row FROM {relation})"
        for name in ("tx_id", "ts", "amount"):
            if name not in columns:
                raise InputError(name, None, "is missing", f"the payments need a {name} column")
        selects, windows = [], []
        for kind in config.entities:
            column = ENTITY_COLUMNS[kind]
            if column not in columns:
                continue
            # peers: same entity, same second, arrived later: inside the RANGE frame, not yet seen
            windows.append(
                f"{kind}_later AS (PARTITION BY {column}, ts ORDER BY __order "
                "ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)"
            )
            for w in config.windows:
                name = f"{kind}_{window_name(w)}"
                windows.append(
                    f"{name} AS (PARTITION BY {column} ORDER BY ts RANGE BETWEEN {int(w) - 1} PRECEDING "
                    "AND CURRENT ROW)"
                )
                present = f"{column} IS NOT NULL"
                for stat, expr in (("n", "1"), ("s", "cents"), ("q", "cents * cents")):
                    later = f"COALESCE(SUM({expr}) OVER {kind}_later, 0)"
                    selects.append(
                        f"CASE WHEN {present} THEN CAST(SUM({expr}) OVER {name} - {later} AS BIGINT) END "
                        f'AS "{name}:{stat}"'
                    )
        sql = f"""
            WITH ordered AS (
                SELECT *, CAST(round_even(CAST(amount AS DOUBLE) * 100.0, 0) AS BIGINT) AS cents,
                       row_number() OVER (ORDER BY ts, __file, __row) AS __order
                FROM {relation}
            )
            SELECT tx_id, __order{"".join(", " + x for x in selects)}
            FROM ordered
            {"WINDOW " + ", ".join(windows) if windows else ""}
            ORDER BY __order
        """
        raw = con.execute(sql).df()
    finally:
        con.close()
    out: dict[str, Any] = {"tx_id": raw["tx_id"].to_numpy()}
    for kind in config.entities:
        for w in config.windows:
            name = f"{kind}_{window_name(w)}"
            if f"{name}:n" not in raw.columns:
                continue
            count, total, squares = (raw[f"{name}:{x}"] for x in ("n", "s", "q"))
            missing = count.isna().to_numpy()
            count, total, squares = (c.fillna(0).to_numpy(np.int64) for c in (count, total, squares))
            mean, std = mean_std(count, total, squares, 100.0)
            for stat, values in (
                ("count", count.astype(np.float64)),
                ("sum", total / 100.0),
                ("mean", mean),
                ("std", std),
            ):
                values = np.asarray(values, dtype=np.float64)
                values[missing] = np.nan
                out[f"{kind}_{stat}_{window_name(w)}"] = values
    return pd.DataFrame(out)


def _card_offline(f, config, s: _Sorted, cents, ts) -> dict[str, np.ndarray]:
    n = len(f)
    h = config.history
    attrs = _card_attrs(f, config)[s.order]
    c = cents[s.order]
    t = ts[s.order]
    res: dict[str, np.ndarray] = {}
    # history: the card's payments in (t - h, t), the current one excluded
    lo = s.first_after(s.rel - h)
    c1 = np.r_[0, np.cumsum(c)]
    c2 = np.r_[0, np.cumsum(c * c)]
    cnt, tot, sq = s.pos - lo, c1[s.pos] - c1[lo], c2[s.pos] - c2[lo]
    z, ratio = _against_history(c, cnt, tot, sq)
    prev = s.previous(1, h)
    pc = np.maximum(prev, 0)
    has = prev >= 0
    res["card_secs_since_last"] = np.where(has, (t - t[pc]).astype(np.float64), np.nan)
    res["card_amount_z"] = z
    res["card_amount_ratio"] = ratio
    res["card_new_terminal"] = _new_pair(s, attrs[:, 0], h)
    if "device" in config.extras:
        res["card_new_device"] = _new_pair(s, attrs[:, 1], h)
    if "geo" in config.extras:
        dist, speed = _geo(attrs[:, 2], attrs[:, 3], attrs[pc, 2], attrs[pc, 3], t - t[pc], has)
        res["card_distance_km"], res["card_geo_velocity_kmh"] = dist, speed
    prev_rows = [np.arange(n)] + [s.previous(k, h) for k in range(1, config.seq_len)]
    for i, p in enumerate(prev_rows):
        ok = p >= 0
        pcl = np.maximum(p, 0)
        vals = _seq_step(c[pcl], t - t[pcl], attrs[pcl, 0] == attrs[:, 0], ok)
        for name, v in zip(SEQ_FEATURES, vals, strict=True):
            res[f"seq{i}_{name}"] = v
    back = np.empty(n, dtype=np.int64)
    back[s.order] = np.arange(n)
    return {k: v[back] for k, v in res.items()}


def _against_history(cents, count, total, squares) -> tuple[np.ndarray, np.ndarray]:
    """Amount z-score (NaN under 2 payments or no spread) and ratio to the mean (NaN without history).

    The ratio is the robust one: a compromised card's inflated payments inflate the history's std
    and damp the z-score, much less the mean.
    """
    mean, std = mean_std(count, total, squares)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where((count >= 2) & (std > 0), (cents - mean) / std, np.nan)
        ratio = np.where((count >= 1) & (mean > 0), cents / mean, np.nan)
    return z, ratio


def _new_pair(s: _Sorted, other: np.ndarray, horizon: int) -> np.ndarray:
    """1.0 if the card has no payment with the same ``other`` id within the horizon before; NaN if missing."""
    n = len(other)
    present = ~np.isnan(other)
    out = np.full(n, np.nan)
    idx = np.flatnonzero(present)
    other_codes = pd.factorize(other[idx])[0].astype(np.int64)
    codes = pd.factorize(s.codes[idx] * (other_codes.max(initial=0) + 1) + other_codes)[0].astype(np.int64)
    pair = _Sorted(codes, s.rel[idx])  # idx is in (card, ts) order, so pair order keeps ts order
    prev = pair.previous(1, horizon)
    new = (prev < 0).astype(np.float64)
    out[idx[pair.order]] = new
    return out


def _geo(lat, lon, plat, plon, dt, has):
    with np.errstate(invalid="ignore"):
        dist = np.where(has, haversine_km(plat, plon, lat, lon), np.nan)
        speed = dist / np.maximum(dt.astype(np.float64), 60.0) * 3600.0
    return dist, speed


def _seq_step(cents, age, same_terminal, ok):
    present = ok.astype(np.float64)
    # An out-of-order payment (dated before the card's previous one) has a negative age; log1p of
    # that is NaN below -1, and a NaN feature must never reach the model: clamp to "same second".
    cents, age = np.where(ok, cents, 0), np.where(ok, np.maximum(age, 0), 0)
    return (
        np.where(ok, np.log1p(cents / 100.0), 0.0),
        np.where(ok, np.log1p(age.astype(np.float64)), 0.0),
        np.where(ok, same_terminal.astype(np.float64), 0.0),
        present,
    )


def _risk_offline(f, config, s: _Sorted, rows: np.ndarray, t0: int) -> dict[str, np.ndarray]:
    n = len(f)
    d = config.risk_delay
    fraud = f["fraud"].to_numpy(np.float64)[rows][s.order] if "fraud" in f else np.zeros(rows.size)
    label = (
        f["label_ts"].to_numpy(np.float64)[rows][s.order] if "label_ts" in f else np.full(rows.size, np.nan)
    )
    known = (fraud == 1) & ~np.isnan(label)
    j = np.flatnonzero(known)
    label_rel = np.where(known, label - t0, 0).astype(np.int64)
    res = {}
    for w in config.risk_windows:
        if d > 0:
            hi = s.first_after(s.rel - d)
            lo = s.first_after(s.rel - d - w)
            den = hi - lo
        else:
            den = s.pos + 1 - s.first_after(s.rel - w)
        # every known fraud j adds one to the sorted rows that see it: same terminal, label known by
        # then (t >= label_ts), j inside their delayed window (t - d - w < ts_j <= t - d), j not the row itself
        start = np.searchsorted(
            s.key, s.codes[j] * _BIG + np.maximum(s.rel[j] + d, label_rel[j]), side="left"
        )
        if d == 0:
            start = np.maximum(start, j + 1)
        end = np.searchsorted(s.key, s.codes[j] * _BIG + s.rel[j] + d + w, side="left")
        diff = np.zeros(rows.size + 1, dtype=np.int64)
        valid = end > start
        np.add.at(diff, start[valid], 1)
        np.add.at(diff, end[valid], -1)
        num = np.cumsum(diff)[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            risk = np.where(den > 0, num / np.maximum(den, 1), 0.0)
        col = np.full(n, np.nan)
        col[rows[s.order]] = risk
        res[f"terminal_risk_{window_name(w)}"] = col
    return res


def _drain(finish) -> None:
    """Read (and drop) a sent batch's reply after an error elsewhere, so its connection stays usable."""
    with contextlib.suppress(Exception):  # the original error is the one to report
        finish()


# ------------------------------------------------------------------------------------------------
# feature records: a payment's row, kept once, so a replay gets exactly the features it had
# ------------------------------------------------------------------------------------------------
class MemoryRecords:
    """The last ``capacity`` feature rows by ``tx_id``, in this process (a ring: oldest overwritten).

    Examples:
        >>> import numpy as np
        >>> records = MemoryRecords(n_features=2, capacity=2)
        >>> records.put(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]))   # -> rows (first wins)
        array([[1., 2.],
               [3., 4.]])
        >>> found, rows = records.get(["b", "x", "a"])
        >>> found.tolist(), rows.tolist()
        ([0, 2], [[3.0, 4.0], [1.0, 2.0]])
        >>> _ = records.put(["c"], np.array([[5.0, 6.0]]))   # the ring is full: "a" (the oldest) goes
        >>> records.get(["a", "c"])[0].tolist()
        [1]
    """

    def __init__(self, n_features: int, capacity: int = 20_000) -> None:
        self.capacity = int(capacity)
        self._rows = np.empty((self.capacity, n_features), dtype=np.float64)
        self._owner = np.full(self.capacity, None, dtype=object)  # the id each ring slot holds
        self._slot: dict[Any, int] = {}
        self._next = 0

    def get(self, ids: list) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in ids that have a row, their rows)``."""
        slots = np.fromiter(map(self._slot.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        found = np.flatnonzero(slots >= 0)
        return found, self._rows[slots[found]]

    def put(self, ids: list, rows: np.ndarray) -> np.ndarray:
        """Record rows of ids not recorded yet; returns the recorded row of every id (first wins)."""
        found, have = self.get(ids)
        out = rows.copy()
        out[found] = have
        new = np.ones(len(ids), dtype=bool)
        new[found] = False
        first: dict[Any, int] = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1), strict=True))  # 1st
        new &= np.fromiter(map(first.__getitem__, ids), dtype=np.int64, count=len(ids)) == np.arange(len(ids))
        idx = np.flatnonzero(new)[-self.capacity :]
        slots = (self._next + np.arange(idx.size)) % self.capacity
        self._next = int((self._next + idx.size) % self.capacity)
        list(map(self._slot.pop, self._owner[slots].tolist(), repeat(None)))  # the slots' ids leave
        chosen = ids if idx.size == len(ids) else [ids[i] for i in idx.tolist()]
        owners = np.empty(len(chosen), dtype=object)
        owners[:] = chosen
        self._owner[slots] = owners
        self._slot.update(zip(chosen, slots.tolist(), strict=True))
        self._rows[slots] = rows[idx]
        dup = np.flatnonzero(~new)
        dup = dup[np.isin(dup, found, invert=True)]
        if dup.size:  # an id twice in one batch: the later one gets the first one's row
            out[dup] = out[[first[ids[i]] for i in dup.tolist()]]
        return out


# KEYS: this bucket's hash, the previous bucket's. ARGV: the ids, one a line (one argument: packing
# thousands costs more than the script). Returns the positions (1-based, comma separated) of the ids
# with a row, and those rows concatenated (fixed width each).
_GET_ROWS = """
local ids = {}
for id in string.gmatch(ARGV[1], '([^\\n]*)\\n') do ids[#ids + 1] = id end
local found, rows = {}, {}
for i = 1, #ids do
  local row = redis.call('HGET', KEYS[1], ids[i]) or redis.call('HGET', KEYS[2], ids[i])
  if row then
    found[#found + 1] = i
    rows[#rows + 1] = row
  end
end
return {table.concat(found, ','), table.concat(rows)}
"""

# KEYS: this bucket's hash, the previous bucket's. ARGV: ttl, row width in bytes, the rows
# concatenated, the ids one a line. Records the rows of ids not recorded yet (first writer wins) and
# returns the positions and rows of the ids that had one already: a concurrent or earlier delivery.
_PUT_ROWS = """
local ttl, width, blob = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local lost, rows = {}, {}
local k = 0
for id in string.gmatch(ARGV[4], '([^\\n]*)\\n') do
  k = k + 1
  local row = string.sub(blob, (k - 1) * width + 1, k * width)
  local have = redis.call('HGET', KEYS[2], id)
  if not have and redis.call('HSETNX', KEYS[1], id, row) == 0 then
    have = redis.call('HGET', KEYS[1], id)
  end
  if have then
    lost[#lost + 1] = k
    rows[#rows + 1] = have
  end
end
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return {table.concat(lost, ','), table.concat(rows)}
"""


def _retries(n: int) -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), int(n))


def _lines(ids: list) -> str:
    """Ids one a line, as one script argument (the window stores refuse ids with line breaks too)."""
    text = "\n".join(ids) + "\n"
    if text.count("\n") != len(ids):
        bad = next(i for i in ids if "\n" in i)
        raise InputError("tx_id", bad, "contains a line break", "use payment ids without line breaks")
    return text


class RedisRecords:
    """Feature rows by ``tx_id`` on Redis, shared by every worker: one hash per time bucket of
    ``window_s`` seconds (wall clock), kept two buckets (like the stream's ``decided`` set), so a
    redelivery within ``window_s`` finds its row and memory holds two windows of rows.

    Rows are float64 bytes; the key carries a digest of the feature names, so rows of another
    feature set are never read as this one's.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        feature_names: list[str],
        window_s: int = 120,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        digest = hashlib.sha1(",".join(feature_names).encode()).hexdigest()[:10]
        self.base = f"{prefix}rec:{digest}:"
        self.width = len(feature_names)
        self.window_s = int(window_s)
        self.clock = clock
        self._get = client.register_script(_GET_ROWS)
        self._put = client.register_script(_PUT_ROWS)

    def _keys(self) -> list[str]:
        bucket = int(self.clock() // self.window_s)
        return [f"{self.base}{bucket}", f"{self.base}{bucket - 1}"]

    def _rows(self, reply) -> tuple[np.ndarray, np.ndarray]:
        positions, blob = reply
        found = np.fromstring(positions, dtype=np.int64, sep=",") - 1 if positions else np.zeros(0, np.int64)
        rows = np.frombuffer(blob, dtype="<f8").reshape(found.size, self.width)
        return found, rows

    def get(self, ids: list) -> tuple[np.ndarray, np.ndarray]:
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.width))
        return self._rows(self._get(keys=self._keys(), args=[_lines(ids)]))

    def put(self, ids: list, rows: np.ndarray) -> np.ndarray:
        if not ids:
            return rows
        blob = np.ascontiguousarray(rows, dtype="<f8").tobytes()
        lost, have = self._rows(
            self._put(keys=self._keys(), args=[2 * self.window_s, 8 * self.width, blob, _lines(ids)])
        )
        out = rows.copy()
        out[lost] = have
        return out


# ------------------------------------------------------------------------------------------------
# online: per micro-batch, backed by a WindowStore
# ------------------------------------------------------------------------------------------------
class FeatureEngine:
    """Online features per micro-batch: ``update_batch(frame) -> DataFrame`` (rows in frame order).

    ``backend="memory"`` keeps window state in numpy ring buffers in this process; ``"redis"`` on a
    Redis server (``redis_url``, keys under ``prefix``), so several workers can share it.

    **Replays get the features they had.** Every payment's feature row is recorded once, keyed by
    ``tx_id`` (:class:`MemoryRecords`: the last ``record_capacity`` rows of this process;
    :class:`RedisRecords`: every worker's rows of the last ``record_window_s`` to twice that), and a
    payment found there is answered from its record without touching the windows - whatever came
    after it. Between the window update and the record a process can die; the payment is then a
    replay to the windows, and its view is cut where the original's was (the key's latest time *as
    of the payment*, not now), so the recomputed row is the one the original would have recorded
    (the Redis store keeps cells ``retain_s`` past the horizon for that). Fraud labels enter through
    :meth:`add_labels` when they become known.

    ``after_update``: called once the batch's windows are updated and its rows recorded (the stream
    worker lets the next batch in then: :meth:`~mlsd.fraud.stream.StreamWorker.mark_applied`).
    """

    def __init__(
        self,
        config: FeatureConfig | None = None,
        *,
        backend: str = "memory",
        redis_url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "mlsd:fraud:",
        record_window_s: int = 120,
        record_capacity: int = 20_000,
        retain_s: int = DAY,
        socket_timeout_s: float | None = 10.0,
        redis_retries: int | None = None,
    ) -> None:
        self.config = config or FeatureConfig()
        self.backend = backend
        self.stores: dict[str, WindowStore] = {}
        self.feature_names = self.config.feature_names()
        self.after_update: Callable[[], None] | None = None
        client = None
        if backend == "redis":
            import redis

            # a Redis that stops answering must not hang a worker forever: a timeout is an error the
            # stream worker retries (with backoff), as it does a refused or cut connection
            # redis_retries: None = redis-py's own silent retries; the stream worker passes 0, as its
            # loop retries (logged, with backoff and jitter) and a call must fail fast to get there
            extra = {} if redis_retries is None else {"retry": _retries(redis_retries)}
            client = redis.Redis.from_url(
                redis_url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s, **extra
            )
        for kind in self.config.entities:
            n_attrs = 4 if kind == "card" else 0
            horizon = self.config.horizon(kind)
            if backend == "memory":
                self.stores[kind] = MemoryWindowStore(
                    horizon, n_attrs, capacity=16, name=kind
                )  # metric label
            elif backend == "redis":
                from mlsd.platform.streaming.redis_windows import RedisWindowStore

                self.stores[kind] = RedisWindowStore(
                    horizon,
                    n_attrs,
                    prefix=f"{prefix}{kind}:",
                    client=client,
                    retain_s=retain_s,
                    idle_ttl_s=2 * horizon + retain_s,  # wall clock: idle keys go, a stalled stream's don't
                )
            else:
                raise InputError("backend", backend, "unknown window backend", "use 'memory' or 'redis'")
        self.records: MemoryRecords | RedisRecords = (
            RedisRecords(client, prefix, self.feature_names, record_window_s)
            if client is not None
            else MemoryRecords(len(self.feature_names), record_capacity)
        )

    def presize(self, frame: pd.DataFrame, headroom: float = 1.5) -> dict[str, tuple[int, int]]:
        """Size the in-memory window stores for the population of ``frame`` (payments this process
        expects: its card / terminal base, a replay): per entity, its distinct keys and the most
        events one key holds within the horizon, times ``headroom``. Returns ``{kind: (keys, capacity)}``.

        Growing a store copies all of it (a stall the stream queues behind); sized at warm-up,
        growth never happens in steady state. Nothing is recorded; stores without ``reserve``
        (Redis) are left alone.
        """
        ts = frame["ts"].to_numpy().astype(np.int64)
        sizes: dict[str, tuple[int, int]] = {}
        for kind, store in self.stores.items():
            column = ENTITY_COLUMNS[kind]
            if not hasattr(store, "reserve") or column not in frame.columns:
                continue
            codes, uniques = pd.factorize(frame[column], use_na_sentinel=True)
            ok = codes >= 0
            if not ok.any():
                continue
            # one sorted int64 per event: key in the high bits, time in the low ones; an event's
            # live count is its position minus the first position inside (t - horizon, t]
            t = ts[ok] - ts[ok].min()
            packed = np.sort(codes[ok].astype(np.int64) << 36 | t)
            first = np.searchsorted(packed, packed - store.horizon_s, side="right")
            peak = int((np.arange(packed.size) - first + 1).max())
            keys, capacity = int(len(uniques) * headroom) + 1, int(peak * headroom) + 1
            store.reserve(keys, capacity)  # type: ignore[attr-defined]
            sizes[kind] = (keys, capacity)
        return sizes

    def update_batch(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Record a micro-batch of payments and return their features (rows in ``frame``'s order).

        Within the batch, payments are applied in event-time order (ties by position), whatever the
        order they came in; across batches the stream is expected in event-time order per entity.
        """
        return pd.DataFrame(self.update_matrix(frame), columns=self.feature_names, copy=False)

    def update_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """:meth:`update_batch` as one ``(n, len(feature_names))`` float64 matrix (no DataFrame).

        The hot path of the online pipeline: each input column is read once as a numpy array and
        every feature written straight into its column of a preallocated matrix. Payments already
        recorded (by ``tx_id``) get their recorded row; the others update the windows and are
        recorded (first writer wins: two workers racing on one payment both return the same row).
        """
        _check(frame)
        needed = ("tx_id", "ts", "amount", "lat", "lon", *ENTITY_COLUMNS.values())
        cols = {c: frame[c].to_numpy() for c in needed if c in frame.columns}
        ids = list(map(str, cols["tx_id"].tolist()))
        # payments recorded before (a redelivery, a retried request): their rows, windows untouched
        found, rows = self.records.get(ids)
        matrix = np.empty((len(ids), len(self.feature_names)), dtype=np.float64)
        matrix[found] = rows
        if found.size < len(ids):
            fresh = np.ones(len(ids), dtype=bool)
            fresh[found] = False
            todo = np.flatnonzero(fresh)
            part = {c: v[todo] for c, v in cols.items()} if found.size else cols
            computed = self._update_in_time_order(part)
            fresh_ids = [ids[i] for i in todo.tolist()] if found.size else ids  # rare: a replay in it
            matrix[todo] = self.records.put(fresh_ids, computed)
        if self.after_update is not None:
            self.after_update()
        return matrix

    def _update_in_time_order(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        ts_in = cols["ts"].astype(np.int64, copy=False)
        if ts_in.size > 1 and (ts_in[1:] < ts_in[:-1]).any():
            order = np.argsort(ts_in, kind="stable")
            matrix = self._update_sorted({c: v[order] for c, v in cols.items()})
            inverse = np.empty(order.size, dtype=np.int64)
            inverse[order] = np.arange(order.size)
            return matrix[inverse]
        return self._update_sorted(cols)

    def _update_sorted(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        n = len(cols["ts"])
        config = self.config
        ts = cols["ts"].astype(np.int64, copy=False)
        amount = cols["amount"].astype(np.float64, copy=False)
        cents = to_cents(amount)
        ids = cols["tx_id"].tolist()
        index = {name: k for k, name in enumerate(self.feature_names)}
        matrix = np.empty((n, len(self.feature_names)), dtype=np.float64)
        matrix[:, index["amount"]] = amount
        matrix[:, index["is_night"]], matrix[:, index["is_weekend"]] = _calendar(ts)
        card_attrs = _card_attrs(cols, config)
        batches = []
        for kind in config.entities:
            column = ENTITY_COLUMNS[kind]
            values = cols.get(column)
            if values is None:
                rows = np.zeros(0, dtype=np.int64)
            elif values.dtype.kind in "iub":
                rows = np.arange(n)
            else:
                present = ~pd.isna(values)
                rows = np.arange(n) if present.all() else np.flatnonzero(present)
            keys = (values if rows.size == n else values[rows]).tolist() if values is not None else []
            attrs = card_attrs[rows] if kind == "card" else None
            sel_ids = ids if rows.size == n else [ids[i] for i in rows.tolist()]
            batches.append((kind, rows, attrs, (keys, sel_ids, ts[rows], cents[rows], attrs)))
        # Redis: send every store's batch before reading any reply, so that the features of one
        # entity are computed while Redis applies the next entity's batch
        pending = {}
        try:
            for kind, _, _, args in batches:
                begin = getattr(self.stores[kind], "update_many_begin", None)
                if begin is not None:
                    pending[kind] = begin(*args)
        except BaseException:
            for finish in pending.values():
                _drain(finish)
            raise
        try:
            for kind, rows, attrs, args in batches:
                view = pending.pop(kind)() if kind in pending else self.stores[kind].update_many(*args)
                view = as_first_seen(view, self.stores[kind].horizon_s)

                def put(name: str, col: np.ndarray, rows=rows) -> None:
                    j = index[name]
                    if rows.size == n:
                        matrix[:, j] = col
                    else:
                        matrix[:, j] = np.nan
                        matrix[rows, j] = col

                for w in config.windows:
                    count, total, squares = view.moments(view.window(w))
                    mean, std = mean_std(count, total, squares, 100.0)
                    name = window_name(w)
                    put(f"{kind}_count_{name}", count.astype(np.float64))
                    put(f"{kind}_sum_{name}", total / 100.0)
                    put(f"{kind}_mean_{name}", mean)
                    put(f"{kind}_std_{name}", std)
                if kind == "card":
                    for name, col in self._card_online(view, cents[rows], attrs).items():
                        put(name, col)
                if kind == "terminal":
                    known = view.label_ts <= view.t[:, None]
                    for w in config.risk_windows:
                        window = view.window(w, config.risk_delay)
                        den = window.sum(axis=1)
                        num = (window & known).sum(axis=1)
                        risk = np.where(den > 0, num / np.maximum(den, 1), 0.0)
                        put(f"terminal_risk_{window_name(w)}", risk)
        except BaseException:
            for finish in pending.values():
                _drain(finish)
            raise
        return matrix

    def clear_records(self) -> None:
        """Forget the recorded rows (tests that replay one stream through a fresh set of windows)."""
        if isinstance(self.records, MemoryRecords):
            self.records = MemoryRecords(len(self.feature_names), self.records.capacity)

    def _card_online(self, view: WindowView, cents: np.ndarray, attrs: np.ndarray) -> dict[str, np.ndarray]:
        config = self.config
        h = config.history
        t = view.t
        hist = view.before() & (view.ts > (t - h)[:, None])
        z, ratio = _against_history(cents, *view.moments(hist))
        # the history's cells newest first: column 0 = previous payment, 1 = the one before, ...
        rank = np.argsort(np.where(hist, -view.seq, np.iinfo(np.int64).max), axis=1, kind="stable")
        rows = np.arange(len(t))[:, None]
        h_ts = view.ts[rows, rank]
        h_val = view.value[rows, rank]
        h_attr = view.attrs[rows, rank]
        h_ok = hist[rows, rank]
        has = h_ok[:, 0] if h_ok.shape[1] else np.zeros(len(t), bool)
        res: dict[str, np.ndarray] = {}
        prev_ts = h_ts[:, 0] if h_ok.shape[1] else t
        res["card_secs_since_last"] = np.where(has, (t - prev_ts).astype(np.float64), np.nan)
        res["card_amount_z"] = z
        res["card_amount_ratio"] = ratio
        for name, col, enabled in (
            ("card_new_terminal", 0, True),
            ("card_new_device", 1, "device" in config.extras),
        ):
            if not enabled:
                continue
            own = attrs[:, col]
            seen = (hist & (view.attrs[:, :, col] == own[:, None])).any(axis=1)
            res[name] = np.where(np.isnan(own), np.nan, (~seen).astype(np.float64))
        if "geo" in config.extras:
            p = h_attr[:, 0] if h_ok.shape[1] else np.full((len(t), 4), np.nan)
            res["card_distance_km"], res["card_geo_velocity_kmh"] = _geo(
                attrs[:, 2], attrs[:, 3], p[:, 2], p[:, 3], t - prev_ts, has
            )
        width = h_ok.shape[1]
        for i in range(config.seq_len):
            if i == 0:
                vals = _seq_step(
                    cents, np.zeros(len(t), np.int64), np.ones(len(t), bool), np.ones(len(t), bool)
                )
            elif i - 1 < width:
                k = i - 1
                vals = _seq_step(h_val[:, k], t - h_ts[:, k], h_attr[:, k, 0] == attrs[:, 0], h_ok[:, k])
            else:
                z0 = np.zeros(len(t))
                vals = (z0, z0, z0, z0)
            for name, v in zip(SEQ_FEATURES, vals, strict=True):
                res[f"seq{i}_{name}"] = v
        return res

    def add_labels(self, frame: pd.DataFrame) -> int:
        """Fraud labels that became known: columns ``tx_id``, ``terminal_id``, ``label_ts`` (and ``fraud``).

        Only frauds matter to the terminal risk; genuine labels are ignored. Returns how many stored
        payments got a label.
        """
        if "terminal" not in self.stores or frame.empty:
            return 0
        for column in ("tx_id", "terminal_id", "label_ts"):
            if column not in frame.columns:
                raise InputError(column, None, "is missing", f"give every label a {column}")
        if "fraud" in frame.columns:
            frame = frame[frame["fraud"].to_numpy() == 1]
        return self.stores["terminal"].set_labels(
            frame["terminal_id"].tolist(), frame["tx_id"].tolist(), frame["label_ts"].to_numpy(np.int64)
        )


def as_first_seen(view: WindowView, horizon_s: int) -> WindowView:
    """``view`` with each replayed event cut where its first application was: at the key's latest
    time *as of the event* (the newest of the cells stored up to it) minus the horizon, not at the
    key's latest time now. Later events of the key then cannot change what the replay sees (they
    are newer than it, or stored after it), so a payment applied once before a crash and again after
    gets the same features. Fresh events are left as they are.

    Examples:
        >>> store = MemoryWindowStore(horizon_s=100)
        >>> _ = store.update_many(["k", "k"], ["a", "b"], np.array([0, 50]), np.array([1, 2]))
        >>> _ = store.update_many(["k"], ["c"], np.array([120]), np.array([4]))   # the key moves on
        >>> again = store.update_many(["k"], ["b"], np.array([50]), np.array([2]))
        >>> again.moments(again.window(100))[1].tolist()   # now: "a" (at 0) is cut at 120 - 100
        [2]
        >>> fixed = as_first_seen(again, 100)
        >>> fixed.moments(fixed.window(100))[1].tolist()   # as "b" saw it: cut at 50 - 100
        [3]
    """
    again = ~view.inserted & (view.own_seq != NOT_STORED)
    if view.cut is None or not again.any():
        return view
    mine = (view.seq >= 0) & (view.seq <= view.own_seq[:, None])
    latest_then = np.where(mine, view.ts, PAD_TS).max(axis=1, initial=PAD_TS)
    cut = view.cut.copy()
    cut[again] = np.maximum(view.t[again], latest_then[again]) - horizon_s
    return dataclasses.replace(view, cut=cut, _seen=None, _upto=None)


def replay_events(frame: pd.DataFrame, batch_size: int = 512) -> Iterator[tuple[str, pd.DataFrame]]:
    """The stream a live system sees: payments in event-time order and fraud labels at ``label_ts``.

    Yields ``("payments", micro_batch)`` and ``("labels", frame)`` in time order (a label right after
    its payment when both share a second). Micro-batches never straddle a label arrival, so a label is
    known to exactly the payments at or after its ``label_ts`` - as in :func:`compute_features`.
    """
    f = frame.iloc[np.argsort(frame["ts"].to_numpy(np.int64), kind="stable")].reset_index(drop=True)
    n = len(f)
    if "fraud" in f and "label_ts" in f:
        lab = np.flatnonzero((f["fraud"].to_numpy() == 1) & f["label_ts"].notna().to_numpy())
    else:
        lab = np.zeros(0, dtype=np.int64)
    times = np.r_[f["ts"].to_numpy(np.int64), f["label_ts"].to_numpy(np.float64)[lab].astype(np.int64)]
    rank = np.r_[np.arange(n, dtype=np.float64), lab + 0.5]
    is_label = np.r_[np.zeros(n, bool), np.ones(lab.size, bool)]
    row = np.r_[np.arange(n), lab]
    order = np.lexsort((rank, times))
    is_label, row = is_label[order], row[order]
    cuts = np.flatnonzero(np.diff(is_label.astype(np.int8))) + 1
    for chunk_rows, chunk_is_label in zip(np.split(row, cuts), np.split(is_label, cuts), strict=True):
        if chunk_is_label[0]:
            yield "labels", f.iloc[chunk_rows]
        else:
            for i in range(0, chunk_rows.size, batch_size):
                yield "payments", f.iloc[chunk_rows[i : i + batch_size]]


def replay(engine: FeatureEngine, frame: pd.DataFrame, batch_size: int = 512) -> pd.DataFrame:
    """Feed ``frame`` through ``engine`` as a live stream; features in the input's row order."""
    parts = []
    for kind, chunk in replay_events(frame, batch_size):
        if kind == "labels":
            engine.add_labels(chunk)
        else:
            feats = engine.update_batch(chunk)
            feats.index = chunk.index
            parts.append(feats)
    order = np.argsort(frame["ts"].to_numpy(np.int64), kind="stable")
    result = pd.concat(parts).sort_index() if parts else pd.DataFrame(columns=engine.feature_names)
    inverse = np.empty(len(frame), dtype=np.int64)
    inverse[order] = np.arange(len(frame))
    return result.iloc[inverse].reset_index(drop=True)
