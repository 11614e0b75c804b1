"""``mlsd experiment <verb>``: run (an online experiment through a system's real service and its
simulated world), calibrate (simulated error rates), bench (throughput), analyze (a stats file).

``mlsd.cli`` wires in :func:`add_commands`. ``run <system>`` calls the registered system's world
simulator, ``System.world().run_experiment(W/<system>, ...)`` (see :mod:`mlsd.platform.experiments.online`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.jsonio import dumps, write_json

PROG = "mlsd experiment"


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
    run = sub.add_parser(
        "run",
        help="an online experiment: simulated users through a system's real service, analysed",
        description="Drive SYSTEM's real service in-process with simulated units, log exposures, turn the "
        "simulated outcomes into the experiment's analysis (lift, CI, CUPED, SRM, confidence sequence), "
        "and put the simulator's true effect next to each estimate.",
    )
    run.add_argument("system", help="a registered system: fraud, recsys or search")
    run.add_argument("--units", type=int, default=2000, help="simulated units (users, cards) (default 2000)")
    run.add_argument(
        "--arms", default=None, help="comma-separated arm presets, control first (default: the system's)"
    )
    run.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    run.add_argument("--looks", type=int, default=10, help="interim analyses in the report (default 10)")
    run.add_argument(
        "--lose-exposures",
        type=float,
        default=0.0,
        help="plant a logging bug: drop this share of the treatment arms' exposures (SRM demo)",
    )
    run.add_argument(
        "--workdir",
        default=None,
        help="the workdir W whose simulated world W/<system>/ to reuse or create, sized for --units "
        "(default: a new temporary folder)",
    )
    run.add_argument("--out", default=None, help="also write the report as JSON to this file")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.set_defaults(func=_run)
    cal = sub.add_parser(
        "calibrate", help="A/A and planted-effect simulations: false-positive rates, power, CUPED"
    )
    cal.add_argument("--seeds", type=int, default=2000, help="simulated experiments (default 2000)")
    cal.add_argument("--units", type=int, default=2000, help="units per experiment (default 2000)")
    cal.add_argument("--looks", type=int, default=100, help="interim looks for the peeking comparison")
    cal.add_argument("--alpha", type=float, default=0.05)
    cal.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    cal.set_defaults(func=_calibrate)
    bench = sub.add_parser("bench", help="assignment and exposure-logging throughput")
    bench.add_argument("--units", type=int, default=200_000)
    bench.add_argument("--redis-url", default=None, help="also time the Redis exposure log")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_bench)
    analyze = sub.add_parser("analyze", help="analyse an experiment from a config and a JSON file of stats")
    analyze.add_argument("--config", required=True, help="experiments YAML")
    analyze.add_argument("--experiment", required=True)
    analyze.add_argument("--stats", required=True, help="JSON: {metric: MetricStats.to_dict()}")
    analyze.add_argument(
        "--planned-n", type=float, default=10_000, help="units where the sequence is tightest"
    )
    analyze.add_argument("--json", action="store_true")
    analyze.set_defaults(func=_analyze)


def _positive(value: int, field: str, minimum: int = 1) -> None:
    if value < minimum:
        raise InputError(field, value, f"must be >= {minimum}", f"use a value >= {minimum}")


def _emit(result: dict, as_json: bool) -> int:
    if as_json:
        print(dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import tempfile

    from mlsd.platform.experiments.online import arms_from_presets
    from mlsd.platform.system import get_system

    system = get_system(args.system)
    _positive(args.units, "--units", 20)
    _positive(args.looks, "--looks", 0)
    if not 0.0 <= args.lose_exposures < 1.0:
        raise InputError("--lose-exposures", args.lose_exposures, "must be in [0, 1)", "use e.g. 0.1")
    world = system.world()
    arms = None if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    if arms is not None:  # the simulators' own check, run before a temporary world folder is made
        arms_from_presets(world.ARM_PRESETS, arms)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"mlsd-exp-{system.name}-"))
    dirs = system.dirs(root)
    if not args.json:
        print(f"{system.name}: world and models under {dirs.home}", file=sys.stderr)
    report = world.run_experiment(
        dirs,
        units=args.units,
        arms=arms,
        seed=args.seed,
        looks=args.looks,
        lose_exposures=args.lose_exposures,
        progress=not args.json,
    )
    if args.out:
        write_json(args.out, report)
    if args.json:
        print(dumps(report))
    else:
        print_report(report)
    return 0


def print_report(report: dict) -> None:
    """A readable summary of an experiment report (what ``mlsd experiment run`` prints)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=max(Console().width, 160))
    srm = report.get("srm") or {}
    counts = srm.get("counts")
    arms = [a["name"] for a in report.get("arms", [])]
    split = ", ".join(f"{a} {int(c)}" for a, c in zip(arms, counts or [], strict=False))
    srm_text = srm.get("note") or f"SRM p={_p(srm.get('p_value'))}{'  FLAGGED' if srm.get('flagged') else ''}"
    console.print(
        f"[bold]{report.get('experiment')}[/] ({report.get('mode', 'split')}): {split or '-'} units; {srm_text}"
    )
    truth, covered = report.get("truth") or {}, report.get("truth_covered") or {}
    table = Table(show_lines=False)
    for col in ("metric", "arm", "control", "treatment", "diff [95% CI]", "relative", "p", "always-valid",
                "true diff", "covered"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("metric", "arm") else "right")
    for metric, comps in (report.get("metrics") or {}).items():
        for c in comps:
            arm = c.get("treatment")
            true = (truth.get(metric) or {}).get(arm)
            cov = (covered.get(metric) or {}).get(arm)
            rel = c.get("relative")
            table.add_row(
                metric + (" *" if metric == report.get("primary_metric") else ""),
                str(arm),
                _f(c.get("mean_control")),
                _f(c.get("mean_treatment")),
                f"{_g(c.get('diff'))} [{_g(c.get('diff_low'))}, {_g(c.get('diff_high'))}]",
                "n/a" if rel is None else f"{rel:+.2%}",
                _p(c.get("p_value")),
                f"[{_g(c.get('cs_low'))}, {_g(c.get('cs_high'))}]",
                _g(true) if true is not None else "-",
                "-" if cov is None else ("yes" if cov else "NO"),
            )
    console.print(table)
    for g in report.get("guardrails", []):
        console.print(
            f"  guardrail {g['metric']} ({g['treatment']}): {g['status']} (margin {g['margin']:.0%})"
        )
    for arm, verdict in (report.get("verdict") or {}).items():
        console.print(
            f"  verdict {arm}: [bold]{verdict}[/]  (* primary metric; verdicts use the always-valid interval)"
        )


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _calibrate(args: argparse.Namespace) -> int:
    from mlsd.platform.experiments.calibration import calibrate

    _positive(args.seeds, "--seeds")
    _positive(args.units, "--units", 200)
    _positive(args.looks, "--looks")
    if not 0 < args.alpha < 1:
        raise InputError("--alpha", args.alpha, "must be in (0, 1)", "use e.g. 0.05")
    print(f"simulating {args.seeds} experiments of {args.units} units ...", file=sys.stderr)
    return _emit(calibrate(args.seeds, args.units, args.looks, args.alpha), args.json)


def _bench(args: argparse.Namespace) -> int:
    from mlsd.platform.experiments.calibration import bench

    _positive(args.units, "--units")
    return _emit(bench(args.units, args.redis_url), args.json)


def _analyze(args: argparse.Namespace) -> int:
    from mlsd.platform.experiments.analysis import analyze_experiment
    from mlsd.platform.experiments.assignment import ExperimentConfig
    from mlsd.platform.experiments.exposures import MetricStats

    config = ExperimentConfig.from_yaml(args.config)
    exp = config.experiment(args.experiment)
    path = Path(args.stats)
    if not path.exists():
        raise InputError("--stats", str(path), "file not found", "check the path")
    try:
        raw = json.loads(path.read_text())
        stats = {name: MetricStats.from_dict(d) for name, d in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataFormatError(
            path, None, f"not a JSON object of MetricStats ({err})", "write {metric: stats.to_dict()}"
        ) from err
    report = analyze_experiment(exp, stats, planned_n=args.planned_n)
    if args.json:
        print(dumps(report))
        return 0
    srm = report["srm"]
    print(f"experiment {report['experiment']}: SRM p={_p(srm['p_value'])} flagged={srm['flagged']}")
    for metric, comps in report["metrics"].items():
        for c in comps:
            print(
                f"  {metric:>16} {c['treatment']}: diff {_g(c['diff'])} [{_g(c['diff_low'])}, {_g(c['diff_high'])}]"
                f"  rel {_g(c['relative'])}  p={_g(c['p_value'])}  always-valid [{_g(c['cs_low'])}, {_g(c['cs_high'])}]"
            )
    for arm, verdict in report["verdict"].items():
        print(f"  verdict {arm}: {verdict}")
    return 0


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4g}"


def add_serving_options(parser: argparse.ArgumentParser) -> None:
    """``--experiments FILE`` and ``--exposure-redis URL`` for a system's ``serve`` command."""
    parser.add_argument(
        "--experiments", default=None, metavar="FILE", help="experiments YAML (see configs/experiments.yaml)"
    )
    parser.add_argument(
        "--exposure-redis",
        default=None,
        metavar="URL",
        help="log exposures to Redis Streams (several processes serving one experiment); default in-process",
    )
