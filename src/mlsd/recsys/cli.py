"""``mlsd recsys <verb>``: simulate, import, train, recommend, evaluate, serve, bench, demo.

The verbs that read or write state take ``--workdir W`` and keep it in ``W/recsys/{data,registry,runs,
monitoring}`` (``SYSTEM.dirs(W)``): ``simulate --workdir W`` or ``import --format F --path P --workdir W``
-> ``train --workdir W`` -> ``recommend --workdir W --user U`` (one answer at the terminal) or ``serve
--workdir W`` (the same answer over HTTP); ``demo --workdir W`` simulates, trains, serves and more. ``evaluate`` (MovieLens files) and ``bench``
(a temporary workdir unless given one) read external data. Heavy modules (pandas, lightgbm, faiss,
fastapi) are imported inside each verb, so ``mlsd recsys --help`` stays instant. Every verb with
``--json`` prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.cli import add_serving_options
from mlsd.platform.jsonio import dumps
from mlsd.platform.system import SystemDir

SIZES = ("tiny", "demo", "default")  # mlsd.recsys.world.SIZES (not imported: --help stays instant)
FORMATS = ("movielens", "csv", "parquet")  # mlsd.recsys.importing.FORMATS (same reason)


def _dirs(workdir) -> SystemDir:
    return SystemDir(workdir, "recsys")


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


def _add_als_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--als-engine", choices=("implicit", "spark"), default="implicit",
                   help="the ALS trainer: implicit (this process) or spark (Spark MLlib; pip install mlsd[spark])")  # fmt: skip
    p.add_argument("--spark-master", default=None, metavar="URL",
                   help="with --als-engine spark: where Spark runs, local[2] (default) or spark://host:7077")  # fmt: skip


def _als_engine(args: argparse.Namespace) -> dict:
    """``--als-engine``/``--spark-master`` as the trainer's arguments (a master without Spark is an error)."""
    if args.spark_master is not None and args.als_engine != "spark":
        raise InputError("--spark-master", args.spark_master, "is only used by the Spark ALS trainer",
                         "add --als-engine spark (or leave --spark-master out)")  # fmt: skip
    master = (args.spark_master or "local[2]") if args.als_engine == "spark" else None
    return {"als_engine": args.als_engine, "spark_master": master}


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Register the recommender's verbs on ``mlsd recsys``."""
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
    workdir = {
        "required": True,
        "help": "the workdir W; the recommender's state is W/recsys/{data,registry,...}",
    }

    p = sub.add_parser(
        "simulate", help="generate a streaming platform's users, titles and days of events into W/recsys/data"
    )
    p.add_argument("--workdir", **workdir)
    p.add_argument("--size", choices=SIZES, default="default",
                   help="tiny (tests), demo, default (20,000 viewers x 2,000 titles x 60 days)")  # fmt: skip
    p.add_argument(
        "--users", type=_positive_int("users", 10), default=None, help="override the size's viewers"
    )
    p.add_argument(
        "--items", type=_positive_int("items", 20), default=None, help="override the size's titles"
    )
    p.add_argument("--days", type=_positive_int("days", 2), default=None, help="override the size's days")
    p.add_argument(
        "--events-per-user", type=float, default=None, help="mean watch events per established user"
    )
    p.add_argument("--seed", type=int, default=None, help="default: the size's own seed")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "import",
        help="append a data source to W/recsys/data in the data contract (validated, atomic, deduplicated)",
    )
    p.add_argument("--workdir", **workdir)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="movielens (100K/1M/CSV folders) or the contract's own tables as csv / parquet")  # fmt: skip
    p.add_argument("--path", required=True,
                   help="the folder (MovieLens; interactions/items/users.csv|parquet) or one table file")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(func=_import)

    p = sub.add_parser(
        "train",
        help="the daily job on W/recsys/data: train, evaluate on the next day, register, promote if better",
    )
    p.add_argument("--workdir", **workdir)
    p.add_argument(
        "--train-days", type=float, default=None, help="default: the champion's, else the data's job"
    )
    p.add_argument("--label-days", type=float, default=None)
    p.add_argument("--k", type=_positive_int("k", 1, 500), default=None)
    p.add_argument("--n-estimators", type=_positive_int("n-estimators", 1), default=None)
    p.add_argument("--threads", type=_positive_int("threads", 1), default=None, help="LightGBM threads")
    _add_als_engine(p)
    p.add_argument("--user-state", default=None, metavar="URL",
                   help="the Redis (or redis+cluster://) URL serving workers read user rows from: a new "
                   "champion's rows are written there before it is promoted, older versions' deleted "
                   "(default: $MLSD_RECSYS_USER_STATE)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "recommend", help="one user's recommendations from W/recsys's champion, at the terminal"
    )
    p.add_argument("--workdir", **workdir)
    p.add_argument("--user", required=True, help="the user id")
    p.add_argument("--k", type=_positive_int("k", 1, 500), default=10)
    p.add_argument(
        "--json", action="store_true", help="print the answer as one JSON object (as GET /v1/recommendations)"
    )
    p.set_defaults(func=_recommend)

    p = sub.add_parser("evaluate", help="offline evaluation on MovieLens (popularity, ALS, two-stage)")
    from mlsd.recsys import evaluate

    evaluate.add_arguments(p)

    p = sub.add_parser(
        "serve", help="HTTP service over W/recsys's champion: GET /v1/recommendations/{user_id}?k=50"
    )
    p.add_argument("--workdir", **workdir)
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
    p.add_argument("--user-state", default=None, metavar="URL",
                   help="redis://... or redis+cluster://h:p[,h:p]: the champion's per-user tables are written "
                        "there once at start and every worker reads its users from it instead of holding "
                        "them (docs/scaling.md)")  # fmt: skip
    add_serving_options(
        p
    )  # --experiments FILE (recsys experiments route every request), --exposure-redis URL
    p.set_defaults(func=_serve)

    p = sub.add_parser("bench", help="latency and throughput, in-process and over HTTP")
    p.add_argument("--users", type=_positive_int("users", 10), default=1_000_000)
    p.add_argument("--items", type=_positive_int("items", 20), default=50_000)
    p.add_argument("--requests", type=_positive_int("requests", 1), default=2_000)
    p.add_argument("--concurrency", type=_positive_int("concurrency", 1), default=8,
                   help="HTTP clients, each sending when its answer is in (closed loop: saturation); with "
                   "--rate: the most connections open at once")  # fmt: skip
    p.add_argument("--spark-cluster", type=_positive_int("spark-cluster", 1, 16), default=None, metavar="N",
                   help="with --als-engine spark: start a Spark standalone master and N one-core workers on "
                   "127.0.0.1 for this run and train there (stopped after)")  # fmt: skip
    p.add_argument("--rate", type=_positive_int("rate", 1, 100_000), default=None, metavar="RPS",
                   help="instead: HTTP requests arrive at RPS a second (Poisson, open loop): the latency "
                   "at a stated load, measured from when each request was due")  # fmt: skip
    p.add_argument("--workers", type=_positive_int("workers", 1, 64), default=1,
                   help="uvicorn worker processes for the HTTP run (1: a thread of the bench process)")  # fmt: skip
    p.add_argument("--events-per-user", type=float, default=8.0)
    p.add_argument("--user-state", default=None, metavar="REDIS_URL",
                   help="serve the user side of every process from this Redis (or redis+cluster:// URL); "
                   "exported there first, deleted after")  # fmt: skip
    p.add_argument("--ranker-users", type=_positive_int("ranker-users", 10), default=3_000,
                   help="users whose labelled candidates train the ranker (stage one trains on every user)")  # fmt: skip
    p.add_argument("--k", type=_positive_int("k", 1, 500), default=50)
    p.add_argument(
        "--workdir", default=None, help="keep data and registry in W/recsys/ (default: a temp dir)"
    )
    p.add_argument("--seed", type=int, default=0)
    _add_als_engine(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "demo", help="simulate, train, register, serve a few users, an A/B test, drift (about a minute)"
    )
    p.add_argument("--workdir", default=None, help="the workdir W (default: a temp dir); W/recsys/...")
    p.set_defaults(func=_demo)


def _simulate(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in (("n_users", args.users), ("n_items", args.items),
                 ("days", args.days), ("events_per_user", args.events_per_user)) if value is not None}  # fmt: skip
    from mlsd.recsys.world import simulate_into

    summary = simulate_into(_dirs(args.workdir), args.size, args.seed, progress=True, **overrides)
    print(dumps(summary) if args.json else dumps(summary, indent=2))
    return 0


def _import(args: argparse.Namespace) -> int:
    from mlsd.recsys.importing import import_data

    summary = import_data(_dirs(args.workdir), args.format, args.path)
    if args.json:
        print(dumps(summary))
        return 0
    added, rows = summary["added"], summary["rows"]
    print(f"imported {args.format} {summary['path']} into {summary['data']}")
    for table in ("interactions", "items", "users"):
        print(f"  {table:<12} +{added[table]:>7,}  ({rows[table]:,} in all)")
    if summary.get("note"):
        print(f"  {summary['note']}")
    if summary["features_dropped"]:
        print("  the data has no " + ", ".join(summary["features_dropped"]) + "; without them:")
        for effect in sorted(set(summary["features_dropped"].values())):
            print(f"    - {effect}")
    print(f"next: mlsd recsys train --workdir {args.workdir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in (("train_days", args.train_days), ("label_days", args.label_days),
                 ("k", args.k), ("n_estimators", args.n_estimators), ("threads", args.threads))
                 if value is not None}  # fmt: skip
    from mlsd.recsys.training import train

    if args.user_state:
        _user_state_store(args.user_state).close()  # one that does not answer: exit 2 before training
    report = train(_dirs(args.workdir), progress=not args.json, user_state=args.user_state, **_als_engine(args),
                   **overrides)  # fmt: skip
    if args.json:
        print(dumps(report))
        return 0
    m = report["metrics"]
    ndcg = sorted(key for key in m if key.startswith("ndcg@"))
    if not report["registered"]:
        print(report["reason"])
        return 0
    print(
        f"registered {report['model']} v{report['version']} ({report['seconds']} s) for {report['run_date']}"
    )
    for key in ndcg:
        print(f"  held-out {key}: two-stage {m[key]:.4f} vs popularity {m.get('popularity_' + key, float('nan')):.4f} "
              f"({m.get('eval_users')} users)")  # fmt: skip
    print(f"  {'promoted to champion' if report['promoted'] else 'not promoted'}: {report['reason']}")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from mlsd.recsys.engine import RecsysEngine

    # The same engine and settings as `serve` (data clock, default region and age): the same answer.
    engine = RecsysEngine.from_dirs(_dirs(args.workdir), watch=False)
    answer = engine.handle([{"user_id": args.user, "k": args.k}])[0]
    if args.json:
        print(dumps(answer))
        return 0
    cold = " (cold start: not in the model's window)" if answer["cold_start"] else ""
    print(f"user {answer['user_id']}: top {len(answer['items'])} of {answer['n_candidates']} candidates, "
          f"model v{answer['model_version']}{cold}")  # fmt: skip
    print(f"{'#':>3}  {'item':>7}  {'score':>8}  {'title':<42}  why")
    for rank, item in enumerate(answer["items"], 1):
        title = str(item["title"])[:42]
        print(
            f"{rank:>3}  {item['item_id']:>7}  {item['score']:>8.4f}  {title:<42}  {'; '.join(item['reasons'])}"
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mlsd.recsys.config import MODEL_NAME, Budgets, RecsysConfig, ServiceConfig
    from mlsd.recsys.engine import RecsysEngine
    from mlsd.recsys.service import create_service_app

    dirs = _dirs(args.workdir)
    dirs.require_champion(MODEL_NAME)  # exit 2 with the fix before anything loads or is created
    config = RecsysConfig(
        budgets=Budgets(deadline_ms=args.deadline_ms),
        service=ServiceConfig(clock=args.clock, exposure_log_path=args.exposure_log),
    )
    config.validate()
    user_state = _user_state_store(args.user_state) if args.user_state else None
    if args.workers > 1:
        if user_state is not None:  # once here, not in N workers at the same time
            _export_champion_user_state(dirs, user_state)
        return _serve_workers(args)
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.serving import serve

    store = None
    if args.online_store == "memory":
        from mlsd.platform.features.online import MemoryStore

        store = MemoryStore()
    elif args.online_store:
        from mlsd.platform.features.online import RedisStore

        store = RedisStore(args.online_store, prefix="mlsd:")
    # one process: the engine's own load writes the champion's rows if they are not there yet
    experiments = ExperimentClient.from_options(args.experiments, args.exposure_redis)
    engine = RecsysEngine.from_dirs(
        dirs, config=config, online_store=store, experiments=experiments, user_state=user_state
    )
    print(f"serving {MODEL_NAME} v{engine.model_version} on http://{args.host}:{args.port}", file=sys.stderr)
    serve(create_service_app(engine), host=args.host, port=args.port)
    return 0


def _user_state_store(url: str):
    """The online store holding the served version's per-user rows; one that does not answer is exit 2
    before anything starts."""
    from mlsd.platform.features.online import RedisStore
    from mlsd.recsys.config import USER_STATE_PREFIX

    store = RedisStore(url, prefix=USER_STATE_PREFIX)
    if not store.ping():
        raise InputError("--user-state", url, "does not answer", "start Redis there, or drop --user-state")
    return store


def _export_champion_user_state(dirs, store) -> None:
    """Write the champion's per-user tables to ``store`` (under its version's namespace, so a later
    version never reads them) unless they are there, before any worker starts: the workers then hold
    only the item side. A version promoted later is exported by the first worker that loads it
    (:func:`mlsd.recsys.engine.ensure_user_state`)."""
    from mlsd.platform.registry import ModelRegistry
    from mlsd.recsys.config import MODEL_NAME
    from mlsd.recsys.engine import ensure_user_state
    from mlsd.recsys.model import TwoStageRecommender

    registry = ModelRegistry(dirs.registry)
    version = registry.current_version(MODEL_NAME, "champion")
    model = TwoStageRecommender.load(registry.artifact_path(MODEL_NAME, version))
    done = ensure_user_state(model, store, version, progress=True)
    said = "already there" if done is None else f"{done['users']:,} users, {done['bytes_per_user']} B each"
    print(f"user state of v{version} in {store.url}: {said}", file=sys.stderr)


def _serve_workers(args: argparse.Namespace) -> int:
    """Several uvicorn worker processes on one port, each building the engine from the environment
    (:func:`mlsd.recsys.service.app_from_env`; the variables carry the workdir). State shared between
    requests must then live outside the process: the online store and the exposure log have to be Redis."""
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
        service.WORKDIR_ENV: str(args.workdir),
        service.DEADLINE_ENV: str(args.deadline_ms),
        service.CLOCK_ENV: args.clock,
        service.EXPERIMENTS_ENV: args.experiments or "",
        service.EXPOSURE_REDIS_ENV: args.exposure_redis or "",
        service.ONLINE_STORE_ENV: args.online_store or "",
        service.USER_STATE_ENV: args.user_state or "",
        service.USER_STATE_PREFIX_ENV: service.USER_STATE_PREFIX,
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

    engine = _als_engine(args)
    with _local_spark_cluster(args) as master:
        if master is not None:
            engine["spark_master"] = master
        result = run_bench(
            users=args.users, items=args.items, requests=args.requests, concurrency=args.concurrency,
            events_per_user=args.events_per_user, ranker_users=args.ranker_users, k=args.k,
            workdir=args.workdir, seed=args.seed, workers=args.workers, user_state=args.user_state,
            rate=args.rate, **engine,
        )  # fmt: skip
    if master is not None:
        result["train"]["spark_cluster"] = {"workers": args.spark_cluster, "cores_per_worker": 1}
    print(dumps(result) if args.json else dumps(result, indent=2))
    return 0


@contextlib.contextmanager
def _local_spark_cluster(args: argparse.Namespace):
    """``--spark-cluster N``: a Spark standalone master and N one-core workers on 127.0.0.1 for this run
    (:class:`~mlsd.platform.spark_cluster.LocalSparkCluster`), its URL the ALS trainer's master; the
    session and the cluster are stopped after. None without the option."""
    if not args.spark_cluster:
        yield None
        return
    if args.als_engine != "spark" or args.spark_master is not None:
        raise InputError("--spark-cluster", args.spark_cluster, "starts a local cluster for --als-engine spark",
                         "use --als-engine spark without --spark-master")  # fmt: skip
    from mlsd.platform.spark_cluster import LocalSparkCluster

    with LocalSparkCluster(workers=args.spark_cluster) as cluster:
        print(
            f"recsys bench: Spark standalone cluster {cluster.url} ({args.spark_cluster} workers)",
            file=sys.stderr,
        )
        try:
            yield cluster.url
        finally:  # the trainer's session holds executors on the cluster: end it before the cluster
            from pyspark.sql import SparkSession

            active = SparkSession.getActiveSession()
            if active is not None:
                active.stop()


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from mlsd.recsys.demo import run

    run(_dirs(args.workdir or tempfile.mkdtemp(prefix="mlsd-recsys-demo-")))
    return 0
