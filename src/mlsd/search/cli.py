"""``mlsd search <verb>``: simulate, train, evaluate, serve, bench, demo.

Heavy imports (pandas, torch, lightgbm) happen inside the verbs so ``mlsd search --help`` stays fast.
``--json`` prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlsd.platform.experiments.cli import add_serving_options


def _err(msg: str) -> None:
    print(f"[search] {msg}", file=sys.stderr, flush=True)


def _positive(name: str, lo: int = 1, hi: int | None = None):
    def parse(text: str) -> int:
        from mlsd.platform.errors import InputError

        try:
            value = int(text)
        except ValueError:
            raise InputError(name, text, "must be a whole number", f"pass an integer >= {lo}") from None
        if value < lo or (hi is not None and value > hi):
            raise InputError(
                name, value, f"must be in [{lo}, {hi if hi is not None else 'inf'}]", "pass a value in range"
            )
        return value

    parse.__name__ = name
    return parse


def _config(args: argparse.Namespace):
    from mlsd.search.config import SearchConfig

    path = getattr(args, "config", None)
    if not path:
        return SearchConfig()
    import yaml

    from mlsd.platform.errors import DataFormatError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise DataFormatError(
            path, getattr(getattr(exc, "problem_mark", None), "line", None), "not valid YAML", "fix the file"
        ) from None
    return SearchConfig.from_dict(data or {})


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str))


# -- verbs ---------------------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    import time

    from mlsd.search.clicklog import ClickLog
    from mlsd.search.simulate import simulate

    started = time.perf_counter()
    _err(f"simulating {args.products} products, {args.sessions} searches (seed {args.seed})")
    sim = simulate(args.products, args.sessions, args.seed, n_queries=args.queries, n_users=args.users)
    out = Path(args.out)
    sim.save(out)
    events = ClickLog(out / "clicklog").append_impressions(sim.impressions) if len(sim.impressions) else 0
    summary = {
        "out": str(out),
        "products": len(sim.products),
        "distinct_titles": int(sim.products["title"].nunique()),
        "queries": len(sim.queries),
        "spanish_queries": int((sim.queries["lang"] == "es").sum()),
        "typo_queries": int(sim.queries["typo"].sum()),
        "users": len(sim.users),
        "searches": int(sim.impressions["search_id"].nunique()) if len(sim.impressions) else 0,
        "impressions": len(sim.impressions),
        "clicks": int(sim.impressions["clicked"].sum()) if len(sim.impressions) else 0,
        "purchases": int(sim.impressions["purchased"].sum()) if len(sim.impressions) else 0,
        "events": events,
        "true_eta": sim.click_model.eta,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        _print_json(summary)
    else:
        for k, v in summary.items():
            print(f"{k:>16}: {v}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mlsd.search.pipeline import default_cache_dir, train_and_register

    registry = Path(args.registry) if args.registry else Path(args.data) / "registry"
    report = train_and_register(
        Path(args.data),
        registry,
        config=_config(args),
        dense=not args.no_dense,
        cache_dir=args.cache_dir or default_cache_dir(),
        compare_raw=not args.no_compare,
        progress=not args.json,
        log=_err,
    )
    report["registry"] = str(registry)
    if args.json:
        _print_json(report)
    else:
        print(
            json.dumps(
                {k: report[k] for k in ("model", "version", "promoted", "metrics", "train_seconds")}, indent=2
            )
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mlsd.search import evaluate

    return int(evaluate.run(args) or 0)


def _serve(args: argparse.Namespace) -> int:
    from mlsd.platform.serving import serve
    from mlsd.search.pipeline import default_cache_dir, load_engine
    from mlsd.search.service import create_search_app

    registry = Path(args.registry) if args.registry else Path(args.data) / "registry"
    _err(f"loading {args.data} (registry {registry})")
    engine = load_engine(
        Path(args.data),
        registry,
        config=_config(args),
        dense=not args.no_dense,
        cache_dir=args.cache_dir or default_cache_dir(),
        progress=True,
    )
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.search.clicklog import ClickLog

    experiments = ExperimentClient.from_options(args.experiments, args.exposure_redis)
    app = create_search_app(
        engine, ClickLog(Path(args.data) / "clicklog"), experiments=experiments, registry_dir=registry
    )
    _err(f"serving on http://{args.host}:{args.port} (model version {engine.ranker_version_})")
    serve(app, args.host, args.port)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mlsd.search.bench import probe_dense_shard, run_bench
    from mlsd.search.pipeline import default_cache_dir

    if args.dense_probe:
        _err(f"probing flat dense search over {args.dense_probe} distinct vectors")
        result = probe_dense_shard(args.dense_probe, hnsw_sample=args.hnsw_sample)
        _print_json(result) if args.json else print(json.dumps(result, indent=2))
        return 0
    result = run_bench(
        args.products,
        args.queries,
        seed=args.seed,
        dense=not args.no_dense,
        sessions=args.sessions,
        cache_dir=args.cache_dir or default_cache_dir(),
        progress=not args.json,
        log=_err,
    )
    if args.json:
        _print_json(result)
    else:
        print(json.dumps(result, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from mlsd.search.demo import run

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mlsd-search-demo-"))
    run(workdir)
    return 0


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the search verbs to ``mlsd search``."""
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True

    p = sub.add_parser("simulate", help="simulate a catalog, queries, users and a position-biased click log")
    p.add_argument("--products", type=_positive("--products", 100), default=20_000)
    p.add_argument("--sessions", type=_positive("--sessions", 0), default=50_000, help="logged searches")
    p.add_argument("--queries", type=_positive("--queries", 10), default=2000, help="distinct query texts")
    p.add_argument("--users", type=_positive("--users", 1), default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for the catalog, queries, ground truth and click log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "train", help="train LambdaMART with IPS from the click log, register, promote if better"
    )
    p.add_argument("--data", required=True, help="folder from `mlsd search simulate --out`")
    p.add_argument("--registry", default=None, help="model registry folder (default DATA/registry)")
    p.add_argument(
        "--config", default=None, help="YAML with SearchConfig sections (objective, ltr, rules, ...)"
    )
    p.add_argument("--no-dense", action="store_true", help="skip MiniLM (no dense_cos feature)")
    p.add_argument("--no-compare", action="store_true", help="do not train the raw-click baseline")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default ~/.cache/mlsd/embeddings)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="offline evaluation on CrowdFlower / Home Depot / WANDS")
    from mlsd.search import evaluate

    evaluate.add_arguments(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("serve", help="HTTP service: GET /v1/search, POST /v1/events")
    p.add_argument("--data", required=True)
    p.add_argument("--registry", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive("--port", 1, 65535), default=8000)
    p.add_argument("--no-dense", action="store_true")
    p.add_argument("--cache-dir", default=None)
    add_serving_options(p)  # --experiments FILE, --exposure-redis URL
    p.set_defaults(func=_serve)

    p = sub.add_parser("bench", help="index build time, memory and per-stage latency percentiles")
    p.add_argument("--products", type=_positive("--products", 100), default=1_000_000)
    p.add_argument("--queries", type=_positive("--queries", 1), default=1000, help="timed search requests")
    p.add_argument(
        "--sessions", type=_positive("--sessions", 0), default=20_000, help="logged searches to train LTR on"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dense", action="store_true")
    p.add_argument("--cache-dir", default=None)
    p.add_argument(
        "--dense-probe",
        type=_positive("--dense-probe", 1000),
        default=0,
        help="instead: time flat dense search over N distinct vectors (one shard without title grouping)",
    )
    p.add_argument(
        "--hnsw-sample",
        type=_positive("--hnsw-sample", 0),
        default=0,
        help="with --dense-probe: also build and time HNSW over this many of the vectors",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser("demo", help="simulate, train with IPS, serve a few queries in-process")
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=_demo)
