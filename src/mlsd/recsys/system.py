"""The recsys system as the platform sees it: ``SYSTEM`` (:class:`mlsd.platform.system.System`).

Registered under the ``mlsd.systems`` entry points (``pyproject.toml``). Every field is a thin,
lazy adapter: importing this module imports no model code, so ``mlsd --help`` stays fast. The state
lives in ``W/recsys/{data,registry,runs,monitoring}`` (:class:`~mlsd.platform.system.SystemDir`):

* ``simulate`` -> :func:`mlsd.recsys.world.simulate_into` (sizes ``tiny``, ``demo``, ``default``);
* ``train`` / ``retrain`` -> :func:`mlsd.recsys.training.train` / :func:`~mlsd.recsys.training.retrain`
  (the platform's retrain job over :class:`~mlsd.recsys.training.RecsysRetrainSteps`);
* ``engine`` -> :meth:`mlsd.recsys.engine.RecsysEngine.from_dirs`; ``app`` ->
  :func:`mlsd.recsys.service.create_service_app`;
* ``schemas`` -> the data contract's pyarrow schemas (:mod:`mlsd.recsys.contract`: interactions, items,
  users); ``import_formats`` -> :data:`mlsd.recsys.importing.FORMATS` (``mlsd recsys import``);
* ``drift_report`` -> :func:`mlsd.recsys.monitoring.drift_report`; ``world`` -> :mod:`mlsd.recsys.world`;
  ``demo`` -> :func:`mlsd.recsys.demo.run`.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from typing import Any

from mlsd.platform.system import HttpRequest, LazyMapping, System, SystemDir
from mlsd.recsys.config import MODEL_NAME, make_data

NAME = "recsys"
# Query parameters of GET /v1/recommendations/{user_id}, by request-body key.
QUERY = {"k": "k", "region": "region", "age": "age", "deadline_ms": "deadline_ms"}


def _schemas() -> Mapping[str, Any]:
    from mlsd.recsys.contract import SCHEMAS

    return SCHEMAS


def _add_commands(parser: argparse.ArgumentParser) -> None:
    from mlsd.recsys.cli import add_commands

    add_commands(parser)


def _simulate(dirs: SystemDir, *, size: str = "default", seed: int | None = None, progress: bool = True,
              **overrides: Any) -> dict[str, Any]:  # fmt: skip
    from mlsd.recsys.world import simulate_into

    return simulate_into(dirs, size, seed, progress=progress, **overrides)


def _train(dirs: SystemDir, *, progress: bool = True, **options: Any) -> dict[str, Any]:
    from mlsd.recsys.training import train

    return train(dirs, progress=progress, **options)


def _retrain(dirs: SystemDir, run_date: dt.date | None, *, progress: bool = True) -> dict[str, Any]:
    from mlsd.recsys.training import retrain

    return retrain(dirs, run_date, progress=progress)


def _engine(dirs: SystemDir, **options: Any) -> Any:
    from mlsd.recsys.engine import RecsysEngine

    return RecsysEngine.from_dirs(dirs, **options)


def _app(engine: Any, **options: Any) -> Any:
    from mlsd.recsys.service import create_service_app

    return create_service_app(engine, **options)


def _drift_report(dirs: SystemDir) -> dict[str, Any]:
    from mlsd.recsys.monitoring import drift_report

    return drift_report(dirs)


def _world() -> Any:
    from mlsd.recsys import world

    return world


def _demo(dirs: SystemDir, **options: Any) -> Any:
    from mlsd.recsys.demo import run

    return run(dirs, **options)


def _example_requests(dirs: SystemDir, n: int) -> list[dict[str, Any]]:
    """``n`` request bodies for the data's most active viewers (users a trained model knows)."""
    import pandas as pd

    data = dirs.require_data(make_data(dirs.root))
    users = pd.read_parquet(data / "interactions.parquet", columns=["user_id"])["user_id"]
    top = users.value_counts(sort=True).index[: int(n)]
    return [{"user_id": str(int(u)), "k": 10} for u in top]


def _http_request(body: Mapping[str, Any]) -> HttpRequest:
    """``GET /v1/recommendations/{user_id}`` with the body's other fields as the query."""
    params = {QUERY[k]: v for k, v in body.items() if k in QUERY}
    if body.get("seed_items"):
        params["seed"] = ",".join(str(int(i)) for i in body["seed_items"])
    return HttpRequest("GET", f"/v1/recommendations/{body['user_id']}", params=params)


SYSTEM = System(
    name=NAME,
    summary="movie recommendations: simulate or import, train, recommend, evaluate, serve, bench, demo",
    cadence="daily",
    model=MODEL_NAME,
    add_commands=_add_commands,
    simulate=_simulate,
    train=_train,
    retrain=_retrain,
    engine=_engine,
    app=_app,
    drift_report=_drift_report,
    world=_world,
    demo=_demo,
    example_requests=_example_requests,
    http_request=_http_request,
    schemas=LazyMapping(_schemas),
    import_formats=("movielens", "csv", "parquet"),  # mlsd.recsys.importing.FORMATS (a test checks)
)
