"""The recommender's HTTP API over a :class:`~mlsd.recsys.engine.RecsysEngine` (HTTP only: every answer
comes from ``engine.handle``, the one serving path).

* ``GET /v1/recommendations/{user_id}?k=50[&region=EU&age=30&seed=12,40&deadline_ms=150]``: one
  request, i.e. a batch of one (:func:`body_from_query` turns the query into the engine's request body);
* ``PUT /v1/users/{user_id}/profile``: a sign-up or profile change into the online store (when the
  engine has one);
* ``GET /health``: ``model``, ``model_version``, hot ``reloads`` and the answering worker's ``pid``;
  ``GET /ready`` (when the platform app has it): 503 while the online store does not answer a PING.

Degraded, not down: with the online store (Redis) unreachable or blackholed, every request still
answers 200 within its deadline: the store read waits at most ``min(remaining budget, 50 ms)``
(:meth:`~mlsd.platform.features.online.RedisStore.get_many`), then the engine serves without live
profiles (the rules still apply, with the unknown-age policy for a viewer it knows nothing about),
``"degraded": true`` with ``"degraded_reason"``. The answer's shape is :class:`Recommendations`.

:func:`app_from_env` builds the app in each of several uvicorn worker processes (``mlsd recsys serve
--workdir W --workers N``): the environment carries the workdir, not a registry path.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import weakref
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from mlsd.platform.errors import InputError
from mlsd.platform.serving import SafeJSONResponse, secure
from mlsd.recsys.config import REGIONS, USER_STATE_ENV, USER_STATE_PREFIX, USER_STATE_PREFIX_ENV
from mlsd.recsys.engine import MAX_DEADLINE_MS, RecsysEngine, parse_user_id

ITEM_ID = re.compile(r"^[0-9]{1,18}$")
# What the OpenAPI documents is what the service accepts (schemathesis checks both ways).
USER_ID_PATTERN = r"^[0-9]{1,18}$"
SEED_PATTERN = r"^[0-9]{1,18}(,[0-9]{1,18}){0,99}$"
Region = Literal[REGIONS]
READY_TIMEOUT_S = 0.1


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true is not an integer (pydantic's lax mode would store 1)
        raise ValueError("must be an integer, not a boolean")
    return value


class Profile(BaseModel):
    """Body of ``PUT /v1/users/{user_id}/profile``."""

    model_config = ConfigDict(extra="forbid")

    region: Region | None = Field(None, description="viewer region")
    age: Annotated[int, Field(gt=0, lt=130), BeforeValidator(_not_bool)] | None = Field(
        None, description="viewer age in years"
    )
    picks: list[Annotated[int, Field(ge=0, lt=2**53), BeforeValidator(_not_bool)]] = Field(
        default_factory=list, max_length=100, description="onboarding picks (item ids)"
    )


class ProfileStored(BaseModel):
    """Answer of ``PUT /v1/users/{user_id}/profile``."""

    user_id: str
    stored: bool


class SkippedStage(BaseModel):
    stage: str
    reason: str


class RecommendedItem(BaseModel):
    item_id: int
    title: str
    score: float | None = Field(description="null only if a score was not finite")
    sources: list[str] = Field(description="candidate sources that proposed the title")
    reasons: list[str] = Field(description="readable reasons, one per source and signal")
    propensity: float = Field(
        description="probability this title was shown in this slot (off-policy estimates)"
    )
    explored: bool


class Recommendations(BaseModel):
    """Answer of ``GET /v1/recommendations/{user_id}``."""

    user_id: str
    request_id: str
    model_version: int | None
    model_alias: str
    cold_start: bool = Field(description="the model has no history for this user")
    k: int
    n_candidates: int
    items: list[RecommendedItem]
    scored_by: str = Field(description="ranker | candidate_order | cold_start_fallback | none")
    filtered: dict[str, int] = Field(
        description="candidates each business rule removed (region, age_rating, ...)"
    )
    policy: str = Field(
        description="where the viewer's age and region came from (unknown age: all-ages titles)"
    )
    degraded: bool = Field(
        description="served without a dependency (e.g. the online store); see degraded_reason"
    )
    degraded_reason: str | None
    experiment: dict[str, str] = Field(description="experiment -> arm (empty outside every experiment)")
    timings_ms: dict[str, float] = Field(
        description="milliseconds per stage; queue: waiting for the engine (at most "
        "config.service.concurrent_requests requests run at once per process; the wait is spent from the deadline)"
    )
    skipped: list[SkippedStage]
    deadline_ms: float
    total_ms: float
    now: int = Field(description="the time the licensing windows were checked at (seconds since the epoch)")


def body_from_query(user_id: str, k: int | None = None, *, region: str | None = None, age: int | None = None,
                    seed: str | None = None, deadline_ms: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The engine's request body for ``GET /v1/recommendations/{user_id}`` (``seed``: comma-separated
    onboarding picks)."""
    body: dict[str, Any] = {"user_id": user_id}
    if k is not None:
        body["k"] = k
    if region is not None:
        body["region"] = region
    if age is not None:
        body["age"] = age
    if seed:
        parts = [p.strip() for p in seed.split(",") if p.strip()]
        # ASCII digits, at most 18 of them: an id must fit the catalogue's int64 ids
        if len(parts) > 100 or not all(ITEM_ID.match(p) for p in parts):
            raise InputError(
                "seed", seed[:200], "must be up to 100 comma-separated item ids of 1-18 digits",
                "use e.g. seed=12,40,7",
            )  # fmt: skip
        body["seed_items"] = [int(p) for p in parts]
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return body


def create_service_app(engine: RecsysEngine):
    """The HTTP surface over ``engine`` on the platform app factory (see the module docstring)."""
    from mlsd.platform.serving import create_app

    svc_cfg = engine.config.service

    def health() -> dict[str, Any]:
        # pid: which worker process answered (several uvicorn workers share one port)
        return {
            "model": svc_cfg.model_name,
            "model_version": engine.model_version,
            "reloads": engine.reloads,
            "pid": os.getpid(),
        }

    app = create_app("recsys", title="mlsd movie recommendations", health=health)
    for store in {id(s): s for s in (engine.store, engine.user_state) if s is not None}.values():
        if hasattr(store, "ping"):
            _add_ready_check(app, store_ready(store))
    for watcher in engine.watchers:  # a champion that failed to reload: still serving the old, not ready
        _add_ready_check(app, watcher.check)

    limiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def turns() -> anyio.CapacityLimiter:
        """The engine-call limiter of the running event loop: a uvicorn worker has one loop; a limiter
        shared between loops (a TestClient used from several threads runs one per request) would wait
        forever for a token released in another."""
        loop = asyncio.get_running_loop()
        limiter = limiters.get(loop)
        if limiter is None:
            limiter = limiters[loop] = anyio.CapacityLimiter(svc_cfg.concurrent_requests)
        return limiter

    budget_ms = engine.config.budgets.deadline_ms

    @app.get("/v1/recommendations/{user_id}", tags=["recsys"], response_model=Recommendations)
    async def recommendations(
        user_id: str = Path(pattern=USER_ID_PATTERN, description="the user's id (1-18 digits)"),
        k: int = Query(svc_cfg.k_default, ge=svc_cfg.k_min, le=svc_cfg.k_max, description="how many titles"),
        region: Region | None = Query(
            None, description="viewer region for a user the platform does not know"
        ),
        age: int | None = Query(
            None, gt=0, lt=130, description="viewer age for a user the platform does not know"
        ),
        seed: str | None = Query(
            None,
            pattern=SEED_PATTERN,
            description="comma-separated onboarding picks (item ids) for cold start",
        ),
        deadline_ms: float | None = Query(
            None, gt=0, le=MAX_DEADLINE_MS, description="override the request budget"
        ),
    ) -> Any:
        body = body_from_query(user_id, k, region=region, age=age, seed=seed, deadline_ms=deadline_ms)
        arrived = time.perf_counter()

        def serve() -> tuple[dict[str, Any], float]:
            waited_ms = (time.perf_counter() - arrived) * 1000.0
            left = (body.get("deadline_ms") or budget_ms) - waited_ms
            # the wait is spent from the deadline (a configured budget above what a request may ask for
            # keeps its own)
            ask = {**body, "deadline_ms": max(left, 1.0)} if left <= MAX_DEADLINE_MS else body
            return engine.handle([ask])[0], waited_ms

        # at most config.service.concurrent_requests engine calls at once; the others wait in the event loop
        answer, waited_ms = await anyio.to_thread.run_sync(serve, limiter=turns())
        answer["timings_ms"]["queue"] = round(waited_ms, 3)
        # The answer holds only JSON types already: a SafeJSONResponse skips FastAPI's generic encoder and
        # response validation (~2.5 ms per 50-title answer, about a tenth of the request).
        return SafeJSONResponse(answer)

    if engine.store is not None:

        @app.put("/v1/users/{user_id}/profile", tags=["recsys"], response_model=ProfileStored)
        def put_profile(
            profile: Profile, user_id: str = Path(pattern=USER_ID_PATTERN, description="the user's id")
        ) -> dict[str, Any]:
            """A sign-up or profile change (region, age, onboarding picks): used from the next request on."""
            engine.record_profile(user_id, region=profile.region, age=profile.age, picks=profile.picks)
            return {"user_id": str(parse_user_id(user_id)), "stored": True}

    app.state.recsys = engine
    return app


def store_ready(store: Any, timeout_s: float = READY_TIMEOUT_S):
    """The readiness check of a service reading ``store``: raises while it does not answer a PING
    within ``timeout_s`` (``/ready`` then answers 503 with the reason; ``/health`` stays 200)."""

    def check() -> dict[str, Any]:
        if not store.ping(timeout_s):
            raise ConnectionError(
                f"online store (redis) did not answer a PING within {timeout_s * 1000:.0f} ms"
            )
        return {"online_store": "ok"}

    return check


def _add_ready_check(app: Any, check: Any) -> None:
    """Register ``check`` with the platform app's ``/ready`` (a no-op on an app without one)."""
    checks = getattr(app.state, "ready_checks", None)
    if checks is not None:
        checks.append(check)


WORKDIR_ENV = "MLSD_RECSYS_WORKDIR"
DEADLINE_ENV = "MLSD_RECSYS_DEADLINE_MS"
CLOCK_ENV = "MLSD_RECSYS_CLOCK"
EXPERIMENTS_ENV = "MLSD_RECSYS_EXPERIMENTS"
EXPOSURE_REDIS_ENV = "MLSD_RECSYS_EXPOSURE_REDIS"
ONLINE_STORE_ENV = "MLSD_RECSYS_ONLINE_STORE"


def app_from_env(environ=None):
    """App factory for several uvicorn worker processes (``mlsd recsys serve --workdir W --workers N``,
    or ``uvicorn --factory --workers N mlsd.recsys.service:app_from_env``): each worker loads the
    champion of the workdir named by ``MLSD_RECSYS_WORKDIR`` (``W``; the champion is in
    ``W/recsys/registry``); optional ``MLSD_RECSYS_DEADLINE_MS`` (default 200), ``MLSD_RECSYS_CLOCK``
    (data | wall), ``MLSD_RECSYS_EXPERIMENTS`` (experiments YAML) with ``MLSD_RECSYS_EXPOSURE_REDIS``
    (the shared exposure log), ``MLSD_RECSYS_ONLINE_STORE`` (Redis URL), ``MLSD_RECSYS_USER_STATE``
    (Redis URL holding the champion's per-user tables, :func:`~mlsd.recsys.engine.export_user_state`,
    key prefix ``MLSD_RECSYS_USER_STATE_PREFIX``, default ``mlsd:``: each worker then keeps only the item
    side in memory). One Python process runs one request at a time (the GIL), so throughput scales with
    processes."""
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.system import SystemDir
    from mlsd.recsys.config import Budgets, RecsysConfig, ServiceConfig
    from mlsd.recsys.engine import SYSTEM

    env = os.environ if environ is None else environ
    workdir = env.get(WORKDIR_ENV)
    if not workdir:
        raise InputError(WORKDIR_ENV, None, "is not set", f"export {WORKDIR_ENV}=/path/to/workdir")
    raw = env.get(DEADLINE_ENV, str(Budgets.deadline_ms))
    try:
        budgets = Budgets(deadline_ms=float(raw))
    except ValueError:
        raise InputError(DEADLINE_ENV, raw, "is not a number", f"export {DEADLINE_ENV}=200") from None
    clock = env.get(CLOCK_ENV) or ServiceConfig.clock
    config = RecsysConfig(budgets=budgets, service=ServiceConfig(clock=clock))
    config.validate()
    store = None
    if env.get(ONLINE_STORE_ENV):
        from mlsd.platform.features.online import RedisStore

        store = RedisStore(env[ONLINE_STORE_ENV], prefix="mlsd:")
    user_state = None
    if env.get(USER_STATE_ENV):
        from mlsd.platform.features.online import RedisStore

        user_state = RedisStore(
            env[USER_STATE_ENV], prefix=env.get(USER_STATE_PREFIX_ENV) or USER_STATE_PREFIX
        )
    experiments = ExperimentClient.from_options(
        env.get(EXPERIMENTS_ENV) or None, env.get(EXPOSURE_REDIS_ENV) or None
    )
    engine = RecsysEngine.from_dirs(SystemDir(workdir, SYSTEM), config=config, online_store=store,
                                    experiments=experiments, user_state=user_state)  # fmt: skip
    return secure(create_service_app(engine), env)  # what serve() applies: API keys, or no writes
