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
non-numeric field, an unknown currency, an id that is not a string or an int64, a ``ts`` more than
``max_future_s`` after the clock; 413 for an oversized batch, 404/409 for review cases. The bodies
are documented in ``/openapi.json`` by the models of :mod:`mlsd.fraud.api`.

The reviewer of a claim or a resolution is the API key's owner when the request was authenticated
(``request.state.principal``, set by the platform's auth); a body ``reviewer`` naming someone else
is refused (403). Without auth (apps built in-process) the body names the reviewer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi import Body, FastAPI, Query, Request

from mlsd.fraud import api
from mlsd.fraud.config import FraudConfig
from mlsd.fraud.data import future_limit
from mlsd.fraud.engine import MODEL_NAME, FraudPipeline
from mlsd.fraud.review import check_key, check_reviewer
from mlsd.platform.errors import InputError
from mlsd.platform.serving import Deadline, ErrorBody, SafeJSONResponse, create_app


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

    @app.post("/v1/score", tags=["fraud"], response_model=None, responses=_ok(api.ScoreResponse))
    def score_one(payment: Any = Body(...)) -> SafeJSONResponse:
        deadline = Deadline(svc.deadline_ms)
        if not isinstance(payment, Mapping):
            raise InputError(
                "body", type(payment).__name__, "is not a JSON object", "send one payment object"
            )
        records, meta = score([payment], deadline)
        return SafeJSONResponse({**records[0], **meta, "deadline_ms": svc.deadline_ms})

    @app.post("/v1/score/batch", tags=["fraud"], response_model=None, responses=_ok(api.BatchResponse))
    def score_batch(body: Any = Body(...)) -> SafeJSONResponse:
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
        # plain JSON types already: a response of its own skips FastAPI's jsonable_encoder, which
        # walked every decision again (11 ms of a 480-payment batch, about as long as scoring it)
        return SafeJSONResponse({"decisions": records, **meta, "deadline_ms": svc.deadline_ms})

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

    @app.get("/v1/review/cases", tags=["review"], response_model=None, responses=_ok(api.CasesResponse))
    def review_cases(
        status: Literal["open", "claimed", "resolved"] = Query("open"), limit: int = Query(50, ge=1, le=1000)
    ) -> dict[str, Any]:
        cases = need_queue().list(status=status, limit=limit)
        return {"cases": [c.to_dict() for c in cases], "counts": need_queue().counts()}

    @app.post("/v1/review/claim", tags=["review"], response_model=None, responses=_ok(api.ClaimResponse))
    def review_claim(request: Request, body: Any = Body(...)) -> dict[str, Any]:
        body = _object(body)
        limit = body.get("limit", 1)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # 5.0 is an integer to JSON (and to the documented schema)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InputError("limit", limit, "is not a whole number", "send e.g. 5")
        reviewer = _reviewer(request, body)
        return {"cases": [c.to_dict() for c in need_queue().claim(reviewer, limit=limit)]}

    @app.post(
        "/v1/review/cases/{tx_id}/resolve",
        tags=["review"],
        response_model=None,
        responses={
            **_ok(api.ResolveResponse),
            409: {"model": ErrorBody, "description": "the case is not claimed by this reviewer"},
        },
    )
    def review_resolve(request: Request, tx_id: str, body: Any = Body(...)) -> dict[str, Any]:
        body = _object(body)
        check_key("tx_id", tx_id)
        reviewer = _reviewer(request, body)
        if not isinstance(body.get("outcome"), str):
            raise InputError(
                "outcome", body.get("outcome"), "is missing or not a string", "send outcome: fraud or legit"
            )
        case = need_queue().resolve(tx_id, reviewer, body["outcome"])
        fed = 0
        if case.outcome == "fraud" and case.terminal_id is not None:
            # the online windows learn it now: later payments at this terminal see the known fraud
            fed = pipeline.add_labels([_key(case.tx_id)], [_key(case.terminal_id)], [int(case.resolved_ts)])
        return {"case": case.to_dict(), "label_recorded": True, "feature_labels_updated": fed}

    _document_bodies(app, pipeline, min(svc.max_batch, pipeline.config.max_batch))
    return app


def _ok(model: type) -> dict[int | str, dict[str, Any]]:
    """The 200 body, documented (not validated at run time: see :mod:`mlsd.fraud.api`), and the 400
    a body that is not even JSON gets."""
    return {
        200: {"model": model, "description": "success"},
        400: {"model": ErrorBody, "description": "the body could not be read as JSON"},
    }


def _key(text: str) -> int | str:
    """A stored id as the windows key it: the integer it was when it reads as one (ASCII digits,
    within int64: ``"²"`` is a digit to ``str.isdigit`` but no integer), else the string.

    Examples:
        >>> _key("42"), _key("-7"), _key("²"), _key("9" * 30), _key("t1")
        (42, -7, '²', '999999999999999999999999999999', 't1')
    """
    body = text[1:] if text.startswith("-") else text
    if body.isascii() and body.isdigit() and -(2**63) <= int(text) < 2**63:
        return int(text)
    return text


def _reviewer(request: Request, body: Mapping[str, Any]) -> str:
    """Who claims or resolves: the authenticated key's owner, else the body's ``reviewer``."""
    principal = getattr(request.state, "principal", None)
    sent = body.get("reviewer")
    if principal is None or not getattr(principal, "authenticated", True):
        return check_reviewer(sent)
    if sent is not None and sent != principal.name:
        raise InputError(
            "reviewer",
            sent,
            f"is not the reviewer of this API key ({principal.name!r})",
            "omit reviewer: the API key says who you are",
            status=403,
        )
    return check_reviewer(principal.name)


def _document_bodies(app: FastAPI, pipeline: FraudPipeline, max_batch: int) -> None:
    """Put the request models of :mod:`mlsd.fraud.api` in ``/openapi.json``.

    The handlers take the raw JSON and validate it themselves (errors name ``payments[3].amount``
    with a JSON-safe value), so FastAPI would document their bodies as ``{}``: the schema is set
    here instead, with ``ts``'s maximum the service's current limit
    (:func:`~mlsd.fraud.data.future_limit`, a step that moves hourly: the document is rebuilt when
    it moves) and, without API keys, ``reviewer`` required.
    """
    from pydantic.json_schema import models_json_schema

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        limit = future_limit(pipeline.clock(), pipeline.config.max_future_s)
        if app.openapi_schema and app.openapi_schema.get("x-ts-limit") == limit:
            return app.openapi_schema
        app.openapi_schema = None  # the ts limit moved on (hourly): document the current one
        schema = generate()
        schema["x-ts-limit"] = limit
        models = [(m, "validation") for m in api.REQUEST_BODIES.values()]
        _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.get("$defs", {}))
        components["Payment"]["properties"]["ts"]["maximum"] = limit
        batch = components["ScoreBatchRequest"]["properties"]["payments"]
        # not maxItems: a longer batch is 413 (too large), not the 422 a schema violation would be
        batch["description"] = f"at most {max_batch} payments (413 beyond)"
        if getattr(app.state, "auth", None) is None:  # no API keys: the body names the reviewer
            for name in ("ClaimRequest", "ResolveRequest"):
                components[name].setdefault("required", []).append("reviewer")
                reviewer = components[name]["properties"]["reviewer"]
                reviewer.update(next(a for a in reviewer.pop("anyOf") if a.get("type") != "null"))
                reviewer.pop("default", None)
        for path, model in api.REQUEST_BODIES.items():
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref}},
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InputError("body", type(body).__name__, "is not a JSON object", "send a JSON object")
    return body
