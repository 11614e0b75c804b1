"""Scheduled retraining: ``mlsd pipeline run daily|weekly --workdir W [--date YYYY-MM-DD]``.

Each registered system (:mod:`mlsd.platform.system`) declares its cadence: the recommender and the
search ranker retrain daily, the fraud model weekly (its labels mature over weeks; a daily fraud retrain
would mostly learn from labels that are not in yet). A system's job is ``System.retrain(W/<system>,
run_date)``, and most are :func:`retrain` over the system's :class:`RetrainSteps`: the platform owns the
job (window -> fingerprint -> earlier run? -> train -> register -> gate -> promote -> report), the
system supplies only its steps. This module also sequences the jobs of a cadence, keeps a ledger and
writes the reports:

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
import json
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlsd.platform.errors import InputError
from mlsd.platform.jsonio import dumps, plain, write_json
from mlsd.platform.system import CADENCES, SystemDir, systems, systems_with

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

# ---------------------------------------------------------------------------------------------------
# One retrain job: the platform's half. A system supplies RetrainSteps; retrain() does the rest.


@dataclass
class Window:
    """What one run trains on, as a system's :meth:`RetrainSteps.window` chose it.

    ``fingerprint`` identifies the training data (``mlsd.platform.registry.fingerprint``); ``settings``
    are the training settings that define "the same job" (stored in the version's params): a version
    with both equal means the job already ran. ``backfill`` (the champion has seen data after
    ``run_date``) registers a challenger but never gates or promotes: the gate would be a leak.
    ``data`` is the system's own payload, handed back to its ``train`` and ``gate`` steps.
    """

    run_date: dt.date
    fingerprint: str
    settings: dict[str, Any]
    data: Any = None
    backfill: bool = False
    backfill_reason: str = ""


@dataclass
class Trained:
    """A trained model in ``artifact_dir`` (copied by the registry), with its params and metrics."""

    artifact_dir: Path
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """The offline gate's answer: promote the challenger or keep the champion, and why."""

    promote: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


class RetrainSteps(Protocol):
    """A system's half of a retrain job (see :func:`retrain`).

    Optionally also ``before_promote(window, challenger, *, progress) -> dict | None``: what serving
    needs in place before the champion alias moves to ``challenger`` (the recommender: the version's
    user rows in the online store, so no worker loads a champion whose state is missing). If it raises,
    the champion is kept and the report says why; what it returns goes into the report's ``gate``.
    """

    system: str
    model: str

    def window(self, dirs: SystemDir, run_date: dt.date | None, champion: Any, *, progress: bool) -> Window:
        """The data up to ``run_date`` (None: the latest day; out of range: InputError naming --date)."""
        ...

    def train(self, window: Window, out: Path, *, progress: bool) -> Trained:
        """Fit on ``window`` and save the artifact under ``out`` (a fresh temporary folder)."""
        ...

    def gate(self, window: Window, challenger: Any, champion: Any, *, progress: bool) -> Verdict:
        """Compare two registered versions offline on the same evaluation data."""
        ...


def retrain(
    steps: RetrainSteps, dirs: SystemDir, run_date: dt.date | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """window -> fingerprint -> earlier run? -> train -> register -> gate -> promote -> report.

    The challenger is registered under the ``challenger`` alias; the first model of a registry is
    promoted without a gate (there is nothing to compare with). The report (:data:`REPORT_KEYS` plus
    ``champion``, ``gate`` and ``seconds``) is also written to ``dirs.runs/<run date>.json``.
    """
    from mlsd.platform.registry import ModelRegistry

    started = time.perf_counter()
    registry_db = dirs.registry / "registry.sqlite"
    registry = ModelRegistry(dirs.registry) if registry_db.is_file() else None
    known = registry is not None and steps.model in registry.names()
    champion = registry.alias(steps.model, "champion") if known else None
    # the window first: a bad --date or missing data leaves no empty layout behind
    window = steps.window(dirs, run_date, champion, progress=progress)
    dirs.create()
    registry = registry or ModelRegistry(dirs.registry)
    base = {"system": steps.system, "run_date": window.run_date.isoformat(), "model": steps.model,
            "data_fingerprint": window.fingerprint}  # fmt: skip
    for mv in registry.versions(steps.model) if known else []:
        if mv.data_fingerprint == window.fingerprint and _same_settings(mv.params, window.settings):
            held = _held_report(dirs, window, mv, registry.current_version(steps.model, "champion"))
            if held is not None:  # an earlier run passed the gate but could not prepare serving: resume
                verdict = Verdict(True, f"resumed: {held['reason'].split('; not promoted:')[0]}")
                base = {**base, "version": mv.version, "metrics": mv.metrics, "registered": False}
                gate = {k: v for k, v in (held.get("gate") or {}).items() if k != "before_promote"}
                return _promote(steps, dirs, registry, window, mv, verdict, gate, base, started, progress)
            return _report(dirs, started, {
                **base, "version": mv.version, "registered": False, "promoted": False,
                "reason": f"v{mv.version} was already trained on this window (data fingerprint "
                f"{window.fingerprint[:12]}...) with the same settings: nothing to do",
                "metrics": mv.metrics, "champion": None if champion is None else champion.version,
            }, write=False)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"mlsd-{steps.system}-train-") as tmp:
        trained = steps.train(window, Path(tmp), progress=progress)
        challenger = registry.register(
            steps.model, trained.artifact_dir, params=plain({**window.settings, **trained.params}),
            metrics=plain(trained.metrics), data_fingerprint=window.fingerprint,
            parent=None if champion is None else champion.version,
        )  # fmt: skip
    registry.promote(steps.model, challenger.version, "challenger")
    gate: dict[str, Any] = {}
    if champion is None:
        verdict = Verdict(True, "first model in this registry: promoted without a gate")
    elif window.backfill:
        verdict = Verdict(False, window.backfill_reason or "backfill: registered as challenger only")
    else:
        verdict = steps.gate(window, challenger, champion, progress=progress)
        gate = verdict.metrics
    base = {**base, "version": challenger.version, "metrics": challenger.metrics}
    return _promote(steps, dirs, registry, window, challenger, verdict, gate, base, started, progress)


def _promote(
    steps: RetrainSteps,
    dirs: SystemDir,
    registry: Any,
    window: Window,
    challenger: Any,
    verdict: Verdict,
    gate: dict[str, Any],
    base: dict[str, Any],
    started: float,
    progress: bool,
) -> dict[str, Any]:
    """before_promote (when the gate said promote) -> promote -> report. A failed before_promote keeps
    the champion, writes the report and raises: the job fails (a scheduler alerts) and its next run on
    the same data resumes here (:func:`_held_report`) instead of saying there is nothing to do."""
    ready: dict[str, Any] = {}
    if verdict.promote:
        verdict, ready = _before_promote(steps, window, challenger, verdict, progress)
    if verdict.promote:
        registry.promote(steps.model, challenger.version, "champion")
    report = _report(dirs, started, {
        "registered": True, **base, "promoted": verdict.promote, "reason": verdict.reason,
        "gate": {**gate, **ready}, "champion": registry.current_version(steps.model, "champion"),
    })  # fmt: skip
    failed = ready.get("before_promote", {}).get("error")
    if failed:
        raise InputError(
            "before_promote", f"v{challenger.version}", f"passed the gate but serving could not be prepared "
            f"({failed}); champion v{report['champion']} kept", "fix that dependency and run the same job "
            "again: it resumes at this step",
        )  # fmt: skip
    return report


def _held_report(dirs: SystemDir, window: Window, mv: Any, champion: int | None) -> dict[str, Any] | None:
    """The report of the run that registered ``mv`` if it passed the gate and then failed to prepare
    serving (and ``mv`` is still not champion); else None."""
    path = dirs.runs / f"{window.run_date.isoformat()}-v{mv.version}.json"
    if champion == mv.version or not path.is_file():
        return None
    report = json.loads(path.read_text())
    failed = (report.get("gate") or {}).get("before_promote", {}).get("error")
    return report if failed and not report.get("promoted") else None


def _before_promote(
    steps: RetrainSteps, window: Window, challenger: Any, verdict: Verdict, progress: bool
) -> tuple[Verdict, dict[str, Any]]:
    """The system's serving prerequisites for the new champion (:class:`RetrainSteps`), run before the
    alias moves. Fails closed: an error keeps the champion, with the reason."""
    prepare = getattr(steps, "before_promote", None)
    if prepare is None:
        return verdict, {}
    try:
        done = prepare(window, challenger, progress=progress)
    except Exception as exc:  # noqa: BLE001 - any failure keeps the champion, with the reason reported
        traceback.print_exc(file=sys.stderr)
        error = f"{type(exc).__name__}: {exc}"
        why = f"{verdict.reason}; not promoted: preparing serving failed: {error}"
        return Verdict(False, why, verdict.metrics), {"before_promote": {"error": error}}
    return verdict, ({"before_promote": done} if done else {})


def _same_settings(params: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    return all(plain(params.get(k)) == plain(v) for k, v in settings.items())


def _report(dirs: SystemDir, started: float, report: dict[str, Any], *, write: bool = True) -> dict[str, Any]:
    report["seconds"] = round(time.perf_counter() - started, 2)
    if write:
        write_json(dirs.runs / f"{report['run_date']}-v{report['version']}.json", report)
    return report


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
                (cadence, run_date, system, time.time(), dumps(report)),
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
    only: Sequence[str] | None = None,
    progress: bool = True,
    jobs: Mapping[str, Callable[..., Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run every job of ``cadence`` once for ``run_date``; returns ``{cadence, workdir, runs, failed}``.

    ``runs`` holds one report per system (``status``: ``ran``, ``already ran`` -- from the ledger --,
    ``failed`` with the error, or ``skipped`` when the workdir has no folder for a system that was not
    asked for by name: a deployment of some systems only). ``only`` restricts the cadence to a subset. ``jobs`` replaces
    the systems' retrain jobs (``system -> callable(SystemDir, run_date, progress=)``), e.g. to
    schedule a job of your own.
    """
    if cadence not in CADENCES:
        raise InputError("cadence", cadence, "unknown cadence", f"use one of {', '.join(CADENCES)}")
    planned = tuple(s.name for s in systems_with(cadence))
    if only is not None:
        wrong = [s for s in only if s not in planned]
        if wrong:
            raise InputError(
                "--systems", ",".join(wrong), f"not part of the {cadence} schedule",
                f"the {cadence} run trains {', '.join(planned)}",
            )  # fmt: skip
        planned = tuple(s for s in planned if s in only)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    ledger = RunLedger(root / "pipeline" / "ledger.sqlite")
    runs: list[dict[str, Any]] = []
    with _exclusive(root / "pipeline" / ".lock"):
        for system in planned:
            job = (jobs or {}).get(system)
            if only is None and job is None and not SystemDir(root, system).exists():
                # a workdir that deploys some systems only: the others are not failures, just absent
                runs.append({"system": system, "status": "skipped",
                             "reason": f"no {root / system} folder: {system} is not deployed in this workdir"})  # fmt: skip
                continue
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
            job = systems()[system].retrain
        report = dict(job(SystemDir(root, system), run_date, progress=progress))
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
    write_json(out, report)
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
        help="scheduled retraining of every system of a cadence (daily or weekly)",
        description="Retrain, register challengers, gate them offline against the champion, promote "
        "winners and write a report per system. Idempotent: re-running a day changes nothing.",
    )
    run.add_argument(
        "cadence", choices=CADENCES, help="each system declares its cadence (mlsd pipeline --help)"
    )
    run.add_argument(
        "--workdir", required=True, help="the workdir W holding W/<system>/{data,registry,runs,...}"
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
        args.cadence, args.workdir, parse_date(args.date), only=systems, progress=not args.json
    )
    if args.json:
        print(dumps(summary))
    else:
        for r in summary["runs"]:
            if r["status"] == "failed":
                print(f"{r['system']:>7}: FAILED: {r['error']}")
                continue
            if r["status"] == "skipped":
                print(f"{r['system']:>7}: skipped: {r['reason']}")
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
