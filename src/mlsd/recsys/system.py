"""The recsys system as the platform sees it: ``SYSTEM`` (:class:`mlsd.platform.system.System`).

Registered under the ``mlsd.systems`` entry points (``pyproject.toml``). Every field is a thin,
lazy adapter: importing this module imports no model code, so ``mlsd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from typing import Any

from mlsd.platform.system import HttpRequest, System, SystemDir

NAME = "recsys"


def _add_commands(parser: argparse.ArgumentParser) -> None:
    from mlsd.recsys.cli import add_commands

    add_commands(parser)


def _retrain(dirs: SystemDir, run_date: dt.date | None, *, progress: bool = True) -> dict[str, Any]:
    from mlsd.recsys.schedule import run_scheduled

    return run_scheduled(dirs.home, run_date, progress=progress)


def _drift_report(dirs: SystemDir) -> dict[str, Any]:
    from mlsd.recsys.monitoring import drift_report

    return drift_report(dirs.home)


def _world() -> Any:
    from mlsd.recsys import experiment

    return experiment


def _demo(dirs: SystemDir, **options: Any) -> Any:
    from mlsd.recsys.demo import run

    return run(dirs.home, **options)


def _todo(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("recsys: not wired to the System contract yet")


def _http_request(body: Mapping[str, Any]) -> HttpRequest:
    raise NotImplementedError("recsys: not wired to the System contract yet")


SYSTEM = System(
    name=NAME,
    summary="movie recommendations: simulate, train, evaluate, serve, bench, demo",
    cadence="daily",
    model="recsys-ranker",
    add_commands=_add_commands,
    simulate=_todo,
    train=_todo,
    retrain=_retrain,
    engine=_todo,
    app=_todo,
    drift_report=_drift_report,
    world=_world,
    demo=_demo,
    example_requests=_todo,
    http_request=_http_request,
)
