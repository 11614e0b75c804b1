"""``mlsd demo``: every registered system end to end on its embedded default, with a readable summary.

Each system's ``System.demo(dirs)`` simulates data into ``W/<system>/data``, trains, registers, serves a
few requests in-process, runs one online experiment through its engine and prints what happened; it
leaves the experiment report, a drift report and stage timings in ``W/<system>/monitoring``. This
module only sequences them, sums up the experiments, writes the dashboard page (which finds those
files by content: :func:`mlsd.platform.dashboard.discover.discover`) and ends with the commands that
serve each system's champion from the same workdir.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rich.console import Console

from mlsd.platform.errors import InputError
from mlsd.platform.system import get_system, system_names


def run_demo(systems: list[str], workdir: str | Path | None = None) -> int:
    names = system_names()
    unknown = [s for s in systems if s not in names]
    if unknown:
        raise InputError("--systems", ",".join(unknown), "unknown system", f"choose from {', '.join(names)}")
    console = Console(stderr=False)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlsd-demo-"))
    summary: dict[str, float] = {}
    for name in systems:
        console.rule(f"[bold]mlsd {name}")
        started = time.perf_counter()
        system = get_system(name)
        system.demo(system.dirs(root))
        summary[name] = time.perf_counter() - started
    console.rule("[bold]done")
    for name, seconds in summary.items():
        console.print(f"  {name:<8} finished in {seconds:6.1f} s")
    console.print(f"  workdir (W/<system>/data, registry, runs, monitoring, review): {root}")
    from mlsd.platform.dashboard import write_html
    from mlsd.platform.dashboard.discover import discover

    sources = discover(root)
    for line in experiment_lines(sources.experiments):
        console.print(line)
    page = write_html(sources, root / "dashboard.html")
    console.print(f"  dashboard (static page): {page}   live: .venv/bin/mlsd dashboard --workdir {root}")
    console.print(
        "  serve the champions trained here (reads are open; writes need an API key, docs/security.md):"
    )
    for name in systems:
        console.print(f"    .venv/bin/mlsd {name} serve --workdir {root}", soft_wrap=True)
    console.print(
        '    e.g. MLSD_API_KEYS="me:admin:<a secret of 16+ characters>" .venv/bin/mlsd fraud serve ...'
    )
    return 0


def experiment_lines(paths: list[Path]) -> list[str]:
    """One line per experiment report the demo wrote: the primary metric's lift and the verdict."""
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
