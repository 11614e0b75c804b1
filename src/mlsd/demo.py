"""``mlsd demo``: every system end to end on its embedded default, with a readable summary.

Each system provides ``mlsd.<system>.demo.run(workdir: Path) -> dict`` which simulates data, trains,
registers, serves a few requests in-process and prints what happened. This module only sequences them.
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
        raise InputError("--systems", ",".join(unknown), "unknown system", f"choose from {', '.join(SYSTEMS)}")
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

    page = write_html(discover(root), root / "dashboard.html")
    console.print(f"  dashboard (static page): {page}   live: .venv/bin/mlsd dashboard --workdir {root}")
    return 0
