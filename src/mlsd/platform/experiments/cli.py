"""``mlsd experiment <verb>``: calibrate (simulated error rates), bench (throughput), analyze (a stats file).

Wired into ``mlsd.cli`` by adding ``"experiment": ("mlsd.platform.experiments.cli", "...")`` to
``SYSTEMS``; this module only provides :func:`add_commands`. ``run <system>`` (the online simulators)
joins here once the systems are wired.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlsd.platform.errors import DataFormatError, InputError

PROG = "mlsd experiment"


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
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
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    return 0


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
        print(json.dumps(report))
        return 0
    srm = report["srm"]
    print(f"experiment {report['experiment']}: SRM p={_g(srm['p_value'])} flagged={srm['flagged']}")
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


def main(argv: list[str] | None = None) -> int:
    """``python -m mlsd.platform.experiments.cli`` is ``mlsd experiment ...`` (same parser, same error handling)."""
    from mlsd.cli import main as mlsd_main

    return mlsd_main(["experiment", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
