"""Stream worker: payments in on a Redis Stream, decisions out on another, exactly once in effect.

Several workers share one consumer group on the input stream, so each payment goes to one of them
(``XREADGROUP``). Delivery is at-least-once: an entry stays *pending* until acknowledged, and a
worker that died holding entries leaves them pending; every worker first reclaims entries idle for
longer than ``claim_idle_ms`` (``XAUTOCLAIM``) before reading new ones, so nothing is lost.

Reprocessing a payment must not count it twice. Two guards make the *effect* exactly-once:

* feature updates are idempotent on ``tx_id`` (the feature engine skips a payment it has already
  counted), so a replayed batch leaves the windows as they were;
* writing the decisions and acknowledging the entries happen in one Lua script, atomically, and the
  script writes a decision only for a ``tx_id`` not yet in the ``decided`` set. A worker killed
  before the script leaves nothing behind; killed after it, it leaves nothing pending. A slow (not
  dead) worker whose entries were reclaimed meanwhile cannot write a duplicate either.

The ``decided`` set is bucketed by time (``dedup_window_s``, one hour by default) and expires: the
script checks the previous bucket and adds to the current one, so a redelivery is caught for at least
one window (redeliveries come after ``claim_idle_ms``, seconds) while memory stays bounded by two
windows of traffic instead of growing with every payment ever decided.

Micro-batching is what makes the throughput: one XREADGROUP of up to ``batch_size`` entries, one
vectorised pass through features, rules, model and decision (the engine's one serving path,
:meth:`~mlsd.fraud.engine.FraudPipeline.handle`, over the entries' payment bodies), one script call
for all outputs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

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

# A scorer turns payment bodies into one JSON-ready decision dict per payment (same order), raising
# InputError on a bad body: FraudPipeline.handle.
Scorer = Callable[[Sequence[Mapping[str, Any]]], Sequence[Mapping[str, Any]]]


@dataclass
class WorkerStats:
    """Counters of one worker's life."""

    read: int = 0
    reclaimed: int = 0
    written: int = 0
    duplicates: int = 0  # decisions not written because another delivery already wrote them
    invalid: int = 0  # entries that failed validation (decided as errors, still acknowledged)
    batches: int = 0
    latencies_ms: list[float] = field(default_factory=list)


def stream_keys(
    prefix: str, input_stream: str = "payments", output_stream: str = "decisions"
) -> dict[str, str]:
    return {
        "input": f"{prefix}{input_stream}",
        "output": f"{prefix}{output_stream}",
        "decided": f"{prefix}{output_stream}:decided",
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
        before_commit: Callable[[list[bytes]], None] | None = None,
        clock: Callable[[], float] = time.time,
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
        self.clock = clock
        # Test hook: called after scoring, before the atomic write+ack (raise in it to "die" mid-batch).
        self.before_commit = before_commit
        self.stats = WorkerStats()
        self._script = client.register_script(_WRITE_AND_ACK)
        self._claim_cursor = "0-0"
        ensure_group(client, self.keys["input"], group)

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
        self.stats.reclaimed += len(entries)
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
        """Process one micro-batch; return how many entries it handled (0 = nothing to do)."""
        entries = self._reclaim()
        if not entries:
            entries = self._read(block)
        if not entries:
            return 0
        self.process(entries)
        return len(entries)

    def process(self, entries: list[tuple[bytes, dict]]) -> None:
        from mlsd.platform.errors import InputError

        ids = [e[0] for e in entries]
        payments = [json.loads(e[1][b"p"]) for e in entries]
        self.stats.read += len(entries)
        try:
            records = list(self.scorer(payments))
        except InputError:
            # One bad payment must not block the stream: split the batch so the good ones still score.
            records = self._score_individually(payments)
        if self.before_commit is not None:
            self.before_commit(ids)
        now_ms = time.time() * 1000.0
        args: list[Any] = [self.group, len(records), 2 * self.dedup_window_s]
        for record, payment in zip(records, payments, strict=True):
            sent_ms = payment.get("sent_ms")
            if sent_ms is not None:
                self.stats.latencies_ms.append(now_ms - float(sent_ms))
                record = {**record, "sent_ms": sent_ms}
            args.extend((str(record["tx_id"]), json.dumps(record, separators=(",", ":"))))
        args.extend(ids)
        current, previous = self.decided_keys()
        written = int(
            self._script(keys=[self.keys["output"], current, self.keys["input"], previous], args=args)
        )
        self.stats.written += written
        self.stats.duplicates += len(records) - written
        self.stats.batches += 1

    def decided_keys(self) -> tuple[str, str]:
        """The ``decided`` sets of the current and the previous time bucket."""
        bucket = int(self.clock() // self.dedup_window_s)
        base = self.keys["decided"]
        return f"{base}:{bucket}", f"{base}:{bucket - 1}"

    def _score_individually(self, payments: list[dict]) -> list[Mapping[str, Any]]:
        from mlsd.platform.errors import InputError

        out: list[Mapping[str, Any]] = []
        for payment in payments:
            try:
                out.extend(self.scorer([payment]))
            except InputError as err:
                self.stats.invalid += 1
                out.append({"tx_id": payment.get("tx_id", "?"), "decision": "error", "error": err.to_dict()})
        return out

    def run(
        self,
        *,
        max_entries: int | None = None,
        idle_exit_s: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> WorkerStats:
        """Loop until ``max_entries`` handled, nothing arrived for ``idle_exit_s``, or ``stop()``."""
        handled = 0
        idle_since = time.monotonic()
        while not (stop and stop()):
            n = self.run_once()
            handled += n
            if n:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if max_entries is not None and handled >= max_entries:
                break
        return self.stats


def ensure_group(client: Any, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if absent; reading starts at the stream's beginning."""
    import redis

    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


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
) -> None:
    import redis

    from mlsd.fraud.engine import FraudDirs, freeze_heap, load_engine
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.system import SystemDir

    client = redis.Redis.from_url(redis_url)
    ws = FraudDirs(SystemDir(workdir, "fraud"))
    # every worker logs exposures to the same Redis (the stream's unless told otherwise): the workers
    # of one consumer group serve one experiment
    shadow = ExperimentClient.from_options(
        experiments, (exposure_redis or redis_url) if experiments else None
    )
    pipeline = load_engine(
        ws, feature_backend="redis", redis_url=redis_url, redis_prefix=prefix + "fw:", experiments=shadow
    )
    pipeline.warm_up()
    freeze_heap()
    cfg = ws.config.stream
    worker = StreamWorker(
        client,
        pipeline.handle,
        prefix=prefix,
        input_stream=cfg.input_stream,
        output_stream=cfg.output_stream,
        group=cfg.group,
        consumer=f"worker-{idx}-{os.getpid()}",
        batch_size=cfg.batch_size,
        block_ms=cfg.block_ms,
        claim_idle_ms=cfg.claim_idle_ms,
        dedup_window_s=cfg.dedup_window_s,
    )
    try:
        stats = worker.run(idle_exit_s=idle_exit_s)
    except KeyboardInterrupt:
        stats = worker.stats
    results.put(
        {
            "worker": idx,
            "read": stats.read,
            "reclaimed": stats.reclaimed,
            "written": stats.written,
            "duplicates": stats.duplicates,
            "invalid": stats.invalid,
            "batches": stats.batches,
        }
    )


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
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    stats: list[dict[str, Any]] = []
    if args.workers == 1:  # one worker: run it here, no process to spawn
        import queue

        local: Any = queue.Queue()
        _worker_main(str(dirs.root), args.redis_url, args.prefix, 0, idle, local, experiments, exposure_redis)
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
    decisions = read_decisions(client, keys["output"])
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d["decision"]] = counts.get(d["decision"], 0) + 1
    return {
        "published": published,
        "decisions_in_output": len(decisions),
        "by_decision": counts,
        "workers": sorted(stats, key=lambda s: s["worker"]),
        "elapsed_s": round(elapsed, 2),
        "pending": client.xpending(keys["input"], cfg.group)["pending"],
    }
