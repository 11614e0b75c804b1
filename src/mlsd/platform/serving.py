"""HTTP serving shared by the three systems: one app factory, one error shape, one set of metrics.

``create_app(system, title=..., version=...)`` returns a FastAPI app that already has

* ``GET /health`` (status, system, version, uptime; an optional ``health`` callable adds details and
  answers 503 when it raises),
* ``GET /metrics`` in the Prometheus text format,
* a request middleware counting requests and timing them per route template,
* error handlers so a client never sees an HTML traceback: :class:`InputError` -> its ``status`` with
  ``{"error": {...}}``; FastAPI's request validation -> 422 naming the field; unknown route -> 404;
  anything unexpected -> 500 ``{"error": {...}}`` and a logged traceback.

Inside a handler, :class:`Deadline` carries the request's time budget through the stages and
:class:`StageTimer` times each stage (``timer.timings_ms``, and the Prometheus histogram
``mlsd_stage_seconds{system, stage}``) so responses can report where the time went and what was skipped.

All metrics live in one module-level :data:`REGISTRY` (not prometheus_client's global default), created
once at import: creating many apps in one process (tests do) never registers a metric twice, and the
``system`` label keeps the apps apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlsd.platform.errors import InputError

logger = logging.getLogger("mlsd.serving")

# ---------------------------------------------------------------------------------------------------
# Metrics: one registry for the process, get-or-create so modules may declare their own metrics too.

REGISTRY = CollectorRegistry(auto_describe=True)

# Request latencies here are milliseconds, so the default buckets (starting at 5 ms) would be too coarse.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)

_metrics: dict[str, Any] = {}
_metrics_lock = threading.Lock()


def metric(kind: type, name: str, documentation: str, labelnames: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """Return the metric ``name`` from :data:`REGISTRY`, creating it on first use.

    ``kind`` is a prometheus_client class (Counter, Gauge, Histogram, Summary). Asking twice for the same
    name returns the same object, so a module can declare its metrics at call time without caring
    whether another app in the process already did; asking for the same name with another kind or other
    labels is a programming error and raises ``ValueError``.
    """
    with _metrics_lock:
        existing = _metrics.get(name)
        if existing is not None:
            if not isinstance(existing, kind) or tuple(existing._labelnames) != tuple(labelnames):
                raise ValueError(
                    f"metric {name!r} already exists as {type(existing).__name__}{tuple(existing._labelnames)}; "
                    f"asked for {kind.__name__}{tuple(labelnames)}"
                )
            return existing
        created = kind(name, documentation, labelnames, registry=REGISTRY, **kwargs)
        _metrics[name] = created
        return created


REQUESTS = metric(
    Counter,
    "mlsd_requests",
    "HTTP requests answered, by route template and status",
    ("system", "method", "route", "status"),
)
REQUEST_SECONDS = metric(
    Histogram,
    "mlsd_request_seconds",
    "HTTP request latency in seconds, by route template",
    ("system", "method", "route"),
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = metric(Gauge, "mlsd_requests_in_flight", "HTTP requests being served now", ("system",))
STAGE_SECONDS = metric(
    Histogram,
    "mlsd_stage_seconds",
    "time spent per pipeline stage",
    ("system", "stage"),
    buckets=LATENCY_BUCKETS,
)
STAGE_SKIPPED = metric(
    Counter, "mlsd_stage_skipped", "stages skipped to meet a deadline or after a failure", ("system", "stage")
)


# ---------------------------------------------------------------------------------------------------
# Deadlines and stage timings: the per-request objects a handler passes through its pipeline.


class Deadline:
    """A time budget started at construction: ``remaining_ms()``, ``expired()``, ``elapsed_ms()``.

    Stages ask ``deadline.allows(expected_ms)`` before expensive work and degrade (skip the stage, fall back
    to the previous order) instead of blowing the budget. ``clock`` (seconds, monotonic) is injectable so
    tests can move time without sleeping.
    """

    __slots__ = ("budget_ms", "_clock", "_start")

    def __init__(self, budget_ms: float, *, clock: Callable[[], float] = time.perf_counter) -> None:
        if not budget_ms > 0:
            raise InputError(
                "deadline_ms", budget_ms, "the time budget must be positive", "pass a budget > 0 ms"
            )
        self.budget_ms = float(budget_ms)
        self._clock = clock
        self._start = clock()

    def elapsed_ms(self) -> float:
        return (self._clock() - self._start) * 1000.0

    def remaining_ms(self) -> float:
        """Milliseconds left; negative once the budget is spent."""
        return self.budget_ms - self.elapsed_ms()

    def expired(self) -> bool:
        return self.remaining_ms() <= 0.0

    def allows(self, needed_ms: float) -> bool:
        """True when at least ``needed_ms`` remain: the check before starting a stage of known cost."""
        return self.remaining_ms() >= needed_ms

    def __repr__(self) -> str:
        return f"Deadline(budget_ms={self.budget_ms:g}, remaining_ms={self.remaining_ms():.2f})"


class StageCost:
    """What a stage is expected to cost, learned from its own timings: ``fixed_ms + per_item_ms * n``.

    A service asks ``deadline.allows(cost.expect(n))`` before a skippable stage and feeds the measured
    time back with ``observe(ms, n)`` (an exponentially weighted average, weight ``alpha``). Batches of
    at most ``small_batch`` items teach the fixed part, larger ones the per-item part. A skipped stage
    is not measured, so one slow spell would keep it skipped for good: ``skipped()`` lowers the
    estimate a little each time, and the stage is tried again.

    Examples:
        >>> cost = StageCost(per_item_ms=0.01)
        >>> cost.expect(1000)
        10.0
        >>> cost.observe(20.0, 1000); round(cost.expect(1000), 3)
        12.0
        >>> cost.skipped(); round(cost.expect(1000), 3)
        9.6
    """

    __slots__ = ("alpha", "fixed_ms", "per_item_ms", "small_batch")

    def __init__(
        self, fixed_ms: float = 0.0, per_item_ms: float = 0.0, *, alpha: float = 0.2, small_batch: int = 0
    ) -> None:
        self.fixed_ms = float(fixed_ms)
        self.per_item_ms = float(per_item_ms)
        self.alpha = float(alpha)
        self.small_batch = int(small_batch)

    def expect(self, n: int) -> float:
        return self.fixed_ms + self.per_item_ms * max(int(n), 1)

    def observe(self, ms: float, n: int) -> None:
        n = max(int(n), 1)
        if n <= self.small_batch:
            self.fixed_ms += self.alpha * (ms - self.fixed_ms)
        else:
            self.per_item_ms += self.alpha * (max(ms - self.fixed_ms, 0.0) / n - self.per_item_ms)

    def skipped(self) -> None:
        self.fixed_ms *= 1.0 - self.alpha
        self.per_item_ms *= 1.0 - self.alpha


class StageTimer:
    """Times named stages of one request: ``with timer.stage("rank"): ...``.

    ``timings_ms`` maps stage -> milliseconds (a stage entered twice accumulates), in the order stages ran,
    ready to put in a response. Every stage is also observed into ``mlsd_stage_seconds{system, stage}``.
    ``skip(stage, reason)`` records a stage that was not run (``skipped`` lists them with their reasons),
    so a response can say what it left out.
    """

    def __init__(self, system: str, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.system = system
        self.timings_ms: dict[str, float] = {}
        self.skipped: list[dict[str, str]] = []
        self._clock = clock

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            # Timed even when the stage raises: a failing stage's cost is exactly what one wants to see.
            seconds = self._clock() - start
            self.timings_ms[name] = self.timings_ms.get(name, 0.0) + seconds * 1000.0
            _stage_child(self.system, name).observe(seconds)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"stage": name, "reason": reason})
        STAGE_SKIPPED.labels(self.system, name).inc()

    @property
    def total_ms(self) -> float:
        return sum(self.timings_ms.values())

    def to_dict(self) -> dict[str, Any]:
        """``{"timings_ms": {...}, "skipped": [...]}`` with timings rounded for a JSON response."""
        return {
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "skipped": list(self.skipped),
        }


# labels() takes a lock and builds a tuple each call; stages are few, so cache the children.
_stage_children: dict[tuple[str, str], Any] = {}


def _stage_child(system: str, stage: str) -> Any:
    child = _stage_children.get((system, stage))
    if child is None:
        child = _stage_children.setdefault((system, stage), STAGE_SECONDS.labels(system, stage))
    return child


# ---------------------------------------------------------------------------------------------------
# Errors: every failure answers {"error": {field, value, problem, fix, message}}.


def error_body(err: InputError) -> dict[str, Any]:
    return {"error": err.to_dict()}


_FIXES = {
    "missing": "provide it",
    "int_parsing": "pass a whole number",
    "int_type": "pass a whole number",
    "float_parsing": "pass a number",
    "float_type": "pass a number",
    "bool_parsing": "pass true or false",
    "string_type": "pass a string",
    "json_invalid": "send a valid JSON body",
    "model_attributes_type": "send a JSON object",
    "dict_type": "send a JSON object",
    "list_type": "send a JSON array",
}


def _validation_error(exc: RequestValidationError) -> tuple[InputError, str]:
    """Turn pydantic's first complaint into an InputError naming the field and where it was sent."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("request",), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in first.get("loc", ())]
    where = loc[0] if loc and loc[0] in {"query", "path", "body", "header", "cookie"} else "request"
    path = loc[1:] if where != "request" else loc
    field = ".".join(path) if path else where
    problem = str(first.get("msg", "invalid value"))
    kind = str(first.get("type", ""))
    fix = _FIXES.get(kind, "send a value that satisfies the constraint")
    if kind == "missing":
        fix = (
            f"provide the {where} parameter {field!r}"
            if where in {"query", "path", "header"}
            else "provide it"
        )
    value = first.get("input") if kind != "missing" else None
    return InputError(field, value, problem, f"{fix} (in the {where})"), where


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err, where = _validation_error(exc)
        body = error_body(err)
        body["error"]["location"] = where
        body["error"]["errors"] = [
            {"loc": [str(p) for p in e.get("loc", ())], "problem": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        matched = request.scope.get("route") is not None
        if exc.status_code == 404 and not matched:
            err = InputError(
                "path", request.url.path, "no such endpoint", "see /docs for the endpoints", status=404
            )
        elif exc.status_code == 405:
            err = InputError(
                "method", request.method, "method not allowed here", "see /docs for the endpoints", status=405
            )
        else:
            err = InputError(
                "request", request.url.path, str(exc.detail), "see /docs", status=exc.status_code
            )
        return JSONResponse(
            error_body(err), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    # Only reached by errors raised outside the request middleware (e.g. in a middleware added later):
    # Starlette still re-raises them to the server after sending this body, which logs them.
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_internal_error_body(exc), status_code=500)


def _internal_error_body(exc: BaseException) -> dict[str, Any]:
    return {
        "error": {
            "field": None,
            "value": None,
            "problem": f"internal error ({type(exc).__name__})",
            "fix": "this is a bug in the service, not in your request; the traceback is in the server log",
            "message": "internal server error",
        }
    }


# ---------------------------------------------------------------------------------------------------
# The request middleware: a plain ASGI wrapper (cheaper than BaseHTTPMiddleware), outermost user layer.


class _RequestMetrics:
    """Counts and times every HTTP request by route template; turns an escaped exception into a 500 JSON."""

    def __init__(self, app: Any, system: str) -> None:
        self.app = app
        self.system = system
        self.in_flight = IN_FLIGHT.labels(system)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapper(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            logger.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            status["code"] = 500
            if not status["started"]:
                response = JSONResponse(_internal_error_body(exc), status_code=500)
                await response(scope, receive, send)
        finally:
            self.in_flight.dec()
            route = scope.get("route")
            # The template ("/v1/users/{user_id}"), never the raw path: raw paths would explode the label set.
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            REQUESTS.labels(self.system, method, template, str(status["code"])).inc()
            REQUEST_SECONDS.labels(self.system, method, template).observe(time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------
# The factory.


def create_app(
    system: str,
    *,
    title: str,
    version: str = "0.1.0",
    health: Callable[[], Mapping[str, Any]] | None = None,
) -> FastAPI:
    """A FastAPI app with /health, /metrics, request metrics and the project's error shape.

    ``health`` (optional) returns extra details for ``/health`` (model version, index size, ...); when it
    raises, /health answers 503 with the reason, so a load balancer stops sending traffic.
    """
    app = FastAPI(title=title, version=version)
    app.state.system = system
    app.state.started_at = time.time()
    _install_error_handlers(app)
    app.add_middleware(_RequestMetrics, system=system)

    @app.get("/health", tags=["platform"])
    def _health() -> JSONResponse:
        body: dict[str, Any] = {
            "status": "ok",
            "system": system,
            "version": version,
            "uptime_s": round(time.time() - app.state.started_at, 3),
        }
        if health is not None:
            try:
                body.update(health())
            except Exception as exc:  # a failing check means "not ready", not "500"
                logger.warning("health check failed: %s", exc)
                body.update(status="unavailable", reason=f"{type(exc).__name__}: {exc}")
                return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", tags=["platform"])
    def _metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Run ``app`` under uvicorn until interrupted (no access log: /metrics counts requests instead)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
