"""``mlsd fraud <verb>``: simulate, import, train, evaluate, tune-thresholds, backtest, review, score,
serve, stream, bench, demo.

Every verb that reads or writes the system's state takes ``--workdir W`` (the workdir shared by all
systems; the fraud state lives in ``W/fraud/{data,features,registry,runs,monitoring,review}``, see
:class:`mlsd.fraud.engine.FraudDirs`). ``evaluate`` and ``bench`` read external files or temporary
folders; ``backtest`` reads ``--data`` or the workdir's payments. Heavy imports (pandas, lightgbm,
torch, fastapi) happen inside the verbs, so ``mlsd fraud --help`` stays fast. ``--json`` prints
exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlsd.platform.jsonio import dumps, write_json
from mlsd.platform.system import SystemDir

NAME = "fraud"
SIZES = ("tiny", "demo", "default")


def _dirs(args: argparse.Namespace) -> SystemDir:
    return SystemDir(Path(args.workdir), NAME)


def _print_json(obj: Any) -> None:
    print(dumps(obj))


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _workdir(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--workdir", required=required, default=None,
        help="the workdir W shared by all systems (fraud state in W/fraud/...)",
    )  # fmt: skip


def _experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--experiments", default=None, metavar="FILE",
        help="experiments YAML (fraud experiments run in shadow mode; see configs/experiments.yaml)",
    )  # fmt: skip
    p.add_argument(
        "--exposure-redis", default=None, metavar="URL",
        help="log exposures to Redis Streams (several processes serving one experiment)",
    )  # fmt: skip


class _LazyEvaluateParser(argparse.ArgumentParser):
    """The `evaluate` sub-parser: adds :func:`mlsd.fraud.evaluate.add_arguments` on first parse."""

    _loaded = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self._loaded:
            from mlsd.fraud import evaluate

            evaluate.add_arguments(self)
            self._loaded = True
        return super().parse_known_args(args, namespace)


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True

    p = sub.add_parser(
        "simulate",
        help="generate seeded payments with five fraud scenarios and delayed labels (W/fraud/data)",
    )
    _workdir(p)
    p.add_argument("--size", choices=SIZES, default="default", help="tiny (tests), demo or default (~200k)")
    p.add_argument("--cards", type=int, default=None, help="override the size's cards")
    p.add_argument("--terminals", type=int, default=None, help="override the size's terminals")
    p.add_argument("--days", type=int, default=None, help="override the size's days")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_simulate)

    from mlsd.fraud.contract import FORMATS  # the contract's list (== SYSTEM.import_formats, a test checks)

    p = sub.add_parser(
        "import",
        help="validate payments/labels files against the data contract and append them to W/fraud/data",
    )
    _workdir(p)
    p.add_argument(
        "--format", required=True, choices=FORMATS,
        help="handbook (the Fraud Detection Handbook's daily CSVs), csv or parquet (the contract's tables)",
    )  # fmt: skip
    p.add_argument("--path", required=True, help="a file or a folder of files")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_import)

    p = sub.add_parser(
        "train", help="train on W/fraud/data (labels known at the cut-off), register, promote a winner"
    )
    _workdir(p)
    p.add_argument("--date", default=None, help="train on data up to this day, YYYY-MM-DD (default: latest)")
    p.add_argument("--sequence", action="store_true", help="add the GRU sequence model (slower)")
    p.add_argument("--trees", type=int, default=None, help="LightGBM trees (default 60)")
    p.add_argument(
        "--engine", choices=("local", "dask"), default="local",
        help="dask: LightGBM over a Dask cluster, for a frame beyond one machine (pip install mlsd[dask])",
    )  # fmt: skip
    p.add_argument(
        "--dask-scheduler", default=None, help="a Dask scheduler (tcp://host:8786); default: local"
    )
    p.add_argument("--dask-workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train)

    # evaluate's options come from the model engineer's module, which imports LightGBM and torch:
    # they are added only when `evaluate` itself is parsed, so `mlsd fraud --help` stays fast.
    default_class = sub._parser_class
    sub._parser_class = _LazyEvaluateParser
    p = sub.add_parser(
        "evaluate", help="offline evaluation (handbook protocol or simulator); see evaluate --help"
    )
    sub._parser_class = default_class
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "tune-thresholds", help="pick block/review thresholds for FPR < 1%% and a review capacity"
    )
    _workdir(p)
    p.add_argument(
        "--valid-days", type=int, default=7,
        help="tune on the last N matured days after the champion's training window, with the labels known now",
    )  # fmt: skip
    p.add_argument("--max-fpr", type=float, default=0.01)
    p.add_argument("--capacity", type=int, default=200, help="review cases the team handles per day")
    p.add_argument(
        "--force", action="store_true",
        help="save the thresholds even when tuning warns (FPR target missed, review flooding)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_tune)

    p = sub.add_parser("backtest", help="hit rate, precision and recall of each rule over labelled history")
    p.add_argument("--rules", default=None, help="rule file (default: the packaged rules.yaml)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", default=None, help="payments: a folder, Parquet file or handbook CSV(s)")
    source.add_argument("--workdir", default=None, help="the workdir W (its W/fraud/data)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_backtest)

    p = sub.add_parser("review", help="the manual review queue (W/fraud/review): list, claim, resolve")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", default=None, help="the workdir W (W/fraud/review/review.sqlite)")
    where.add_argument("--postgres", default=None, help="PostgreSQL DSN (instead of the workdir's SQLite)")
    p.add_argument("--schema", default="mlsd_fraud")
    rsub = p.add_subparsers(dest="action", metavar="<action>")
    rsub.required = True
    r = rsub.add_parser("list")
    r.add_argument("--status", default="open")
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--json", action="store_true")
    r = rsub.add_parser("claim")
    r.add_argument("--reviewer", required=True)
    r.add_argument("--limit", type=int, default=1)
    r.add_argument("--json", action="store_true")
    r = rsub.add_parser("resolve")
    r.add_argument("tx_id")
    r.add_argument("--reviewer", required=True)
    r.add_argument("--outcome", required=True, choices=["fraud", "legit"])
    r.add_argument("--json", action="store_true")
    p.set_defaults(func=_review)

    p = sub.add_parser(
        "score", help="decide payments with the workdir's champion (decision, probability, reasons)"
    )
    _workdir(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--payment", default=None, metavar="JSON", help="one payment as a JSON object")
    what.add_argument("--file", default=None, metavar="F.jsonl", help="payments, one JSON object a line")
    p.add_argument("--rules", default=None, help="rule file (default: the packaged rules.yaml)")
    p.add_argument("--json", action="store_true", help="one JSON object: model_version and decisions")
    p.set_defaults(func=_score)

    p = sub.add_parser("serve", help="HTTP scoring + review-queue service over the workdir's champion")
    _workdir(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rules", default=None)
    p.add_argument("--config", default=None, help="YAML FraudConfig")
    p.add_argument(
        "--rules-only", action="store_true",
        help="serve the rules without a model (deliberately; /health says rules_only)",
    )  # fmt: skip
    _experiment_options(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("stream", help="Redis Streams workers: payments in, decisions out (consumer group)")
    _workdir(p)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", default="mlsd:fraud:")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--publish", default=None, help="first publish these payments (data path) to the input stream"
    )
    p.add_argument("--limit", type=int, default=None, help="publish at most N payments")
    p.add_argument("--idle-exit", type=float, default=None, help="stop after this many idle seconds")
    p.add_argument("--batch-size", type=int, default=None, help="entries per read (default: config, 500)")
    p.add_argument(
        "--claim-idle-ms", type=int, default=None,
        help="reclaim entries a worker has held this long (a dead worker's; default: config, 5000)",
    )  # fmt: skip
    p.add_argument(
        "--unordered", action="store_true",
        help="apply batches to the windows as they come (faster with many workers; features then "
        "depend on the workers' timing)",
    )  # fmt: skip
    p.add_argument(
        "--redis-cluster", default=None, metavar="URL",
        help="a Redis Cluster (redis+cluster://host:port,...): the stream partitioned by card "
        "(--partitions), one worker per partition, each partition's keys on one slot (docs/scaling.md)",
    )  # fmt: skip
    p.add_argument("--partitions", type=int, default=2, help="card partitions of --redis-cluster (default 2)")
    p.add_argument(
        "--partition", type=int, action="append", default=None,
        help="run only this partition's worker (repeatable; default: every partition)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    # --experiments FILE (shadow), --exposure-redis URL (default for workers: the stream's --redis-url)
    _experiment_options(p)
    p.set_defaults(func=_stream)

    p = sub.add_parser("bench", help="replay payments at a rate through in-process, Redis and HTTP paths")
    p.add_argument("--tps", type=float, default=10_000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--paths", default="inproc,redis,http", help="any of inproc,redis,cluster,http")
    p.add_argument("--workers", default="1,2", help="Redis worker counts to try, e.g. 1,2")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--redis-cluster", default="local", metavar="URL",
        help="the cluster path's Redis Cluster (redis+cluster://host:port,...), or 'local' (default): 3 "
        "masters started on free loopback ports for the run",
    )  # fmt: skip
    p.add_argument(
        "--scale", action="store_true",
        help="the scaling run: the Redis Cluster path with 1 and 2 workers (partitions), and the capacity "
        "model (per-worker rate, workers and masters for --tps); same as --paths cluster --workers 1,2",
    )  # fmt: skip
    p.add_argument(
        "--workdir", default=None, help="a trained workdir W (default: train a small model in a temp folder)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "demo", help="simulate, train, stream a day, review, late label, retrain, shadow test (< ~90 s)"
    )
    _workdir(p, required=False)
    p.set_defaults(func=_demo)


# ---------------------------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from mlsd.fraud.world import simulate_size

    overrides = {k: getattr(args, k) for k in ("cards", "terminals", "days") if getattr(args, k) is not None}
    summary = simulate_size(_dirs(args), args.size, seed=args.seed, **overrides)
    if args.json:
        _print_json(summary)
    else:
        _err(f"wrote {summary['payments']} payments ({summary['frauds']} frauds) to {summary['path']}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from mlsd.fraud.contract import import_data

    summary = import_data(_dirs(args).data, args.format, args.path)
    if args.json:
        _print_json(summary)
    else:
        days = ""
        if summary["first_ts"] is not None:
            import datetime as dt

            day = lambda t: dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")  # noqa: E731
            days = f", payments {day(summary['first_ts'])} .. {day(summary['last_ts'])}, labels known to {day(summary['as_of'])}"
        _err(
            f"imported {summary['payments_new']} new payments ({summary['payments_duplicate']} already there) and "
            f"{summary['labels_new']} new label events from {len(summary['files'])} file(s); "
            f"{summary['data']} holds {summary['payments_total']} payments, {summary['labels_total']} label events{days}"
            + ("" if summary["changed"] else " (nothing changed)")
        )
        if summary["missing_context"]:
            _err(
                f"note: the payments have no {', '.join(summary['missing_context'])}: "
                "the features that need them (device, IP, e-mail, ring, geo) will be left out of training"
            )
        if summary["labels_without_payment"]:
            _err(f"note: {summary['labels_without_payment']} label events name a payment not imported (yet)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mlsd.fraud.training import LGBM_PARAMS, train
    from mlsd.platform.retraining import parse_date

    params = {**LGBM_PARAMS, "n_estimators": args.trees} if args.trees else None
    report = train(
        _dirs(args), parse_date(args.date), sequence=args.sequence, lgbm_params=params, progress=not args.json,
        engine=args.engine, dask_scheduler=args.dask_scheduler, dask_workers=args.dask_workers,
    )  # fmt: skip
    if args.json:
        _print_json(report)
    else:
        _err(dumps(report, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mlsd.fraud import evaluate

    return int(evaluate.run(args) or 0)


def _tune(args: argparse.Namespace) -> int:
    from mlsd.fraud.engine import MODEL_NAME, FraudDirs
    from mlsd.fraud.training import read_transactions, tune_on_history

    dirs = _dirs(args)
    dirs.require_champion(MODEL_NAME)  # before reading anything: the fix names the commands
    state = FraudDirs(dirs)
    tx = read_transactions(state)
    result = tune_on_history(
        tx, state, valid_days=args.valid_days, max_fpr=args.max_fpr, capacity=args.capacity, save=False
    )
    if result["warnings"] and not args.force:
        from mlsd.platform.errors import InputError

        raise InputError(
            "--capacity", args.capacity, "the tuned thresholds are unfit to go live: " + "; ".join(result["warnings"]),
            f"nothing saved; fix the cause, or save them anyway with --force "
            f"(chose block >= {result['block']:.3f}, review >= {result['review']:.3f})",
        )  # fmt: skip
    write_json(state.thresholds_path, result)
    for warning in result["warnings"]:
        _err(f"warning (saved with --force): {warning}")
    if args.json:
        _print_json(result)
    else:
        on = result["tuned_on"]
        print(
            f"tuned on {on['first_day']}..{on['last_day']} ({result['n_days']} matured days after the champion's "
            f"training window; {on['left_out_training_days']} payments of its training days and "
            f"{on['left_out_unmatured']} too fresh to have their labels left out): {on['payments']} payments, "
            f"{on['fraud_labels_known']} fraud labels known at {on['labels_known_at']}"
        )
        print(
            f"chose block >= {result['block']:.3f}, review >= {result['review']:.3f} on {result['n_days']} days "
            f"({result['n_payments']} payments, {result['n_fraud']} frauds): FPR {result['fpr']:.4%}, "
            f"recall blocked {result['recall_block']:.3f}, recall blocked+reviewed "
            f"{result['recall_review_or_block']:.3f}, reviews/day mean {result['reviews_per_day_mean']:.1f} "
            f"max {result['reviews_per_day_max']:.0f} (capacity {args.capacity}); saved to {state.thresholds_path}"
        )
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from mlsd.fraud.data import load_history
    from mlsd.fraud.engine import FraudDirs
    from mlsd.fraud.rules import RuleSet, default_rules_path
    from mlsd.fraud.training import backtest_history, read_transactions

    rules = RuleSet.from_yaml(args.rules or default_rules_path())
    tx = load_history(args.data) if args.data else read_transactions(FraudDirs(_dirs(args)))
    report = backtest_history(rules, tx)
    if args.json:
        _print_json({"rules_version": rules.version, "rules": report.to_dict("records")})
    else:
        print(f"rules version {rules.version} ({rules.source})")
        print(report.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _review(args: argparse.Namespace) -> int:
    from mlsd.fraud.engine import FraudDirs
    from mlsd.fraud.review import review_queue_at
    from mlsd.platform.errors import InputError

    if args.postgres:
        queue = review_queue_at(args.postgres, schema=args.schema)
    else:
        dirs = _dirs(args)
        path = FraudDirs(dirs).review_path
        if not path.is_file():  # a read creates nothing: the queue is made by a serving process
            raise InputError(
                "--workdir", str(dirs.root), f"holds no fraud review queue ({path})",
                f"serve first, payments sent to review open cases: mlsd fraud serve --workdir {dirs.root}",
            )  # fmt: skip
        queue = review_queue_at(path)
    try:
        if args.action == "list":
            cases = queue.list(status=args.status, limit=args.limit)
            out: dict[str, Any] = {"cases": [c.to_dict() for c in cases], "counts": queue.counts()}
        elif args.action == "claim":
            out = {"cases": [c.to_dict() for c in queue.claim(args.reviewer, limit=args.limit)]}
        else:
            out = {
                "case": queue.resolve(args.tx_id, args.reviewer, args.outcome).to_dict(),
                "label_recorded": True,
            }
    finally:
        queue.close()
    if args.json:
        _print_json(out)
    else:
        for case in out.get("cases", [out.get("case")]):
            if case:
                print(
                    f"{case['tx_id']:>12}  p={case['probability']:.3f}  amount={case['amount']:>10.2f}  "
                    f"priority={case['priority']:>10.2f}  {case['status']:<8} {case['reviewer'] or '-':<10} "
                    f"{case['outcome'] or ''}  {','.join(case['reasons'])}"
                )
        if "counts" in out:
            print(out["counts"])
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mlsd.fraud.config import FraudConfig
    from mlsd.fraud.engine import FraudDirs, freeze_heap, load_engine
    from mlsd.fraud.service import build_app
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.serving import serve

    dirs = _dirs(args)
    config = FraudConfig.from_file(args.config)
    if not args.rules_only:
        dirs.require_champion(config.service.model_name, alias=config.service.champion_alias)  # exit 2
    client = ExperimentClient.from_options(args.experiments, args.exposure_redis)
    state = FraudDirs(dirs, config)
    if args.rules_only:
        dirs.create()  # the review queue of a rules-only service still lives in the layout
    engine = load_engine(state, rules_path=args.rules, rules_only=args.rules_only, experiments=client)
    app = build_app(engine, config=state.config)
    freeze_heap()
    serve(app, host=args.host, port=args.port)
    return 0


def _read_payments(args: argparse.Namespace) -> list[Any]:
    import json

    from mlsd.platform.errors import DataFormatError, InputError

    if args.payment is not None:
        try:
            body = json.loads(args.payment)
        except json.JSONDecodeError as err:
            raise InputError("--payment", args.payment, f"is not JSON ({err.msg})",
                             'give one object, e.g. \'{"tx_id": 1, "ts": 1700000000, "card_id": 7, '
                             '"terminal_id": 3, "amount": 12.5}\'') from err  # fmt: skip
        return body if isinstance(body, list) else [body]
    path = Path(args.file)
    if not path.is_file():
        raise InputError("--file", str(path), "does not exist", "give a JSON-lines file of payments")
    bodies = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                bodies.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataFormatError(
                    path, n, f"is not JSON ({err.msg})", "write one JSON object a line"
                ) from err
    if not bodies:
        raise DataFormatError(path, None, "holds no payment", "write one JSON object a line")
    return bodies


def _score(args: argparse.Namespace) -> int:
    from mlsd.fraud.engine import load_engine

    bodies = _read_payments(args)
    dirs = _dirs(args)
    # a query: no review cases opened, no shadow log written (the service does both)
    engine = load_engine(dirs, rules_path=args.rules, review=False, shadow=False)
    decisions = engine.handle(bodies)
    if args.json:
        _print_json({"model_version": engine.model_version, "decisions": decisions})
        return 0
    t = engine.decision.thresholds
    print(
        f"model fraud v{engine.model_version}, rules v{decisions[0].get('rules_version')}, "
        f"thresholds review >= {t.review:g}, block >= {t.block:g}"
    )
    print(f"{'tx_id':>12}  {'decision':<8} {'probability':>11}  reasons")
    rules = {r.reason: r.description for r in engine.rules.current().rules if r.description}
    for d in decisions:
        p = d.get("probability")
        prob = "-" if p is None else f"{p:.4f}"
        reasons = "; ".join(_reason_text(r, rules) for r in d.get("reasons", [])) or "-"
        print(f"{d.get('tx_id')!s:>12}  {d.get('decision')!s:<8} {prob:>11}  {reasons}")
    return 0


SCORE_REASONS = {
    "SCORE_LOW": "score below the review threshold",
    "SCORE_REVIEW": "score in the review band",
    "SCORE_BLOCK": "score above the block threshold",
}


def _reason_text(code: Any, rules: dict[str, str]) -> str:
    """A reason code with its meaning: the score band, the rule's description, the model's feature."""
    code = str(code)
    if code.startswith("MODEL:"):
        return f"{code} (raised the score)"
    text = SCORE_REASONS.get(code) or rules.get(code)
    return f"{code} ({text})" if text else code


def _stream(args: argparse.Namespace) -> int:
    if args.redis_cluster:
        from mlsd.fraud.distributed import run_partitioned_stream

        summary = run_partitioned_stream(args)
    else:
        from mlsd.fraud.stream import run_stream_command

        summary = run_stream_command(args)
    if args.json:
        _print_json(summary)
    else:
        _err(dumps(summary, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mlsd.fraud.bench import run_bench

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    if args.scale:
        paths, workers = ["cluster"], sorted({1, 2, *workers})
    result = run_bench(
        tps=args.tps,
        seconds=args.seconds,
        paths=paths,
        workers=workers,
        redis_url=args.redis_url,
        dirs=_dirs(args) if args.workdir else None,
        redis_cluster=args.redis_cluster,
    )
    if args.json:
        _print_json(result)
    else:
        _err(dumps(result, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from mlsd.fraud.demo import run

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mlsd-demo-"))
    run(SystemDir(root, NAME))
    return 0
