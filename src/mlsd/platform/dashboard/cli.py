"""``mlsd dashboard``: serve the dashboard locally, or write it as one static HTML file / a screenshot.

Wired into ``mlsd.cli`` as ``"dashboard": ("mlsd.platform.dashboard.cli", ...)``; this module only
provides :func:`add_commands`.

    mlsd dashboard --demo-data                          # serve generated data at http://127.0.0.1:8050/
    mlsd dashboard --workdir /tmp/mlsd-demo-xyz         # everything mlsd demo wrote there
    mlsd dashboard --registry models/ --experiments exp/ --drift fraud=drift.json --html dash.html
    mlsd dashboard --demo-data --screenshot docs/img/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from mlsd.platform.errors import InputError

# user:PASSWORD@ in a URL, password=PASSWORD in a URL query or a key=value DSN (quoted or not)
_URL_PASSWORD = re.compile(r"(?P<keep>://[^/@:?#]*:)[^@/?#]*@")
_KEY_PASSWORD = re.compile(r"(?P<keep>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``: what may be printed or logged.

    Examples:
        >>> mask_dsn("postgresql://mlsd:s3cret@db.internal:5432/fraud")
        'postgresql://mlsd:***@db.internal:5432/fraud'
        >>> mask_dsn("host=db user=mlsd password='s3 cret' dbname=fraud")
        'host=db user=mlsd password=*** dbname=fraud'
        >>> mask_dsn("postgresql://db/fraud?user=mlsd&password=s3cret&sslmode=require")
        'postgresql://db/fraud?user=mlsd&password=***&sslmode=require'
        >>> mask_dsn("postgresql://mlsd@db/fraud")   # no password: unchanged
        'postgresql://mlsd@db/fraud'
    """
    masked = _URL_PASSWORD.sub(r"\g<keep>***@", dsn)
    return _KEY_PASSWORD.sub(r"\g<keep>***", masked)


def _is_postgres_dsn(dsn: str) -> bool:
    # The review queue takes the URL form only; anything else it would open as a SQLite file path.
    return dsn.startswith(("postgresql://", "postgres://"))


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the dashboard's options to its sub-parser (no verbs: ``mlsd dashboard [options]``)."""
    parser.description = (
        "Experiments (lift, CI, SRM, sequential boundary), latency per stage, drift per feature, the "
        "fraud review queue and the model registry, with charts. Served locally: no CDN, no internet."
    )
    src = parser.add_argument_group("sources (all optional; a missing one shows a 'no data' panel)")
    src.add_argument("--workdir", help="find every source under this folder (e.g. the one mlsd demo wrote)")
    src.add_argument(
        "--registry", action="append", default=[], metavar="DIR", help="model registry root (repeatable)"
    )
    src.add_argument(
        "--experiments",
        action="append",
        default=[],
        metavar="PATH",
        help="experiment analysis JSON (mlsd experiment run --json) or a folder of them (repeatable)",
    )
    src.add_argument(
        "--drift",
        action="append",
        default=[],
        metavar="[LABEL=]FILE",
        help="drift report JSON (mlsd monitor report --json) (repeatable)",
    )
    src.add_argument(
        "--timings",
        action="append",
        default=[],
        metavar="FILE",
        help="stage timings JSON (bench output or StageTimer records) (repeatable)",
    )
    src.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help="a local service's /metrics to read mlsd_stage_seconds from (repeatable)",
    )
    src.add_argument("--review-sqlite", metavar="FILE", help="fraud review queue on SQLite")
    src.add_argument("--review-postgres", metavar="DSN", help="fraud review queue on PostgreSQL")
    src.add_argument("--review-schema", default="mlsd_fraud", help="PostgreSQL schema of the review queue")
    src.add_argument(
        "--demo-data",
        action="store_true",
        help="generate a registry, experiments, drift and a review queue in a temp dir",
    )
    out = parser.add_argument_group("output (default: serve the page)")
    out.add_argument("--html", metavar="FILE", help="write the page as one static, self-contained HTML file")
    out.add_argument("--screenshot", metavar="PNG", help="render the page in headless Chromium into PNG")
    out.add_argument("--size", default="1400x2400", help="screenshot window WIDTHxHEIGHT (default 1400x2400)")
    out.add_argument("--json", action="store_true", help="print the snapshot as one JSON object and exit")
    out.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    out.add_argument("--port", type=int, default=8050, help="port to serve on (default 8050)")
    parser.set_defaults(func=run_dashboard)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise InputError("--size", text, "expected WIDTHxHEIGHT", "e.g. 1400x2400") from None
    if not (200 <= w <= 8000 and 200 <= h <= 20000):
        raise InputError("--size", text, "out of range", "use 200..8000 x 200..20000")
    return w, h


def build_sources(args: argparse.Namespace):
    """The :class:`Sources` the options name (``--demo-data`` and ``--workdir`` first, then additions)."""
    from mlsd.platform.dashboard.collect import Sources

    if args.demo_data:
        from mlsd.platform.dashboard.demo import build_demo

        print("generating demo data ...", file=sys.stderr)
        sources = build_demo()
    elif args.workdir:
        from mlsd.platform.dashboard.discover import discover

        sources = discover(args.workdir)
    else:
        sources = Sources()
    sources.registries = [*sources.registries, *args.registry]
    sources.experiments = [*sources.experiments, *args.experiments]
    drift = dict(sources.drift)
    for item in args.drift:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).stem, item
        drift[label] = path
    sources.drift = drift
    sources.timings = [*sources.timings, *args.timings]
    sources.metrics_urls = [*sources.metrics_urls, *args.metrics_url]
    if args.review_sqlite and args.review_postgres:
        raise InputError(
            "--review-postgres",
            mask_dsn(args.review_postgres),
            "two review queues given",
            "pass --review-sqlite or --review-postgres, not both",
        )
    if args.review_sqlite or args.review_postgres:
        from mlsd.platform.dashboard.discover import open_review_queue

        if args.review_sqlite:
            if not Path(args.review_sqlite).exists():
                raise InputError("--review-sqlite", args.review_sqlite, "file not found", "check the path")
            sources.review = open_review_queue(args.review_sqlite)
        else:
            sources.review = _open_postgres_queue(args.review_postgres, args.review_schema)
    return sources


def _open_postgres_queue(dsn: str, schema: str):
    """The PostgreSQL review queue, or an InputError that names the DSN with its password masked
    (a driver's traceback or message must not carry it to the terminal or a CI log)."""
    from mlsd.platform.dashboard.discover import open_review_queue

    if not _is_postgres_dsn(dsn):
        raise InputError(
            "--review-postgres", mask_dsn(dsn), "is not a PostgreSQL DSN",
            "pass postgresql://user:password@host:5432/db (or --review-sqlite FILE for a SQLite queue)",
        )  # fmt: skip
    try:
        return open_review_queue(dsn, schema=schema)
    except InputError:
        raise
    except Exception as err:  # psycopg's errors: connection refused, unknown role, bad option, ...
        reason = mask_dsn(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise InputError(
            "--review-postgres", mask_dsn(dsn), f"cannot open the review queue ({reason})",
            "check the host, port, user and database, and that PostgreSQL is running",
        ) from None  # fmt: skip


def run_dashboard(args: argparse.Namespace) -> int:
    from mlsd.platform.dashboard.collect import collect
    from mlsd.platform.dashboard.render import render_page

    if not 1 <= args.port <= 65535:
        raise InputError("--port", args.port, "not a TCP port", "use 1..65535, e.g. 8050")
    size = _size(args.size)
    sources = build_sources(args)
    if args.json:
        print(json.dumps(collect(sources)))
        return 0
    if args.html or args.screenshot:
        html_path = (
            Path(args.html) if args.html else Path(tempfile.mkdtemp(prefix="mlsd-dash-")) / "dashboard.html"
        )
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_page(collect(sources)), encoding="utf-8")
        if args.html:
            print(f"dashboard written to {html_path.resolve()}")
        if args.screenshot:
            from mlsd.platform.dashboard.browser import INSTALL_HINT, find_chromium, screenshot

            if find_chromium() is None:
                raise InputError("--screenshot", args.screenshot, "no chromium found", INSTALL_HINT)
            png = screenshot(html_path.resolve().as_uri(), args.screenshot, width=size[0], height=size[1])
            print(f"screenshot written to {png}")
        return 0
    from mlsd.platform.dashboard.app import create_dashboard_app
    from mlsd.platform.serving import serve

    review = f"; review queue {mask_dsn(args.review_postgres)}" if args.review_postgres else ""
    print(f"mlsd dashboard at http://{args.host}:{args.port}/{review} (Ctrl-C to stop)", file=sys.stderr)
    serve(create_dashboard_app(sources), host=args.host, port=args.port, log_level="warning")
    return 0
