"""Stream worker: payments in on a Redis Stream, decisions out on another, exactly once in effect.

Several workers share one consumer group on the input stream, so each payment goes to one of them
(``XREADGROUP``). Delivery is at-least-once: an entry stays *pending* until acknowledged, and a
worker that died holding entries leaves them pending; every worker first reclaims entries idle for
longer than ``claim_idle_ms`` (``XAUTOCLAIM``) before reading new ones, so nothing is lost.

Reprocessing a payment must not count it twice. Two guards make the *effect* exactly-once:

* feature updates are idempotent on ``tx_id`` (the feature engine skips a payment it has already
  counted, and returns the feature row it recorded for it), so a replayed batch leaves the windows
  as they were and gets the features it had;
* writing the decisions and acknowledging the entries happen in one Lua script, atomically, and the
  script writes a decision only for a ``tx_id`` not yet in the ``decided`` set. A worker killed
  before the script leaves nothing behind; killed after it, it leaves nothing pending. A slow (not
  dead) worker whose entries were reclaimed meanwhile cannot write a duplicate either.

The ``decided`` set is bucketed by time (``dedup_window_s``, one hour by default) and expires: the
script checks the previous bucket and adds to the current one, so a redelivery is caught for at least
one window (redeliveries come after ``claim_idle_ms``, seconds) while memory stays bounded by two
windows of traffic instead of growing with every payment ever decided.

**Ordered** (the default): a worker applies a batch to the feature windows only once every earlier
entry of the stream is acknowledged or *applied* (its feature rows recorded: :meth:`StreamWorker.
mark_applied`, called by the feature engine). Windows therefore take the payments in stream order
whatever the number of workers, their timing or their deaths, and every payment gets the features a
single worker that never failed gives it (tests/fraud/test_chaos.py). Model scoring of one batch
still overlaps the window update of the next; a dead worker's entries hold the others back for
``claim_idle_ms`` at most, until one of them reclaims them.

**Survival**: an entry that cannot be a payment (not JSON, no ``p`` field, not an object, an object
or list as an id, a body the engine's validation refuses) is *poison*: it goes to the dead-letter
stream (``<input>:dead``: the entry id, the error, the raw body) and is acknowledged, and the rest of
its batch is decided. A payment on which the scorer fails otherwise (an exception that is not an
``InputError``: the engine may be at fault, not the payment) is tried ``max_attempts`` times, with
backoff, before it is dead-lettered. A Redis error (connection refused or cut, timeout, server loading) never ends
the worker: it retries with exponential backoff and jitter (bounded by ``retry_max_s``, logged), and
the entries it holds are processed again (idempotent, as above).

Micro-batching is what makes the throughput: one XREADGROUP of up to ``batch_size`` entries, one
vectorised pass through features, rules, model and decision (the engine's one serving path,
:meth:`~mlsd.fraud.engine.FraudPipeline.handle`, over the entries' payment bodies), one script call
for all outputs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "Backoff",
    "StreamWorker",
    "WorkerStats",
    "ensure_group",
    "publish",
    "read_dead_letters",
    "read_decisions",
    "stream_keys",
]

# KEYS: output stream, decided set (this bucket), input stream, decided set (previous bucket).
# ARGV: group, n, ttl seconds, n x (tx_id, payload), ids to ack.
_WRITE_AND_ACK = """
local n = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local written = 0
for i = 1, n do
  local tx = ARGV[2 + 2 * i]
  if redis.call('SISMEMBER', KEYS[4], tx) == 0 and redis.call('SADD', KEYS[2], tx) == 1 then
    redis.call('XADD', KEYS[1], '*', 'd', ARGV[3 + 2 * i])
    written = written + 1
  end
end
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
local first = 4 + 2 * n
local step = 500
for s = first, #ARGV, step do
  local e = math.min(s + step - 1, #ARGV)
  redis.call('XACK', KEYS[3], ARGV[1], unpack(ARGV, s, e))
end
return written
"""

# KEYS: input stream, dead-letter stream. ARGV: group, n x (entry id, error, body, consumer).
# An entry is dead-lettered by whoever acknowledges it first: a slow worker and the one that reclaimed
# its entries never both write it.
_DEAD_LETTER = """
local moved = 0
for i = 2, #ARGV, 4 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'id', ARGV[i], 'error', ARGV[i + 1], 'body', ARGV[i + 2],
               'consumer', ARGV[i + 3])
    moved = moved + 1
  end
end
return moved
"""

# KEYS: input stream, applied set (this bucket), applied set (previous bucket).
# ARGV: group, the highest id the caller holds, the ids it holds (one string, comma separated: one
# argument, not thousands, to pack and send). Returns the first pending entry up to that id which the
# caller does not hold and nobody has applied yet (nil: none), i.e. the entry the caller's batch must
# wait for.
_FIRST_BLOCKER = """
local held = {}
for id in string.gmatch(ARGV[3], '[^,]+') do held[id] = true end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', ARGV[2], 100000)
for _, p in ipairs(pending) do
  local id = p[1]
  if not held[id] and redis.call('SISMEMBER', KEYS[2], id) == 0
     and redis.call('SISMEMBER', KEYS[3], id) == 0 then
    return id
  end
end
return false
"""

# KEYS: applied set (this bucket). ARGV: ttl, the entry ids (one string, comma separated).
_MARK_APPLIED = """
local ids = {}
for id in string.gmatch(ARGV[2], '[^,]+') do ids[#ids + 1] = id end
for s = 1, #ids, 1000 do redis.call('SADD', KEYS[1], unpack(ids, s, math.min(s + 999, #ids))) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return #ids
"""

# A scorer turns payment bodies into one JSON-ready decision dict per payment (same order), raising
# InputError on a bad body: FraudPipeline.handle.
Scorer = Callable[[Sequence[Mapping[str, Any]]], Sequence[Mapping[str, Any]]]

_IDENTITY_FIELDS = ("tx_id", "card_id", "terminal_id", "device_id", "ip", "email", "mcc")
_REQUIRED_FIELDS = ("tx_id", "ts", "card_id", "terminal_id", "amount")
_BATCH_INDEX = re.compile(r"^payments\[(\d+)\]")
_BODY_CHARS = 2000  # the raw body kept in a dead letter, enough to see what was sent


@dataclass
class WorkerStats:
    """Counters of one worker's life."""

    read: int = 0
    reclaimed: int = 0
    written: int = 0
    duplicates: int = 0  # decisions not written because another delivery already wrote them
    invalid: int = 0  # poison entries moved to the dead-letter stream (and acknowledged)
    batches: int = 0
    redis_errors: int = 0  # transient Redis errors ridden out (retried after a backoff)
    waits: int = 0  # polls spent waiting for an earlier entry to be applied (ordered mode)
    latencies_ms: list[float] = field(default_factory=list)

    COUNTS = ("read", "reclaimed", "written", "duplicates", "invalid", "batches", "redis_errors")

    def counts(self) -> dict[str, int]:
        """The counters a worker process reports when it ends (what the parent sums)."""
        return {name: getattr(self, name) for name in self.COUNTS}


class Backoff:
    """Exponential backoff with jitter, bounded: delay ``k`` is uniform in ``[d/2, d]``, ``d =
    min(cap_s, base_s * 2**k)``; :meth:`reset` after a success.

    Examples:
        >>> b = Backoff(base_s=0.1, cap_s=0.4, rng=random.Random(0))
        >>> [0.05 <= b.next() <= 0.1, 0.1 <= b.next() <= 0.2, 0.2 <= b.next() <= 0.4, b.next() <= 0.4]
        [True, True, True, True]
        >>> b.reset(); b.attempt
        0
    """

    def __init__(self, base_s: float = 0.05, cap_s: float = 2.0, rng: random.Random | None = None) -> None:
        self.base_s = float(base_s)
        self.cap_s = float(cap_s)
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return ceiling * (0.5 + 0.5 * self.rng.random())  # jitter: workers do not retry in lockstep

    def reset(self) -> None:
        self.attempt = 0


def transient_errors() -> tuple[type[BaseException], ...]:
    """The errors a worker rides out (backoff, never a dead letter): Redis connection refused / cut,
    timeouts, a server still loading its data (``BusyLoadingError`` is a ``ConnectionError``), and a
    dependency of the scorer that did not answer (:class:`DependencyUnavailable`: the review queue's
    PostgreSQL) - the payment is not at fault, so it must not be dead-lettered after ``max_attempts``."""
    import redis

    from mlsd.platform.errors import DependencyUnavailable

    return (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, DependencyUnavailable)


def retry_transient(
    call: Callable[[], Any], what: str, *, give_up_s: float = 60.0, backoff: Backoff | None = None
) -> Any:
    """``call()``, retried with backoff while Redis is unreachable, for up to ``give_up_s`` (then the
    last error is raised: a wrong URL must not retry forever in silence). For a worker's start and
    its final summary; the worker's loop itself never gives up (:meth:`StreamWorker.run_once`)."""
    backoff = backoff or Backoff()
    end = time.monotonic() + give_up_s
    while True:
        try:
            return call()
        except transient_errors() as err:
            if time.monotonic() > end:
                raise
            delay = backoff.next()
            log.warning("%s: Redis error (%s: %s); retry in %.2f s", what, type(err).__name__, err, delay)
            time.sleep(delay)


def stream_keys(
    prefix: str, input_stream: str = "payments", output_stream: str = "decisions"
) -> dict[str, str]:
    return {
        "input": f"{prefix}{input_stream}",
        "output": f"{prefix}{output_stream}",
        "decided": f"{prefix}{output_stream}:decided",
        "dead": f"{prefix}{input_stream}:dead",
        "applied": f"{prefix}{input_stream}:applied",
    }


def publish(client: Any, stream: str, payments: Iterable[Mapping[str, Any]], *, chunk: int = 1000) -> int:
    """XADD payments (one JSON entry each) in pipelined chunks; returns how many were added."""
    pipe = client.pipeline(transaction=False)
    n = 0
    for payment in payments:
        pipe.xadd(stream, {"p": json.dumps(payment, separators=(",", ":"))})
        n += 1
        if n % chunk == 0:
            pipe.execute()
    pipe.execute()
    return n


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as a sortable ``(ms, seq)``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def poison_reason(fields: Mapping[bytes, bytes]) -> tuple[dict | None, str | None]:
    """``(payment body, None)`` for an entry that can be a payment, else ``(None, why it is poison)``.

    Only what would break a whole batch is checked here (the engine validates values and names the
    payment); per entry, but no more than a dict lookup per field after the JSON decode.

    Examples:
        >>> ok = {"tx_id": 1, "ts": 1767225600, "card_id": 7, "terminal_id": 9, "amount": 12.5}
        >>> poison_reason({b"p": json.dumps(ok).encode()}) == (ok, None)
        True
        >>> poison_reason({b"p": json.dumps({**ok, "card_id": {"a": 1}}).encode()})[1]
        'card_id is a dict, not a scalar id: send ids as strings or integers'
        >>> poison_reason({b"p": b'{"tx_id": 1}'})[1]
        "ts is missing: add the field 'ts'"
        >>> poison_reason({b"p": b"[1, 2]"})[1]
        'payload is a JSON list, not an object: publish each payment as one JSON object'
        >>> poison_reason({b"x": b"{}"})[1]
        "entry has no 'p' field: publish payments with publish() (field p = the payment's JSON)"
    """
    raw = fields.get(b"p")
    if raw is None:
        return None, "entry has no 'p' field: publish payments with publish() (field p = the payment's JSON)"
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"payload is not valid JSON ({err}): publish json.dumps(payment)"
    if not isinstance(body, dict):
        return (
            None,
            f"payload is a JSON {type(body).__name__}, not an object: publish each payment as one JSON object",
        )
    for name in _REQUIRED_FIELDS:
        if body.get(name) is None:
            return None, f"{name} is missing: add the field {name!r}"
    for name in _IDENTITY_FIELDS:
        value = body.get(name)
        if isinstance(value, dict | list):
            return (
                None,
                f"{name} is a {type(value).__name__}, not a scalar id: send ids as strings or integers",
            )
    return body, None


class StreamWorker:
    """One consumer in the group; ``run_once`` handles one micro-batch (reclaimed entries first)."""

    def __init__(
        self,
        client: Any,
        scorer: Scorer,
        *,
        prefix: str = "mlsd:fraud:",
        input_stream: str = "payments",
        output_stream: str = "decisions",
        group: str = "scorers",
        consumer: str | None = None,
        batch_size: int = 500,
        block_ms: int = 50,
        claim_idle_ms: int = 5000,
        dedup_window_s: int = 3600,
        ordered: bool = True,
        max_attempts: int = 3,
        retry_base_s: float = 0.05,
        retry_max_s: float = 2.0,
        before_commit: Callable[[list[bytes]], None] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.scorer = scorer
        self.keys = stream_keys(prefix, input_stream, output_stream)
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{id(self) & 0xFFFF:x}"
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        if int(dedup_window_s) < 1:
            from mlsd.platform.errors import InputError

            raise InputError(
                "stream.dedup_window_s", dedup_window_s, "must be >= 1 second",
                "keep it well above claim_idle_ms (default 3600)",
            )  # fmt: skip
        self.dedup_window_s = int(dedup_window_s)
        self.ordered = bool(ordered)
        self.clock = clock
        self.sleep = sleep
        self.backoff = Backoff(retry_base_s, retry_max_s)
        # Test hook: called after scoring, before the atomic write+ack (raise in it to "die" mid-batch).
        self.before_commit = before_commit
        self.stats = WorkerStats()
        self._script = client.register_script(_WRITE_AND_ACK)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._first_blocker = client.register_script(_FIRST_BLOCKER)
        self._mark = client.register_script(_MARK_APPLIED)
        self._claim_cursor = "0-0"
        # entries read or reclaimed and not yet committed: kept across a Redis error, so the batch is
        # processed again once Redis answers (idempotent) instead of waiting for a reclaim
        self._held: dict[bytes, dict] = {}
        self._current: list[bytes] = []  # the batch being scored (mark_applied marks these)
        ensure_group(client, self.keys["input"], group)
        # The scorer's feature engine (FraudPipeline.handle -> .features) says when a batch is in the
        # windows: from then on the next batch may be applied (ordered mode), while this one scores.
        features = getattr(getattr(scorer, "__self__", None), "features", None)
        if self.ordered and hasattr(features, "after_update"):
            features.after_update = self.mark_applied
        self.max_attempts = max_attempts
        self._attempts: dict[bytes, int] = {}  # entry id -> scorer failures that were not InputErrors

    def _reclaim(self) -> list[tuple[bytes, dict]]:
        """Entries other (dead) consumers left pending longer than ``claim_idle_ms``."""
        result = self.client.xautoclaim(
            self.keys["input"],
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.batch_size,
        )
        self._claim_cursor = result[0] if result[0] else "0-0"
        entries = [e for e in result[1] if e and e[1]]  # deleted entries come back as None / empty
        self.stats.reclaimed += sum(1 for e in entries if e[0] not in self._held)
        return entries

    def _read(self, block: bool) -> list[tuple[bytes, dict]]:
        answer = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.keys["input"]: ">"},
            count=self.batch_size,
            block=self.block_ms if block else None,
        )
        return answer[0][1] if answer else []

    def run_once(self, block: bool = True) -> int:
        """Process one micro-batch; return how many entries it handled (0 = nothing to do).

        A transient Redis error is logged and ridden out: the worker sleeps a backoff and returns 0;
        the entries it holds are processed on the next call.
        """
        try:
            handled = self._step(block)
        except RetryLater as err:
            delay = self.backoff.next()
            log.warning("stream worker %s: %s; retry in %.2f s", self.consumer, err, delay)
            self.sleep(delay)
            return 0
        except transient_errors() as err:
            delay = self.backoff.next()
            self.stats.redis_errors += 1
            log.warning(
                "stream worker %s: transient error (%s: %s); retry %d in %.2f s",
                self.consumer, type(err).__name__, err, self.backoff.attempt, delay,
            )  # fmt: skip
            self.sleep(delay)
            return 0
        self.backoff.reset()
        return handled

    def _step(self, block: bool) -> int:
        self._take(self._reclaim())
        if not self._held:
            self._take(self._read(block))
        if not self._held:
            return 0
        batch = self._ready()
        if not batch:
            self.stats.waits += 1
            self.sleep(min(self.block_ms, 5) / 1000.0)  # an earlier entry is still being applied
            return 0
        self.process(batch)
        for entry_id, _ in batch:
            self._held.pop(entry_id, None)
            self._attempts.pop(entry_id, None)
        return len(batch)

    def _take(self, entries: list[tuple[bytes, dict]]) -> None:
        """Hold the entries that can be payments; dead-letter (and acknowledge) the others now, so
        they never hold back the entries after them."""
        poison = []
        for entry_id, fields in entries:
            body, why = poison_reason(fields)
            if why is None:
                self._held[entry_id] = body
            else:
                self._held.pop(entry_id, None)
                poison.append((entry_id, why, fields.get(b"p", repr(fields).encode())))
        if poison:
            self._send_to_dead_letters(poison)

    def _send_to_dead_letters(self, poison: list[tuple[bytes, str, Any]]) -> None:
        args: list[Any] = [self.group]
        for entry_id, why, raw in poison:
            raw = raw if isinstance(raw, bytes) else str(raw).encode()
            args += [entry_id, why, raw[:_BODY_CHARS], self.consumer]
            log.warning("stream worker %s: entry %s dead-lettered: %s", self.consumer, entry_id, why)
        moved = int(self._dead_letter(keys=[self.keys["input"], self.keys["dead"]], args=args))
        self.stats.invalid += moved

    def _ready(self) -> list[tuple[bytes, dict]]:
        """The held entries whose turn has come, oldest first, at most ``batch_size``.

        Ordered: only the entries before the first pending entry that someone else holds and has not
        applied yet; none if that entry comes before all of ours (wait for it, or reclaim it).
        """
        held = sorted(self._held, key=_id_key)[: self.batch_size]
        if not self.ordered:
            return [(i, self._held[i]) for i in held]
        current, previous = self._bucket_keys(self.keys["applied"])
        blocker = self._first_blocker(
            keys=[self.keys["input"], current, previous], args=[self.group, held[-1], b",".join(held)]
        )
        if blocker is not None:
            limit = _id_key(blocker)
            held = [i for i in held if _id_key(i) < limit]
        return [(i, self._held[i]) for i in held]

    def mark_applied(self) -> None:
        """Record that the batch being scored is in the feature windows (its rows recorded): the next
        batch may be applied now, while this one is still being scored. The feature engine calls it."""
        if not self.ordered or not self._current:
            return
        current, _ = self._bucket_keys(self.keys["applied"])
        self._mark(keys=[current], args=[2 * self.dedup_window_s, b",".join(self._current)])

    def process(self, entries: list[tuple[bytes, dict]]) -> None:
        """Decide a batch of held entries (payment bodies) and commit: decisions written, entries
        acknowledged; entries the engine refuses go to the dead-letter stream."""
        ids = [e[0] for e in entries]
        payments = [e[1] for e in entries]
        self.stats.read += len(entries)
        self._current = ids
        try:
            kept, records, poison = self._score(ids, payments)
        finally:
            self._current = []
        if poison:
            self._send_to_dead_letters(poison)
        if self.before_commit is not None:
            self.before_commit(kept)
        now_ms = time.time() * 1000.0
        args: list[Any] = [self.group, len(records), 2 * self.dedup_window_s]
        body_of = dict(zip(ids, payments, strict=True))
        for record, entry_id in zip(records, kept, strict=True):
            sent_ms = body_of[entry_id].get("sent_ms")
            if sent_ms is not None:
                self.stats.latencies_ms.append(now_ms - float(sent_ms))
                record = {**record, "sent_ms": sent_ms}
            args.extend((str(record["tx_id"]), json.dumps(record, separators=(",", ":"))))
        args.extend(kept)
        current, previous = self.decided_keys()
        written = int(
            self._script(keys=[self.keys["output"], current, self.keys["input"], previous], args=args)
        )
        self.stats.written += written
        self.stats.duplicates += len(records) - written
        self.stats.batches += 1

    def _score(self, ids: list[bytes], payments: list[dict]):
        """Score the batch; a payment the engine refuses is split off (dead-lettered) and the rest is
        scored again. Returns ``(ids decided, their records, poison entries)``."""
        from mlsd.platform.errors import InputError

        transient = transient_errors()
        ids, payments = list(ids), list(payments)
        self._current = ids  # what mark_applied marks: the entries still in the batch
        poison: list[tuple[bytes, str, bytes]] = []
        while ids:
            try:
                return ids, list(self.scorer(payments)), poison
            except transient:
                raise
            except InputError as err:
                # the engine names the payment (payments[3].amount): split it off, score the rest
                match = _BATCH_INDEX.match(str(err.field))
                if match is None and len(ids) > 1:
                    break  # no index named: find the bad ones one by one (below)
                bad, why = (int(match.group(1)) if match else 0), _error_text(err)
            except Exception:  # noqa: BLE001 - a payment or the engine: tell them apart one by one
                break
            poison.append((ids.pop(bad), why, _raw(payments.pop(bad))))
        return self._score_individually(ids, payments, poison)

    def _score_individually(self, ids, payments, poison):
        """The slow path, only after a batch failed without naming its bad payment: one by one."""
        from mlsd.platform.errors import InputError

        transient = transient_errors()
        kept, records = [], []
        for entry_id, payment in zip(ids, payments, strict=True):
            self._current = [entry_id]  # applied one by one: mark them so
            try:
                records.extend(self.scorer([payment]))
                kept.append(entry_id)
            except transient:
                raise
            except InputError as err:
                poison.append((entry_id, _error_text(err), _raw(payment)))
            except Exception as err:  # noqa: BLE001 - maybe poison, maybe the engine: try again first
                self._attempts[entry_id] = tries = self._attempts.get(entry_id, 0) + 1
                log.exception(
                    "stream worker %s: entry %s broke the scorer (try %d)", self.consumer, entry_id, tries
                )
                if tries < self.max_attempts:
                    raise RetryLater(f"entry {entry_id!r}: {type(err).__name__}: {err}") from err
                poison.append((entry_id, _error_text(err), _raw(payment)))
        return kept, records, poison

    def decided_keys(self) -> tuple[str, str]:
        """The ``decided`` sets of the current and the previous time bucket."""
        return self._bucket_keys(self.keys["decided"])

    def _bucket_keys(self, base: str) -> tuple[str, str]:
        bucket = int(self.clock() // self.dedup_window_s)
        return f"{base}:{bucket}", f"{base}:{bucket - 1}"

    def run(
        self,
        *,
        max_entries: int | None = None,
        idle_exit_s: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> WorkerStats:
        """Loop until ``max_entries`` handled, nothing arrived for ``idle_exit_s``, or ``stop()``.

        Transient Redis errors never end the loop (see :meth:`run_once`); while Redis is unreachable
        the worker is not idle (it has not been able to look).
        """
        handled = 0
        idle_since = time.monotonic()
        while not (stop and stop()):
            errors = self.stats.redis_errors
            n = self.run_once()
            handled += n
            if n or self._held or self.stats.redis_errors != errors:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if max_entries is not None and handled >= max_entries:
                break
        return self.stats


class RetryLater(Exception):
    """The scorer failed on a payment with an error that is not a validation error: the engine may be
    at fault rather than the payment, so the batch is tried again (after a backoff) before the payment
    is dead-lettered (``max_attempts``)."""


def _error_text(err: BaseException) -> str:
    to_dict = getattr(err, "to_dict", None)
    return json.dumps(to_dict(), default=str) if to_dict else f"{type(err).__name__}: {err}"


def _raw(payment: Any) -> bytes:
    return json.dumps(payment, default=str, separators=(",", ":")).encode()


def ensure_group(client: Any, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if absent; reading starts at the stream's beginning."""
    import redis

    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def read_dead_letters(client: Any, stream: str) -> list[dict[str, str]]:
    """Every dead letter (``id``, ``error``, ``body``, ``consumer``), oldest first."""
    return [
        {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
        for _, fields in client.xrange(stream, min="-", max="+")
    ]


def read_decisions(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every decision written to the output stream, oldest first."""
    out = []
    last = "-"
    while True:
        chunk = client.xrange(stream, min=last, max="+", count=5000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return out
        out.extend(json.loads(fields[b"d"]) for _, fields in chunk)
        last = chunk[-1][0]


def read_decision_entries(client: Any, stream: str) -> list[tuple[float, float]]:
    """``(written_ms, sent_ms)`` per decision: the entry id's Redis time and the payment's send time."""
    out = []
    last = "-"
    while True:
        chunk = client.xrange(stream, min=last, max="+", count=5000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return out
        for entry_id, fields in chunk:
            sent = json.loads(fields[b"d"]).get("sent_ms")
            if sent is not None:
                out.append((float(entry_id.split(b"-")[0]), float(sent)))
        last = chunk[-1][0]


# ---------------------------------------------------------------------------------------------------
# `mlsd fraud stream`


def _worker_main(
    workdir: str,
    redis_url: str,
    prefix: str,
    idx: int,
    idle_exit_s: float | None,
    results: Any,
    experiments: str | None = None,
    exposure_redis: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """One worker process: the workdir's champion over Redis-backed windows, in the consumer group.

    ``overrides``: StreamWorker settings that replace the workdir's ``stream`` config (the CLI's
    ``--batch-size``, ``--claim-idle-ms``, ``--unordered``)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from mlsd.fraud.engine import FraudDirs, freeze_heap, load_engine
    from mlsd.fraud.features import FeatureEngine
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.system import SystemDir

    # a Redis that stops answering raises a timeout instead of hanging the worker, at once (no silent
    # retries inside redis-py): the worker's loop retries, logged, with backoff and jitter
    timeout = 10.0
    client = redis.Redis.from_url(
        redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    ws = FraudDirs(SystemDir(workdir, "fraud"))
    # every worker logs exposures to the same Redis (the stream's unless told otherwise): the workers
    # of one consumer group serve one experiment
    shadow = ExperimentClient.from_options(
        experiments, (exposure_redis or redis_url) if experiments else None
    )
    features = retry_transient(
        lambda: FeatureEngine(
            ws.feature_config(), backend="redis", redis_url=redis_url, prefix=prefix + "fw:",
            socket_timeout_s=timeout, redis_retries=0,
        ),
        f"stream worker {idx} start",
    )  # fmt: skip
    pipeline = load_engine(ws, features=features, experiments=shadow)
    pipeline.warm_up()
    freeze_heap()
    cfg = ws.config.stream
    settings: dict[str, Any] = {
        "input_stream": cfg.input_stream,
        "output_stream": cfg.output_stream,
        "group": cfg.group,
        "batch_size": cfg.batch_size,
        "block_ms": cfg.block_ms,
        "claim_idle_ms": cfg.claim_idle_ms,
        "dedup_window_s": cfg.dedup_window_s,
        **{k: v for k, v in (overrides or {}).items() if v is not None},
    }
    worker = retry_transient(
        lambda: StreamWorker(
            client, pipeline.handle, prefix=prefix, consumer=f"worker-{idx}-{os.getpid()}", **settings
        ),
        f"stream worker {idx} start",
    )
    try:
        stats = worker.run(idle_exit_s=idle_exit_s)
    except KeyboardInterrupt:
        stats = worker.stats
    results.put({"worker": idx, **stats.counts()})


def run_stream_command(args: Any) -> dict[str, Any]:
    """Optionally publish payments, then run ``--workers`` worker processes sharing the consumer group."""
    import multiprocessing as mp

    import redis

    from mlsd.fraud.data import load_history
    from mlsd.fraud.engine import MODEL_NAME, FraudDirs
    from mlsd.platform.errors import InputError
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.system import SystemDir

    if args.workers < 1:
        raise InputError("--workers", args.workers, "must be >= 1", "e.g. --workers 2")
    experiments = getattr(args, "experiments", None)
    exposure_redis = getattr(args, "exposure_redis", None)
    ExperimentClient.from_options(experiments, exposure_redis)  # a bad file fails here, not in N workers
    dirs = SystemDir(args.workdir, "fraud")
    dirs.require_champion(MODEL_NAME)  # before spawning N workers: exit 2 with the fix
    ws = FraudDirs(dirs)
    cfg = ws.config.stream
    client = redis.Redis.from_url(args.redis_url)
    keys = stream_keys(args.prefix, cfg.input_stream, cfg.output_stream)
    published = 0
    if args.publish:
        tx = load_history(args.publish)
        tx = tx.sort_values("ts", kind="stable")
        if args.limit:
            tx = tx.iloc[: args.limit]
        rows = tx.drop(columns=["fraud", "scenario", "label_ts"], errors="ignore")
        published = publish(
            client,
            keys["input"],
            (json.loads(line) for line in rows.to_json(orient="records", lines=True).splitlines()),
        )
    idle = args.idle_exit if args.idle_exit is not None else (2.0 if args.publish else None)
    overrides = {
        "batch_size": getattr(args, "batch_size", None),
        "claim_idle_ms": getattr(args, "claim_idle_ms", None),
        "ordered": False if getattr(args, "unordered", False) else None,
    }
    for name in ("batch_size", "claim_idle_ms"):
        if overrides[name] is not None and overrides[name] < (1 if name == "batch_size" else 0):
            flag = "--" + name.replace("_", "-")
            raise InputError(flag, overrides[name], "must be positive", f"e.g. {flag} 500")
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    stats: list[dict[str, Any]] = []
    if args.workers == 1:  # one worker: run it here, no process to spawn
        import queue

        local: Any = queue.Queue()
        _worker_main(
            str(dirs.root),
            args.redis_url,
            args.prefix,
            0,
            idle,
            local,
            experiments,
            exposure_redis,
            overrides,
        )
        stats.append(local.get())
    else:
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(
                    str(dirs.root),
                    args.redis_url,
                    args.prefix,
                    k,
                    idle,
                    results,
                    experiments,
                    exposure_redis,
                    overrides,
                ),
            )
            for k in range(args.workers)
        ]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.join(timeout=10)
        while not results.empty():
            stats.append(results.get())
    elapsed = time.perf_counter() - started
    decisions = retry_transient(lambda: read_decisions(client, keys["output"]), "stream summary")
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d["decision"]] = counts.get(d["decision"], 0) + 1
    return {
        "published": published,
        "decisions_in_output": len(decisions),
        "by_decision": counts,
        "workers": sorted(stats, key=lambda s: s["worker"]),
        "elapsed_s": round(elapsed, 2),
        "pending": retry_transient(lambda: client.xpending(keys["input"], cfg.group), "stream summary")[
            "pending"
        ],
    }
