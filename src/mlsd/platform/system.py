"""The contract between the platform and a system: one :class:`System` object per system.

A system (recsys, fraud, search, or one of your own) is a package that exports ``SYSTEM = System(...)``
and registers it under the ``mlsd.systems`` entry-point group of its distribution (mlsd's own three
are listed in ``pyproject.toml``: that is the one list of systems). The platform never imports a
system by name: ``mlsd`` (the CLI), ``mlsd demo``, ``mlsd pipeline``, ``mlsd monitor``, ``mlsd
experiment`` and ``mlsd dashboard`` iterate over :func:`systems`, and reach a system only through
the fields below. The heavy parts are callables, so listing the systems imports no model code.

Every system keeps its state in one layout under a workdir ``W`` shared by all systems
(:class:`SystemDir`)::

    W/<system>/data         what was simulated or imported (the training source)
    W/<system>/features     offline feature tables (Parquet, point-in-time joins)
    W/<system>/registry     the model registry: versions, champion / challenger aliases
    W/<system>/runs         one report per train / retrain run
    W/<system>/monitoring   served samples, drift reports, stage timings, experiment reports
    W/<system>/review       human review queues (where a system has one)
    W/pipeline              the scheduler's ledger and lock (platform-owned)

A read path never creates anything: :meth:`SystemDir.require_champion` names the missing model and
the command that makes one.

Examples:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> d = SystemDir(root, "recsys")
    >>> d.registry.relative_to(root).as_posix()
    'recsys/registry'
    >>> d.exists()
    False
    >>> try:
    ...     d.require_champion("recsys-two-stage")
    ... except InputError as err:
    ...     print(err.field, "->", err.fix.split(":")[0])
    --workdir -> train one first
    >>> d.exists()   # the failed read created nothing
    False
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mlsd.platform.errors import InputError

__all__ = [
    "ENTRY_POINT_GROUP",
    "LAYOUT",
    "Engine",
    "HttpRequest",
    "LazyMapping",
    "ReviewQueue",
    "System",
    "SystemDir",
    "get_system",
    "system_names",
    "systems",
    "review_systems",
    "systems_with",
]

ENTRY_POINT_GROUP = "mlsd.systems"
LAYOUT = ("data", "features", "registry", "runs", "monitoring", "review")
CADENCES = ("daily", "weekly")


# ---------------------------------------------------------------------------------------------------
# The workdir layout


@dataclass(frozen=True)
class SystemDir:
    """One system's folders under the shared workdir ``root`` (see the module docstring)."""

    root: Path
    system: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def home(self) -> Path:
        return self.root / self.system

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def features(self) -> Path:
        return self.home / "features"

    @property
    def registry(self) -> Path:
        return self.home / "registry"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def monitoring(self) -> Path:
        return self.home / "monitoring"

    @property
    def review(self) -> Path:
        return self.home / "review"

    def exists(self) -> bool:
        return self.home.is_dir()

    def create(self) -> SystemDir:
        """Make every folder of the layout (write paths only: training, simulating, importing)."""
        for name in LAYOUT:
            (self.home / name).mkdir(parents=True, exist_ok=True)
        return self

    def require_data(self, make: str) -> Path:
        """``data``, or an InputError naming the folder and the command ``make`` that fills it."""
        if not self.data.is_dir() or not any(self.data.iterdir()):
            raise InputError("--workdir", str(self.root), f"holds no {self.system} data ({self.data})",
                             f"create it first: {make}")  # fmt: skip
        return self.data

    def require_champion(self, model: str, *, alias: str = "champion") -> Any:
        """The registry's ``alias`` version of ``model``; an InputError with the fix when there is none.

        Opens the registry only when ``registry.sqlite`` exists, so asking creates nothing.
        """
        from mlsd.platform.registry import ModelRegistry

        db = self.registry / "registry.sqlite"
        mv = None
        if db.is_file():
            registry = ModelRegistry(self.registry)
            if model in registry.names():
                mv = registry.alias(model, alias)
        if mv is None:
            where = f"{self.registry}" + ("" if db.is_file() else " (no registry there)")
            raise InputError(
                "--workdir", str(self.root), f"no {alias} of model {model!r} in {where}",
                f"train one first: mlsd {self.system} simulate --workdir {self.root} (or your own data: "
                f"mlsd {self.system} import --format F --path P --workdir {self.root}), then "
                f"mlsd {self.system} train --workdir {self.root}"
                + _nearby_hint(self.root, self.system),
            )  # fmt: skip
        return mv


def _nearby_hint(root: Path, system: str) -> str:
    """A workdir one level too deep (``<demo>/fraud`` instead of ``<demo>``) is the usual mistake."""
    if root.name == system and (root / "registry").is_dir():
        return f" (or did you mean --workdir {root.parent}? {root / 'registry'} exists)"
    if (root.parent / system / "registry").is_dir():
        return f" (or did you mean --workdir {root.parent}?)"
    return ""


class LazyMapping(Mapping[str, Any]):
    """A mapping filled by ``load()`` on first use: what ``System.schemas`` holds, so that listing the
    systems (``mlsd --help``) imports no pyarrow and no data-contract module.

    Examples:
        >>> calls = []
        >>> schemas = LazyMapping(lambda: calls.append(1) or {"payments": "schema"})
        >>> len(calls)   # nothing loaded yet
        0
        >>> sorted(schemas), schemas["payments"], len(calls)   # loaded once, on first use
        (['payments'], 'schema', 1)
    """

    def __init__(self, load: Callable[[], Mapping[str, Any]]) -> None:
        self._load = load
        self._loaded: Mapping[str, Any] | None = None

    def _data(self) -> Mapping[str, Any]:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


# ---------------------------------------------------------------------------------------------------
# What a system provides


@runtime_checkable
class Engine(Protocol):
    """A system's in-process serving core, built from a workdir's champion.

    ``handle`` is the one serving path: a single request is a batch of one. Requests and responses
    are the JSON bodies of the system's HTTP API (the service is a thin layer over this).
    """

    model_version: int

    def handle(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...


class ReviewQueue(Protocol):
    """What the platform (the dashboard) reads of a system's human review queue."""

    def counts(self) -> dict[str, int]: ...

    def list(self, status: str = "open", limit: int = 20) -> list[Any]: ...


@dataclass(frozen=True)
class HttpRequest:
    """One call of a system's HTTP API (what the contract suite sends to a served app)."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None


@dataclass(frozen=True)
class System:
    """Everything the platform needs from a system. Callables take a :class:`SystemDir` first.

    * ``simulate(dirs, *, size, seed, progress)`` writes the embedded world's data to ``dirs.data``;
      ``size`` is ``"tiny"`` (tests), ``"demo"`` or ``"default"``.
    * ``train(dirs, *, progress)`` trains on ``dirs.data``, registers the model and promotes it when
      there is no champion yet; returns the run report (also written to ``dirs.runs``).
    * ``retrain(dirs, run_date, *, progress)`` is the scheduled job; its report holds
      ``mlsd.platform.retraining.REPORT_KEYS``.
    * ``engine(dirs, **options)`` loads the champion (``dirs.require_champion``) -> :class:`Engine`.
    * ``app(engine, **options)`` -> the FastAPI app over that engine (``/health`` names the version).
    * ``drift_report(dirs)`` -> a drift report (``mlsd.platform.monitoring``) of the served traffic.
    * ``world()`` -> the online simulator (``mlsd.platform.experiments.online.OnlineSimulator``).
    * ``demo(dirs)`` runs the system's part of ``mlsd demo``.
    * ``example_requests(dirs, n)`` -> ``n`` valid request bodies for ``Engine.handle`` taken from the
      data; ``http_request(body)`` -> the :class:`HttpRequest` that asks the same over HTTP.
    * ``schemas``: the data contract's tables (name -> pyarrow schema), usually a :class:`LazyMapping`;
      ``import_formats``: what ``mlsd <system> import --format`` reads.
    * ``review_queue(location, **options)`` opens a human review queue: a SQLite file path, or a
      ``postgresql://`` DSN (``schema=`` option); None: the system has no queue. The dashboard reads
      it through :class:`ReviewQueue`.
    """

    name: str
    summary: str
    cadence: str
    model: str
    add_commands: Callable[[argparse.ArgumentParser], None]
    simulate: Callable[..., Any]
    train: Callable[..., dict[str, Any]]
    retrain: Callable[..., dict[str, Any]]
    engine: Callable[..., Engine]
    app: Callable[..., Any]
    drift_report: Callable[..., dict[str, Any]]
    world: Callable[[], Any]
    demo: Callable[..., Any]
    example_requests: Callable[..., list[dict[str, Any]]]
    http_request: Callable[[Mapping[str, Any]], HttpRequest]
    review_queue: Callable[..., ReviewQueue] | None = None
    schemas: Mapping[str, Any] = field(default_factory=dict)
    import_formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.cadence not in CADENCES:
            raise ValueError(f"System {self.name!r}: cadence {self.cadence!r} is not one of {CADENCES}")

    def dirs(self, workdir: str | Path) -> SystemDir:
        return SystemDir(Path(workdir), self.name)


# ---------------------------------------------------------------------------------------------------
# The registered systems


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def _load(name: str) -> System:
    ep = _entry_points()[name]
    system = ep.load()
    if not isinstance(system, System) or system.name != name:
        raise TypeError(f"entry point {name} = {ep.value} is not a System named {name!r}")
    return system


def system_names() -> list[str]:
    """The registered systems' names, without loading them (what ``mlsd --help`` lists)."""
    return sorted(_entry_points())


def systems() -> dict[str, System]:
    """Every registered system by name (entry points of group ``mlsd.systems``), sorted by name."""
    return {name: _load(name) for name in system_names()}


def get_system(name: str, field: str = "system") -> System:
    """The registered system ``name`` (only that one is imported); an InputError listing the known ones."""
    names = system_names()
    if name not in names:
        raise InputError(field, name, "unknown system", f"use one of {', '.join(names)}")
    return _load(name)


def review_systems() -> list[System]:
    """The systems that keep a human review queue."""
    return [s for s in systems().values() if s.review_queue is not None]


def systems_with(cadence: str) -> list[System]:
    """The systems whose scheduled retrain runs at ``cadence`` (daily, weekly)."""
    return [s for s in systems().values() if s.cadence == cadence]
