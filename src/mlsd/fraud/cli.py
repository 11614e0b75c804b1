"""``mlsd fraud <verb>``: simulate, train, evaluate, tune-thresholds, backtest, review, serve, stream,
bench, demo. Heavy imports (pandas, lightgbm, torch, fastapi) happen inside the verbs, so
``mlsd fraud --help`` stays fast. ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlsd.platform.experiments.cli import add_serving_options


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=_default, sort_keys=False))


def _default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


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
        "simulate", help="generate seeded payments with five fraud scenarios and delayed labels"
    )
    p.add_argument("--out", required=True, help="directory for transactions.parquet")
    p.add_argument("--cards", type=int, default=2000)
    p.add_argument("--terminals", type=int, default=500)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("train", help="retrain: challenger on labels known at the cut-off, promote if it wins")
    p.add_argument("--data", required=True, help="simulated dir/parquet or handbook CSV(s)")
    p.add_argument("--workdir", required=True, help="registry, label store and feature state go here")
    p.add_argument(
        "--cutoff", default=None, help="training cut-off (YYYY-MM-DD or epoch s); default: end of data"
    )
    p.add_argument("--no-sequence", action="store_true", help="LightGBM only (faster)")
    p.add_argument("--trees", type=int, default=None, help="LightGBM trees (default: the model's)")
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
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", required=True, help="where `mlsd fraud train` put the registry")
    p.add_argument(
        "--valid-days", type=int, default=7, help="the last N days of --data are the validation period"
    )
    p.add_argument("--max-fpr", type=float, default=0.01)
    p.add_argument("--capacity", type=int, default=200, help="review cases the team handles per day")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_tune)

    p = sub.add_parser("backtest", help="hit rate, precision and recall of each rule over labelled history")
    p.add_argument("--rules", default=None, help="rule file (default: the packaged rules.yaml)")
    p.add_argument("--data", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_backtest)

    p = sub.add_parser("review", help="the manual review queue: list, claim, resolve")
    p.add_argument("--db", default="fraud.sqlite", help="SQLite file (default backend)")
    p.add_argument("--postgres", default=None, help="PostgreSQL DSN (instead of --db)")
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

    p = sub.add_parser("serve", help="HTTP scoring + review-queue service")
    p.add_argument("--workdir", required=True, help="where `mlsd fraud train` put the registry")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rules", default=None)
    p.add_argument("--config", default=None, help="YAML FraudConfig")
    add_serving_options(p)  # --experiments FILE (fraud experiments run in shadow mode), --exposure-redis URL
    p.set_defaults(func=_serve)

    p = sub.add_parser("stream", help="Redis Streams workers: payments in, decisions out (consumer group)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", default="mlsd:fraud:")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--publish", default=None, help="first publish these payments (data path) to the input stream"
    )
    p.add_argument("--limit", type=int, default=None, help="publish at most N payments")
    p.add_argument("--idle-exit", type=float, default=None, help="stop after this many idle seconds")
    p.add_argument("--json", action="store_true")
    # --experiments FILE (shadow), --exposure-redis URL (default for workers: the stream's --redis-url)
    add_serving_options(p)
    p.set_defaults(func=_stream)

    p = sub.add_parser("bench", help="replay payments at a rate through in-process, Redis and HTTP paths")
    p.add_argument("--tps", type=float, default=10_000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--paths", default="inproc,redis,http")
    p.add_argument("--workers", default="1,2", help="Redis worker counts to try, e.g. 1,2")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--workdir", default=None, help="a trained workdir (default: train a small model first)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser("demo", help="simulate, train, stream a day, review, late label, retrain (< ~90 s)")
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=_demo)


# ---------------------------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from mlsd.fraud.simulate import simulate

    tx = simulate(n_cards=args.cards, n_terminals=args.terminals, days=args.days, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tx.to_parquet(out / "transactions.parquet", index=False)
    summary = {
        "path": str(out / "transactions.parquet"),
        "payments": len(tx),
        "frauds": int(tx["fraud"].sum()),
        "by_scenario": {str(k): int(v) for k, v in tx["scenario"].value_counts().sort_index().items()},
    }
    if args.json:
        _print_json(summary)
    else:
        _err(f"wrote {summary['payments']} payments ({summary['frauds']} frauds) to {summary['path']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mlsd.fraud.pipeline import Workspace, load_history, parse_time, retrain

    tx = load_history(args.data)
    ws = Workspace(Path(args.workdir))
    cutoff = parse_time(args.cutoff, "--cutoff") if args.cutoff else int(tx["ts"].max())
    # the history's labels as they had arrived by the cut-off (review same day, chargebacks later)
    ws.ingest_labels(tx, known_at=cutoff)
    params = {"n_estimators": args.trees} if args.trees else None
    report = retrain(tx, ws, cutoff=cutoff, sequence=not args.no_sequence, progress=True, lgbm_params=params)
    if args.json:
        _print_json(report)
    else:
        _err(json.dumps(report, indent=2, default=_default))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mlsd.fraud import evaluate

    return int(evaluate.run(args) or 0)


def _tune(args: argparse.Namespace) -> int:
    from mlsd.fraud.pipeline import Workspace, load_history, tune_on_history

    tx = load_history(args.data)
    ws = Workspace(Path(args.workdir))
    result = tune_on_history(tx, ws, valid_days=args.valid_days, max_fpr=args.max_fpr, capacity=args.capacity)
    if args.json:
        _print_json(result)
    else:
        print(
            f"chose block >= {result['block']:.3f}, review >= {result['review']:.3f} on {result['n_days']} days "
            f"({result['n_payments']} payments, {result['n_fraud']} frauds): FPR {result['fpr']:.4%}, "
            f"recall blocked {result['recall_block']:.3f}, recall blocked+reviewed "
            f"{result['recall_review_or_block']:.3f}, reviews/day mean {result['reviews_per_day_mean']:.1f} "
            f"max {result['reviews_per_day_max']:.0f} (capacity {args.capacity})"
        )
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from mlsd.fraud.pipeline import backtest_history, load_history
    from mlsd.fraud.rules import RuleSet, default_rules_path

    rules = RuleSet.from_yaml(args.rules or default_rules_path())
    report = backtest_history(rules, load_history(args.data))
    if args.json:
        _print_json({"rules_version": rules.version, "rules": report.to_dict("records")})
    else:
        print(f"rules version {rules.version} ({rules.source})")
        print(report.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _review(args: argparse.Namespace) -> int:
    from mlsd.fraud.review import open_review_queue

    if args.postgres:
        queue = open_review_queue("postgres", postgres_dsn=args.postgres, schema=args.schema)
    else:
        queue = open_review_queue("sqlite", sqlite_path=args.db)
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
    from mlsd.fraud.pipeline import Workspace, freeze_heap
    from mlsd.fraud.service import build_app
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.serving import serve

    config = FraudConfig.from_file(args.config)
    ws = Workspace(Path(args.workdir), config=config)
    client = ExperimentClient.from_options(args.experiments, args.exposure_redis)
    pipeline = ws.pipeline(rules_path=args.rules, review=True, experiments=client)
    app = build_app(pipeline, config=config)
    freeze_heap()
    serve(app, host=args.host, port=args.port)
    return 0


def _stream(args: argparse.Namespace) -> int:
    from mlsd.fraud.stream import run_stream_command

    summary = run_stream_command(args)
    if args.json:
        _print_json(summary)
    else:
        _err(json.dumps(summary, indent=2, default=_default))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mlsd.fraud.bench import run_bench

    result = run_bench(
        tps=args.tps,
        seconds=args.seconds,
        paths=[p.strip() for p in args.paths.split(",") if p.strip()],
        workers=[int(w) for w in str(args.workers).split(",") if w.strip()],
        redis_url=args.redis_url,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    if args.json:
        _print_json(result)
    else:
        _err(json.dumps(result, indent=2, default=_default))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from mlsd.fraud.demo import run

    run(Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mlsd-fraud-demo-")))
    return 0
