"""Redis Streams workers on the real Redis: load sharing, a worker dying mid-batch loses nothing and
counts nothing twice (every payment decided exactly once, window counts exact), poison entries go to
the dead-letter stream, batches are applied in stream order. The multi-process chaos run (kill -9,
Redis outage) is tests/fraud/test_chaos.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.fraud.engine import FraudPipeline
from mlsd.fraud.rules import RuleEngine
from mlsd.fraud.stream import StreamWorker, publish, read_dead_letters, read_decisions, stream_keys
from mlsd.platform.errors import InputError
from mlsd.platform.streaming.redis_windows import RedisWindowStore

pytestmark = pytest.mark.services

DAY = 86_400
RULES = {
    "version": 1,
    "rules": [
        {
            "id": "burst",
            "when": {"field": "card_count_24h", "op": ">=", "value": 4},
            "action": "review",
            "reason": "BURST",
        },
    ],
}


class RedisCardWindows:
    """Feature engine on the platform's Redis window store: per-card 24 h count and sum (idempotent)."""

    def __init__(self, client, prefix):
        self.store = RedisWindowStore(horizon_s=7 * DAY, client=client, prefix=prefix)

    def update_batch(self, tx: pd.DataFrame) -> pd.DataFrame:
        cents = np.rint(tx["amount"].to_numpy() * 100).astype(np.int64)
        view = self.store.update_many(
            tx["card_id"].astype(str).tolist(),
            tx["tx_id"].astype(str).tolist(),
            tx["ts"].to_numpy(np.int64),
            cents,
        )
        count, total, _ = view.moments(view.window(DAY))
        return pd.DataFrame({"card_count_24h": count, "card_sum_24h": total / 100.0})

    def counts(self, cards, at):
        view = self.store.view_many([str(c) for c in cards], np.full(len(cards), at, dtype=np.int64))
        return view.moments(view.window(DAY))[0]


def payments(n=60, cards=5):
    rng = np.random.default_rng(3)
    ts = 1_700_000_000 + np.sort(rng.integers(0, DAY // 2, n))
    return [
        {
            "tx_id": i,
            "ts": int(ts[i]),
            "card_id": int(i % cards),
            "terminal_id": 1,
            "amount": float(round(rng.uniform(1, 100), 2)),
            "currency": "EUR",
        }
        for i in range(n)
    ]


@pytest.fixture
def setup(redis_url, redis_prefix, tmp_path):
    import redis

    client = redis.Redis.from_url(redis_url)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(RULES))

    def make_worker(name, prefix=redis_prefix, **kwargs):
        pipeline = FraudPipeline(RedisCardWindows(client, prefix + "win:"), RuleEngine(path))
        return StreamWorker(client, pipeline.handle, prefix=prefix, consumer=name, **kwargs)

    yield client, make_worker
    client.close()


def test_worker_killed_mid_batch_then_new_worker_finishes_exactly_once(setup, redis_prefix):
    client, make_worker = setup
    pays = payments()
    keys = stream_keys(redis_prefix)

    def die(ids):
        raise RuntimeError("killed before writing decisions and acking")

    dead = make_worker("a", batch_size=25, before_commit=die)
    publish(client, keys["input"], pays)
    with pytest.raises(RuntimeError, match="killed"):
        dead.run_once(block=False)  # features of 25 payments updated, nothing written, nothing acked
    assert client.xpending(keys["input"], "scorers")["pending"] == 25
    assert client.xlen(keys["output"]) == 0

    fresh = make_worker("b", batch_size=25, claim_idle_ms=0)
    fresh.run(idle_exit_s=0.2)
    assert fresh.stats.reclaimed == 25
    out = read_decisions(client, keys["output"])
    assert sorted(int(d["tx_id"]) for d in out) == list(range(60))  # every payment, exactly once
    assert client.xpending(keys["input"], "scorers")["pending"] == 0
    # windows counted each payment once although 25 of them were processed twice
    engine = RedisCardWindows(client, redis_prefix + "win:")
    at = max(p["ts"] for p in pays)
    np.testing.assert_array_equal(engine.counts(range(5), at), [12] * 5)

    # the same stream scored by one worker that never died gives the same decisions
    ref_prefix = redis_prefix + "ref:"
    publish(client, stream_keys(ref_prefix)["input"], pays)
    make_worker("ref", prefix=ref_prefix, batch_size=25).run(idle_exit_s=0.2)
    ref = {d["tx_id"]: d["decision"] for d in read_decisions(client, stream_keys(ref_prefix)["output"])}
    assert {d["tx_id"]: d["decision"] for d in out} == ref
    assert sum(d == "review" for d in ref.values()) > 0  # the burst rule did fire: counts matter


def test_duplicate_delivery_writes_one_decision(setup, redis_prefix):
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    pays = payments(10, 2)
    publish(client, keys["input"], pays + pays[:4])  # the producer retried: 4 payments sent twice
    worker = make_worker("a", batch_size=50)
    worker.run(idle_exit_s=0.2)
    out = read_decisions(client, keys["output"])
    assert sorted(int(d["tx_id"]) for d in out) == list(range(10))
    assert worker.stats.duplicates == 4


def test_two_workers_share_the_load(setup, redis_prefix):
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(80, 4))
    w1, w2 = make_worker("w1", batch_size=10), make_worker("w2", batch_size=10)
    for _ in range(20):  # interleave as two processes would
        w1.run_once(block=False)
        w2.run_once(block=False)
    out = read_decisions(client, keys["output"])
    assert len(out) == len({d["tx_id"] for d in out}) == 80
    assert w1.stats.read > 0 and w2.stats.read > 0 and w1.stats.read + w2.stats.read == 80


def test_poison_entries_go_to_the_dead_letter_stream_and_the_rest_of_the_batch_is_decided(
    setup, redis_prefix
):
    """Each kind of entry that once ended the worker (exit 1, and again on every restart)."""
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    pays = payments(8, 2)
    publish(client, keys["input"], pays[:2])
    poison = {
        client.xadd(keys["input"], {"p": b"{not json"}): "not valid JSON",
        client.xadd(keys["input"], {"x": b"{}"}): "no 'p' field",
        client.xadd(keys["input"], {"p": b"[1, 2]"}): "JSON list",
        client.xadd(keys["input"], {"p": json.dumps({**pays[2], "card_id": {"a": 1}})}): "card_id is a dict",
    }
    publish(client, keys["input"], pays[3:5])
    poison[client.xadd(keys["input"], {"p": json.dumps({**pays[5], "amount": -3})})] = "amount"
    publish(client, keys["input"], pays[6:7])
    poison[client.xadd(keys["input"], {"p": json.dumps({**pays[7], "ts": 32503680000})})] = '"field": "ts"'
    worker = make_worker("a", batch_size=50)
    worker.run(idle_exit_s=0.2)
    out = {d["tx_id"]: d for d in read_decisions(client, keys["output"])}
    assert sorted(out) == [0, 1, 3, 4, 6]  # the batch around the poison is decided
    assert {d["decision"] for d in out.values()} <= {"approve", "review", "block"}
    dead = read_dead_letters(client, keys["dead"])
    assert sorted(d["id"] for d in dead) == sorted(i.decode() for i in poison)  # with the entry id ...
    for letter in dead:  # ... and the error text
        assert poison[letter["id"].encode()] in letter["error"]
    assert worker.stats.invalid == 6
    assert client.xpending(keys["input"], "scorers")["pending"] == 0  # all acknowledged: no crash loop


def test_a_payment_the_engine_names_is_split_off_and_the_rest_scored_as_one_batch(setup, redis_prefix):
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    pays = payments(5, 2)
    pays[3] = {**pays[3], "ts": 32503680000}  # the engine refuses it as payments[3].ts
    publish(client, keys["input"], pays)
    worker = make_worker("a", batch_size=50)
    score, calls = worker.scorer, []
    worker.scorer = lambda bodies: calls.append(len(bodies)) or score(bodies)
    worker.run(idle_exit_s=0.2)
    assert calls == [5, 4]  # not one by one: the rest is still one vectorised batch
    assert sorted(d["tx_id"] for d in read_decisions(client, keys["output"])) == [0, 1, 2, 4]
    assert "payments[3].ts" in read_dead_letters(client, keys["dead"])[0]["error"]


def test_a_payment_that_keeps_breaking_the_scorer_is_dead_lettered_after_retries(setup, redis_prefix):
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(6, 2))
    worker = make_worker("a", batch_size=50, max_attempts=3)
    score, failures = worker.scorer, []

    def fragile(bodies):  # an engine bug triggered by one payment (not an InputError)
        if any(b["tx_id"] == 4 for b in bodies):
            failures.append(len(bodies))
            raise TypeError("unhashable type: 'dict'")
        return score(bodies)

    worker.scorer = fragile
    worker.run(idle_exit_s=0.2)
    assert sorted(d["tx_id"] for d in read_decisions(client, keys["output"])) == [0, 1, 2, 3, 5]
    [letter] = read_dead_letters(client, keys["dead"])
    assert "TypeError" in letter["error"] and json.loads(letter["body"])["tx_id"] == 4
    assert failures.count(1) == 3  # tried three times on its own before it was given up


def test_an_engine_failing_for_a_moment_dead_letters_nothing(setup, redis_prefix):
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(6, 2))
    worker = make_worker("a", batch_size=50)
    score, calls = worker.scorer, []

    def flaky(bodies):  # e.g. a model server restarting: fails twice, whatever the payments
        calls.append(len(bodies))
        if len(calls) <= 2:
            raise RuntimeError("model unavailable")
        return score(bodies)

    worker.scorer = flaky
    worker.run(idle_exit_s=0.2)
    assert sorted(d["tx_id"] for d in read_decisions(client, keys["output"])) == list(range(6))
    assert read_dead_letters(client, keys["dead"]) == []


def test_a_review_queue_outage_longer_than_max_attempts_dead_letters_nothing(setup, redis_prefix):
    """The scorer's PostgreSQL review queue down for longer than ``max_attempts`` tries: the payments
    are not at fault, so the worker rides the outage out with backoff and decides every one after it."""
    from mlsd.platform.errors import DependencyUnavailable

    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(6, 2))
    delays: list[float] = []
    worker = make_worker("a", batch_size=50, max_attempts=3, sleep=delays.append)
    score, calls = worker.scorer, []

    def queue_down(bodies):
        calls.append(len(bodies))
        if len(calls) <= 5:
            raise DependencyUnavailable("postgres", "PostgreSQL did not answer (OperationalError)")
        return score(bodies)

    worker.scorer = queue_down
    worker.run(idle_exit_s=0.2)
    assert sorted(d["tx_id"] for d in read_decisions(client, keys["output"])) == list(range(6))
    assert read_dead_letters(client, keys["dead"]) == []
    assert len(delays) >= 5 and calls[:5] == [6] * 5  # the whole batch retried, never split


def test_a_dead_letter_is_written_once_when_two_workers_hold_the_entry(setup, redis_prefix):
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    client.xadd(keys["input"], {"p": b"oops"})
    slow, fresh = make_worker("slow"), make_worker("fresh", claim_idle_ms=0)
    entries = slow._read(block=False)
    fresh.run_once(block=False)  # reclaims the entry and dead-letters it
    slow._take(entries)  # the slow worker gets to it too: already acknowledged, not written again
    assert len(read_dead_letters(client, keys["dead"])) == 1


def test_stream_command_refuses_a_missing_experiments_file_before_starting_workers(tmp_path, capsys):
    from mlsd.cli import main

    argv = ["fraud", "stream", "--workdir", str(tmp_path), "--experiments", str(tmp_path / "nope.yaml")]
    assert main(argv) == 2
    assert "--experiments" in capsys.readouterr().err


def test_the_decided_set_expires_by_time_bucket_but_catches_a_redelivery_across_buckets(setup, redis_prefix):
    client, make_worker = setup
    now = [1_800_000_000.0]
    worker = make_worker("w1", dedup_window_s=60, clock=lambda: now[0])
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(10))
    worker.run_once(block=False)
    current, _ = worker.decided_keys()
    assert 60 < client.ttl(current) <= 120  # two windows: never grows without bound
    # the same payments delivered again in the next bucket: still decided once
    now[0] += 60
    publish(client, keys["input"], payments(10))
    worker.run_once(block=False)
    assert worker.stats.written == 10 and worker.stats.duplicates == 10
    assert len(read_decisions(client, keys["output"])) == 10
    with pytest.raises(InputError):
        make_worker("w2", dedup_window_s=0)


def test_a_batch_waits_until_every_earlier_entry_is_applied(setup, redis_prefix):
    """Ordered: windows take payments in stream order whichever worker is faster."""
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(20, 2))
    w1, w2 = make_worker("w1", batch_size=10), make_worker("w2", batch_size=10)
    w1._take(w1._read(block=False))  # w1 holds entries 0-9 and has not applied them yet
    assert w2.run_once(block=False) == 0 and w2.stats.waits == 1  # w2 holds 10-19: must wait
    assert client.xlen(keys["output"]) == 0
    w1._current = list(w1._held)
    w1.mark_applied()  # w1's features are in: w2 may go on while w1 still scores
    assert w2.run_once(block=False) == 10
    assert w1.run_once(block=False) == 10
    assert sorted(d["tx_id"] for d in read_decisions(client, keys["output"])) == list(range(20))


def test_a_dead_workers_entries_hold_the_others_back_until_reclaimed(setup, redis_prefix):
    client, make_worker = setup
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(20, 2))
    dead = make_worker("dead", batch_size=10)
    dead._read(block=False)  # delivered, never applied: the worker died
    alive = make_worker("alive", batch_size=10, claim_idle_ms=0)
    alive.run(idle_exit_s=0.2)
    assert alive.stats.reclaimed == 10
    assert [d["tx_id"] for d in read_decisions(client, keys["output"])] == list(range(20))  # in order


def test_the_feature_engine_marks_each_batch_applied(setup, redis_prefix, tmp_path):
    """The worker hooks into its scorer's feature engine: once a batch's rows are recorded its entries
    are in the ``applied`` set, so the next batch can go while this one is still being scored."""
    from mlsd.fraud.features import FeatureEngine

    client, _ = setup
    keys = stream_keys(redis_prefix)
    publish(client, keys["input"], payments(5, 2))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RULES))
    pipeline = FraudPipeline(FeatureEngine(), RuleEngine(tmp_path / "r.yaml"))
    seen = []

    def score(bodies):
        out = pipeline.handle(bodies)
        current, _ = worker._bucket_keys(keys["applied"])
        seen.append(client.scard(current))  # after the features, before the commit
        return out

    worker = StreamWorker(client, pipeline.handle, prefix=redis_prefix, consumer="a")
    assert pipeline.features.after_update == worker.mark_applied
    worker.scorer = score
    worker.run_once(block=False)
    assert seen == [5]


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own (free port, no persistence), stopped by its PID afterwards:
    the shared server is never paused."""
    import shutil
    import socket
    import subprocess
    import time

    import redis

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # no silent retries inside redis-py: the worker's own loop is what is tested (as the CLI's is)
    client = redis.Redis(
        port=port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    yield proc, client
    proc.kill()
    proc.wait()


def test_a_redis_that_stops_answering_is_ridden_out_with_backoff(own_redis, tmp_path):
    """Timeouts (a paused server) and refused connections are retried, never fatal."""
    import signal

    proc, client = own_redis
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RULES))
    pipeline = FraudPipeline(RedisCardWindows(client, "w:"), RuleEngine(tmp_path / "r.yaml"))
    delays = []
    worker = StreamWorker(client, pipeline.handle, prefix="t:", consumer="a", sleep=delays.append)
    publish(client, stream_keys("t:")["input"], payments(20, 2))
    proc.send_signal(signal.SIGSTOP)
    try:
        assert [worker.run_once(block=False) for _ in range(3)] == [0, 0, 0]  # timed out, not raised
    finally:
        proc.send_signal(signal.SIGCONT)
    assert worker.stats.redis_errors == 3
    assert 0.025 <= delays[0] <= 0.05 and 0.05 <= delays[1] <= 0.1 and 0.1 <= delays[2] <= 0.2  # doubling
    worker.run(idle_exit_s=0.2)
    assert sorted(d["tx_id"] for d in read_decisions(client, stream_keys("t:")["output"])) == list(range(20))
    assert worker.backoff.attempt == 0  # reset by the first success
