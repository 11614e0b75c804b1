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

- :class:`MemoryWindowStore` - per-key ring buffers in numpy (capacity doubles when a key holds more
  live events than fit: windows stay exact);
- :class:`~mlsd.platform.streaming.redis_windows.RedisWindowStore` - per-key hash on a real Redis,
  one Lua script per micro-batch (atomic, idempotent).

Both are idempotent: an event id already stored is not stored again (``inserted`` is False) and its
view is the one it had. Events of a batch are applied in arrival order, as if one at a time: an
event at or below its key's latest time minus the horizon has left every window - it is not stored,
no view shows it (whatever the window's width), and a replay of it counts as not stored. The
features assume events arrive in event-time order per key (ties broken by arrival), which is what
the offline batch computation reproduces; out-of-order events within the horizon are exact too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Protocol, runtime_checkable

import numpy as np

PAD_TS = np.iinfo(np.int64).min // 4  # an empty ring cell: older than any window
UNKNOWN = np.iinfo(np.int64).max  # label time of an event whose label is not known
NOT_STORED = np.iinfo(np.int64).max  # own_seq of an event that was not stored (too late)
_SLOT_SHIFT = 40  # the id index packs (slot, seq) in one int: 2^23 keys, 2^40 events per key
_SEQ_MASK = (1 << _SLOT_SHIFT) - 1


@dataclass
class WindowView:
    """Per event of a micro-batch, the stored events of its key as that event saw them.

    Matrices are ``(n, k)`` with ``k`` the widest key's event count; empty cells have ``seq == -1``
    and ``ts == PAD_TS`` so that no window ever contains them.

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


class MemoryWindowStore(_Scalar):
    """In-process window state: per-key numpy ring buffers of capacity ``k`` (grown on demand).

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

    def __init__(self, horizon_s: int, n_attrs: int = 0, capacity: int = 16) -> None:
        self.horizon_s = int(horizon_s)
        self.n_attrs = int(n_attrs)
        self.capacity = int(capacity)
        self._slots: dict[Any, int] = {}
        self._events: dict[Any, int] = {}  # id -> slot << 40 | seq, for replays and labels
        self._events_at_prune = 0
        self._oldest_indexed = UNKNOWN  # oldest ts of an event in _events: a cheap 'anything to prune?'
        self._spare: list[Any] | None = None  # [capacity, rows, arrays or None while filling]
        self._labelled = False
        self._disordered = False  # some key took an event older than its latest (see update_many)
        rows = 64
        self._ts = np.full((rows, self.capacity), PAD_TS, dtype=np.int64)
        self._seq = np.full((rows, self.capacity), -1, dtype=np.int64)
        self._value = np.zeros((rows, self.capacity), dtype=np.int64)
        self._attrs = np.zeros((rows, self.capacity, self.n_attrs), dtype=np.float64)
        self._label = np.full((rows, self.capacity), UNKNOWN, dtype=np.int64)
        self._next = np.zeros(rows, dtype=np.int64)
        self._latest = np.full(rows, PAD_TS, dtype=np.int64)

    # -- state layout ------------------------------------------------------------------------------
    def _slot_of(self, keys: Sequence[Any], create: bool) -> np.ndarray:
        out = np.fromiter(map(self._slots.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        if create and (out < 0).any():
            for i in np.flatnonzero(out < 0):
                out[i] = self._slots.setdefault(keys[i], len(self._slots))
            self._reserve(len(self._slots))
        return out

    def _reserve(self, rows: int) -> None:
        have = self._ts.shape[0]
        if rows <= have:
            return
        extra = max(rows, 2 * have) - have
        k = self.capacity
        self._ts = np.vstack([self._ts, np.full((extra, k), PAD_TS, dtype=np.int64)])
        self._seq = np.vstack([self._seq, np.full((extra, k), -1, dtype=np.int64)])
        self._value = np.vstack([self._value, np.zeros((extra, k), dtype=np.int64)])
        self._attrs = np.concatenate([self._attrs, np.zeros((extra, k, self.n_attrs))])
        self._label = np.vstack([self._label, np.full((extra, k), UNKNOWN, dtype=np.int64)])
        self._next = np.concatenate([self._next, np.zeros(extra, dtype=np.int64)])
        self._latest = np.concatenate([self._latest, np.full(extra, PAD_TS, dtype=np.int64)])

    def _prepare_growth(self) -> threading.Thread | None:
        """Fill the next capacity's arrays in a background thread, before a key needs them.

        Growing copies every ring into new, larger arrays; on a virtualised host first-touching that
        much fresh memory (page faults) costs far more than the copy, and the stream would queue
        behind it. numpy fills large arrays without holding the GIL, so the pages are faulted in off
        the hot path; :meth:`_grow` then only copies into them. Purely an allocation: no state changes.
        """
        k_new, rows = 2 * self.capacity, self._ts.shape[0]
        pending = self._spare
        if pending is not None and pending[0] == k_new and pending[1] == rows:
            return None
        a = self.n_attrs
        slot: list[Any] = [k_new, rows, None]
        self._spare = slot

        def fill() -> None:
            slot[2] = (
                np.full((rows, k_new), PAD_TS, dtype=np.int64),
                np.full((rows, k_new), -1, dtype=np.int64),
                np.full((rows, k_new), 0, dtype=np.int64),  # full, not zeros: calloc'd pages fault later
                np.full((rows, k_new, a), 0.0),
                np.full((rows, k_new), UNKNOWN, dtype=np.int64),
            )

        thread = threading.Thread(target=fill, name="window-grow", daemon=True)
        thread.start()
        return thread

    def _grow(self, need: int) -> None:
        """Re-lay every ring at a larger capacity; cell of seq s moves to s % new capacity.

        Capacities are powers of two times the first one, so a cell at ``s % k`` either stays (``s %
        new_k < k``) or moves right by a multiple of ``k``. Most keys hold fewer than ``k`` events, so
        the rings are widened with empty cells (one copy) and only the few moving cells scattered -
        re-laying every cell through fancy indices stalled the stream for hundreds of ms.
        """
        k = self.capacity
        new_k = k
        while new_k < need:
            new_k *= 2
        r, c = np.nonzero((self._seq >= 0) & (self._seq % new_k >= k))
        dest = self._seq[r, c] % new_k
        rows, extra = self._ts.shape[0], new_k - k
        spare, self._spare = self._spare, None
        if spare is not None and spare[0] == new_k and spare[1] == rows and spare[2] is not None:
            ready = dict(zip(("ts", "seq", "value", "attrs", "label"), spare[2], strict=True))
            for name in ready:  # prefaulted arrays: copy the rings in, then move the few wrapped cells
                old, new = getattr(self, "_" + name), ready[name]
                new[:, :k] = old
                new[r, dest] = old[r, c]
                new[r, c] = {"ts": PAD_TS, "seq": -1, "value": 0, "attrs": 0.0, "label": UNKNOWN}[name]
                setattr(self, "_" + name, new)
            self.capacity = new_k
            return

        def widen(old: np.ndarray, fill: Any) -> np.ndarray:
            pad = np.full((rows, extra, *old.shape[2:]), fill, dtype=old.dtype)
            new = np.concatenate([old, pad], axis=1)
            new[r, dest] = old[r, c]
            new[r, c] = fill
            return new

        self._ts = widen(self._ts, PAD_TS)
        self._value = widen(self._value, 0)
        self._attrs = widen(self._attrs, 0.0)
        self._label = widen(self._label, UNKNOWN)
        self._seq = widen(self._seq, -1)
        self.capacity = new_k

    # -- API -----------------------------------------------------------------------------------------
    def reserve(self, keys: int, capacity: int) -> None:
        """Pre-size the store for ``keys`` keys holding up to ``capacity`` live events each.

        Growth (more keys, or one key with more live events than the rings hold) copies the whole
        store, a stall of tens to hundreds of ms that a stream queues behind; a serving process that
        knows its population calls this once at warm-up so growth never happens in steady state.
        Purely an allocation: windows are exact either way (growth remains the fallback).
        """
        self._reserve(int(keys))
        if int(capacity) > self.capacity:
            self._grow(int(capacity))

    def update_many(self, keys, ids, ts, values, attrs=None) -> WindowView:
        """Store a micro-batch of events in order (skipping replays) and return their views.

        Events are applied in arrival order, as one at a time: each sees its key's latest time so far
        (``latest``); whatever is at or below ``latest - horizon`` has left the key - an event there is
        not stored, a replay of one counts as not stored, and no view shows such cells (the Redis
        store trims them: both answer alike whatever the window width or the ring capacity).
        """
        ts, values, attrs = _check_batch(keys, ids, ts, values, attrs, self.n_attrs)
        keys = list(keys)
        n = len(keys)
        slots = self._slot_of(keys, create=True)
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
        # Too late: at or below the key's latest minus the horizon - outside every window.
        fresh &= ts > cut
        idx = np.flatnonzero(fresh)
        next_before = self._next[slots] - 1 if idx.size < n else None  # for events not stored
        if idx.size:
            s_new = slots[idx]
            order = np.argsort(s_new, kind="stable")
            sorted_slots = s_new[order]
            starts = np.r_[0, np.flatnonzero(np.diff(sorted_slots)) + 1]
            rank = np.arange(idx.size) - np.repeat(starts, np.diff(np.r_[starts, idx.size]))
            seq = np.empty(idx.size, dtype=np.int64)
            seq[order] = self._next[sorted_slots] + rank
            touched = sorted_slots[starts]
            n_new = np.diff(np.r_[starts, idx.size])
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
            live = self._ts[touched] > low_t[:, None]
            if self._disordered:
                ring_seq = self._seq[touched]
                ring_seq[~live] = UNKNOWN
                span = np.where(live.any(axis=1), self._next[touched] - ring_seq.min(axis=1), 0)
            else:  # times rise with sequence numbers: the live cells are the newest ones
                span = live.sum(axis=1)
            need = int((span + n_new).max())
            if need > self.capacity:
                self._grow(need)
            elif 4 * need > 3 * self.capacity:
                self._prepare_growth()
            pos = seq % self.capacity
            self._ts[s_new, pos] = ts[idx]
            self._seq[s_new, pos] = seq
            self._value[s_new, pos] = values[idx]
            self._attrs[s_new, pos] = attrs[idx]
            self._label[s_new, pos] = UNKNOWN
            self._next[touched] += n_new
            np.maximum.at(self._latest, s_new, ts[idx])
            own[idx] = seq
            self._oldest_indexed = min(self._oldest_indexed, int(ts[idx].min()))
            known.update(
                zip([ids[i] for i in idx.tolist()], ((s_new << _SLOT_SHIFT) | seq).tolist(), strict=True)
            )
        dups = np.flatnonzero(dup_of >= 0)
        own[dups] = own[dup_of[dups]]
        inserted = np.zeros(n, dtype=bool)
        inserted[idx] = True
        bound = None
        if next_before is not None:  # some event was not stored now
            # a replay whose original has left the key's horizon (or was reverted) counts as not stored
            again = np.flatnonzero(~inserted & (own != NOT_STORED))
            if again.size:
                cell = (slots[again], own[again] % self.capacity)
                gone = (self._seq[cell] != own[again]) | (self._ts[cell] <= cut[again])
                own[again[gone]] = NOT_STORED
            # the key's last sequence number when each event was applied: an event not stored does
            # not see the batch's later events (a stored one sees up to itself anyway)
            seq_or_none = np.full(n, -1, dtype=np.int64)
            seq_or_none[idx] = own[idx]
            bound = np.maximum(_group_cummax(slots, seq_or_none), next_before)
        if len(known) > 2 * self._events_at_prune + 100_000:
            self._prune()
        return self._view(slots, ts, own, inserted, cut, bound)

    def view_many(self, keys, ts) -> WindowView:
        """Views for hypothetical events at ``ts`` (nothing stored): every stored event counts."""
        keys = list(keys)
        ts = np.asarray(ts, dtype=np.int64)
        slots = self._slot_of(keys, create=False)
        latest = np.where(slots < 0, PAD_TS, self._latest[np.maximum(slots, 0)])
        cut = np.maximum(ts, latest) - self.horizon_s
        none = np.full(len(keys), NOT_STORED, dtype=np.int64)
        return self._view(slots, ts, none, np.zeros(len(keys), bool), cut, None)

    def _view(self, slots, ts, own, inserted, cut, bound) -> WindowView:
        missing = slots < 0
        s = np.where(missing, 0, slots) if missing.any() else slots
        seq = self._seq[s]
        view_ts = self._ts[s]  # cells never written hold PAD_TS already
        if missing.any():
            seq[missing] = -1
            view_ts[missing] = PAD_TS
        shape = seq.shape
        # gather only what this store holds: no attrs, or no label ever set, costs nothing
        attrs = self._attrs[s] if self.n_attrs else np.zeros((*shape, 0))
        label = self._label[s] if self._labelled else np.broadcast_to(np.int64(UNKNOWN), shape)
        return WindowView(
            t=ts,
            own_seq=own,
            inserted=inserted,
            ts=view_ts,
            seq=seq,
            value=self._value[s],
            attrs=attrs,
            label_ts=label,
            cut=cut,
            bound=bound,
        )

    def _locate(self, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row index into ids, slot, ring position) of the ids still in their ring."""
        ids = list(ids)
        hits = np.fromiter(map(self._events.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        rows = np.flatnonzero(hits >= 0)
        slot, seq = hits[rows] >> _SLOT_SHIFT, hits[rows] & _SEQ_MASK
        pos = seq % self.capacity
        alive = self._seq[slot, pos] == seq
        return rows[alive], slot[alive], pos[alive]

    def revert_many(self, keys, ids) -> int:
        """Remove stored events (a reversed payment); a later replay of the id is still ignored."""
        _, slot, pos = self._locate(ids)
        live = self._ts[slot, pos] != PAD_TS
        self._ts[slot[live], pos[live]] = PAD_TS
        self._value[slot[live], pos[live]] = 0
        return int(live.sum())

    def set_labels(self, keys, ids, label_ts) -> int:
        """Record when stored events' labels became known (earliest time wins); unknown ids are ignored."""
        label_ts = np.asarray(label_ts, dtype=np.int64)
        rows, slot, pos = self._locate(ids)
        self._labelled = self._labelled or bool(rows.size)
        np.minimum.at(self._label, (slot, pos), label_ts[rows])
        return int(rows.size)

    def _prune(self) -> None:
        """Forget ids of events that fell out of their key's horizon (replays of them are too late anyway).

        Runs when the index has doubled since the last prune. An event can only have left its key's
        horizon if it is older than the newest event anywhere minus the horizon; while the oldest
        indexed event is newer than that, nothing is scanned (the scan of a few hundred thousand ids
        is a stall the stream would queue behind).
        """
        if self._oldest_indexed > int(self._latest.max()) - self.horizon_s:
            self._events_at_prune = len(self._events)
            return
        ids = np.fromiter(self._events.keys(), dtype=object, count=len(self._events))
        packed = np.fromiter(self._events.values(), dtype=np.int64, count=len(ids))
        slot, seq = packed >> _SLOT_SHIFT, packed & _SEQ_MASK
        pos = seq % self.capacity
        ts = self._ts[slot, pos]
        keep = (self._seq[slot, pos] == seq) & (ts > self._latest[slot] - self.horizon_s)
        # rebuilt from two lists by zip(): C speed, no per-id Python statement
        self._events = dict(zip(ids[keep].tolist(), packed[keep].tolist(), strict=True))
        self._events_at_prune = len(self._events)
        self._oldest_indexed = int(ts[keep].min()) if keep.any() else UNKNOWN

    def __len__(self) -> int:
        return len(self._slots)
