"""Scheduled retraining: ``mlsd pipeline run daily|weekly --workdir W [--date YYYY-MM-DD]``.

The recommender and the search ranker retrain daily, the fraud model weekly (its labels mature over
weeks; a daily fraud retrain would mostly learn from labels that are not in yet). Each system's job is
``mlsd.<system>.schedule.run_scheduled(W/<system>, run_date)``: train on the data up to ``run_date``,
register the result as the *challenger*, run the offline gate against the champion on the same
evaluation window, promote only a winner, and return a report. This module only sequences the jobs,
keeps a ledger and writes the reports:

* ``W/pipeline/ledger.sqlite`` -- one row per (cadence, run date, system) that finished: re-running a
  day returns the stored report and changes nothing (the system jobs are idempotent on their own too:
  the same data fingerprint registers no new version);
* ``W/pipeline/<cadence>/<run date>/<system>.json`` -- the report of each run;
* ``W/pipeline/.lock`` -- an exclusive ``flock``, so two overlapping cron runs cannot train the same
  system twice at once (the second waits).

A failing system does not stop the others: its error is recorded in the summary and the command exits
non-zero, which is what a scheduler alerts on. Cron example (docs/architecture.md, "Scheduled retraining")::

    15 2 * * *  cd /opt/mlsd && .venv/bin/mlsd pipeline run daily  --workdir /srv/mlsd
    30 3 * * 1  cd /opt/mlsd && .venv/bin/mlsd pipeline run weekly --workdir /srv/mlsd
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import importlib
import json
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlsd.platform.errors import InputError

SCHEDULE: dict[str, tuple[str, ...]] = {"daily": ("recsys", "search"), "weekly": ("fraud",)}
# What every system's run_scheduled report holds (the ledger, the CLI and the dashboard read these).
REPORT_KEYS = frozenset(
    {
        "system",
        "run_date",
        "model",
        "version",
        "registered",
        "promoted",
        "reason",
        "metrics",
        "data_fingerprint",
    }
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    cadence TEXT NOT NULL,
    run_date TEXT NOT NULL,
    system TEXT NOT NULL,
    finished_at REAL NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (cadence, run_date, system)
)
"""


class RunLedger:
    """Which (cadence, run date, system) jobs finished, with their reports (SQLite under the workdir)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60.0)
        try:
            with con:
                yield con
        finally:
            con.close()

    def get(self, cadence: str, run_date: str, system: str) -> dict[str, Any] | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT report FROM runs WHERE cadence = ? AND run_date = ? AND system = ?",
                (cadence, run_date, system),
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, cadence: str, run_date: str, system: str, report: dict[str, Any]) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                (cadence, run_date, system, time.time(), json.dumps(report, default=str)),
            )

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT cadence, run_date, system, finished_at FROM runs ORDER BY finished_at"
            ).fetchall()
        return [dict(zip(("cadence", "run_date", "system", "finished_at"), r, strict=True)) for r in rows]


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_run_date(run_date: Any, first: dt.date, last: dt.date, what: str = "the data") -> dt.date:
    """The day a scheduled job trains up to: ``run_date``, or ``last`` when it is None. A value that is
    not a date, or a date outside ``first..last`` (the days the job's data can train on), is an
    InputError naming ``--date`` with the valid range, as every system's job reports it."""
    if run_date is None:
        return last
    if isinstance(run_date, dt.datetime) or not isinstance(run_date, dt.date):
        raise InputError("--date", run_date, "is not a date", f"use YYYY-MM-DD, e.g. {last.isoformat()}")
    if not first <= run_date <= last:
        raise InputError(
            "--date", run_date.isoformat(), f"is outside {what} ({first.isoformat()}..{last.isoformat()})",
            f"pick a date in {first.isoformat()}..{last.isoformat()} (or omit --date for {last.isoformat()})",
        )  # fmt: skip
    return run_date


def parse_date(text: str | None) -> dt.date | None:
    """``YYYY-MM-DD`` (or ``None``: each system's latest day of data)."""
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError("--date", text, "is not a date", "use YYYY-MM-DD, e.g. 2026-11-27") from None


def run_schedule(
    cadence: str,
    workdir: str | Path,
    run_date: dt.date | None = None,
    *,
    systems: Sequence[str] | None = None,
    progress: bool = True,
    jobs: Mapping[str, Callable[..., Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run every job of ``cadence`` once for ``run_date``; returns ``{cadence, workdir, runs, failed}``.

    ``runs`` holds one report per system (``status``: ``ran``, ``already ran`` -- from the ledger --
    or ``failed`` with the error). ``systems`` restricts the cadence to a subset. ``jobs`` replaces
    the systems' ``run_scheduled`` functions (``system -> callable(workdir, run_date, progress=)``),
    e.g. to schedule a job of your own.
    """
    if cadence not in SCHEDULE:
        raise InputError("cadence", cadence, "unknown cadence", f"use one of {', '.join(SCHEDULE)}")
    planned = SCHEDULE[cadence]
    if systems is not None:
        wrong = [s for s in systems if s not in planned]
        if wrong:
            raise InputError(
                "--systems", ",".join(wrong), f"not part of the {cadence} schedule",
                f"the {cadence} run trains {', '.join(planned)}",
            )  # fmt: skip
        planned = tuple(s for s in planned if s in systems)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    ledger = RunLedger(root / "pipeline" / "ledger.sqlite")
    runs: list[dict[str, Any]] = []
    with _exclusive(root / "pipeline" / ".lock"):
        for system in planned:
            job = (jobs or {}).get(system)
            runs.append(_run_one(cadence, system, root, run_date, ledger, progress, len(planned) == 1, job))
    return {
        "cadence": cadence,
        "workdir": str(root),
        "runs": runs,
        "failed": [r["system"] for r in runs if r["status"] == "failed"],
    }


def _run_one(
    cadence: str,
    system: str,
    root: Path,
    run_date: dt.date | None,
    ledger: RunLedger,
    progress: bool,
    alone: bool,
    job: Callable[..., Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    if run_date is not None:
        done = ledger.get(cadence, run_date.isoformat(), system)
        if done is not None:
            return {**done, "status": "already ran"}
    started = time.perf_counter()
    try:
        if job is None:
            job = importlib.import_module(f"mlsd.{system}.schedule").run_scheduled
        report = dict(job(root / system, run_date, progress=progress))
    except InputError:
        if alone:
            raise  # one job asked for: its clear message and exit 2
        return {"system": system, "status": "failed", "error": str(sys.exc_info()[1])}
    except Exception as err:  # a scheduler must report every job, not die on the first  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return {"system": system, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    report.setdefault("system", system)
    missing = sorted(REPORT_KEYS - set(report))
    if missing:  # a job that does not say what it did cannot be recorded as done
        return {"system": system, "status": "failed", "error": f"the job's report lacks {missing}"}
    report["seconds"] = round(time.perf_counter() - started, 2)
    day = str(report.get("run_date") or (run_date.isoformat() if run_date else dt.date.today().isoformat()))
    done = ledger.get(cadence, day, system)
    if done is not None:  # the system resolved the same day (no --date given): keep the first report
        return {**done, "status": "already ran"}
    report["status"] = "ran"
    out = root / "pipeline" / cadence / day / f"{system}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["report_path"] = str(out)
    ledger.put(cadence, day, system, report)
    return report


# ---------------------------------------------------------------------------------------------------
# CLI: mlsd pipeline run daily|weekly


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
    run = sub.add_parser(
        "run",
        help="scheduled retraining: daily (recsys, search) or weekly (fraud)",
        description="Retrain, register challengers, gate them offline against the champion, promote "
        "winners and write a report per system. Idempotent: re-running a day changes nothing.",
    )
    run.add_argument("cadence", choices=sorted(SCHEDULE), help="daily: recsys + search; weekly: fraud")
    run.add_argument(
        "--workdir", required=True, help="the folder holding <system>/data and <system>/registry"
    )
    run.add_argument(
        "--date", default=None, help="train on data up to this day, YYYY-MM-DD (default: latest)"
    )
    run.add_argument("--systems", default=None, help="comma-separated subset of the cadence's systems")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()] if args.systems else None
    summary = run_schedule(
        args.cadence, args.workdir, parse_date(args.date), systems=systems, progress=not args.json
    )
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        for r in summary["runs"]:
            if r["status"] == "failed":
                print(f"{r['system']:>7}: FAILED: {r['error']}")
                continue
            version = r.get("version")
            state = "registered v" + str(version) if r.get("registered") else f"nothing new (v{version})"
            promoted = "promoted to champion" if r.get("promoted") else "champion kept"
            print(
                f"{r['system']:>7}: {r['status']} for {r.get('run_date')}: {state}, {promoted}: {r.get('reason', '')}"
            )
        print(f"reports under {Path(args.workdir) / 'pipeline' / args.cadence}")
    for r in summary["runs"]:
        if r["status"] == "failed":
            print(f"mlsd: error: {r['system']} {args.cadence} run failed: {r['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0
