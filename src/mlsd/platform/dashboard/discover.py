"""Find dashboard sources under a work directory (``mlsd dashboard --workdir DIR``, ``mlsd demo``'s output).

Files are classified by *content*, not by name, so each system may lay out its workdir as it likes:

* a folder holding ``registry.sqlite`` -> a model registry;
* a JSON file with an experiment analysis (keys ``srm`` and ``metrics``, or one level down) -> experiment;
* a JSON file with a drift report (``features`` and ``summary``) -> drift, labelled by its path;
* a JSON file with stage timings (``timings_ms`` records, or ``stages``) -> latency;
* a SQLite file with a ``review_cases`` table -> a review queue (the first one found), opened by the
  first registered system that keeps one (:func:`mlsd.platform.system.review_systems`).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from mlsd.platform.dashboard.collect import Sources, _find_report
from mlsd.platform.errors import InputError
from mlsd.platform.system import review_systems

MAX_JSON_BYTES = 20_000_000
MAX_DEPTH = 5


def _walk(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        if len(path.relative_to(root).parts) <= MAX_DEPTH and path.is_file():
            out.append(path)
    return out


def _has_review_table(path: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name LIKE '%review_cases'"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return row is not None


def open_review_queue(location: str | Path, **options) -> object | None:
    """The review queue at ``location`` (SQLite file or ``postgresql://`` DSN), opened by the first
    registered system that keeps one; None when no system does."""
    for system in review_systems():
        return system.review_queue(location, **options)
    return None


def discover(workdir: str | Path) -> Sources:
    """Sources found under ``workdir`` (see the module docstring)."""
    root = Path(workdir)
    if not root.is_dir():
        raise InputError("--workdir", str(root), "not a directory", "pass the folder mlsd demo wrote to")
    registries: list[Path] = []
    experiments: list[Path] = []
    drift: dict[str, Path] = {}
    timings: list[Path] = []
    review = None
    for path in _walk(root):
        if path.name == "registry.sqlite":
            registries.append(path.parent)
        elif path.suffix == ".json" and path.stat().st_size <= MAX_JSON_BYTES:
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            items = data if isinstance(data, list) else [data]
            if any(_find_report(d) is not None for d in items):
                experiments.append(path)
            elif isinstance(data, dict) and "features" in data and "summary" in data:
                drift[str(path.relative_to(root).with_suffix(""))] = path
            elif (isinstance(data, dict) and ("stages" in data or "timings_ms" in data)) or (
                isinstance(data, list) and data and isinstance(data[0], dict) and "timings_ms" in data[0]
            ):
                timings.append(path)
        elif path.suffix in (".sqlite", ".db") and review is None and _has_review_table(path):
            review = open_review_queue(path)
    return Sources(
        registries=registries,
        experiments=experiments,
        drift=drift,
        timings=timings,
        review=review,
        notes=[f"Sources found under {root}."],
    )
