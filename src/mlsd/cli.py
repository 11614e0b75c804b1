"""``mlsd <command> <verb>``: one entry point for the registered systems and the shared platform.

Each system (:class:`mlsd.platform.system.System`, registered under the ``mlsd.systems`` entry points)
owns its verbs through ``System.add_commands(parser)``; the platform commands (``experiment``,
``monitor``, ``pipeline``, ``dashboard``) own theirs. This module only wires them together, loads
only the command named on the command line (so ``mlsd --help`` stays fast) and turns
:class:`~mlsd.platform.errors.InputError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from mlsd.platform.system import get_system, system_names


def _platform_commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]]:
    """Platform verbs shared by the systems: name -> (help, add_commands), imported when named."""

    def experiment(p: argparse.ArgumentParser) -> None:
        from mlsd.platform.experiments.cli import add_commands

        add_commands(p)

    def monitor(p: argparse.ArgumentParser) -> None:
        from mlsd.platform.monitoring.cli import add_commands

        add_commands(p)

    def pipeline(p: argparse.ArgumentParser) -> None:
        from mlsd.platform.retraining import add_commands

        add_commands(p)

    def dashboard(p: argparse.ArgumentParser) -> None:
        from mlsd.platform.dashboard.cli import add_commands

        add_commands(p)

    return {
        "experiment": ("A/B experiments: run (online, simulated), calibrate, bench, analyze", experiment),
        "monitor": ("drift reports: PSI and KS per feature, per system", monitor),
        "pipeline": ("scheduled retraining: run daily | weekly (each system declares its cadence)", pipeline),
        "dashboard": ("local web page: experiments, latency, drift, review queue, registry", dashboard),
    }


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, only that command's verbs are loaded (the others show help)."""
    parser = argparse.ArgumentParser(
        prog="mlsd",
        description="Production ML system designs that run: recommendations, fraud detection, search ranking.",
    )
    sub = parser.add_subparsers(dest="system", metavar="<command>")
    sub.required = True
    names = system_names()
    demo = sub.add_parser("demo", help="run every system end to end on generated data (a few minutes)")
    demo.add_argument(
        "--systems", default=",".join(names), help="comma-separated subset of: " + ", ".join(names)
    )
    demo.add_argument("--workdir", default=None, help="the workdir W (default: a temp dir); W/<system>/...")
    demo.set_defaults(func=_run_demo)
    for name in names:
        system = get_system(name)  # light: a System's fields import their code when called
        system_parser = sub.add_parser(name, help=system.summary, description=system.summary)
        if only is None or only == name:
            system.add_commands(system_parser)
        else:
            system_parser.set_defaults(func=None)
    for name, (help_text, add_commands) in _platform_commands().items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            add_commands(command_parser)
        else:
            command_parser.set_defaults(func=None)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from mlsd.demo import run_demo

    return run_demo([s.strip() for s in args.systems.split(",") if s.strip()], workdir=args.workdir)


def main(argv: Sequence[str] | None = None) -> int:
    from mlsd.platform.errors import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {*system_names(), *_platform_commands()}
    # Load only the command named on the command line; `mlsd --help` imports no system's code.
    only = argv[0] if argv and argv[0] in commands else "__none__"
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
