"""``mlsd monitor report``: a drift report, from two files or from a system's own windows.

* ``--reference A.parquet --current B.parquet``: any two frames, column by column;
* ``--system S --workdir W``: the registered system's ``drift_report(W/S)``
  (:class:`mlsd.platform.system.System`) -- the champion's training reference against what was served
  since (plus, for fraud, performance on labels as they mature). A report may say what its data could
  not give (``not_computed``: {what: why}, e.g. no known truth on imported data) and the offline
  estimate it gives instead (``quality``); both are printed after the table.

``mlsd.cli`` wires in :func:`add_commands`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.jsonio import dumps

PROG = "mlsd monitor"


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` verb to the ``monitor`` sub-parser."""
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
    report = sub.add_parser(
        "report",
        help="per-feature drift (PSI bands, KS) of a current frame against a reference frame",
        description="Per-feature drift of --current against --reference: PSI with bands "
        "(< 0.1 stable, 0.1-0.25 moderate, > 0.25 significant), KS for numeric features, null rates. "
        "Or --system S --workdir W: the system's champion training reference against what it served.",
    )
    report.add_argument("--reference", default=None, help="training/reference data (.parquet or .csv)")
    report.add_argument("--current", default=None, help="recent data to compare (.parquet or .csv)")
    report.add_argument("--system", default=None, help="a registered system, e.g. fraud (with --workdir)")
    report.add_argument("--workdir", default=None, help="the workdir W holding W/<system>/ (with --system)")
    report.add_argument(
        "--features", default=None, help="comma-separated columns (default: all of the reference)"
    )
    report.add_argument(
        "--categorical", default="", help="comma-separated numeric columns to treat as categories"
    )
    report.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature (default 10)")
    report.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    report.set_defaults(func=run_report)


def read_frame(path: str | Path, field: str) -> pd.DataFrame:
    """Read a Parquet or CSV file; unreadable content is a DataFormatError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(field, str(path), "file not found", "check the path")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise InputError(field, str(path), "unsupported file type", "use a .parquet or .csv file")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) on a corrupt file
        raise DataFormatError(
            path, None, f"cannot read it as {suffix[1:]} ({err})", "regenerate or re-export the file"
        ) from err


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def run_report(args: argparse.Namespace) -> int:
    from mlsd.platform.monitoring.drift import DriftMonitor

    if args.system is not None or args.workdir is not None:
        return _system_report(args)
    for flag, value in (("--reference", args.reference), ("--current", args.current)):
        if value is None:
            raise InputError(
                flag, None, "is missing", "pass --reference FILE --current FILE, or --system S --workdir DIR"
            )
    reference = read_frame(args.reference, "--reference")
    current = read_frame(args.current, "--current")
    monitor = DriftMonitor(
        bins=args.bins, features=_split(args.features), categorical=_split(args.categorical) or ()
    )
    report = monitor.fit(reference).report(current)
    report["reference"], report["current"] = str(args.reference), str(args.current)
    if args.json:
        print(dumps(report))
        return 0
    _print_table(report)
    return 0


def _system_report(args: argparse.Namespace) -> int:
    from mlsd.platform.system import get_system, system_names

    if args.system is None:
        raise InputError("--system", None, "is missing", f"use one of {', '.join(system_names())}")
    system = get_system(args.system, "--system")
    dirs = system.dirs(args.workdir or ".")
    if args.workdir is None or not dirs.exists():
        raise InputError(
            "--workdir", args.workdir, f"has no {system.name} folder ({dirs.home})",
            f"pass the workdir W that holds W/{system.name}/ (the one mlsd demo or mlsd {system.name} "
            "train wrote to)",
        )  # fmt: skip
    if args.reference or args.current:
        raise InputError(
            "--reference", args.reference, "cannot be combined with --system", "use one of the two forms"
        )
    report = system.drift_report(dirs)
    if args.json:
        print(dumps(report))
        return 0
    if report["features"]:
        _print_table(report)
    else:
        print(f"no feature compared: reference {report.get('reference')}; current {report.get('current')}")
    _print_performance(report.get("performance"))
    _print_limits(report)
    return 0


def _print_limits(report: dict) -> None:
    """What a system's data could not give (``not_computed``: {what: why}) and the offline estimate
    it reports instead (``quality``): on imported data there is often no known truth."""
    quality = report.get("quality") or {}
    if quality:
        values = ", ".join(f"{k} {v:.4g}" for k, v in quality.items() if isinstance(v, int | float))
        print(f"estimate: {values} ({quality.get('what', 'offline')})")
    for what, why in (report.get("not_computed") or {}).items():
        print(f"not computed: {what}: {why}")


def _print_performance(performance: dict | None) -> None:
    """Fraud's performance on labels known N days after scoring (``report["performance"]``)."""
    from mlsd.platform.dashboard.collect import PERFORMANCE_KEYS, _performance_rows

    rows = _performance_rows(performance)
    if not rows:
        return
    print("performance on labels as they mature:")
    widths = [max(len(k), 8) for k in PERFORMANCE_KEYS]
    print("  " + "  ".join(f"{k:>{w}}" for k, w in zip(PERFORMANCE_KEYS, widths, strict=True)))
    for r in rows:
        cells = [
            f"{r[k]:>{w}.4g}" if isinstance(r[k], float) else f"{r[k]!s:>{w}}"
            for k, w in zip(PERFORMANCE_KEYS, widths, strict=True)
        ]
        print("  " + "  ".join(cells))


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"stable": "green", "moderate": "yellow", "significant": "red"}
    table = Table(
        title=f"drift: {report.get('current', 'current')} vs {report.get('reference', 'reference')}"
    )
    for col in ("feature", "kind", "PSI", "band", "KS", "KS p", "nulls ref -> cur"):
        table.add_column(col)
    for name, row in sorted(report["features"].items(), key=lambda kv: -kv[1]["psi"]):
        ks_stat = "-" if row["ks_statistic"] is None else f"{row['ks_statistic']:.3f}"
        ks_p = "-" if row["ks_pvalue"] is None else f"{row['ks_pvalue']:.2g}"
        table.add_row(
            name,
            row["kind"],
            f"{row['psi']:.3f}",
            f"[{colours[row['band']]}]{row['band']}[/]",
            ks_stat,
            ks_p,
            f"{row['null_rate_reference']:.1%} -> {row['null_rate_current']:.1%}",
        )
    Console(file=sys.stdout).print(table)
    s = report["summary"]
    print(f"{s['stable']} stable, {s['moderate']} moderate, {s['significant']} significant")
