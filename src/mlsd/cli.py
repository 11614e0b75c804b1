"""``mlsd <system> <verb>``: one entry point for the three systems and the shared platform.

Each system owns its verbs in ``mlsd.<system>.cli`` through ``add_commands(parser)``; this module
only wires them together, imports a system lazily (so ``mlsd --help`` stays fast) and turns
:class:`~mlsd.platform.errors.InputError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module providing add_commands, one-line help)
SYSTEMS: dict[str, tuple[str, str]] = {
    "recsys": ("mlsd.recsys.cli", "movie recommendations: simulate, train, evaluate, serve, bench, demo"),
    "fraud": (
        "mlsd.fraud.cli",
        "real-time payment fraud detection: simulate, train, evaluate, serve, stream, bench",
    ),
    "search": ("mlsd.search.cli", "e-commerce search ranking: simulate, train, evaluate, serve, bench"),
}
# Platform verbs shared by the systems.
PLATFORM: dict[str, tuple[str, str]] = {
    "experiment": (
        "mlsd.platform.experiments.cli",
        "A/B experiments: run (online, simulated), calibrate, bench, analyze",
    ),
    "monitor": ("mlsd.platform.monitoring.cli", "drift reports: PSI and KS per feature, per system"),
    "pipeline": (
        "mlsd.platform.retraining",
        "scheduled retraining: run daily (recsys, search) | weekly (fraud)",
    ),
    "dashboard": (
        "mlsd.platform.dashboard.cli",
        "local web page: experiments, latency, drift, review queue, registry",
    ),
}
COMMANDS = {**SYSTEMS, **PLATFORM}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlsd",
        description="Production ML system designs that run: recommendations, fraud detection, search ranking.",
    )
    sub = parser.add_subparsers(dest="system", metavar="<system>")
    sub.required = True
    demo = sub.add_parser("demo", help="run every system end to end on generated data (a few minutes)")
    demo.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS)
    )
    demo.add_argument("--workdir", default=None, help="where models and data go (default: a temp dir)")
    demo.set_defaults(func=_run_demo)
    for name, (module, help_text) in COMMANDS.items():
        system_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            importlib.import_module(module).add_commands(system_parser)
        else:
            system_parser.set_defaults(func=None)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from mlsd.demo import run_demo

    return run_demo([s.strip() for s in args.systems.split(",") if s.strip()], workdir=args.workdir)


def main(argv: Sequence[str] | None = None) -> int:
    from mlsd.platform.errors import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the system named on the command line; `mlsd --help` imports none of them.
    only = argv[0] if argv and argv[0] in COMMANDS else "__none__"
    parser = build_parser(only=only)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.parse_args([*argv, "--help"])
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"mlsd: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"mlsd: error: file not found: {err.filename}. Fix: check the path.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
