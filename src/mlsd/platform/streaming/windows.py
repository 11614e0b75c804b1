"""Exact event-time sliding windows, keyed by entity, with update / revert (River-style), batch first.

A window store keeps, per key (a card, a terminal, ...), the events of the last ``horizon_s`` seconds:
event id, time ``ts``, an integer ``value`` (amounts in cents: sums of integers are exact, so two
implementations agree bit for bit), optional float ``attrs`` (a location, a hashed terminal id) and a
mutable ``label_ts`` (when the event's fraud label became known; unknown = ``UNKNOWN``).

``update_many(keys, ids, ts, values, attrs)`` stores a micro-batch of events in order and returns a
:class:`WindowView`: for each event, the key's stored events *as that event saw them* - every event
stored before it plus itself (``seq <= own_seq``). Any window ``(t - d - w, t - d]`` is then a mask
over the view (:meth:`WindowView.window`) and count / sum / sum of squares a masked reduction
(:meth:`WindowView.moments`), all vectorised over ``(batch, capacity)`` matrices. Feature code is the
same whatever the backend; backends only store and fetch events:

- :class:`MemoryWindowStore` - per-key ring buffers in one numpy arena, each as wide as its own key's
  live events (a ring doubles when its key holds more live events than fit: windows stay exact);
- :class:`~mlsd.platform.streaming.redis_windows.RedisWindowStore` - per-key hash on a real Redis,
  one Lua script per micro-batch (atomic, idempotent).

Both are idempotent: an event id already stored is not stored again (``inserted`` is False) and its
view is the one it had. Events of a batch are applied in arrival order, as if one at a time: an
event at or below its key's latest time minus the horizon has left every window - it is not stored,
no view shows it (whatever the window's width), and a replay of it counts as not stored. The
features assume events arrive in event-time order per key (ties broken by arrival), which is what
the offline batch computation reproduces; out-of-order events within the horizon are exact too.

Bounded state (:class:`MemoryWindowStore`): what is kept is, per key, a ring of ``capacity * 2**j``
cells holding its events above ``latest - horizon`` (a key's storage follows its own event count,
never the busiest key's), the ids of those events (replays, labels) and a few integers. An eviction
pass runs by itself when the keys or the ids held have doubled since the last one or a cap is
passed (amortised: no per-request cost), or on :meth:`MemoryWindowStore.evict`. It

- evicts idle keys, whose newest event is at or below ``clock - lateness - horizon``: ``clock`` is
  the median time of the last 1,024 stored events (a median, so a few payments dated in the future
  do not evict everyone), ``lateness`` defaults to the horizon. Windows stay exactly as if nothing
  had been evicted for every event at most ``lateness`` behind the clock; afterwards an event at or
  below ``floor = clock - lateness`` on a key the store does not hold is too late (not stored, an
  empty view), so a very late replay of an evicted key's event is never counted twice;
- shrinks every ring to its live events, compacts the arena and gives mostly empty memory back;
- with ``max_keys`` / ``max_events`` (cells of all rings) set, evicts the least recently used keys
  down to 90% of the cap when it is passed. Their windows restart empty: the cap trades exactness
  for memory, so each time it bites a warning is logged and the Prometheus counter
  ``mlsd_window_evictions_total{store, reason}`` (reason ``idle``, ``max_keys`` or ``max_events``)
  grows, as it does for idle evictions.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Any, Protocol, runtime_checkable

import numpy as np

PAD_TS = np.iinfo(np.int64).min // 4  # an empty ring cell: older than any window
UNKNOWN = np.iinfo(np.int64).max  # label time of an event whose label is not known
NOT_STORED = np.iinfo(np.int64).max  # own_seq of an event that was not stored (too late)
_SLOT_SHIFT = 40  # the id index packs (slot, seq) in one int: 2^23 keys, 2^40 events per key
_SEQ_MASK = (1 << _SLOT_SHIFT) - 1
_RECENT = 1024  # the store's clock is the median time of this many most recently stored events

logger = logging.getLogger("mlsd.streaming")


@dataclass
class WindowView:
    """Per event of a micro-batch, the stored events of its key as that event saw them.

    Matrices are ``(n, k)`` with ``k`` the widest ring among the batch's keys (the memory store) or
    the most events one of them holds (Redis); empty cells have ``seq == -1`` and ``ts == PAD_TS`` so
    that no window ever contains them.

    Examples:
        >>> import numpy as np
        >>> store = MemoryWindowStore(horizon_s=3600)
        >>> view = store.update_many(["card1", "card1", "card2", "card1"], ["e1", "e2", "e3", "e4"],
        ...                          np.array([0, 600, 700, 4000]), np.array([500, 1200, 999, 300]))
        >>> count, total, squares = view.moments(view.window(3600))   # the last hour, the event included
        >>> count.tolist(), total.tolist()   # e4 at 4000: e1 at 0 has left its window, e2 has not
        ([1, 2, 1, 2], [500, 1700, 999, 1500])
        >>> view.moments(view.window(3600, include_self=False))[0].tolist()   # the hour before each event
        [0, 1, 0, 1]
        >>> view.moments(view.window(600, delay=3400))[1].tolist()   # (t - 4000, t - 3400]
        [0, 0, 0, 1200]
    """

    t: np.ndarray  # (n,) int64: each event's own time
    own_seq: np.ndarray  # (n,) int64: the event's sequence number within its key (NOT_STORED if too late)
    inserted: np.ndarray  # (n,) bool: False for a replayed id or a too-late event
    ts: np.ndarray  # (n, k) int64
    seq: np.ndarray  # (n, k) int64
    value: np.ndarray  # (n, k) int64
    attrs: np.ndarray  # (n, k, a) float64
    label_ts: np.ndarray  # (n, k) int64
    # what the event could see when it was applied, when the matrices hold more (a batch's cells are
    # shared by its events): cells with ts > cut (the rest had left the key's horizon) and seq <= bound
    # (stored by then); None = no such limit
    cut: np.ndarray | None = None  # (n,) int64
    bound: np.ndarray | None = None  # (n,) int64
    _seen: np.ndarray | None = field(default=None, repr=False, compare=False)
    _upto: np.ndarray | None = field(default=None, repr=False, compare=False)

    def _visible(self, upto: np.ndarray) -> np.ndarray:
        if self.bound is not None:
            upto = np.minimum(upto, self.bound)
        mask = (self.seq >= 0) & (self.seq <= upto[:, None])
        if self.cut is not None:
            mask &= self.ts > self.cut[:, None]
        return mask

    def seen(self) -> np.ndarray:
        """Cells stored up to and including the event itself (by arrival order); computed once per view."""
        if self._seen is None:
            self._seen = self._visible(self.own_seq)
        return self._seen

    def before(self) -> np.ndarray:
        """Cells stored strictly before the event."""
        return self._visible(np.where(self.own_seq == NOT_STORED, NOT_STORED, self.own_seq - 1))

    def window(self, width: int, delay: int = 0, *, include_self: bool = True) -> np.ndarray:
        """Mask of cells with ``t - delay - width < ts <= t - delay`` (and seen by the event)."""
        if delay == 0 and include_self:  # the common case: the upper half of the mask is shared
            if self._upto is None:
                self._upto = (self.ts <= self.t[:, None]) & self.seen()
            return self._upto & (self.ts > (self.t - width)[:, None])
        hi = (self.t - delay)[:, None]
        mask = (self.ts > hi - width) & (self.ts <= hi)
        return mask & (self.seen() if include_self else self.before())

    def moments(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact ``count, sum, sum of squares`` of ``value`` over ``mask`` (int64 each)."""
        v = np.where(mask, self.value, 0)
        return mask.sum(axis=1, dtype=np.int64), v.sum(axis=1), (v * v).sum(axis=1)


def mean_std(count: np.ndarray, total: np.ndarray, squares: np.ndarray, scale: float = 1.0):
    """Mean and population std from exact integer moments (NaN where count == 0).

    One function used by the online engine and the offline batch computation alike, so both apply
    the same floating-point operations to the same integers and agree to the last bit.

    Examples:
        >>> import numpy as np
        >>> # amounts 1200 and 300 cents: count 2, sum 1500, sum of squares 1,530,000; no event: NaN
        >>> mean, std = mean_std(np.array([2, 0]), np.array([1500, 0]), np.array([1_530_000, 0]), scale=100)
        >>> mean.tolist(), std.tolist()   # in euros
        ([7.5, nan], [4.5, nan])
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        n = count.astype(np.float64)
        mean = total.astype(np.float64) / n
        var = squares.astype(np.float64) / n - mean * mean
        std = np.sqrt(np.maximum(var, 0.0))
    return mean / scale, std / scale


@runtime_checkable
class WindowStore(Protocol):
    """Keyed event-time window state; every implementation passes tests/platform/test_windows.py.

    Examples:
        >>> isinstance(MemoryWindowStore(horizon_s=3600), WindowStore)
        True
    """

    horizon_s: int
    n_attrs: int

    def update_many(
        self,
        keys: Sequence[Any],
        ids: Sequence[Any],
        ts: np.ndarray,
        values: np.ndarray,
        attrs: np.ndarray | None = None,
    ) -> WindowView: ...

    def view_many(self, keys: Sequence[Any], ts: np.ndarray) -> WindowView: ...

    def revert_many(self, keys: Sequence[Any], ids: Sequence[Any]) -> int: ...

    def set_labels(self, keys: Sequence[Any], ids: Sequence[Any], label_ts: np.ndarray) -> int: ...


class _Scalar:
    """River-style single-event conveniences on top of the batch API."""

    def update(self, key: Any, event_id: Any, ts: int, value: int, attrs: Sequence[float] = ()) -> WindowView:
        a = np.asarray([attrs], dtype=np.float64).reshape(1, self.n_attrs)  # type: ignore[attr-defined]
        return self.update_many([key], [event_id], np.array([ts]), np.array([value]), a)  # type: ignore[attr-defined]

    def revert(self, key: Any, event_id: Any) -> bool:
        return bool(self.revert_many([key], [event_id]))  # type: ignore[attr-defined]


def _check_batch(keys, ids, ts, values, attrs, n_attrs):
    n = len(keys)
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if len(ids) != n or ts.shape != (n,) or values.shape != (n,):
        raise ValueError("keys, ids, ts and values must have the same length")
    if attrs is None:
        attrs = np.zeros((n, n_attrs))
    attrs = np.asarray(attrs, dtype=np.float64).reshape(n, n_attrs)
    return ts, values, attrs


def _group_cummax(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` within each ``group``, in array order (vectorised)."""
    n = len(values)
    if n == 0:
        return np.asarray(values, dtype=np.int64).copy()
    order = np.argsort(group, kind="stable")
    g, v = group[order], values[order].astype(np.int64)
    new = np.r_[True, g[1:] != g[:-1]]
    gid = np.cumsum(new) - 1
    lo = int(v.min())
    span = int(v.max()) - lo + 1
    if span * (int(gid[-1]) + 1) < 2**62:  # groups laid end to end on one increasing scale
        run = np.maximum.accumulate((v - lo) + gid * span) - gid * span + lo
    else:  # values spread too far for that: one accumulate per group
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], n]
        run = np.concatenate([np.maximum.accumulate(v[i:j]) for i, j in zip(starts, ends, strict=True)])
    out = np.empty(n, dtype=np.int64)
    out[order] = run
    return out


def _ragged(base: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat cell indices of blocks ``[base, base + count)`` laid end to end, and each cell's block."""
    owner = np.repeat(np.arange(count.size), count)
    starts = np.cumsum(count) - count
    return base[owner] + np.arange(owner.size) - starts[owner], owner


def _fit(need: np.ndarray, start: int) -> np.ndarray:
    """Per key, the smallest ``start * 2**j`` holding ``need`` cells (capacities double, as rings do)."""
    cap = np.full(need.shape, start, dtype=np.int64)
    while (short := cap < need).any():
        cap[short] *= 2
    return cap


_FILL = {"ts": PAD_TS, "seq": -1, "value": 0, "attrs": 0.0, "label": UNKNOWN}  # an empty cell


class MemoryWindowStore(_Scalar):
    """In-process window state: one ring per key, sized to that key's live events, in one shared arena.

    ``capacity`` is a new key's first ring size; ``max_keys`` / ``max_events`` cap the keys held and
    the cells of all rings (``None``: no cap); ``lateness_s`` (default: the horizon) is how far
    behind the store's clock an event may arrive and still get exact windows; ``name`` labels the
    store's eviction metric.

    Examples:
        >>> import numpy as np
        >>> store = MemoryWindowStore(horizon_s=3600)
        >>> keys, ts = ["card1", "card1"], np.array([0, 4000])
        >>> view = store.update_many(keys, ["e1", "e2"], ts, np.array([500, 300]))   # amounts in cents
        >>> view.inserted.tolist(), view.moments(view.window(3600))[1].tolist()   # e2's hour lacks e1
        ([True, True], [500, 300])
        >>> # a replay is not stored twice; an event at or below latest - horizon (400) is too late
        >>> again = store.update_many(keys, ["e2", "e0"], np.array([4000, 100]), np.array([300, 7]))
        >>> again.inserted.tolist(), (again.own_seq == NOT_STORED).tolist()
        ([False, False], [False, True])
        >>> store.revert_many(["card1"], ["e2"])   # a reversed payment
        1
        >>> view = store.view_many(["card1", "card9"], np.array([4100, 4100]))   # what-if, stores nothing
        >>> view.moments(view.window(3600))[0].tolist()   # e2 reverted; card9 never seen
        [0, 0]
    """

    def __init__(
        self,
        horizon_s: int,
        n_attrs: int = 0,
        capacity: int = 16,
        *,
        max_keys: int | None = None,
        max_events: int | None = None,
        lateness_s: int | None = None,
        name: str = "",
    ) -> None:
        self.horizon_s = int(horizon_s)
        self.n_attrs = int(n_attrs)
        self.initial_capacity = max(1, int(capacity))
        self.capacity = self.initial_capacity  # the widest ring so far (or reserved)
        self.max_keys = None if max_keys is None else int(max_keys)
        self.max_events = None if max_events is None else int(max_events)
        self.lateness_s = self.horizon_s if lateness_s is None else int(lateness_s)
        self.name = name
        self._slots: dict[Any, int] = {}
        self._events: dict[Any, int] = {}  # id -> slot << 40 | seq, for replays and labels
        self._events_at_pass = 0
        self._keys_at_pass = 0
        self._labelled = False
        self._disordered = False  # some key took an event older than its latest (see update_many)
        self._recent = np.full(_RECENT, PAD_TS, dtype=np.int64)  # times of the last stored events
        self._recent_at = 0
        self.clock = PAD_TS  # the stream's time as of the last pass: median of the recent events
        self.floor = PAD_TS  # an event at or below it, on a key the store does not hold, is too late
        self._tick = 0
        self._reserved = (0, 0)  # keys and arena cells asked for by reserve(): passes shrink no lower
        # per key (slot): its ring's first cell and size in the arena, next sequence number, latest
        # time, last batch that touched it (for the least-recently-used cap)
        self._base = np.zeros(64, dtype=np.int64)
        self._cap = np.zeros(64, dtype=np.int64)
        self._next = np.zeros(64, dtype=np.int64)
        self._latest = np.full(64, PAD_TS, dtype=np.int64)
        self._used = np.zeros(64, dtype=np.int64)
        # the arena: every ring's cells, in pages of ``initial_capacity`` cells (every ring is a whole
        # number of pages, so a view gathers pages - contiguous copies - rather than single cells);
        # page 0 stays empty (views point missing cells at it), cells from _top on are empty and
        # free, _garbage counts cells of rings that moved
        self._top = self.initial_capacity
        self._garbage = 0
        self._arena(1024)

    # -- state layout ------------------------------------------------------------------------------
    def _arena(self, size: int) -> None:
        size = -(-size // self.initial_capacity) * self.initial_capacity  # whole pages
        self._ts = np.full(size, PAD_TS, dtype=np.int64)
        self._seq = np.full(size, -1, dtype=np.int64)
        self._value = np.zeros(size, dtype=np.int64)
        self._attrs = np.zeros((size, self.n_attrs), dtype=np.float64)
        self._label = np.full(size, UNKNOWN, dtype=np.int64)

    def _slot_of(self, keys: Sequence[Any]) -> np.ndarray:
        """Each key's slot, -1 for a key the store does not hold."""
        return np.fromiter(map(self._slots.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))

    def _add_keys(self, keys: Sequence[Any], slots: np.ndarray) -> np.ndarray:
        """``slots`` with the keys not held (-1) given new slots; their rings are empty until stored to."""
        out = slots.copy()
        for i in np.flatnonzero(out < 0):
            out[i] = self._slots.setdefault(keys[i], len(self._slots))
        self._reserve_keys(len(self._slots))
        return out

    def _reserve_keys(self, rows: int) -> None:
        have = self._base.size
        if rows <= have:
            return
        extra = max(rows, 2 * have) - have
        for name, fill in (("_base", 0), ("_cap", 0), ("_next", 0), ("_latest", PAD_TS), ("_used", 0)):
            setattr(self, name, np.r_[getattr(self, name), np.full(extra, fill, dtype=np.int64)])

    def _pages(self, slots: np.ndarray) -> np.ndarray:
        """``(n, p)`` arena pages of the keys' rings (``p`` pages: the widest of them); 0 past a ring's end."""
        size = self.initial_capacity
        missing = slots < 0
        s = np.where(missing, 0, slots) if missing.any() else slots
        first, n_pages = self._base[s] // size, self._cap[s] // size
        if s is not slots:
            n_pages[missing] = 0
        k = np.arange(max(int(n_pages.max(initial=0)), 1))
        return np.where(k < n_pages[:, None], first[:, None] + k, 0)

    def _gather(self, name: str, pages: np.ndarray) -> np.ndarray:
        """``(n, p * page size, ...)`` cells of ``pages`` from the arena array ``name``."""
        array = getattr(self, "_" + name)
        size = self.initial_capacity
        paged = array.reshape(-1, size, *array.shape[1:])[pages]
        return paged.reshape(pages.shape[0], pages.shape[1] * size, *array.shape[1:])

    def _cell_of(self, slot: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """The arena cell where ``seq`` of each key lives (or would: check ``_seq`` there); 0 if no ring."""
        cap = self._cap[slot]
        return np.where(cap > 0, self._base[slot] + seq % np.maximum(cap, 1), 0)

    def _room(self, cells: int) -> None:
        """Make ``cells`` free cells at ``_top``: compact the rings, and double the arena if still short.

        Compaction only moves rings (no ring changes size: a batch in flight relies on them), and
        runs only when it frees a quarter of the arena, so its copies are amortised over allocations.
        """
        size = self._ts.size
        if self._top + cells <= size:
            return
        live = self._top - self._garbage
        new_size = size
        while live + cells > new_size * 3 // 4:
            new_size *= 2
        self._relayout(self._cap[: len(self._slots)].copy(), new_size)

    def _relayout(self, new_cap: np.ndarray, size: int) -> None:
        """Lay every held key's ring end to end in an arena of ``size`` cells, ``new_cap`` cells each.

        A cell of sequence number ``s`` goes to ``s % new_cap`` of its ring; a ring shrinks only to
        what holds its live cells (the caller computes ``new_cap`` so), so nothing visible is lost.
        """
        size = -(-size // self.initial_capacity) * self.initial_capacity  # whole pages
        held = len(self._slots)
        src, owner = _ragged(self._base[:held], self._cap[:held])
        seq = self._seq[src]
        keep = (seq >= 0) & (seq >= self._next[owner] - new_cap[owner])  # cells the new ring still holds
        src, owner, seq = src[keep], owner[keep], seq[keep]
        base = self.initial_capacity + np.cumsum(new_cap) - new_cap
        dst = base[owner] + seq % np.maximum(new_cap[owner], 1)
        top = self.initial_capacity + int(new_cap.sum())
        moved = {name: getattr(self, "_" + name)[src] for name in _FILL}
        if size != self._ts.size:
            self._arena(size)
        else:  # in place: empty the laid-out part, then write the moved cells back
            for name, fill in _FILL.items():
                getattr(self, "_" + name)[self.initial_capacity : max(top, self._top)] = fill
        for name, cells in moved.items():
            getattr(self, "_" + name)[dst] = cells
        self._base[:held], self._cap[:held] = base, new_cap
        self._top, self._garbage = top, 0

    def _grow(self, slots: np.ndarray, new_cap: np.ndarray) -> None:
        """Give ``slots`` rings of ``new_cap`` cells at the arena's end, each cell ``s`` at ``s % new_cap``.

        Only the growing keys' cells are copied (their old rings become garbage): one busy key no
        longer widens every other key's ring.
        """
        self._room(int(new_cap.sum()))
        base = self._top + np.cumsum(new_cap) - new_cap
        src, owner = _ragged(self._base[slots], self._cap[slots])
        seq = self._seq[src]
        src, owner, seq = src[seq >= 0], owner[seq >= 0], seq[seq >= 0]
        dst = base[owner] + seq % new_cap[owner]
        for name in _FILL:
            array = getattr(self, "_" + name)
            array[dst] = array[src]
        self._garbage += int(self._cap[slots].sum())
        self._top += int(new_cap.sum())
        self._base[slots], self._cap[slots] = base, new_cap
        self.capacity = max(self.capacity, int(new_cap.max()))

    # -- API -----------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes this store holds: its arrays plus the hash tables of its key and id indexes.

        The key and id objects themselves are shared with the caller and not counted.
        """
        arrays = (self._ts, self._seq, self._value, self._attrs, self._label, self._recent)
        per_key = (self._base, self._cap, self._next, self._latest, self._used)
        tables = sys.getsizeof(self._slots) + sys.getsizeof(self._events)
        return sum(a.nbytes for a in arrays + per_key) + tables

    def reserve(self, keys: int, capacity: int) -> None:
        """Pre-size the store for ``keys`` keys, the busiest holding up to ``capacity`` live events.

        Growing the arena copies the whole store, a stall a stream queues behind; a serving process
        that knows its population calls this once at warm-up. The arena gets room for every key at
        twice its first ring size plus the busiest key's ring (not ``keys * capacity``: rings are as
        wide as their own key's events). Purely an allocation: windows are exact either way.
        """
        keys, capacity = int(keys), int(capacity)
        self._reserve_keys(keys)
        busiest = int(_fit(np.array([capacity]), self.initial_capacity)[0])
        self.capacity = max(self.capacity, busiest)
        size = (1 + 2 * keys) * self.initial_capacity + 2 * busiest
        self._reserved = (max(self._reserved[0], keys), max(self._reserved[1], size))
        if size > self._ts.size:
            self._relayout(self._cap[: len(self._slots)].copy(), size)

    def update_many(self, keys, ids, ts, values, attrs=None) -> WindowView:
        """Store a micro-batch of events in order (skipping replays) and return their views.

        Events are applied in arrival order, as one at a time: each sees its key's latest time so far
        (``latest``); whatever is at or below ``latest - horizon`` has left the key - an event there is
        not stored, a replay of one counts as not stored, and no view shows such cells (the Redis
        store trims them: both answer alike whatever the window width or the ring capacity). After an
        eviction pass, an event at or below :attr:`floor` on a key the store does not hold is too
        late as well (the module's docstring says why).
        """
        ts, values, attrs = _check_batch(keys, ids, ts, values, attrs, self.n_attrs)
        keys = list(keys)
        n = len(keys)
        slots = self._slot_of(keys)
        held = slots >= 0
        if not held.all():
            slots = self._add_keys(keys, slots)
        self._tick += 1
        self._used[slots] = self._tick
        own = np.full(n, NOT_STORED, dtype=np.int64)
        # Replays: an id stored before (or earlier in this batch) keeps its original sequence number.
        # dict lookups through map() run at C speed: this is the hot path of the online engine.
        known = self._events
        ids = list(ids)
        hits = np.fromiter(map(known.get, ids, repeat(-1)), dtype=np.int64, count=n)
        stored = hits >= 0
        own[stored] = hits[stored] & _SEQ_MASK
        fresh = ~stored
        dup_of = np.full(n, -1, dtype=np.int64)
        if len(set(ids)) < n:  # rare: the same id twice in one batch - the later one is a replay
            first: dict[Any, int] = {}
            for i in np.flatnonzero(fresh).tolist():
                if ids[i] in first:
                    dup_of[i] = first[ids[i]]
                    fresh[i] = False
                else:
                    first[ids[i]] = i
        # The key's latest time as each event is applied (a replay or a too-late event is older than
        # it anyway, so taking every event's time into the running maximum changes nothing).
        in_order = n < 2 or bool((ts[1:] >= ts[:-1]).all())  # the engine's batches: time-sorted
        running = ts if in_order else _group_cummax(slots, ts)
        cut = np.maximum(running, self._latest[slots]) - self.horizon_s
        # Too late: at or below the key's latest minus the horizon - outside every window; or, on a
        # key evicted or never seen, at or below the floor of the last eviction pass.
        fresh &= (ts > cut) & (held | (ts > self.floor))
        idx = np.flatnonzero(fresh)
        next_before = self._next[slots] - 1 if idx.size < n else None  # for events not stored
        if idx.size:
            self._store(slots, idx, cut, ts, values, attrs, in_order, ids, own)
        dups = np.flatnonzero(dup_of >= 0)
        own[dups] = own[dup_of[dups]]
        inserted = np.zeros(n, dtype=bool)
        inserted[idx] = True
        bound = None
        if next_before is not None:  # some event was not stored now
            # a replay whose original has left the key's horizon (or was reverted) counts as not stored
            again = np.flatnonzero(~inserted & (own != NOT_STORED))
            if again.size:
                cell = self._cell_of(slots[again], own[again])
                gone = (self._seq[cell] != own[again]) | (self._ts[cell] <= cut[again])
                own[again[gone]] = NOT_STORED
            # the key's last sequence number when each event was applied: an event not stored does
            # not see the batch's later events (a stored one sees up to itself anyway)
            seq_or_none = np.full(n, -1, dtype=np.int64)
            seq_or_none[idx] = own[idx]
            bound = np.maximum(_group_cummax(slots, seq_or_none), next_before)
        view = self._view(slots, ts, own, inserted, cut, bound)
        if self._pass_due():  # after the view: a pass renumbers the keys
            self.evict()
        return view

    def _store(self, slots, idx, cut, ts, values, attrs, in_order, ids, own) -> None:
        """Write the batch's events ``idx`` into their keys' rings (growing the rings that need it)."""
        n = len(slots)
        s_new = slots[idx]
        order = np.argsort(s_new, kind="stable")
        sorted_slots = s_new[order]
        # np.r_ and np.diff cost more than the arithmetic on one event: plain concatenations instead
        starts = np.concatenate(([0], np.flatnonzero(sorted_slots[1:] != sorted_slots[:-1]) + 1))
        n_new = np.concatenate((starts[1:], [idx.size])) - starts
        rank = np.arange(idx.size) - np.repeat(starts, n_new)
        seq = np.empty(idx.size, dtype=np.int64)
        seq[order] = self._next[sorted_slots] + rank
        touched = sorted_slots[starts]
        # Exactness: the ring must keep every cell an event of this batch can see (above the lowest
        # cut among the key's events of the batch) - i.e. every sequence number from the oldest
        # such cell on, even if out-of-order times interleave older cells - plus the batch.
        if idx.size == n:  # every event stored (the common case): the lowest cut per key directly
            low_t = np.minimum.reduceat(cut[idx][order], starts)
        else:
            uniq, inverse = np.unique(slots, return_inverse=True)
            low = np.full(uniq.size, UNKNOWN, dtype=np.int64)
            np.minimum.at(low, inverse, cut)
            low_t = low[np.searchsorted(uniq, touched)]
        # a key that ever took an event older than its latest can interleave times in its ring
        self._disordered = self._disordered or not in_order or bool((ts[idx] < self._latest[s_new]).any())
        pages = self._pages(touched)
        live = self._gather("ts", pages) > low_t[:, None]
        if self._disordered:
            ring_seq = self._gather("seq", pages)
            ring_seq[~live] = UNKNOWN
            span = np.where(live.any(axis=1), self._next[touched] - ring_seq.min(axis=1), 0)
        else:  # times rise with sequence numbers: the live cells are the newest ones
            span = live.sum(axis=1)
        need = span + n_new
        short = need > self._cap[touched]
        if short.any():
            start = np.maximum(self._cap[touched[short]], self.initial_capacity)
            self._grow(touched[short], np.maximum(_fit(need[short], self.initial_capacity), start))
        pos = self._cell_of(s_new, seq)
        self._ts[pos] = ts[idx]
        self._seq[pos] = seq
        self._value[pos] = values[idx]
        self._attrs[pos] = attrs[idx]
        self._label[pos] = UNKNOWN
        self._next[touched] += n_new
        np.maximum.at(self._latest, s_new, ts[idx])
        own[idx] = seq
        self._remember(ts[idx])
        self._events.update(
            zip([ids[i] for i in idx.tolist()], ((s_new << _SLOT_SHIFT) | seq).tolist(), strict=True)
        )

    def _remember(self, ts: np.ndarray) -> None:
        """Keep the times of the last ``_RECENT`` stored events (the clock of the next eviction pass)."""
        if ts.size >= _RECENT:
            self._recent[:] = ts[-_RECENT:]
            self._recent_at = _RECENT
            return
        at = self._recent_at % _RECENT
        head = min(ts.size, _RECENT - at)
        self._recent[at : at + head] = ts[:head]
        self._recent[: ts.size - head] = ts[head:]
        self._recent_at += ts.size

    def view_many(self, keys, ts) -> WindowView:
        """Views for hypothetical events at ``ts`` (nothing stored): every stored event counts."""
        keys = list(keys)
        ts = np.asarray(ts, dtype=np.int64)
        slots = self._slot_of(keys)
        latest = np.where(slots < 0, PAD_TS, self._latest[np.maximum(slots, 0)])
        cut = np.maximum(ts, latest) - self.horizon_s
        none = np.full(len(keys), NOT_STORED, dtype=np.int64)
        return self._view(slots, ts, none, np.zeros(len(keys), bool), cut, None)

    def _view(self, slots, ts, own, inserted, cut, bound) -> WindowView:
        pages = self._pages(slots)  # a key not held has no ring: every page is the empty page 0
        shape = (pages.shape[0], pages.shape[1] * self.initial_capacity)
        # gather only what this store holds: no attrs, or no label ever set, costs nothing
        attrs = self._gather("attrs", pages) if self.n_attrs else np.zeros((*shape, 0))
        label = self._gather("label", pages) if self._labelled else np.broadcast_to(np.int64(UNKNOWN), shape)
        return WindowView(
            t=ts,
            own_seq=own,
            inserted=inserted,
            ts=self._gather("ts", pages),
            seq=self._gather("seq", pages),
            value=self._gather("value", pages),
            attrs=attrs,
            label_ts=label,
            cut=cut,
            bound=bound,
        )

    def _locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(row index into ids, arena cell) of the ids still in their ring."""
        ids = list(ids)
        hits = np.fromiter(map(self._events.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        rows = np.flatnonzero(hits >= 0)
        seq = hits[rows] & _SEQ_MASK
        cell = self._cell_of(hits[rows] >> _SLOT_SHIFT, seq)
        alive = self._seq[cell] == seq
        return rows[alive], cell[alive]

    def revert_many(self, keys, ids) -> int:
        """Remove stored events (a reversed payment); a later replay of the id is still ignored."""
        _, cell = self._locate(ids)
        cell = cell[self._ts[cell] != PAD_TS]
        self._ts[cell] = PAD_TS
        self._value[cell] = 0
        return int(cell.size)

    def set_labels(self, keys, ids, label_ts) -> int:
        """Record when stored events' labels became known (earliest time wins); unknown ids are ignored."""
        label_ts = np.asarray(label_ts, dtype=np.int64)
        rows, cell = self._locate(ids)
        self._labelled = self._labelled or bool(rows.size)
        np.minimum.at(self._label, cell, label_ts[rows])
        return int(rows.size)

    # -- bounds: eviction passes -------------------------------------------------------------------
    def _pass_due(self) -> bool:
        """A pass is due when the keys or the id index doubled since the last one, or a cap is passed."""
        return (
            len(self._slots) > 2 * self._keys_at_pass + 1024
            or len(self._events) > 2 * self._events_at_pass + 100_000
            or (self.max_keys is not None and len(self._slots) > self.max_keys)
            or (self.max_events is not None and self._top - self._garbage > self.max_events)
        )

    def evict(self) -> dict[str, int]:
        """One eviction pass; returns the keys evicted per reason (``idle``, ``max_keys``, ``max_events``).

        Idle keys (newest event at or below ``clock - lateness - horizon``) go, then least recently
        used ones while a cap is passed; every ring shrinks to its live events, the arena is
        compacted and the id index forgets what no window can see. Runs by itself when due (see
        :meth:`_pass_due`); amortised over the events and keys that made it due.
        """
        held = len(self._slots)
        filled = self._recent[: min(self._recent_at, _RECENT)]
        if filled.size:  # the median: one payment dated in the year 3000 must not evict every key
            self.clock = max(self.clock, int(np.median(filled)))
        latest = self._latest[:held]
        keep = latest > self.clock - self.lateness_s - self.horizon_s
        evicted = {"idle": held - int(keep.sum())}
        new_cap = self._live_capacity(held)
        for reason, cost, cap in (
            ("max_keys", np.ones(held, dtype=np.int64), self.max_keys),
            ("max_events", new_cap, self.max_events),
        ):
            evicted[reason] = self._least_recently_used(keep, cost, cap)
        if held:
            self.floor = max(self.floor, self.clock - self.lateness_s)
            self._renumber(keep, new_cap)
        self._keys_at_pass, self._events_at_pass = len(self._slots), len(self._events)
        self._report(evicted)
        return evicted

    def _live_capacity(self, held: int) -> np.ndarray:
        """Per held key, the smallest ring holding its live cells (those above latest - horizon)."""
        src, owner = _ragged(self._base[:held], self._cap[:held])
        seq, ts = self._seq[src], self._ts[src]
        live = (seq >= 0) & (ts != PAD_TS) & (ts > self._latest[owner] - self.horizon_s)
        oldest = np.full(held, UNKNOWN, dtype=np.int64)
        np.minimum.at(oldest, owner[live], seq[live])
        span = np.where(oldest == UNKNOWN, 0, self._next[:held] - oldest)
        return np.where(span > 0, _fit(span, self.initial_capacity), 0)

    def _least_recently_used(self, keep: np.ndarray, cost: np.ndarray, cap: int | None) -> int:
        """Drop kept keys, least recently used first, until their ``cost`` is within 90% of ``cap``."""
        if cap is None or int(cost[keep].sum()) <= cap:
            return 0
        kept = np.flatnonzero(keep)
        newest_first = kept[np.argsort(-self._used[kept], kind="stable")]
        fits = np.cumsum(cost[newest_first]) <= int(0.9 * cap)
        gone = newest_first[~fits]
        keep[gone] = False
        return int(gone.size)

    def _renumber(self, keep: np.ndarray, new_cap: np.ndarray) -> None:
        """Keep only ``keep``'s keys, numbered 0.. in their order; rings at ``new_cap``; ids re-indexed."""
        held = keep.size
        new_cap = np.where(keep, new_cap, 0)
        cells = self.initial_capacity + int(new_cap.sum())
        size = self._ts.size
        if 4 * cells < size:  # mostly empty after the pass: give the memory back (not below reserve())
            size = max(2 * cells, self._reserved[1], 1024)
        same = size == self._ts.size and (new_cap == self._cap[:held]).all()
        if not (same and 4 * self._garbage < size):  # a copy of the arena only when it frees memory
            self._relayout(new_cap, size)
        new_slot = np.cumsum(keep) - 1
        ids = list(self._events.keys())
        packed = np.fromiter(self._events.values(), dtype=np.int64, count=len(ids))
        slot, seq = packed >> _SLOT_SHIFT, packed & _SEQ_MASK
        cell = self._cell_of(slot, seq)
        alive = keep[slot] & (self._seq[cell] == seq) & (self._ts[cell] > self._latest[slot] - self.horizon_s)
        kept = int(keep.sum())
        if kept == held and alive.all():  # nothing to forget: the indexes stay as they are
            return
        moved = (new_slot[slot[alive]] << _SLOT_SHIFT) | seq[alive]
        # rebuilt from lists by zip() / compress(): C speed, no per-id Python statement
        self._events = dict(zip(compress(ids, alive.tolist()), moved.tolist(), strict=True))
        if kept == held:
            return
        keys = compress(self._slots.keys(), keep.tolist())
        self._slots = dict(zip(keys, range(kept), strict=False))
        rows = self._base.size
        if 4 * kept < rows:
            rows = max(2 * kept, self._reserved[0], 64)
        for name in ("_base", "_cap", "_next", "_latest", "_used"):
            array = np.full(rows, PAD_TS if name == "_latest" else 0, dtype=np.int64)
            array[:kept] = getattr(self, name)[:held][keep]
            setattr(self, name, array)

    def _report(self, evicted: dict[str, int]) -> None:
        if not any(evicted.values()):
            return
        from prometheus_client import Counter

        from mlsd.platform.serving import metric  # lazy: window code runs without the web stack

        counter = metric(
            Counter, "mlsd_window_evictions", "window-store keys evicted, by reason", ("store", "reason")
        )
        for reason, count in evicted.items():
            if count:
                counter.labels(self.name, reason).inc(count)
        capped = evicted["max_keys"] + evicted["max_events"]
        if capped:
            logger.warning(
                "window store %r hit its cap (max_keys=%s, max_events=%s): evicted %d least recently "
                "used keys whose windows restart empty; raise the cap if this repeats",
                self.name,
                self.max_keys,
                self.max_events,
                capped,
            )

    def __len__(self) -> int:
        return len(self._slots)
