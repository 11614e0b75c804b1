"""HTTP service over the engine: scoring, per-stage timings, deadline fallback, review endpoints, 4xx on bad
input, and /health naming the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from mlsd.fraud.config import FraudConfig
from mlsd.fraud.engine import FraudPipeline
from mlsd.fraud.review import SQLReviewQueue
from mlsd.fraud.rules import RuleEngine
from mlsd.fraud.service import build_app

RULES = {
    "version": 5,
    "rules": [
        {
            "id": "limit",
            "when": {"field": "amount", "op": ">", "value": 5000},
            "action": "block",
            "reason": "LIMIT",
        },
        {
            "id": "country",
            "when": {"field": "country", "op": "in", "value": ["KP"]},
            "action": "review",
            "reason": "BLOCKED_COUNTRY",
        },
        {
            "id": "burst",
            "when": {"field": "card_count", "op": ">=", "value": 3},
            "action": "flag",
            "reason": "BURST",
        },
    ],
}


class CardCounter:
    """Known-answer feature engine for service tests: payments seen per card, idempotent on tx_id."""

    def __init__(self):
        self.seen: set = set()
        self.counts: dict = {}

    def update_batch(self, tx: pd.DataFrame) -> pd.DataFrame:
        out = []
        for tx_id, card in zip(tx["tx_id"].tolist(), tx["card_id"].tolist(), strict=True):
            if tx_id not in self.seen:
                self.seen.add(tx_id)
                self.counts[card] = self.counts.get(card, 0) + 1
            out.append(self.counts[card])
        return pd.DataFrame(
            {"card_count": np.array(out, dtype=np.float64), "amount_k": tx["amount"] / 1000.0}
        )


class AmountModel:
    """Known-answer model: probability = min(amount / 1000, 1); contribution all on amount_k."""

    version = 7
    feature_names = ("card_count", "amount_k")

    def predict(self, features):
        return np.clip(features["amount_k"].to_numpy(), 0, 1)

    def contributions(self, features):
        p = self.predict(features)
        return np.column_stack([np.zeros(len(p)), p, np.zeros(len(p))])


@pytest.fixture
def client(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    queue = SQLReviewQueue.sqlite(tmp_path / "fraud.sqlite")
    config = FraudConfig.from_dict({"service": {"max_batch": 5}})
    pipeline = FraudPipeline(
        CardCounter(), RuleEngine(rules), AmountModel(), config=config.service, review_queue=queue
    )
    with TestClient(build_app(pipeline, config=config)) as c:
        c.queue = queue
        yield c
    queue.close()


def pay(tx_id, amount=10.0, **extra):
    return {
        "tx_id": tx_id,
        "ts": 1_700_000_000 + int(tx_id),
        "card_id": 1,
        "terminal_id": 2,
        "amount": amount,
        "currency": "EUR",
        **extra,
    }


def test_score_one_has_decision_probability_reasons_timings(client):
    r = client.post("/v1/score", json=pay(1, 950.0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] == "block" and body["probability"] == pytest.approx(0.95)
    assert body["reasons"] == ["SCORE_BLOCK", "MODEL:amount_k"]
    assert set(body["timings_ms"]) >= {"features", "rules", "model", "decision"}
    assert body["rules_only"] is False and body["rules_version"] == 5 and body["model_version"] == 7
    assert body["deadline_ms"] == 100.0


def test_batch_rules_context_and_review_queue(client):
    payments = [pay(1, 10.0), pay(2, 600.0), pay(3, 10.0, country="kp"), pay(4, 6000.0)]
    r = client.post("/v1/score/batch", json={"payments": payments})
    assert r.status_code == 200, r.text
    d = r.json()["decisions"]
    assert [x["decision"] for x in d] == ["approve", "review", "review", "block"]
    assert "BLOCKED_COUNTRY" in d[2]["reasons"] and "BURST" in d[2]["reasons"]
    assert "LIMIT" in d[3]["reasons"]
    cases = client.get("/v1/review/cases").json()["cases"]
    assert [c["tx_id"] for c in cases] == ["2", "3"]  # priority = p x amount: 360 > 0.1
    claimed = client.post("/v1/review/claim", json={"reviewer": "ana", "limit": 1}).json()["cases"]
    assert [c["tx_id"] for c in claimed] == ["2"]
    r = client.post("/v1/review/cases/2/resolve", json={"reviewer": "ana", "outcome": "fraud"})
    assert r.status_code == 200 and r.json()["case"]["outcome"] == "fraud"
    known = client.queue.labels.labels_known_at(2**62)
    assert known.set_index("tx_id").loc["2", "label"] == 1


def test_deadline_falls_back_to_rules_only(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    config = FraudConfig.from_dict({"service": {"deadline_ms": 1e-9}})  # spent before the model stage
    pipeline = FraudPipeline(CardCounter(), RuleEngine(rules), AmountModel(), config=config.service)
    with TestClient(build_app(pipeline, config=config)) as c:
        body = c.post("/v1/score", json=pay(1, 6000.0)).json()
    assert body["rules_only"] is True and body["probability"] is None
    assert body["decision"] == "block" and body["reasons"] == ["RULES_ONLY", "LIMIT"]
    assert [s["stage"] for s in body["skipped"]] == ["model"]
    assert "model" not in body["timings_ms"]


def test_health_and_metrics(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["rules_version"] == 5
    assert h["model"] == "fraud" and h["model_version"] == 7 and h["rules_only"] is False
    client.post("/v1/score", json=pay(1))
    assert "mlsd_stage_seconds" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/score", {k: v for k, v in pay(1).items() if k != "card_id"}, 422, "card_id"),
        ("/v1/score", pay(1, -5.0), 422, "amount"),
        ("/v1/score", pay(1, "abc"), 422, "amount"),
        ("/v1/score", pay(1, None), 422, "amount"),
        ("/v1/score", pay(1, currency="XYZ"), 422, "currency"),
        ("/v1/score", pay(1, country="France"), 422, "country"),
        ("/v1/score", [pay(1)], 422, "body"),
        ("/v1/score/batch", {"payments": [pay(i) for i in range(6)]}, 413, "payments"),
        (
            "/v1/score/batch",
            {"payments": [pay(1), {**pay(2), "terminal_id": None}]},
            422,
            "payments[1].terminal_id",
        ),
        ("/v1/score/batch", {"payments": [pay(1), pay(2, -1.0)]}, 422, "amount"),
        ("/v1/score/batch", {"payments": [pay(1), pay(2, currency="ABC")]}, 422, "currency"),
        ("/v1/score/batch", {"payments": []}, 422, "payments"),
        ("/v1/score/batch", {"payment": []}, 422, "payments"),
        ("/v1/score/batch", {"payments": "x"}, 422, "payments"),
        ("/v1/review/claim", {"limit": 1}, 422, "reviewer"),
        ("/v1/review/claim", {"reviewer": "a", "limit": "many"}, 422, "limit"),
        ("/v1/review/claim", {"reviewer": "a", "limit": 0}, 422, "limit"),
        ("/v1/review/cases/nope/resolve", {"reviewer": "a", "outcome": "fraud"}, 404, "tx_id"),
        ("/v1/review/cases/nope/resolve", {"reviewer": "a"}, 422, "outcome"),
    ],
)
def test_bad_input_is_4xx_json_naming_the_field(client, path, body, status, field):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field
    assert field.split(".")[-1].split("[")[0] in error["message"]


def test_bad_query_and_body_on_review_list_and_resolve(client):
    r = client.get("/v1/review/cases", params={"status": "lost"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "status"
    r = client.get("/v1/review/cases", params={"limit": "ten"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "limit"
    client.post("/v1/score", json=pay(9, 600.0))
    r = client.post("/v1/review/cases/9/resolve", json={"reviewer": "a", "outcome": "maybe"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "outcome"
    r = client.post("/v1/review/cases/9/resolve", json={"reviewer": "a", "outcome": "fraud"})
    assert r.status_code == 409 and r.json()["error"]["field"] == "tx_id"  # not claimed
    r = client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_a_deliberately_rules_only_service_says_so(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    pipeline = FraudPipeline(CardCounter(), RuleEngine(rules))  # no model: the operator's choice
    with TestClient(build_app(pipeline)) as c:
        h = c.get("/health").json()
        body = c.post("/v1/score", json=pay(1, 6000.0)).json()
    assert h["rules_only"] is True and h["model_version"] is None
    assert body["rules_only"] is True and body["decision"] == "block"


@pytest.fixture
def postgres_queue_client(tmp_path, postgres_dsn):
    """The service over a review queue in a PostgreSQL schema of its own (dropped afterwards)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    schema = f"mlsd_outage_{np.random.default_rng().integers(1 << 30)}"
    queue = SQLReviewQueue.postgres(postgres_dsn, schema=schema)
    config = FraudConfig.from_dict({})
    pipeline = FraudPipeline(
        CardCounter(), RuleEngine(rules), AmountModel(), config=config.service, review_queue=queue
    )
    try:
        with TestClient(build_app(pipeline, config=config)) as client:
            yield client, queue
    finally:
        queue.db._dsn = postgres_dsn
        queue.db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        queue.close()


def _drop_connection(queue, postgres_dsn) -> None:
    """What a PostgreSQL restart or failover does to the queue's connection."""
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (queue.db.conn.info.backend_pid,))


@pytest.mark.services
def test_review_queue_outage_is_a_503_and_the_retry_decides_once(postgres_queue_client, postgres_dsn):
    """PostgreSQL drops the review queue's connection (a restart, a failover) while a batch with a
    review decision is scored: the answer is a 503 naming the dependency with Retry-After, never a 500;
    the retry of the same batch is decided the same and opens its review case once."""
    client, queue = postgres_queue_client
    payments = {"payments": [pay(1, 10.0), pay(2, 600.0)]}
    _drop_connection(queue, postgres_dsn)
    r = client.post("/v1/score/batch", json=payments)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.json()["error"]["field"] == "postgres" and "retry" in r.json()["error"]["fix"]

    r = client.post("/v1/score/batch", json=payments)  # the connection is reopened
    assert r.status_code == 200, r.text
    assert [d["decision"] for d in r.json()["decisions"]] == ["approve", "review"]
    assert [c["tx_id"] for c in client.get("/v1/review/cases").json()["cases"]] == ["2"]
    assert r.json()["decisions"][1]["probability"] == pytest.approx(0.6)


@pytest.mark.services
def test_review_queue_unreachable_reads_are_503_not_500(postgres_queue_client, postgres_dsn):
    """The review endpoints while PostgreSQL is down: 503 + Retry-After (a reviewer's client retries)."""
    client, queue = postgres_queue_client
    queue.db._dsn = "postgresql://127.0.0.1:1/test"  # nothing listens there: reconnects fail
    _drop_connection(queue, postgres_dsn)
    for _ in range(2):  # the drop, then the failed reconnect
        r = client.get("/v1/review/cases")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["field"] == "postgres"
