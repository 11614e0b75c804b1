"""``mlsd recsys <verb>``: simulate, train, evaluate, serve, bench, demo.

Heavy modules (pandas, lightgbm, faiss, fastapi) are imported inside each verb, so ``mlsd recsys --help``
stays instant. Every verb with ``--json`` prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.cli import add_serving_options


def _positive_int(name: str, low: int = 1, high: int | None = None):
    def parse(text: str) -> int:
        # ArgumentTypeError: argparse prints our message as is (usage + exit status 2).
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a whole number. Fix: pass e.g. --{name} {max(low, 10)}"
            ) from None
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} must be {bounds}. Fix: pass a value in {bounds}")
        return value

    return parse


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Register the recommender's verbs on ``mlsd recsys``."""
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True

    p = sub.add_parser(
        "simulate", help="generate a streaming platform's users, titles and ~60 days of events"
    )
    p.add_argument("--users", type=_positive_int("users", 10), default=20_000)
    p.add_argument("--items", type=_positive_int("items", 20), default=2_000)
    p.add_argument("--days", type=_positive_int("days", 2), default=60)
    p.add_argument(
        "--events-per-user", type=float, default=25.0, help="mean watch events per established user"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for interactions/items/users.parquet")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "train", help="the daily job: train, evaluate on the next day, register, promote if better"
    )
    p.add_argument("--data", required=True, help="a folder from `mlsd recsys simulate`")
    p.add_argument("--registry", required=True, help="model registry folder (created if absent)")
    p.add_argument("--train-days", type=float, default=30.0)
    p.add_argument("--label-days", type=float, default=7.0)
    p.add_argument("--k", type=_positive_int("k", 1, 500), default=10)
    p.add_argument("--n-estimators", type=_positive_int("n-estimators", 1), default=300)
    p.add_argument("--threads", type=_positive_int("threads", 1), default=1, help="LightGBM threads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="offline evaluation on MovieLens (popularity, ALS, two-stage)")
    from mlsd.recsys import evaluate

    evaluate.add_arguments(p)

    p = sub.add_parser("serve", help="HTTP service: GET /v1/recommendations/{user_id}?k=50")
    p.add_argument("--registry", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int("port", 1, 65535), default=8000)
    p.add_argument("--deadline-ms", type=float, default=200.0)
    p.add_argument("--clock", choices=["data", "wall"], default="data",
                   help="'data': now = end of the training data (simulated worlds); 'wall': real time")  # fmt: skip
    p.add_argument("--exposure-log", default=None, help="JSONL file for the exposure log")
    p.add_argument("--online-store", default=None, metavar="URL",
                   help="live user profiles: 'memory' or redis://127.0.0.1:6379/0 (enables PUT /v1/users/{id}/profile)")  # fmt: skip
    p.add_argument("--workers", type=_positive_int("workers", 1, 64), default=1,
                   help="uvicorn worker processes, each with its own copy of the model (one Python process "
                        "serves one request at a time: throughput grows with processes)")  # fmt: skip
    # --experiments FILE (recsys experiments route every request), --exposure-redis URL
    add_serving_options(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("bench", help="latency and throughput, in-process and over HTTP")
    p.add_argument("--users", type=_positive_int("users", 10), default=1_000_000)
    p.add_argument("--items", type=_positive_int("items", 20), default=50_000)
    p.add_argument("--requests", type=_positive_int("requests", 1), default=2_000)
    p.add_argument("--concurrency", type=_positive_int("concurrency", 1), default=8)
    p.add_argument("--workers", type=_positive_int("workers", 1, 64), default=1,
                   help="uvicorn worker processes for the HTTP run (1: a thread of the bench process)")  # fmt: skip
    p.add_argument("--events-per-user", type=float, default=8.0)
    p.add_argument("--train-users", type=_positive_int("train-users", 10), default=3_000,
                   help="users whose events train the model (all users stay in the catalogue)")  # fmt: skip
    p.add_argument("--k", type=_positive_int("k", 1, 500), default=50)
    p.add_argument("--workdir", default=None, help="keep data and registry here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser("demo", help="simulate, train, register and serve a few users (about a minute)")
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=_demo)


def _simulate(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from mlsd.recsys.simulate import save, simulate

    started = time.perf_counter()
    print(f"simulating {args.users:,} users x {args.items:,} titles x {args.days} days ...", file=sys.stderr)
    dataset, truth = simulate(
        args.users, args.items, args.days, args.seed, events_per_user=args.events_per_user
    )
    out = save(dataset, truth, Path(args.out))
    inter = dataset.interactions
    summary = {
        "out": str(out),
        "users": len(dataset.users),
        "items": len(dataset.items),
        "events": len(inter),
        "by_event": {str(k): int(v) for k, v in inter["event"].value_counts().items()},
        "new_users": int(truth.users["is_new"].sum()),
        "start_ts": truth.start_ts,
        "end_ts": truth.end_ts,
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from mlsd.recsys.config import TrainConfig
    from mlsd.recsys.pipeline import train_daily
    from mlsd.recsys.simulate import load

    cfg = TrainConfig(
        train_days=args.train_days, label_days=args.label_days, k=args.k, n_estimators=args.n_estimators,
        threads=args.threads,
    )  # fmt: skip
    report = train_daily(load(args.data), args.registry, cfg)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        k = args.k
        m, p = report["metrics"], report["popularity"]
        print(f"registered {report['model']} v{report['version']} ({report['seconds']} s)")
        print(f"  next-day ndcg@{k}: two-stage {m[f'ndcg@{k}']:.4f} vs popularity {p[f'ndcg@{k}']:.4f} "
              f"({report['eval_users']} users)")  # fmt: skip
        print(f"  {'promoted to champion' if report['promoted'] else 'not promoted'}: {report['reason']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mlsd.platform.serving import serve
    from mlsd.recsys.config import Budgets, RecsysConfig, ServiceConfig
    from mlsd.recsys.service import RecsysService, create_service_app

    config = RecsysConfig(
        budgets=Budgets(deadline_ms=args.deadline_ms),
        service=ServiceConfig(clock=args.clock, exposure_log_path=args.exposure_log),
    )
    config.validate()
    if args.workers > 1:
        return _serve_workers(args)
    store = None
    if args.online_store == "memory":
        from mlsd.platform.features.online import MemoryStore

        store = MemoryStore()
    elif args.online_store:
        from mlsd.platform.features.online import RedisStore

        store = RedisStore(args.online_store, prefix="mlsd:")
    from mlsd.platform.experiments.client import ExperimentClient

    experiments = ExperimentClient.from_options(args.experiments, args.exposure_redis)
    service = RecsysService(args.registry, config=config, online_store=store, experiments=experiments)
    print(
        f"serving {config.service.model_name} v{service.version} on http://{args.host}:{args.port}",
        file=sys.stderr,
    )
    serve(create_service_app(service), host=args.host, port=args.port)
    return 0


def _serve_workers(args: argparse.Namespace) -> int:
    """Several uvicorn worker processes on one port, each building the service from the environment
    (:func:`mlsd.recsys.service.app_from_env`). State shared between requests must then live outside
    the process: the online store and the exposure log have to be Redis."""
    import os

    import uvicorn

    from mlsd.recsys import service

    if args.online_store == "memory":
        raise InputError(
            "--online-store", "memory", f"each of the {args.workers} workers would hold its own profiles",
            "use --online-store redis://127.0.0.1:6379/0 with --workers",
        )  # fmt: skip
    if args.experiments and not args.exposure_redis:
        raise InputError(
            "--exposure-redis", None, f"each of the {args.workers} workers would log its own exposures",
            "pass --exposure-redis redis://127.0.0.1:6379/0 with --workers and --experiments",
        )  # fmt: skip
    env = {
        service.REGISTRY_ENV: args.registry,
        service.DEADLINE_ENV: str(args.deadline_ms),
        service.CLOCK_ENV: args.clock,
        service.EXPERIMENTS_ENV: args.experiments or "",
        service.EXPOSURE_REDIS_ENV: args.exposure_redis or "",
        service.ONLINE_STORE_ENV: args.online_store or "",
    }
    service.app_from_env(env)  # fail here, once, with a clear message, not in N workers
    os.environ.update(env)
    print(f"serving with {args.workers} workers on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(
        "mlsd.recsys.service:app_from_env", factory=True, workers=args.workers, host=args.host,
        port=args.port, log_level="info", access_log=False,
    )  # fmt: skip
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mlsd.recsys.bench import run_bench

    result = run_bench(
        users=args.users, items=args.items, requests=args.requests, concurrency=args.concurrency,
        events_per_user=args.events_per_user, train_users=args.train_users, k=args.k,
        workdir=args.workdir, seed=args.seed, workers=args.workers,
    )  # fmt: skip
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from mlsd.recsys.demo import run

    run(Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mlsd-recsys-demo-")))
    return 0
