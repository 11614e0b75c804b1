"""Exposures logged exactly once, and outcomes folded into mergeable sufficient statistics.

An *exposure* is the moment a unit actually experienced its arm (the service served the challenger's
ranking to that user), which is what the analysis counts -- not the assignment, which can happen for
units that never reach the changed code. :class:`ExposureLog` is the seam: :class:`MemoryExposureLog`
in-process, :class:`RedisExposureLog` on Redis Streams. Both log a (unit, experiment, arm) once, however
many times a service reports it, and answer the same ``exposures(experiment)`` frame.

Outcomes (watch minutes, clicks, revenue, fraud losses) are summed per unit and folded into
:class:`MetricStats`: per arm, ``n``, the sums and the cross products of the metric's variables. These
are all the analysis needs; they are small (a few numbers per arm), and stats from two shards or two
days add up (``a + b``) to the stats of the union.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.assignment import MetricSpec, _id_bytes
from mlsd.platform.redis_cluster import run_script, tagged

EXPOSURE_COLUMNS = ("unit", "arm", "ts")

# ---------------------------------------------------------------------------------------------------
# Exposure log seam


@runtime_checkable
class ExposureLog(Protocol):
    """Where exposures go. Every implementation passes ``tests/platform/test_exposures.py``.

    Examples:
        >>> isinstance(MemoryExposureLog(), ExposureLog)
        True
    """

    def log(self, experiment: str, unit_ids: Any, arms: Any, ts: Any = None) -> np.ndarray:
        """Log exposures; return a bool mask, True where this call logged a new (unit, arm) for the
        experiment. Units with arm -1 (not in the experiment) are skipped. ``ts``: int64 seconds,
        a scalar or one per unit (default: now)."""
        ...

    def exposures(self, experiment: str) -> pd.DataFrame:
        """Every exposure logged for ``experiment``, in log order: columns unit (str), arm, ts (int64)."""
        ...


def _prepare(
    unit_ids: Any, arms: Any, ts: Any, clock: Callable[[], float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    units = [u.decode() for u in _id_bytes(unit_ids)]
    arm_arr = np.asarray(arms, dtype=np.int64).reshape(-1)
    if len(arm_arr) != len(units):
        raise InputError(
            "arms",
            len(arm_arr),
            f"expected one arm per unit ({len(units)})",
            "pass arms aligned with unit_ids",
        )
    if ts is None:
        ts = int(clock())
    ts_arr = np.broadcast_to(np.asarray(ts, dtype=np.int64), arm_arr.shape)
    return units, arm_arr, ts_arr


def _frame(units: Sequence[str], arms: Sequence[int], ts: Sequence[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unit": pd.Series(list(units), dtype=object),
            "arm": np.asarray(arms, dtype=np.int64),
            "ts": np.asarray(ts, dtype=np.int64),
        }
    )


class MemoryExposureLog:
    """In-process exposure log (one process, tests, simulations). Thread-safe.

    Examples:
        >>> log = MemoryExposureLog()
        >>> log.log("ranker", ["a", "b", "a", "c"], [0, 1, 0, -1], ts=100).tolist()   # c: not in it
        [True, True, False, False]
        >>> log.log("ranker", ["a", "b"], [0, 0], ts=200).tolist()   # b in another arm is a new pair
        [False, True]
        >>> log.exposures("ranker").to_dict("list")   # the analysis keeps each unit's first exposure
        {'unit': ['a', 'b', 'b'], 'arm': [0, 1, 0], 'ts': [100, 100, 200]}
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, set[tuple[str, int]]] = {}
        self._rows: dict[str, list[tuple[str, int, int]]] = {}

    def log(self, experiment: str, unit_ids: Any, arms: Any, ts: Any = None) -> np.ndarray:
        units, arm_arr, ts_arr = _prepare(unit_ids, arms, ts, self.clock)
        new = np.zeros(len(units), dtype=bool)
        with self._lock:
            seen = self._seen.setdefault(experiment, set())
            rows = self._rows.setdefault(experiment, [])
            # A set lookup per exposure is the fast path in Python; the batch is processed in one lock.
            for i, (unit, arm, t) in enumerate(zip(units, arm_arr.tolist(), ts_arr.tolist(), strict=True)):
                if arm < 0 or (unit, arm) in seen:
                    continue
                seen.add((unit, arm))
                rows.append((unit, arm, t))
                new[i] = True
        return new

    def exposures(self, experiment: str) -> pd.DataFrame:
        with self._lock:
            rows = list(self._rows.get(experiment, []))
        if not rows:
            return _frame([], [], [])
        units, arms, ts = zip(*rows, strict=True)
        return _frame(units, arms, ts)


# SADD answers 1 only the first time a member is added, so the set is the dedup and the XADD happens
# only then; one script makes the pair atomic (no exposure lost or doubled if a client dies mid-batch).
_LOG_SCRIPT = """
local out = {}
local n = #ARGV / 3
for i = 1, n do
  local u = ARGV[3*i-2]
  local a = ARGV[3*i-1]
  if redis.call('SADD', KEYS[1], u .. '\\31' .. a) == 1 then
    redis.call('XADD', KEYS[2], '*', 'unit', u, 'arm', a, 'ts', ARGV[3*i])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


class RedisExposureLog:
    """Exposures on Redis: a Stream per experiment (the log) and a Set per experiment (the dedup).

    ``url``: ``redis://host:port/db`` or ``redis+cluster://host:port`` (a Redis Cluster). Keys are
    ``{prefix}exp:{<experiment>}:exposures`` and ``...:seen``; the braces are a Redis Cluster hash tag,
    so both keys of an experiment live on one slot and the Lua script may touch both: each script call
    (``chunk`` exposures) is atomic, on a single Redis and on a cluster alike. Experiments spread over
    the cluster's masters; one experiment's log lives on one (docs/scaling.md measures what that holds).

    Examples:
        >>> # The client connects lazily: units not in the experiment (-1) never reach the server.
        >>> log = RedisExposureLog("redis://127.0.0.1:6379/0", prefix="mlsd:")
        >>> isinstance(log, ExposureLog), log.log("ranker", ["a", "b"], [-1, -1]).tolist()
        (True, [False, False])
        >>> log.close()
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "mlsd:",
        clock: Callable[[], float] = time.time,
        chunk: int = 2000,
    ) -> None:
        from mlsd.platform.redis_cluster import check_untagged, connect

        self.url = url
        self.prefix = check_untagged("prefix", prefix)  # its braces would be every experiment's hash tag
        self.clock = clock
        self.chunk = chunk  # exposures per script call: bounds how long Redis is blocked by one batch
        self._client = connect(url)

    def _keys(self, experiment: str) -> tuple[str, str]:
        base = tagged(f"{self.prefix}exp:", experiment)
        return f"{base}:seen", f"{base}:exposures"

    def log(self, experiment: str, unit_ids: Any, arms: Any, ts: Any = None) -> np.ndarray:
        units, arm_arr, ts_arr = _prepare(unit_ids, arms, ts, self.clock)
        new = np.zeros(len(units), dtype=bool)
        idx = np.flatnonzero(arm_arr >= 0)
        keys = list(self._keys(experiment))
        parts, calls = [], []
        for start in range(0, len(idx), self.chunk):
            part = idx[start : start + self.chunk]
            argv: list[Any] = []
            for i in part.tolist():
                argv += [units[i], int(arm_arr[i]), int(ts_arr[i])]
            parts.append(part)
            calls.append((keys, argv))
        # every chunk's call in one pipeline (one round trip), each call atomic
        for part, flags in zip(parts, run_script(self._client, _LOG_SCRIPT, calls), strict=True):
            new[part] = np.asarray(flags, dtype=bool)
        return new

    def exposures(self, experiment: str, page: int = 10_000) -> pd.DataFrame:
        _, stream = self._keys(experiment)
        units: list[str] = []
        arms: list[int] = []
        ts: list[int] = []
        low = "-"
        while True:
            entries = self._client.xrange(stream, min=low, max="+", count=page)
            for _entry_id, fields in entries:
                units.append(fields[b"unit"].decode())
                arms.append(int(fields[b"arm"]))
                ts.append(int(fields[b"ts"]))
            if len(entries) < page:
                break
            low = "(" + entries[-1][0].decode()  # exclusive start after the last id seen
        return _frame(units, arms, ts)

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------------------------------------------
# Sufficient statistics


@dataclass
class MetricStats:
    """Per-arm sufficient statistics of one metric.

    ``variables`` names the per-unit quantities: ``("y",)`` for a mean metric, ``("y", "x")`` with a CUPED
    covariate, ``("num", "den")`` for a ratio metric. ``n`` has shape ``(..., n_arms)``, ``s`` (sums)
    ``(..., n_arms, k)`` and ``q`` (sums of cross products, ``q[..., a, i, j] = sum v_i v_j``)
    ``(..., n_arms, k, k)``. Leading ``...`` dimensions are optional: simulations stack thousands of
    experiments in one object and every analysis function broadcasts over them.

    Examples:
        >>> arms = ["control", "treatment"]
        >>> minutes = [1.0, 3.0, 2.0, 6.0, 99.0]   # the last unit is not in the experiment (-1)
        >>> stats = MetricStats.from_arrays("minutes", arms, [0, 0, 1, 1, -1], {"y": minutes})
        >>> stats.n.tolist(), stats.s[:, 0].tolist(), stats.q[:, 0, 0].tolist()   # n, sum y, sum y^2
        ([2.0, 2.0], [4.0, 8.0], [10.0, 40.0])
        >>> (stats + stats).n.tolist()   # two shards merge by addition
        [4.0, 4.0]
        >>> MetricStats.from_dict(stats.to_dict()).s.tolist() == stats.s.tolist()   # a JSON round trip
        True
    """

    metric: str
    variables: tuple[str, ...]
    arms: tuple[str, ...]
    n: np.ndarray
    s: np.ndarray
    q: np.ndarray

    @classmethod
    def from_arrays(
        cls, metric: str, arms: Sequence[str], arm_idx: Any, values: Mapping[str, Any]
    ) -> MetricStats:
        """Fold per-unit values (one row per unit) into stats; rows with arm -1 are ignored."""
        arm_idx = np.asarray(arm_idx, dtype=np.int64)
        names = tuple(values)
        k, n_arms = len(names), len(arms)
        v = np.column_stack([np.asarray(values[name], dtype=np.float64) for name in names]) if k else None
        if v is None or v.shape[0] != len(arm_idx):
            raise InputError(
                "values",
                {n: np.shape(values[n]) for n in names},
                "need one value per unit",
                "align the value arrays with arm_idx",
            )
        if np.isnan(v).any():
            raise InputError(
                metric, "NaN", "metric values contain NaN", "fill missing outcomes (usually with 0)"
            )
        if len(arm_idx) and arm_idx.max() >= n_arms:
            raise InputError(
                "arm_idx", int(arm_idx.max()), f"arm index >= number of arms ({n_arms})", "check the arms"
            )
        keep = arm_idx >= 0
        a, v = arm_idx[keep], v[keep]
        n = np.bincount(a, minlength=n_arms).astype(np.float64)
        s = np.stack([np.bincount(a, weights=v[:, i], minlength=n_arms) for i in range(k)], axis=-1)
        q = np.empty((n_arms, k, k))
        for i in range(k):
            for j in range(i, k):
                q[:, i, j] = q[:, j, i] = np.bincount(a, weights=v[:, i] * v[:, j], minlength=n_arms)
        return cls(metric, names, tuple(arms), n, s, q)

    @classmethod
    def from_batch(
        cls, metric: str, arms: Sequence[str], arm_idx: Any, values: Mapping[str, Any]
    ) -> MetricStats:
        """Stats of many experiments at once: ``arm_idx`` and each value array have shape ``(..., units)``;
        the result has leading dims ``...``. For simulations (thousands of A/A tests in one call)."""
        arm_idx = np.asarray(arm_idx)
        v = np.stack([np.asarray(values[k], dtype=np.float64) for k in values], axis=-1)  # (..., U, K)
        arm_idx = np.broadcast_to(arm_idx, v.shape[:-1])
        ns, ss, qs = [], [], []
        for a in range(len(arms)):
            vw = v * (arm_idx == a)[..., None]  # zero the other arms' rows
            ns.append((arm_idx == a).sum(axis=-1).astype(np.float64))
            ss.append(vw.sum(axis=-2))
            q = np.empty((*v.shape[:-2], v.shape[-1], v.shape[-1]))
            for i in range(v.shape[-1]):
                for j in range(i, v.shape[-1]):
                    q[..., i, j] = q[..., j, i] = np.einsum("...u,...u->...", vw[..., i], v[..., j])
            qs.append(q)
        n, s, q = np.stack(ns, axis=-1), np.stack(ss, axis=-2), np.stack(qs, axis=-3)
        return cls(metric, tuple(values), tuple(arms), n, s, q)

    def __add__(self, other: MetricStats) -> MetricStats:
        if (self.metric, self.variables, self.arms) != (other.metric, other.variables, other.arms):
            raise InputError(
                "stats",
                other.metric,
                "cannot add stats of different metrics, variables or arms",
                "merge stats of the same experiment and metric only",
            )
        return MetricStats(
            self.metric, self.variables, self.arms, self.n + other.n, self.s + other.s, self.q + other.q
        )

    def var_index(self, name: str) -> int:
        return self.variables.index(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for shards writing their stats to a file or a key)."""
        return {
            "metric": self.metric,
            "variables": list(self.variables),
            "arms": list(self.arms),
            "n": np.asarray(self.n).tolist(),
            "s": np.asarray(self.s).tolist(),
            "q": np.asarray(self.q).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricStats:
        return cls(
            data["metric"],
            tuple(data["variables"]),
            tuple(data["arms"]),
            np.asarray(data["n"], dtype=np.float64),
            np.asarray(data["s"], dtype=np.float64),
            np.asarray(data["q"], dtype=np.float64),
        )


def metric_variables(spec: MetricSpec) -> dict[str, str]:
    """Variable name -> outcome column for a metric spec."""
    if spec.kind == "ratio":
        return {"num": spec.numerator, "den": spec.denominator}  # type: ignore[dict-item]
    out = {"y": spec.value_column}
    if spec.covariate:
        out["x"] = spec.covariate
    return out


def first_exposures(exposures: pd.DataFrame) -> pd.DataFrame:
    """One row per unit: its first exposure. A unit seen in two arms (its arm changed because the config
    did) is analysed in the arm it saw first, so no unit is counted twice."""
    if exposures.empty:
        return exposures
    return exposures.sort_values("ts", kind="stable").drop_duplicates("unit", keep="first")


def exposure_counts(exposures: pd.DataFrame, n_arms: int) -> np.ndarray:
    """Exposed units per arm (the counts the sample-ratio-mismatch check compares with the weights)."""
    first = first_exposures(exposures)
    return np.bincount(first["arm"].to_numpy(np.int64), minlength=n_arms)[:n_arms]


def unit_sums(
    frame: pd.DataFrame, columns: Sequence[str], unit_column: str = "unit", name: str = "outcomes"
) -> pd.DataFrame:
    """``columns`` of ``frame`` summed per unit, indexed by the unit id as a string (ids hash and join
    as strings everywhere, so the int 42 and the string "42" are one unit). A missing column is an
    InputError naming ``<name>.<column>``."""
    columns = list(dict.fromkeys(columns))
    missing = [c for c in [unit_column, *columns] if c not in frame.columns]
    if missing:
        raise InputError(
            f"{name}.{missing[0]}", list(frame.columns), "column not found", f"add column {missing[0]!r}"
        )
    part = frame[[unit_column, *columns]].copy()
    part[unit_column] = part[unit_column].astype(str)
    return part.groupby(unit_column, sort=False)[columns].sum()


def aggregate(
    exposures: pd.DataFrame,
    outcomes: pd.DataFrame,
    spec: MetricSpec,
    arms: Sequence[str],
    covariates: pd.DataFrame | None = None,
    unit_column: str = "unit",
) -> MetricStats:
    """Stats of ``spec`` per arm over the exposed units.

    ``outcomes`` holds events (any number of rows per unit, column ``unit_column`` plus outcome
    columns), summed per unit; an exposed unit without outcomes counts as 0 -- it was exposed and did
    nothing, which is data, not missingness. ``covariates`` holds one pre-period row per unit for CUPED.

    Examples:
        >>> import pandas as pd
        >>> exposures = pd.DataFrame({"unit": ["a", "b", "c", "d"], "arm": [0, 0, 1, 1], "ts": 1})
        >>> events = pd.DataFrame({"unit": ["a", "a", "c", "e"], "minutes": [2.0, 3.0, 4.0, 9.0]})
        >>> stats = aggregate(exposures, events, MetricSpec("minutes"), ["control", "treatment"])
        >>> stats.n.tolist(), (stats.s[:, 0] / stats.n).tolist()   # b and d count as 0; e was never exposed
        ([2.0, 2.0], [2.5, 2.0])
    """
    variables = metric_variables(spec)
    first = first_exposures(exposures)
    units = first["unit"].astype(str).to_numpy()
    frame = pd.DataFrame(index=pd.Index(units, name="unit"))
    cov_cols = {v: c for v, c in variables.items() if v == "x"}
    out_cols = {v: c for v, c in variables.items() if v != "x"}
    for source, cols, name in ((outcomes, out_cols, "outcomes"), (covariates, cov_cols, "covariates")):
        if not cols:
            continue
        if source is None:
            raise InputError(
                name, None, f"metric {spec.name!r} needs {sorted(cols.values())}", f"pass {name}"
            )
        frame = frame.join(unit_sums(source, list(cols.values()), unit_column, name), how="left")
    frame = frame.fillna(0.0)
    values = {v: frame[c].to_numpy(np.float64) for v, c in variables.items()}
    return MetricStats.from_arrays(spec.name, arms, first["arm"].to_numpy(np.int64), values)


def aggregate_many(
    exposures: pd.DataFrame,
    outcomes: pd.DataFrame,
    specs: Sequence[MetricSpec],
    arms: Sequence[str],
    covariates: pd.DataFrame | None = None,
    unit_column: str = "unit",
) -> dict[str, MetricStats]:
    """:func:`aggregate` for every metric of an experiment."""
    return {s.name: aggregate(exposures, outcomes, s, arms, covariates, unit_column) for s in specs}
