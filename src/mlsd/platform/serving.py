"""HTTP serving shared by the three systems: one app factory, one error shape, one set of metrics.

``create_app(system, title=..., version=...)`` returns a FastAPI app that already has

* ``GET /health`` (liveness: status, system, version, uptime; an optional ``health`` callable adds
  details and answers 503 when it raises) and ``GET /ready`` (readiness: 503 with the reason when the
  ``ready`` callable or a check in ``app.state.ready_checks`` raises, e.g. Redis unreachable or a
  hot reload that failed),
* ``GET /metrics`` in the Prometheus text format,
* a request middleware counting requests and timing them per route template, and writing one audit
  line (``mlsd.audit``: key name, role, method, path, status) per state-changing request,
* API keys with roles on every state-changing route (:mod:`mlsd.platform.auth`; ``auth=None``, the
  default for apps built in-process, leaves the app open; :func:`serve` applies the environment's
  keys and fails closed when there are none),
* a body guard in front of the routes: POST/PUT/PATCH/DELETE bodies must be ``application/json``
  (415 otherwise: no cross-origin ``text/plain`` form posts), at most ``max_body_bytes`` (413 before
  anything is parsed, chunked bodies too), nested at most ``max_json_depth`` deep and free of
  ``NaN``/``Infinity`` and numbers that overflow to infinity (422),
* error handlers so a client never sees an HTML traceback: :class:`InputError` -> its ``status`` with
  ``{"error": {...}}``; FastAPI's request validation -> 422 naming the field; unknown route -> 404;
  anything unexpected -> 500 ``{"error": {...}}`` and a logged traceback; every error status is
  documented in the OpenAPI with the :class:`ErrorBody` model,
* a default response class (:class:`SafeJSONResponse`) that never writes ``NaN``/``Infinity``: a
  non-finite float goes out as ``null`` and is logged.

Inside a handler, :class:`Deadline` carries the request's time budget through the stages and
:class:`StageTimer` times each stage (``timer.timings_ms``, and the Prometheus histogram
``mlsd_stage_seconds{system, stage}``) so responses can report where the time went and what was skipped.

All metrics live in one module-level :data:`REGISTRY` (not prometheus_client's global default), created
once at import: creating many apps in one process (tests do) never registers a metric twice, and the
``system`` label keeps the apps apart.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
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
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlsd.platform.auth import ANONYMOUS, AUDIT, SAFE_METHODS, ApiKeys, presented_key
from mlsd.platform.errors import DependencyUnavailable, InputError
from mlsd.platform.jsonio import plain

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_JSON_DEPTH",
    "REGISTRY",
    "Deadline",
    "ErrorBody",
    "ErrorDetail",
    "SafeJSONResponse",
    "StageCost",
    "StageTimer",
    "create_app",
    "error_body",
    "json_body_problem",
    "json_depth",
    "metric",
    "secure",
    "serve",
]

logger = logging.getLogger("mlsd.serving")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a batch of payments or events, not a file upload
DEFAULT_MAX_JSON_DEPTH = 64  # every API here is two or three levels deep; json.loads recurses per level

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


class ErrorDetail(BaseModel):
    """What every 4xx/5xx answer says: the field, the value it got, the problem and the fix."""

    model_config = ConfigDict(extra="allow")  # 422s add "location" and "errors"

    field: str | None
    value: Any = None
    problem: str
    fix: str
    message: str


class ErrorBody(BaseModel):
    """``{"error": {field, value, problem, fix, message}}``: the body of every error answer."""

    error: ErrorDetail


# Documented on every route (FastAPI's own 422 model is replaced: it is not what is sent).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not parseable JSON"},
    401: {"model": ErrorBody, "description": "no API key, or one not recognised"},
    403: {"model": ErrorBody, "description": "the API key's role may not call this route"},
    404: {"model": ErrorBody, "description": "no such endpoint or resource"},
    413: {"model": ErrorBody, "description": "the body (or a batch in it) is too large"},
    415: {"model": ErrorBody, "description": "the body is not application/json"},
    422: {"model": ErrorBody, "description": "invalid input: the field, the value and the fix"},
    503: {"model": ErrorBody, "description": "a dependency did not answer: nothing was acknowledged, retry"},
}


def error_body(err: InputError) -> dict[str, Any]:
    return {"error": err.to_dict()}


class SafeJSONResponse(JSONResponse):
    """JSON that is JSON: a non-finite float (NaN, inf) goes out as ``null`` instead of ``NaN`` (which
    strict parsers refuse) or a 500 (what ``allow_nan=False`` alone gives), and is logged so the bug
    that produced it is seen. numpy values are converted too.

    Examples:
        >>> SafeJSONResponse({"p": float("nan"), "k": 3}).body
        b'{"p":null,"k":3}'
    """

    def render(self, content: Any) -> bytes:
        try:  # the common case: plain JSON types, one C-speed pass
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (ValueError, TypeError) as err:
            if isinstance(err, ValueError):
                logger.warning("a response held a non-finite number (NaN or infinity); it was sent as null")
            text = json.dumps(plain(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")


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
        return _error_response(exc)

    @app.exception_handler(DependencyUnavailable)
    async def _dependency_unavailable(request: Request, exc: DependencyUnavailable) -> JSONResponse:
        return _unavailable_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err, where = _validation_error(exc)
        body = error_body(err)
        body["error"]["location"] = where
        body["error"]["errors"] = [
            {"loc": [str(p) for p in e.get("loc", ())], "problem": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return SafeJSONResponse(body, status_code=422)

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
        return SafeJSONResponse(
            error_body(err), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    # Only reached by errors raised outside the request middleware (e.g. in a middleware added later):
    # Starlette still re-raises them to the server after sending this body, which logs them.
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return SafeJSONResponse(_internal_error_body(exc), status_code=500)


def _error_response(err: InputError) -> JSONResponse:
    # 401 says how to authenticate (RFC 9110); the body says which key to send.
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return SafeJSONResponse(error_body(err), status_code=err.status, headers=headers)


def _unavailable_response(exc: DependencyUnavailable) -> JSONResponse:
    logger.warning("answering 503: %s", exc)
    return SafeJSONResponse(
        {"error": exc.to_dict()}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)}
    )


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
                response = SafeJSONResponse(_internal_error_body(exc), status_code=500)
                await response(scope, receive, send)
        finally:
            self.in_flight.dec()
            route = scope.get("route")
            # The template ("/v1/users/{user_id}"), never the raw path: raw paths would explode the label set.
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            REQUESTS.labels(self.system, method, template, str(status["code"])).inc()
            REQUEST_SECONDS.labels(self.system, method, template).observe(time.perf_counter() - start)
            if method not in SAFE_METHODS:
                _audit(self.system, scope, status["code"])


def _audit(system: str, scope: Mapping[str, Any], status: int) -> None:
    """One line per state-changing request, refused ones too: who, what, and the answer (never the key)."""
    principal = (scope.get("state") or {}).get("principal")
    name, role = (principal.name, principal.role) if principal is not None else ("-", "-")
    if principal is not None and not principal.authenticated:
        role = "auth-off"
    # The path is percent-decoded: "%0A" would start a forged audit line. Escape what is not printable.
    path = str(scope.get("path", "")).encode("unicode_escape").decode("ascii").replace(" ", "\\x20")
    AUDIT.info(
        "system=%s principal=%s role=%s method=%s path=%s status=%d",
        system, name, role, scope.get("method"), path, status,
        extra={"system": system, "principal": name, "role": role, "method": scope.get("method"),
               "path": path, "status": status},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The body guard: what a state-changing request may send, checked before any route parses it.

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[list(b'"[]{}')] = True
_DEPTH_STEP = np.zeros(256, dtype=np.int64)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1


class _NotFinite(Exception):
    """Raised by the parse hooks below (not a ValueError: that is how json reports invalid JSON)."""


def _refuse_constant(name: str) -> float:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # "1e999" parses to inf without a word
        raise _NotFinite(text)
    return value


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing it: brackets inside strings
    are text. Vectorised over the structural characters (quotes and brackets) only.

    Examples:
        >>> json_depth(b'{"a": [1, {"b": "[[[[ \\\\" [["}]}'), json_depth(b"[" * 100_000), json_depth(b"7")
        (3, 100000, 0)
    """
    data = np.frombuffer(body, dtype=np.uint8)
    where = np.flatnonzero(_STRUCTURAL[data])
    kinds = data[where]
    quote = kinds == _QUOTE
    if b"\\" in body and quote.any():
        quote[quote] = ~_escaped(data, where[quote])
    inside = np.bitwise_xor.accumulate(quote.view(np.uint8))  # 1 between an opening and closing quote
    steps = _DEPTH_STEP[kinds] * (inside == 0)
    return int(np.cumsum(steps).max()) if steps.size else 0


def _escaped(data: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Which of the quotes at ``quotes`` follow an odd run of backslashes (escaped: part of a string)."""
    plain = np.flatnonzero(data != _BACKSLASH)  # the run before a quote ends at the last non-backslash
    last = plain[np.searchsorted(plain, quotes - 1, side="right") - 1]
    return (quotes - 1 - last) % 2 == 1


def json_body_problem(body: bytes, max_depth: int) -> InputError | None:
    """Why ``body`` must not reach a route (nested deeper than ``max_depth``; ``NaN``/``Infinity``, which
    Python's json accepts but JSON does not; a number that overflows to infinity), or None. Invalid JSON
    is left to the route, which names it. Costs about two ``json.loads`` of the body.

    Examples:
        >>> json_body_problem(b'{"a": [1, {"b": "[[[[NaN 1e999"}]}', 3) is None   # strings are text
        True
        >>> json_body_problem(b"[" * 100_000, 64).problem
        'JSON nested 100000 levels deep, more than 64'
        >>> json_body_problem(b'{"amount": Infinity}', 64).value, json_body_problem(b'{"ts": 1e999}', 64).value
        ('Infinity', '1e999')
    """
    # Counting first: a flat body (one payment) skips the scan, and a deep one never reaches the parser.
    if body.count(b"[") + body.count(b"{") > max_depth and (depth := json_depth(body)) > max_depth:
        return InputError(
            "body", f"{len(body)} bytes", f"JSON nested {depth} levels deep, more than {max_depth}",
            "send a flatter body: no API here nests more than a few levels",
        )  # fmt: skip
    try:
        json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFinite as bad:
        return InputError(
            "body", str(bad), "is not a finite JSON number (NaN, Infinity and overflowing numbers are not JSON)",
            "send a finite number (|x| < 1.8e308), or null for an unknown value",
        )  # fmt: skip
    except (ValueError, RecursionError):  # invalid JSON: the route's parser answers it, naming the field
        return None
    return None


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _BodyGuard:
    """415 / 413 / 422 for a state-changing request's body before any route sees it (module docstring).

    The body is read here (at most ``max_body_bytes``, counted as it arrives, so a chunked body without
    Content-Length is cut off too) and replayed to the app in one message.
    """

    def __init__(self, app: Any, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.max_json_depth = int(max_json_depth)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(self._too_large(f"{int(declared)} bytes"), scope, receive, send)
            return
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(
                    self._too_large(f"more than {self.max_body_bytes} bytes"), scope, receive, send
                )
                return
            body.append(chunk)
            more = message.get("more_body", False)
        payload = b"".join(body)
        problem = self._problem(payload, headers.get("content-type", ""))
        if problem is not None:
            await self._refuse(problem, scope, receive, send)
            return
        await self.app(scope, _replay(payload, receive), send)

    def _problem(self, payload: bytes, content_type: str) -> InputError | None:
        if not payload:
            return None
        if not _is_json(content_type):
            return InputError(
                "Content-Type", content_type or None, "this API accepts only JSON bodies",
                "send the body as JSON with the header 'Content-Type: application/json'", status=415,
            )  # fmt: skip
        return json_body_problem(payload, self.max_json_depth)

    def _too_large(self, size: str) -> InputError:
        return InputError(
            "body", size, f"larger than this service's limit of {self.max_body_bytes} bytes",
            "send smaller batches", status=413,
        )  # fmt: skip

    @staticmethod
    async def _refuse(err: InputError, scope: dict, receive: Callable, send: Callable) -> None:
        await _error_response(err)(scope, receive, send)


def _replay(payload: bytes, receive: Callable) -> Callable:
    sent = False

    async def replay() -> Mapping[str, Any]:
        nonlocal sent
        if sent:
            return await receive()  # after the body: wait for the disconnect, as the server would
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    return replay


# ---------------------------------------------------------------------------------------------------
# Authorisation: an app-wide dependency, run after routing so the matched route's tags are known.


async def _authorize(request: Request) -> None:
    """Set ``request.state.principal`` (see :mod:`mlsd.platform.auth`), or answer 401/403."""
    policy: ApiKeys | None = request.app.state.auth
    if policy is None:
        request.state.principal = ANONYMOUS
        return
    route = request.scope.get("route")
    tags = tuple(getattr(route, "tags", None) or ())
    path = getattr(route, "path", request.url.path)
    key = presented_key(request.headers)
    principal = policy.authenticate(key)
    if principal is not None:  # known before the role check, so a refused attempt is audited by name
        request.state.principal = principal
    request.state.principal = policy.permit(request.method, path, tags, principal, key)


# ---------------------------------------------------------------------------------------------------
# The factory.


def create_app(
    system: str,
    *,
    title: str,
    version: str = "0.1.0",
    health: Callable[[], Mapping[str, Any]] | None = None,
    ready: Callable[[], Mapping[str, Any] | None] | None = None,
    auth: ApiKeys | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> FastAPI:
    """A FastAPI app with /health, /ready, /metrics, request metrics, auth, the body guard and the
    project's error shape (see the module docstring).

    ``health`` (optional) returns extra details for ``/health`` (model version, index size, ...); when it
    raises, /health answers 503 with the reason. ``ready`` (optional) checks the dependencies (a Redis
    ping with a short timeout, ...): when it raises, ``/ready`` answers 503 with the reason, so a load
    balancer stops sending traffic while the process stays alive; more checks can be appended to
    ``app.state.ready_checks`` later (a hot-reload watcher's ``check``). A check must bound its own time.

    ``auth``: the API keys (:class:`mlsd.platform.auth.ApiKeys`) the app enforces; None (the default,
    for apps built in-process) leaves it open, and :func:`serve` replaces None with
    ``ApiKeys.from_env()``, so the production path fails closed. It is read per request from
    ``app.state.auth``. ``max_body_bytes`` / ``max_json_depth``: the body guard's limits.
    """
    if max_body_bytes < 1 or max_json_depth < 1:
        raise InputError(
            "max_body_bytes" if max_body_bytes < 1 else "max_json_depth",
            min(max_body_bytes, max_json_depth), "must be positive", "pass a limit >= 1",
        )  # fmt: skip
    app = FastAPI(
        title=title,
        version=version,
        default_response_class=SafeJSONResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(_authorize)],
    )
    app.state.system = system
    app.state.started_at = time.time()
    app.state.auth = auth
    app.state.ready_checks = [] if ready is None else [ready]
    app.state.max_body_bytes = int(max_body_bytes)
    _install_error_handlers(app)
    app.add_middleware(_BodyGuard, max_body_bytes=max_body_bytes, max_json_depth=max_json_depth)
    app.add_middleware(_RequestMetrics, system=system)  # outermost: counts guard refusals too

    def live_body() -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok",
            "system": system,
            "version": version,
            "uptime_s": round(time.time() - app.state.started_at, 3),
        }
        if health is not None:
            body.update(health())
        return body

    @app.get("/health", tags=["platform"], responses={503: {"description": "the liveness check failed"}})
    def _health() -> JSONResponse:
        try:
            return SafeJSONResponse(live_body())
        except Exception as exc:  # a failing check means "not live", not "500"
            return _unavailable(system, "health check", exc)

    @app.get("/ready", tags=["platform"], responses={503: {"description": "a dependency is not ready"}})
    def _ready() -> JSONResponse:
        try:
            live_body()  # not live is not ready either
            details: dict[str, Any] = {}
            for check in list(app.state.ready_checks):
                details.update(check() or {})
        except Exception as exc:
            return _unavailable(system, "readiness check", exc)
        return SafeJSONResponse({"status": "ready", "system": system, **details})

    @app.get(
        "/metrics",
        tags=["platform"],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text"}
        },
    )
    def _metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    fastapi_openapi = app.openapi
    app.openapi = lambda: _openapi_with_security(app, fastapi_openapi)  # type: ignore[method-assign]
    return app


# The two ways to send a key, as OpenAPI security schemes (either one satisfies an operation).
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def _openapi_with_security(app: FastAPI, fastapi_openapi: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """FastAPI's schema plus who needs a key: every state-changing operation (and every read, when
    reads are closed), never the platform's own routes. Documented as served in production, so also
    on an in-process app that enforces nothing."""
    if app.openapi_schema is None:
        schema = fastapi_openapi()  # FastAPI's own, with every setting of the app; cached on the app
        reads_closed = app.state.auth is not None and app.state.auth.auth_reads
        for route in app.routes:
            tags = getattr(route, "tags", None) or ()
            operations = schema.get("paths", {}).get(getattr(route, "path", ""), {})
            for method in getattr(route, "methods", None) or ():
                needs_key = "platform" not in tags and (method not in SAFE_METHODS or reads_closed)
                if needs_key and method.lower() in operations:
                    operations[method.lower()]["security"] = [{"bearer": []}, {"apiKey": []}]
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        app.openapi_schema = schema
    return app.openapi_schema


def _unavailable(system: str, what: str, exc: Exception) -> JSONResponse:
    logger.warning("%s %s failed: %s: %s", system, what, type(exc).__name__, exc)
    body = {"status": "unavailable", "system": system, "reason": f"{type(exc).__name__}: {exc}"}
    return SafeJSONResponse(body, status_code=503)


def _changes_state(app: FastAPI) -> bool:
    return any(set(getattr(route, "methods", None) or ()) - SAFE_METHODS for route in app.routes)


def secure(app: FastAPI, environ: Mapping[str, str] | None = None) -> FastAPI:
    """Give an app built without auth the environment's keys (:meth:`ApiKeys.from_env`): what
    :func:`serve` does, and what a factory run by uvicorn itself (``--factory``) should call.

    With no keys configured every state-changing request is refused with a 401 naming the variables
    to set (fail closed), and a warning says so at start; ``MLSD_AUTH=off`` leaves the app open
    (warned loudly). An app given ``auth=`` explicitly keeps it. A bad configuration raises an
    :class:`InputError` (the CLI exits 2 with the fix) before anything is served.
    """
    if app.state.auth is not None:
        return app
    from mlsd.platform.auth import KEYS_ENV, KEYS_FILE_ENV

    app.state.auth = ApiKeys.from_env(environ)
    if app.state.auth is not None and not app.state.auth.keys and _changes_state(app):
        logger.warning(
            "no API keys configured (%s / %s): every state-changing request to %s will be refused with 401",
            KEYS_ENV, KEYS_FILE_ENV, app.state.system,
        )  # fmt: skip
    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Run ``app`` under uvicorn until interrupted (no access log: /metrics counts requests instead and
    ``mlsd.audit`` logs every state change), after :func:`secure`: the production path fails closed."""
    import uvicorn

    secure(app)
    _log_audit_to_stderr()

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def _log_audit_to_stderr() -> None:
    """uvicorn configures only its own loggers: without a handler the audit lines would go nowhere."""
    if AUDIT.handlers or logging.getLogger().handlers:
        return  # the operator configured logging: respect it
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    AUDIT.addHandler(handler)
    AUDIT.setLevel(logging.INFO)
