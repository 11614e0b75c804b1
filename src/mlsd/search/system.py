"""The search system as the platform sees it: ``SYSTEM`` (:class:`mlsd.platform.system.System`).

Registered under the ``mlsd.systems`` entry points (``pyproject.toml``). Every field is a thin, lazy
adapter over the system's modules -- importing this one imports no model code, so ``mlsd --help``
stays fast:

* ``simulate`` -> :func:`mlsd.search.world.simulate_into` (sizes ``tiny``, ``demo``, ``default``);
* ``train`` / ``retrain`` -> :mod:`mlsd.search.training` (the platform's retrain job over
  :class:`~mlsd.search.training.SearchSteps`);
* ``engine`` -> :func:`mlsd.search.engine.load_engine` (the champion of ``W/search/registry``);
* ``app`` -> :func:`mlsd.search.service.create_search_app` (events to ``W/search/data/clicklog``, hot
  reload from ``W/search/registry``);
* ``schemas`` / ``import_formats`` -> :mod:`mlsd.search.contract` (the tables search consumes and
  ``mlsd search import``);
* ``drift_report`` -> :mod:`mlsd.search.monitoring`; ``world`` -> :mod:`mlsd.search.world`;
  ``demo`` -> :mod:`mlsd.search.demo`.

A request body is the query string of ``GET /v1/search``: ``{"q": "red shoes", "k": 10, "user_id": "u1"}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from typing import Any

from mlsd.platform.system import HttpRequest, LazyMapping, System, SystemDir

NAME = "search"
MODEL = "search-ltr"
# `mlsd search import --format F`: the public datasets' own layouts, and the contract as CSV or Parquet.
IMPORT_FORMATS: tuple[str, ...] = ("homedepot", "crowdflower", "wands", "csv", "parquet")


def _add_commands(parser: argparse.ArgumentParser) -> None:
    from mlsd.search.cli import add_commands

    add_commands(parser)


def _simulate(dirs: SystemDir, *, size: str = "default", seed: int = 0, progress: bool = True,
              **counts: Any) -> dict[str, Any]:  # fmt: skip
    from mlsd.search.world import simulate_into

    return simulate_into(dirs, size=size, seed=seed, progress=progress, **counts)


def _train(dirs: SystemDir, *, progress: bool = True, **options: Any) -> dict[str, Any]:
    from mlsd.search.training import train

    return train(dirs, progress=progress, **options)


def _retrain(dirs: SystemDir, run_date: dt.date | None, *, progress: bool = True) -> dict[str, Any]:
    from mlsd.search.training import retrain

    # A scheduled job on a workdir without data fails closed: it never trains on a simulated world
    # in place of the data it was pointed at.
    dirs.require_data(f"mlsd search simulate --workdir {dirs.root} (or import your catalog and click log)")
    return retrain(dirs, run_date, progress=progress)


def _engine(dirs: SystemDir, **options: Any) -> Any:
    from mlsd.search.engine import load_engine

    return load_engine(dirs, **options)


def _app(engine: Any, **options: Any) -> Any:
    from mlsd.search.clicklog import ClickLog
    from mlsd.search.service import create_search_app

    dirs: SystemDir | None = getattr(engine, "source_", None)  # set by load_engine
    if dirs is not None:
        options.setdefault("registry_dir", dirs.registry)
        options.setdefault("clicklog", ClickLog(dirs.data / "clicklog"))
    return create_search_app(engine, **options)


def _drift_report(dirs: SystemDir, **options: Any) -> dict[str, Any]:
    from mlsd.search.monitoring import drift_report

    return drift_report(dirs, **options)


def _world() -> Any:
    from mlsd.search import world

    return world


def _demo(dirs: SystemDir, **options: Any) -> Any:
    from mlsd.search.demo import run

    return run(dirs, **options)


def _example_requests(dirs: SystemDir, n: int = 3, *, k: int = 10) -> list[dict[str, Any]]:
    """``n`` request bodies from the data: the most searched query texts of the click log, each by a
    user who searched it (so the bodies exercise personalisation)."""
    from mlsd.search.engine import load_data

    data = load_data(dirs.data)
    log = data["clicklog"].impressions()
    if len(log) == 0:  # imported data without a click log: the judged queries, else catalog titles
        texts = data["queries"]["text"] if data["queries"] is not None else data["products"]["title"]
        return [{"q": str(q), "k": k} for q in texts.astype(str).drop_duplicates().head(n)]
    searches = log.drop_duplicates("search_id")
    top = searches["query"].astype(str).value_counts().index[:n].tolist()
    user = searches.groupby(searches["query"].astype(str))["user_id"].first()
    return [{"q": q, "k": k, "user_id": str(user[q])} for q in top]


def _schemas() -> Mapping[str, Any]:
    from mlsd.search.contract import SCHEMAS

    return SCHEMAS


def _http_request(body: Mapping[str, Any]) -> HttpRequest:
    return HttpRequest("GET", "/v1/search", params=dict(body))


SYSTEM = System(
    name=NAME,
    summary="e-commerce search ranking: simulate, train, evaluate, serve, bench",
    cadence="daily",
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
    schemas=LazyMapping(_schemas),
    import_formats=IMPORT_FORMATS,
)
