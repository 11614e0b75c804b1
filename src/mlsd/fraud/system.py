"""The fraud system as the platform sees it: ``SYSTEM`` (:class:`mlsd.platform.system.System`).

Registered under the ``mlsd.systems`` entry points (``pyproject.toml``). Every field is a thin,
lazy adapter over the system's modules -- the world (:mod:`mlsd.fraud.world`: simulate, the online
experiment), training (:mod:`mlsd.fraud.training`: train, the weekly retrain over the platform's
``retrain()``), the engine (:mod:`mlsd.fraud.engine`), the HTTP service, monitoring, the review queue
and the demo -- so importing this module imports no model code and ``mlsd --help`` stays fast.
The state lives in the platform layout ``W/fraud/...`` (see :class:`mlsd.fraud.engine.FraudDirs`).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlsd.platform.system import HttpRequest, LazyMapping, System, SystemDir

NAME = "fraud"
MODEL = "fraud"


def _add_commands(parser: argparse.ArgumentParser) -> None:
    from mlsd.fraud.cli import add_commands

    add_commands(parser)


def _schemas() -> Mapping[str, Any]:
    from mlsd.fraud.contract import SCHEMAS

    return SCHEMAS


def _simulate(
    dirs: SystemDir, *, size: str = "default", seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    from mlsd.fraud.world import simulate_size

    return simulate_size(dirs, size, seed=seed, progress=progress)


def _train(dirs: SystemDir, *, progress: bool = True, **options: Any) -> dict[str, Any]:
    from mlsd.fraud.training import train

    return train(dirs, progress=progress, **options)


def _retrain(dirs: SystemDir, run_date: dt.date | None, *, progress: bool = True) -> dict[str, Any]:
    from mlsd.fraud.training import retrain

    return retrain(dirs, run_date, progress=progress)


def _engine(dirs: SystemDir, **options: Any) -> Any:
    from mlsd.fraud.engine import load_engine

    return load_engine(dirs, **options)


def _app(engine: Any, **options: Any) -> Any:
    from mlsd.fraud.service import build_app

    return build_app(engine, **options)


def _drift_report(dirs: SystemDir) -> dict[str, Any]:
    from mlsd.fraud.monitoring import drift_report

    return drift_report(dirs)


def _world() -> Any:
    from mlsd.fraud import world

    return world


def _demo(dirs: SystemDir, **options: Any) -> Any:
    from mlsd.fraud.demo import run

    return run(dirs, **options)


def _example_requests(dirs: SystemDir, n: int = 3) -> list[dict[str, Any]]:
    """``n`` payment bodies from the workdir's data (its last payments, without the ground truth)."""
    import json

    from mlsd.fraud.data import LABELS
    from mlsd.fraud.engine import FraudDirs
    from mlsd.fraud.training import read_transactions

    tx = read_transactions(FraudDirs(dirs))
    rows = tx.tail(int(n)).drop(columns=list(LABELS), errors="ignore")
    return [json.loads(line) for line in rows.to_json(orient="records", lines=True).splitlines()]


def _http_request(body: Mapping[str, Any]) -> HttpRequest:
    return HttpRequest("POST", "/v1/score", json=dict(body))


def _review_queue(location: str | Path, **options: Any) -> Any:
    from mlsd.fraud.review import review_queue_at

    return review_queue_at(location, **options)


SYSTEM = System(
    name=NAME,
    summary="real-time payment fraud detection: simulate, train, evaluate, serve, stream, bench",
    cadence="weekly",
    model=MODEL,
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
    review_queue=_review_queue,
    schemas=LazyMapping(_schemas),
    import_formats=("handbook", "csv", "parquet"),
)
