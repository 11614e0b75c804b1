"""HTTP service: ``GET /v1/search`` and ``POST /v1/events`` over a :class:`~mlsd.search.engine.SearchEngine`.

HTTP only: every search is the engine's one serving path (a batch of one, through the experiment
router); this module maps the routes, the request limits and the hot reload of the champion.

* ``GET /v1/search?q=...&user_id=...&k=48`` -> ``{"search_id", "results": [...], "parsed": {corrected,
  expansions, entities, language, ...}, "timings_ms": {stage: ms}, "skipped": [...], ...}``.
* ``POST /v1/events`` with ``{"events": [{"type": "impression"|"click"|"add_to_cart"|"purchase",
  "search_id", "product_id", "position", "query", "user_id", "value", "ts"}, ...]}`` appends to the
  click log that ``mlsd search train`` reads (served from a workdir: ``W/search/data/clicklog``, next
  to the simulated sessions, so training reads one table); answers ``{"accepted": n}`` only once the
  events are fsync'd to the log (:class:`~mlsd.search.clicklog.ClickLog`), so an acknowledged event
  survives SIGTERM, SIGKILL and a crash; ids, positions and timestamps out of range are a 422.
* ``GET /health`` names the ``model`` and the ``model_version`` served, the catalog size and the
  ``ranker`` (``null`` for a retrieval-only champion, trained without a click log).

Experiments: pass ``experiments`` (an :class:`~mlsd.platform.experiments.client.ExperimentClient`) and
every search experiment in its config routes requests by ``user_id`` through
:class:`~mlsd.search.routing.SearchRouter` (arm params ``{"ranker": "ltr"|"hybrid"|"bm25"|"dense"}``, arm
aliases loaded from ``registry_dir``); the response names ``"experiment": {name: arm}`` and the exposure is
logged after the response was built. Searches without a user id stay on the champion path.

Bad input never reaches the pipeline as a traceback: an empty or oversized query, ``k`` outside
``[k_min, k_max]``, a body that is not JSON, or an event missing a field is answered with a 4xx
``{"error": {"field", "value", "problem", "fix", ...}}`` naming the field (the platform's error shape).
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mlsd.platform.errors import InputError
from mlsd.platform.serving import SafeJSONResponse, create_app
from mlsd.search.clicklog import MAX_TS, MAX_VALUE, ClickLog, validate_events
from mlsd.search.engine import MODEL_NAME, SearchEngine
from mlsd.search.routing import SearchRouter

MAX_BODY_BYTES = 5_000_000
MAX_EVENTS_PER_REQUEST = 2_000
logger = logging.getLogger("mlsd.search.service")


class SearchResult(BaseModel):
    model_config = ConfigDict(extra="allow")  # ranker diagnostics ride along

    product_id: int
    position: int = Field(description="1-based rank shown")
    score: float | None
    title: str | None = None
    brand: str | None = None
    category: str | None = None
    price: float | None = None


class SkippedStage(BaseModel):
    stage: str
    reason: str


class SearchAnswer(BaseModel):
    """Answer of ``GET /v1/search`` (extra keys: diagnostics that depend on the ranker)."""

    model_config = ConfigDict(extra="allow")

    search_id: str
    query: str
    user_id: str
    model_version: int | None
    ranked_by: str = Field(description="the stage whose order was served (ltr, hybrid, bm25, ...)")
    results: list[SearchResult]
    parsed: dict[str, Any] = Field(description="corrected, expansions, entities, language, ...")
    rules: Any = Field(None, description="merchandising rules applied")
    timings_ms: dict[str, float]
    skipped: list[SkippedStage]
    batch: int
    deadline_ms: float
    total_ms: float
    experiment: dict[str, str] = Field(description="experiment -> arm (empty outside every experiment)")
    degraded: bool = Field(description="served on the control path because a dependency is down")
    degraded_reason: str | None


_ID = Field(min_length=1, description="the search_id the search returned")
_PRODUCT = Field(ge=0, lt=2**53, description="the product id")
_TS = Field(None, ge=0, lt=MAX_TS, description="seconds since the epoch (default: now)")
_RANK = Annotated[int, Field(ge=1, lt=2**31)]


class Impression(BaseModel):
    """A result shown (what :func:`~mlsd.search.clicklog.validate_events` checks, which names the field)."""

    type: Literal["impression"]
    search_id: str = _ID
    product_id: int = _PRODUCT
    position: _RANK = Field(description="1-based rank shown")
    logged_position: _RANK | None = Field(
        None, description="rank before a randomised swap (default: position)"
    )
    query: str = Field(min_length=1, description="the query text")
    user_id: str | None = None
    value: float | None = Field(None, ge=0, lt=MAX_VALUE)
    ts: int | None = _TS


class Outcome(BaseModel):
    """A click, add-to-cart or purchase on a shown result."""

    type: Literal["click", "add_to_cart", "purchase"]
    search_id: str = _ID
    product_id: int = _PRODUCT
    position: Literal[-1] | _RANK | None = Field(None, description="omit it (or -1: none)")
    logged_position: Literal[-1] | _RANK | None = None
    query: str | None = None
    user_id: str | None = None
    value: float | None = Field(None, ge=0, lt=MAX_VALUE, description="order value of a purchase")
    ts: int | None = _TS


class EventsBody(BaseModel):
    """Body of ``POST /v1/events``."""

    events: list[Impression | Outcome] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class EventsAccepted(BaseModel):
    """Answer of ``POST /v1/events``: sent only once every event is fsync'd to the click log."""

    accepted: int


def create_search_app(
    engine: SearchEngine,
    clicklog: ClickLog | None = None,
    *,
    version: str = "0.1.0",
    experiments: Any = None,
    registry_dir: Any = None,
) -> FastAPI:
    """The search service over a fitted :class:`SearchEngine` (and a click log for events).

    ``experiments``: an ``ExperimentClient`` whose ``system == "search"`` experiments route requests
    (None: every request takes the champion path); ``registry_dir``: where arm aliases are loaded from,
    and which the service polls every ``config.service.reload_poll_s`` seconds: when the daily job
    promotes a new champion, it is loaded and served from the next request on (hot reload).
    """
    svc = engine.config.service
    router = SearchRouter(engine, experiments, registry_dir=registry_dir)  # bad arms fail here, at startup
    watcher = champion_watcher(engine, registry_dir) if registry_dir is not None else None

    def health() -> dict[str, Any]:
        return {
            "model": MODEL_NAME,
            "model_version": engine.model_version,
            "products": len(engine.products_),
            "dense": engine.dense_ is not None,
            # None: a retrieval-only champion (trained without a click log): BM25 + dense, no LTR
            "ranker": None if engine.ranker_ is None else "lambdamart",
        }

    app = create_app("search", title="mlsd search", version=version, health=health)
    # The documented maxItems, enforced as a 422: a batch one over it must still fit the body limit
    # (an event is ~150 bytes; 2,000 of them ~300 KB), or the client would get a 413 instead.
    max_events = min(svc.max_events_per_request, MAX_EVENTS_PER_REQUEST)
    app.state.engine = engine
    app.state.champion_watcher = watcher
    if watcher is not None:
        app.router.on_shutdown.append(watcher.stop)
        app.state.ready_checks.append(watcher.check)  # a failed reload: not ready, still serving the old
    app.state.router = router
    app.state.clicklog = clicklog
    if clicklog is not None:  # every accepted event is on disk already; this compacts the segment
        app.router.on_shutdown.append(clicklog.close)
    checks = getattr(app.state, "ready_checks", None)
    if checks is not None and experiments is not None and hasattr(experiments.log, "_client"):
        checks.append(exposure_log_ready(experiments.log))

    @app.get("/v1/search", tags=["search"], response_model=SearchAnswer, response_model_exclude_unset=True)
    def search(
        q: str = Query(
            ...,
            min_length=1,
            max_length=svc.max_query_chars,
            pattern=r"\S",
            description="the query text (not blank)",
        ),  # fmt: skip
        user_id: str = Query("", max_length=200, description="who is searching (personalisation)"),
        k: int = Query(svc.k_default, ge=svc.k_min, le=svc.k_max, description="results wanted"),
    ) -> Any:
        answer = router.handle([{"q": q, "user_id": user_id, "k": k}])[0]  # checked by the engine
        outage = experiments.outage() if experiments is not None else None
        # The exposure log is down: experiments are paused, the request took the control (champion) path.
        answer["degraded"] = outage is not None and bool(user_id)
        answer["degraded_reason"] = outage if answer["degraded"] else None
        return SafeJSONResponse(jsonable_encoder(answer))

    @app.post(
        "/v1/events",
        tags=["search"],
        response_model=EventsAccepted,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": _inline_defs(EventsBody.model_json_schema())}}}},
    )  # fmt: skip
    async def events(request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise InputError(
                "body",
                f"{len(body)} bytes",
                f"larger than {MAX_BODY_BYTES} bytes",
                "send events in smaller batches",
                status=413,
            )
        try:
            # NaN / Infinity are not JSON (Python's parser takes them); deep nesting must be a 4xx too,
            # whatever the platform's body guard lets through.
            payload = json.loads(body, parse_constant=_not_json)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InputError(
                "body", body[:80].decode("utf-8", "replace"), "is not valid JSON (NaN, Infinity and "
                "nesting deeper than a few levels are refused)", 'send {"events": [...]}',
            ) from None  # fmt: skip
        if not isinstance(payload, dict) or "events" not in payload:
            raise InputError(
                "events",
                payload if not isinstance(payload, dict) else list(payload),
                "missing",
                'send {"events": [...]}',
            )
        items = payload["events"]
        if not isinstance(items, list):
            raise InputError("events", items, "must be a list", "send a JSON array of event objects")
        if len(items) > max_events:
            raise InputError("events", f"{len(items)} events", f"more than {max_events} in one request",
                             "send smaller batches")  # fmt: skip
        frame = validate_events(items)
        if clicklog is None:
            raise InputError(
                "events",
                len(items),
                "this service has no click log configured",
                "serve from a workdir (mlsd search serve --workdir W): events go to W/search/data/clicklog",
                status=503,
            )
        # append fsyncs before it returns: off the event loop, so other requests go on meanwhile
        accepted = await run_in_threadpool(clicklog.append, frame, validated=True)
        return {"accepted": accepted}

    return app


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place (an OpenAPI operation's schema
    cannot point into its own ``$defs``)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[-1]])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(schema)


def exposure_log_ready(log: Any, timeout_s: float = 0.1):
    """``/ready`` check: the Redis exposure log answers a PING within ``timeout_s`` (else 503: the
    service still answers searches, on the control path, flagged degraded)."""

    def check() -> dict[str, Any]:
        import redis

        where = log._client.connection_pool.connection_kwargs
        client = redis.Redis(**{k: where[k] for k in ("host", "port", "db", "username", "password") if k in where},
                             socket_timeout=timeout_s, socket_connect_timeout=timeout_s)  # fmt: skip
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
            raise ConnectionError(f"exposure log (redis) did not answer a PING: {err}") from None
        finally:
            client.close()
        return {"exposure_log": "ok"}

    return check


def champion_watcher(engine: SearchEngine, registry_dir: Any, *, start: bool = True) -> Any:
    """Poll the registry's champion alias of the search ranker; on a move, load the new version and
    hand it to ``engine.set_ranker`` (``start=False``: no thread, call ``.poll()``). None when polling
    is off (``reload_poll_s <= 0``) or the registry holds no search ranker yet."""
    from pathlib import Path

    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.ltr import load_ranker

    svc = engine.config.service
    root = Path(registry_dir)
    if svc.reload_poll_s <= 0 or not (root / "registry.sqlite").exists():
        return None
    registry = ModelRegistry(root)

    def load(new_version: Any) -> None:
        if new_version is None or new_version.version == engine.ranker_version_:
            return
        ranker = load_ranker(registry.artifact_path(svc.model_name, new_version.version))
        engine.set_ranker(ranker, new_version.version)  # one tuple swap: requests see old or new
        logger.info("search: now serving %s v%s", svc.model_name, new_version.version)

    return registry.watch(svc.model_name, svc.alias, load, interval_s=svc.reload_poll_s, start=start)
