"""The fraud HTTP API over a :class:`~mlsd.fraud.engine.FraudPipeline`: routes only.

Scoring is the engine's (:meth:`FraudPipeline.score_bodies`, the path :meth:`FraudPipeline.handle`
takes too); this module turns requests into engine calls within a 100 ms deadline and answers JSON.
Endpoints (on top of the platform's ``/health``, which names ``model``, ``model_version`` and
``rules_only``, and ``/metrics``):

* ``POST /v1/score`` - one payment -> ``{tx_id, decision, probability, reasons, rules_only,
  timings_ms, skipped, rules_version, model_version}``;
* ``POST /v1/score/batch`` - ``{"payments": [...]}`` (at most ``max_batch``) -> ``{"decisions": [...]}``
  plus the same batch metadata;
* ``GET /v1/review/cases?status=open&limit=50``, ``POST /v1/review/claim`` ``{reviewer, limit}``,
  ``POST /v1/review/cases/{tx_id}/resolve`` ``{reviewer, outcome}`` (the label is stored at once).

Bodies are validated by :func:`mlsd.fraud.data.from_records` (plus ``country``, a rule-only context
field), so every bad input answers 4xx JSON naming the field: 422 for a missing, negative or
non-numeric field or an unknown currency, 413 for an oversized batch, 404/409 for review cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Body, FastAPI, Query

from mlsd.fraud.config import FraudConfig
from mlsd.fraud.engine import MODEL_NAME, FraudPipeline
from mlsd.platform.errors import InputError
from mlsd.platform.serving import Deadline, create_app


def build_app(
    pipeline: FraudPipeline,
    *,
    config: FraudConfig | None = None,
    review_queue: Any = None,
    experiments: Any = None,
) -> FastAPI:
    """The fraud FastAPI app around a ready :class:`FraudPipeline` (and optional review queue).

    ``experiments``: an :class:`~mlsd.platform.experiments.client.ExperimentClient`; its fraud
    experiments run in shadow mode (the pipeline needs the arms' models: build it with
    ``load_engine(dirs, experiments=...)``). Each decision then names its experiment and arm.
    """
    if experiments is not None:
        pipeline.experiments = experiments  # validates: shadow mode, every arm's model loaded
    config = config or FraudConfig()
    svc = config.service
    queue = review_queue if review_queue is not None else pipeline.review_queue

    def health() -> dict[str, Any]:
        rules = pipeline.rules.current()
        return {
            "model": MODEL_NAME,
            "model_version": pipeline.model_version,
            "rules_only": pipeline.rules_only,
            "challenger_version": None if pipeline.challenger is None else pipeline.challenger.version,
            "rules_version": rules.version,
            "rules_reload_errors": pipeline.rules.reload_errors,
            "deadline_ms": svc.deadline_ms,
            "experiments": sorted(e.name for e in getattr(pipeline, "_fraud_experiments", [])),
        }

    app = create_app("fraud", title="mlsd fraud detection", health=health)
    pipeline.warm_up()

    def score(records: list[Mapping[str, Any]], deadline: Deadline) -> tuple[list[dict], dict]:
        batch = pipeline.score_bodies(records, deadline=deadline)
        return batch.records(), batch.response()

    @app.post("/v1/score", tags=["fraud"])
    def score_one(payment: Any = Body(...)) -> dict[str, Any]:
        deadline = Deadline(svc.deadline_ms)
        if not isinstance(payment, Mapping):
            raise InputError(
                "body", type(payment).__name__, "is not a JSON object", "send one payment object"
            )
        records, meta = score([payment], deadline)
        return {**records[0], **meta, "deadline_ms": svc.deadline_ms}

    @app.post("/v1/score/batch", tags=["fraud"])
    def score_batch(body: Any = Body(...)) -> dict[str, Any]:
        deadline = Deadline(svc.deadline_ms)
        if not isinstance(body, Mapping) or "payments" not in body:
            raise InputError("payments", None, "is missing", 'send {"payments": [ ... ]}')
        payments = body["payments"]
        if not isinstance(payments, list):
            raise InputError(
                "payments", type(payments).__name__, "is not a list", "send a JSON list of payments"
            )
        if len(payments) > svc.max_batch:
            raise InputError(
                "payments", len(payments), f"batch larger than {svc.max_batch}", "split the batch", status=413
            )
        records, meta = score(payments, deadline)
        return {"decisions": records, **meta, "deadline_ms": svc.deadline_ms}

    def need_queue() -> Any:
        if queue is None:
            raise InputError(
                "review_queue",
                None,
                "no review queue in this service",
                "serve with the review queue on",
                status=404,
            )
        return queue

    @app.get("/v1/review/cases", tags=["review"])
    def review_cases(status: str = Query("open"), limit: int = Query(50)) -> dict[str, Any]:
        cases = need_queue().list(status=status, limit=limit)
        return {"cases": [c.to_dict() for c in cases], "counts": need_queue().counts()}

    @app.post("/v1/review/claim", tags=["review"])
    def review_claim(body: Any = Body(...)) -> dict[str, Any]:
        body = _object(body)
        limit = body.get("limit", 1)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InputError("limit", limit, "is not a whole number", "send e.g. 5")
        reviewer = body.get("reviewer")
        if not isinstance(reviewer, str):
            raise InputError("reviewer", reviewer, "is missing or not a string", "name the reviewer")
        return {"cases": [c.to_dict() for c in need_queue().claim(reviewer, limit=limit)]}

    @app.post("/v1/review/cases/{tx_id}/resolve", tags=["review"])
    def review_resolve(tx_id: str, body: Any = Body(...)) -> dict[str, Any]:
        body = _object(body)
        for key in ("reviewer", "outcome"):
            if not isinstance(body.get(key), str):
                raise InputError(
                    key,
                    body.get(key),
                    "is missing or not a string",
                    "send reviewer and outcome (fraud|legit)",
                )
        case = need_queue().resolve(tx_id, body["reviewer"], body["outcome"])
        fed = 0
        if case.outcome == "fraud" and case.terminal_id is not None:
            # the online windows learn it now: later payments at this terminal see the known fraud
            terminal = int(case.terminal_id) if case.terminal_id.lstrip("-").isdigit() else case.terminal_id
            tx_key = int(case.tx_id) if case.tx_id.lstrip("-").isdigit() else case.tx_id
            fed = pipeline.add_labels([tx_key], [terminal], [int(case.resolved_ts)])
        return {"case": case.to_dict(), "label_recorded": True, "feature_labels_updated": fed}

    return app


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InputError("body", type(body).__name__, "is not a JSON object", "send a JSON object")
    return body
