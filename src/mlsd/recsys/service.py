"""The recommender's HTTP API over a :class:`~mlsd.recsys.engine.RecsysEngine` (HTTP only: every answer
comes from ``engine.handle``, the one serving path).

* ``GET /v1/recommendations/{user_id}?k=50[&region=EU&age=30&seed=12,40&deadline_ms=150]``: one
  request, i.e. a batch of one (:func:`body_from_query` turns the query into the engine's request body);
* ``PUT /v1/users/{user_id}/profile``: a sign-up or profile change into the online store (when the
  engine has one);
* ``GET /health``: ``model``, ``model_version``, hot ``reloads`` and the answering worker's ``pid``.

:func:`app_from_env` builds the app in each of several uvicorn worker processes (``mlsd recsys serve
--workdir W --workers N``): the environment carries the workdir, not a registry path.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field

from mlsd.platform.errors import InputError
from mlsd.recsys.engine import RecsysEngine, parse_user_id


class Profile(BaseModel):
    """Body of ``PUT /v1/users/{user_id}/profile``."""

    region: str | None = None
    age: int | None = Field(None, gt=0, lt=130)
    picks: list[int] = Field(default_factory=list, max_length=100)


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
        if not all(p.isdigit() for p in parts) or len(parts) > 100:
            raise InputError(
                "seed", seed, "must be up to 100 comma-separated item ids", "use e.g. seed=12,40,7"
            )
        body["seed_items"] = [int(p) for p in parts]
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return body


def create_service_app(engine: RecsysEngine):
    """The HTTP surface over ``engine`` on the platform app factory (see the module docstring)."""
    from fastapi import Query
    from fastapi.responses import JSONResponse

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

    @app.get("/v1/recommendations/{user_id}", tags=["recsys"])
    def recommendations(
        user_id: str,
        k: int = Query(svc_cfg.k_default, description=f"how many titles, {svc_cfg.k_min}..{svc_cfg.k_max}"),
        region: str | None = Query(None, description="viewer region for a user the platform does not know"),
        age: int | None = Query(None, description="viewer age for a user the platform does not know"),
        seed: str | None = Query(
            None, description="comma-separated onboarding picks (item ids) for cold start"
        ),
        deadline_ms: float | None = Query(None, gt=0, le=10_000, description="override the request budget"),
    ) -> JSONResponse:
        body = body_from_query(user_id, k, region=region, age=age, seed=seed, deadline_ms=deadline_ms)
        # The answer holds only JSON types already: a JSONResponse skips FastAPI's generic encoder and
        # response validation (~2.5 ms per 50-title answer, about a tenth of the request).
        return JSONResponse(engine.handle([body])[0])

    if engine.store is not None:

        @app.put("/v1/users/{user_id}/profile", tags=["recsys"])
        def put_profile(user_id: str, profile: Profile) -> dict[str, Any]:
            """A sign-up or profile change (region, age, onboarding picks): used from the next request on."""
            engine.record_profile(user_id, region=profile.region, age=profile.age, picks=profile.picks)
            return {"user_id": str(parse_user_id(user_id)), "stored": True}

    app.state.recsys = engine
    return app


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
    (the shared exposure log), ``MLSD_RECSYS_ONLINE_STORE`` (Redis URL). One Python process runs one
    request at a time (the GIL), so throughput scales with processes."""
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
    experiments = ExperimentClient.from_options(
        env.get(EXPERIMENTS_ENV) or None, env.get(EXPOSURE_REDIS_ENV) or None
    )
    engine = RecsysEngine.from_dirs(SystemDir(workdir, SYSTEM), config=config, online_store=store,
                                    experiments=experiments)  # fmt: skip
    return create_service_app(engine)
