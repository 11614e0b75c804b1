"""``mlsd demo``: every system end to end on its embedded default, with a readable summary.

Each system provides ``mlsd.<system>.demo.run(workdir: Path) -> dict`` which simulates data, trains,
registers, serves a few requests in-process, runs one online experiment through its service and
prints what happened; it leaves the experiment report, a drift report and stage timings under its
folder. This module only sequences them, sums up the experiments and writes the dashboard page,
which finds those files by content (:func:`mlsd.platform.dashboard.discover.discover`).
"""

from __future__ import annotations

import importlib
import tempfile
import time
from pathlib import Path

from rich.console import Console

from mlsd.cli import SYSTEMS
from mlsd.platform.errors import InputError


def run_demo(systems: list[str], workdir: str | None = None) -> int:
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise InputError(
            "--systems", ",".join(unknown), "unknown system", f"choose from {', '.join(SYSTEMS)}"
        )
    console = Console(stderr=False)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlsd-demo-"))
    summary: dict[str, float] = {}
    for name in systems:
        console.rule(f"[bold]mlsd {name}")
        started = time.perf_counter()
        importlib.import_module(f"mlsd.{name}.demo").run(root / name)
        summary[name] = time.perf_counter() - started
    console.rule("[bold]done")
    for name, seconds in summary.items():
        console.print(f"  {name:<8} finished in {seconds:6.1f} s")
    console.print(f"  artifacts (data, registry, logs) under {root}")
    from mlsd.platform.dashboard import write_html
    from mlsd.platform.dashboard.discover import discover

    sources = discover(root)
    for line in experiment_lines(sources.experiments):
        console.print(line)
    page = write_html(sources, root / "dashboard.html")
    console.print(f"  dashboard (static page): {page}   live: .venv/bin/mlsd dashboard --workdir {root}")
    return 0


def experiment_lines(paths: list[Path]) -> list[str]:
    """One line per experiment report the demo wrote: the primary metric's lift and the verdict."""
    import json

    from mlsd.platform.dashboard.collect import _find_report

    lines = []
    for path in paths:
        report = _find_report(json.loads(Path(path).read_text()))
        if report is None:
            continue
        primary = report.get("primary_metric")
        for c in (report.get("metrics") or {}).get(primary, []):
            rel = c.get("relative")
            lift = "n/a" if rel is None else f"{rel:+.1%}"
            low, high = c.get("relative_low"), c.get("relative_high")
            ci = "" if low is None or high is None else f" [{low:+.1%}, {high:+.1%}]"
            verdict = (report.get("verdict") or {}).get(c.get("treatment"), "")
            lines.append(
                f"  experiment {report.get('experiment')} ({report.get('mode', 'split')}): {primary} "
                f"{c.get('treatment')} vs {c.get('control', 'control')} {lift}{ci}: {verdict}"
            )
    return lines
