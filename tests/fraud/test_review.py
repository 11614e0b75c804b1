"""One review-queue contract suite over SQLite and PostgreSQL (real server)."""

from __future__ import annotations

import threading
import uuid

import pytest

from mlsd.fraud.review import SQLReviewQueue
from mlsd.platform.errors import InputError


@pytest.fixture(params=["sqlite", "postgres"])
def make_queue(request, tmp_path):
    """A factory of queue clients on ONE database (each call = a separate connection)."""
    made = []
    if request.param == "sqlite":
        path = tmp_path / "review.sqlite"

        def make():
            made.append(SQLReviewQueue.sqlite(path))
            return made[-1]
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"t_{uuid.uuid4().hex[:10]}"

        def make():
            made.append(SQLReviewQueue.postgres(dsn, schema=schema))
            return made[-1]

    yield make
    if request.param == "postgres" and made:
        made[0].db.execute(f"DROP SCHEMA {schema} CASCADE")
    for q in made:
        q.close()


CASES = [
    {"tx_id": "a", "probability": 0.6, "amount": 100.0, "reasons": ["SCORE_REVIEW"]},  # priority 60
    {"tx_id": "b", "probability": 0.9, "amount": 10.0},  # 9
    {"tx_id": "c", "probability": 0.5, "amount": 1000.0},  # 500
    {"tx_id": "d", "probability": 0.7, "amount": 200.0},  # 140
]


def test_enqueue_list_priority_and_idempotence(make_queue):
    q = make_queue()
    assert q.enqueue(CASES, now=100) == 4
    assert q.enqueue(CASES[:2], now=101) == 0  # re-delivered payments do not open new cases
    listed = q.list()
    assert [c.tx_id for c in listed] == ["c", "d", "a", "b"]
    assert listed[0].priority == pytest.approx(500.0)
    assert listed[2].reasons == ["SCORE_REVIEW"]
    assert q.counts() == {"open": 4, "claimed": 0, "resolved": 0}


def test_claim_resolve_writes_label_at_once(make_queue):
    q = make_queue()
    q.enqueue(CASES, now=100)
    claimed = q.claim("alice", limit=2, now=200)
    assert [c.tx_id for c in claimed] == ["c", "d"]
    assert all(c.status == "claimed" and c.reviewer == "alice" for c in claimed)
    assert [c.tx_id for c in q.claim("bob", now=201)] == ["a"]
    with pytest.raises(InputError) as err:
        q.resolve("c", "bob", "fraud")
    assert err.value.status == 409
    case = q.resolve("c", "alice", "fraud", now=300)
    assert case.status == "resolved" and case.outcome == "fraud" and case.resolved_ts == 300
    q.resolve("d", "alice", "legit", now=301)
    known = q.labels.labels_known_at(300).set_index("tx_id")
    assert known.loc["c", "label"] == 1 and known.loc["c", "source"] == "review"
    assert "d" not in known.index  # resolved at 301: not known at 300
    assert q.labels.labels_known_at(301).set_index("tx_id").loc["d", "label"] == 0
    assert q.counts() == {"open": 1, "claimed": 1, "resolved": 2}
    with pytest.raises(InputError) as err:
        q.resolve("c", "alice", "fraud")
    assert err.value.status == 409


def test_bad_input_names_the_field(make_queue):
    q = make_queue()
    with pytest.raises(InputError) as err:
        q.enqueue([{"tx_id": "x", "probability": 0.5}])
    assert err.value.field == "cases[0].amount"
    with pytest.raises(InputError) as err:
        q.enqueue([{"tx_id": "x", "probability": 0.5, "amount": -1}])
    assert err.value.field == "cases[0].amount"
    q.enqueue(CASES)
    with pytest.raises(InputError) as err:
        q.resolve("zzz", "alice", "fraud")
    assert err.value.status == 404 and err.value.field == "tx_id"
    with pytest.raises(InputError) as err:
        q.resolve("a", "alice", "maybe")
    assert err.value.field == "outcome"
    with pytest.raises(InputError) as err:
        q.claim("", 1)
    assert err.value.field == "reviewer"
    with pytest.raises(InputError) as err:
        q.list(status="lost")
    assert err.value.field == "status"


def test_concurrent_claims_never_hand_a_case_twice(make_queue):
    first = make_queue()
    first.enqueue([{"tx_id": f"t{i:03d}", "probability": 0.5, "amount": float(i + 1)} for i in range(120)])
    clients = [make_queue() for _ in range(4)]  # separate connections = separate reviewers' processes
    got: dict[int, list[str]] = {i: [] for i in range(4)}
    errors: list[BaseException] = []

    def work(i):
        try:
            while True:
                cases = clients[i].claim(f"r{i}", limit=3)
                if not cases:
                    return
                got[i].extend(c.tx_id for c in cases)
        except BaseException as exc:  # surfaced below; a thread must not swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    claimed = [tx for ids in got.values() for tx in ids]
    assert len(claimed) == len(set(claimed)) == 120
    assert first.counts()["claimed"] == 120
