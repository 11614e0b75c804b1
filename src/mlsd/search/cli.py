"""``mlsd search <verb>``: simulate, import, train, query, serve, demo (state in a workdir), evaluate, bench.

The verbs that read or write state take ``--workdir W`` and keep it in ``W/search/{data,registry,runs,
monitoring}`` (:class:`~mlsd.platform.system.SystemDir`): ``simulate`` writes ``data/`` (catalog,
queries, judged set, and the logged sessions as the click log ``data/clicklog``), ``train`` registers in
``registry/`` and reports to ``runs/``, ``import`` appends a catalog, judgements or click log in the data contract (:mod:`mlsd.search.contract`)
to ``data/``, ``query`` answers one search from the champion at the terminal, ``serve`` serves the
registry's champion and appends
``POST /v1/events`` to ``data/clicklog`` -- and, with no champion there, exits 2 naming the commands
that make one. ``evaluate`` (public datasets) and ``bench`` (a temporary world) read no workdir.

Heavy imports (pandas, torch, lightgbm) happen inside the verbs so ``mlsd search --help`` stays fast.
``--json`` prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlsd.platform.jsonio import dumps
from mlsd.platform.system import SystemDir

SYSTEM = "search"


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
    print(dumps(obj))


def _dirs(args: argparse.Namespace) -> SystemDir:
    return SystemDir(Path(args.workdir), SYSTEM)


# -- verbs ---------------------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from mlsd.search.world import simulate_into

    dirs = _dirs(args)
    _err(f"simulating the {args.size} world (seed {args.seed}) into {dirs.data}")
    summary = simulate_into(
        dirs, size=args.size, seed=args.seed, products=args.products, sessions=args.sessions,
        queries=args.queries, users=args.users,
    )  # fmt: skip
    if args.json:
        _print_json(summary)
    else:
        for k, v in summary.items():
            print(f"{k:>16}: {v}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from mlsd.search.contract import import_data

    dirs = _dirs(args)
    summary = import_data(dirs, args.format, args.path, table=args.table)
    if args.json:
        _print_json(summary)
    else:
        added = ", ".join(f"{n:,} {t}" for t, n in summary["added"].items())
        print(f"imported {args.format} {args.path} into {summary['data']}: {added or 'nothing'}"
              f"{'' if summary['changed'] else ' (already imported: nothing changed)'}")  # fmt: skip
        if summary["added"].get("events_unknown_products"):
            print(f"note: {summary['added']['events_unknown_products']:,} event(s) name products not in the "
                  "catalog; training ignores them until the catalog has them")  # fmt: skip
    return 0


def _query(args: argparse.Namespace) -> int:
    from mlsd.search.engine import load_engine

    dirs = _dirs(args)
    engine = load_engine(dirs, cache_dir=args.cache_dir)
    body: dict[str, Any] = {"q": args.q, "k": args.k or engine.config.service.k_default}
    if args.user_id:
        body["user_id"] = args.user_id
    answer = engine.handle([body])[0]
    if args.json:
        _print_json(answer)
        return 0
    for line in _query_reasons(args.q, answer):
        print(line)
    print(f"{'#':>3}  {'product_id':>10}  {'score':>9}  title")
    for r in answer["results"]:
        score = "" if r["score"] is None else f"{r['score']:.4f}"
        print(f"{r['position']:>3}  {r['product_id']:>10}  {score:>9}  {str(r['title'])[:90]}")
    return 0


RANKED_BY = {
    "ltr": "LambdaMART (learned from the click log) over BM25 + dense candidates",
    "hybrid": "BM25 + dense retrieval, reciprocal-rank fused (no learned ranker)",
    "bm25": "BM25 keyword retrieval (no learned ranker)",
    "dense": "dense (MiniLM) retrieval only",
}


def _query_reasons(q: str, answer: dict[str, Any]) -> list[str]:
    """Why the list looks as it does, in words: what was understood, how it was ranked, what the rules
    and the deadline did."""
    parsed, rules = answer["parsed"], answer["rules"]
    lines = [f"{len(answer['results'])} result(s) for {q!r} from search-ltr v{answer['model_version']} "
             f"in {answer['total_ms']:.0f} ms"]  # fmt: skip
    if parsed.get("corrections"):
        fixed = ", ".join(f"{a} -> {b}" for a, b in parsed["corrections"].items())
        lines.append(f"  understood as {parsed['corrected']!r} (spelling: {fixed})")
    entities = {k: v for k, v in (parsed.get("entities") or {}).items() if v is not None}
    if entities:
        lines.append("  filters/entities: " + ", ".join(f"{k}={v}" for k, v in entities.items()))
    lines.append(f"  ranked by {RANKED_BY.get(answer['ranked_by'], answer['ranked_by'])}")
    for s in answer["skipped"]:
        lines.append(f"  skipped {s.get('stage')}: {s.get('reason')}")
    if rules.get("price_filter_skipped"):
        lines.append(f"  price filter not applied: {rules['price_filter_skipped']}")
    for key, what in (("dropped_out_of_stock", "out of stock"), ("dropped_price", "outside the price asked")):
        if rules.get(key):
            lines.append(f"  {rules[key]} candidate(s) removed: {what}")
    if rules.get("pinned"):
        lines.append(f"  pinned by a merchandising rule: {rules['pinned']}")
    return lines


def _train(args: argparse.Namespace) -> int:
    from mlsd.search.training import train

    dirs = _dirs(args)
    report = train(
        dirs, config=_config(args), dense=not args.no_dense, cache_dir=args.cache_dir,
        compare_raw=not args.no_compare, progress=not args.json, log=_err,
        ship_without_online_test=args.ship_without_online_test,
    )  # fmt: skip
    if args.json:
        _print_json(report)
    else:
        keys = ("model", "version", "registered", "promoted", "reason", "metrics", "champion", "seconds")
        print(dumps({k: report.get(k) for k in keys}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mlsd.search import evaluate

    return int(evaluate.run(args) or 0)


def _serve(args: argparse.Namespace) -> int:
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.serving import serve
    from mlsd.search.clicklog import ClickLog
    from mlsd.search.engine import MODEL_NAME, load_engine
    from mlsd.search.service import create_search_app

    dirs = _dirs(args)
    dirs.require_champion(MODEL_NAME)  # before anything is loaded or created: exit 2 with the fix
    experiments = ExperimentClient.from_options(args.experiments, args.exposure_redis)
    _err(f"loading the champion of {dirs.registry} over {dirs.data}")
    engine = load_engine(dirs, config=_config(args), cache_dir=args.cache_dir, progress=True)
    app = create_search_app(
        engine, ClickLog(dirs.data / "clicklog"), experiments=experiments, registry_dir=dirs.registry
    )
    _err(f"serving on http://{args.host}:{args.port} (search-ltr v{engine.model_version}); "
         f"events go to {dirs.data / 'clicklog'}")  # fmt: skip
    serve(app, args.host, args.port)
    return 0


def _online_result(args: argparse.Namespace) -> int:
    """Write ``W/search/monitoring/online/v<N>.json`` for the held challenger (the registry's
    ``challenger`` alias) against the current champion: what the daily job's ship rule waits for."""
    import json

    from mlsd.platform.errors import InputError
    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.training import MODEL_NAME, write_online_result

    dirs = _dirs(args)
    path = Path(args.report)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError("--report", str(path), f"is not a readable JSON file ({type(err).__name__})",
                         "pass the JSON that mlsd experiment analyze --json printed") from None  # fmt: skip
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict) or not report["metrics"]:
        raise InputError("--report", str(path), "has no 'metrics' of an experiment analysis",
                         "pass the JSON that mlsd experiment analyze --json printed")  # fmt: skip
    dirs.require_champion(MODEL_NAME)  # exit 2 with the fix, nothing created
    registry = ModelRegistry(dirs.registry)
    challenger = registry.current_version(MODEL_NAME, "challenger")
    champion = registry.current_version(MODEL_NAME, "champion")
    if challenger is None or champion is None or challenger == champion:
        raise InputError("--workdir", str(args.workdir), "holds no challenger waiting for its online test",
                         "train one first (mlsd search train); a held challenger is the registry's 'challenger'")  # fmt: skip
    written = write_online_result(dirs, report, args.arm, challenger, champion)
    result = {"version": challenger, "champion_version": champion, "written": str(written),
              "next": "mlsd pipeline run daily applies the ship rule to it"}  # fmt: skip
    _print_json(result) if args.json else print(dumps(result, indent=2))
    return 0


def _shard_counts(text: str) -> list[int]:
    """``--shards 2`` or ``--shards 1,2``: the shard counts to bench, each in [1, 64]."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= c <= 64 for c in counts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be shard counts in [1, 64], one or comma-separated; pass e.g. --shards 1,2"
        )
    return counts


def _bench(args: argparse.Namespace) -> int:
    from mlsd.search.bench import probe_dense_shard, run_bench
    from mlsd.search.embeddings import default_cache_dir

    if args.understanding:
        from mlsd.search.bench import understanding_bench

        _err(f"query understanding on {args.products} simulated products, {args.queries} query texts")
        result = understanding_bench(args.products, args.queries, seed=args.seed)
        _print_json(result) if args.json else print(dumps(result, indent=2))
        return 0
    if args.pipeline and args.shards:
        _err("--pipeline and --shards: choose one: --pipeline benches the whole search path in one process "
             "(the simulator's catalog), --shards the sharded index over distinct titles (the default)")  # fmt: skip
        return 2
    if not args.pipeline and not args.dense_probe:
        if args.no_dense:
            _err("--no-dense: only the --pipeline bench can run without the dense index; add --pipeline")
            return 2
        from mlsd.search.bench import run_sharded_bench
        from mlsd.search.shards import AnnSettings

        ann = AnnSettings(kind=args.ann, nprobe=args.nprobe)
        result = run_sharded_bench(
            args.products, args.queries, args.shards or [2], seed=args.seed, deadline_ms=args.deadline_ms, ann=ann,
            recall_queries=args.recall_queries, cache_dir=args.cache_dir or default_cache_dir(), log=_err,
        )  # fmt: skip
        _print_json(result) if args.json else print(dumps(result, indent=2))
        return 0
    if args.dense_probe:
        _err(f"probing flat dense search over {args.dense_probe} distinct vectors")
        result = probe_dense_shard(args.dense_probe, hnsw_sample=args.hnsw_sample)
        _print_json(result) if args.json else print(dumps(result, indent=2))
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
        print(dumps(result, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from mlsd.search.demo import run

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mlsd-search-demo-"))
    run(SystemDir(root, SYSTEM))
    print(f"serve its champion: mlsd search serve --workdir {root}")
    return 0


def _workdir(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--workdir", required=required, default=None,
        help="the workdir W: this system's state is W/search/{data,registry,runs,monitoring}",
    )  # fmt: skip


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the search verbs to ``mlsd search``."""
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True

    p = sub.add_parser(
        "simulate",
        help="simulate a catalog, queries, users and a position-biased click log into W/search/data",
    )
    _workdir(p)
    p.add_argument("--size", choices=("tiny", "demo", "default"), default="default",
                   help="tiny (tests), demo (mlsd demo's world), default (20K products, 50K searches)")  # fmt: skip
    p.add_argument("--products", type=_positive("--products", 100), default=None, help="override the size's")
    p.add_argument("--sessions", type=_positive("--sessions", 0), default=None, help="logged searches")
    p.add_argument("--queries", type=_positive("--queries", 10), default=None, help="distinct query texts")
    p.add_argument("--users", type=_positive("--users", 1), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_simulate)

    from mlsd.search.contract import FORMATS  # == SYSTEM.import_formats (a test checks)

    p = sub.add_parser(
        "import",
        help="import a catalog, judgements and/or a click log into W/search/data (appends; re-import is a no-op)",
    )
    _workdir(p)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="homedepot / crowdflower / wands (their own files: catalog + judgements), or csv / "
                   "parquet of the contract's tables (catalog, queries, judgements, events; docs/search.md)")  # fmt: skip
    p.add_argument("--path", required=True, help="a file, or a folder holding the format's files")
    p.add_argument("--table", default=None, choices=("catalog", "queries", "judgements", "events"),
                   help="csv/parquet: the table a single file holds (default: from its name, e.g. events.csv)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_import)

    p = sub.add_parser("query", help="one search on W/search's champion, printed as a table (or --json)")
    _workdir(p)
    p.add_argument("--q", required=True, help="the query text")
    p.add_argument(
        "--k", type=_positive("--k", 1), default=None, help="results wanted (default 48, as served)"
    )
    p.add_argument("--user-id", default="", help="who is searching (personalisation)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    p.set_defaults(func=_query)

    p = sub.add_parser(
        "train",
        help="train LambdaMART with IPS on W/search/data's click log (none: retrieval only), "
        "register, gate, promote",
    )
    _workdir(p)
    p.add_argument(
        "--config", default=None, help="YAML with SearchConfig sections (objective, ltr, rules, ...)"
    )
    p.add_argument("--no-dense", action="store_true", help="skip MiniLM (no dense_cos feature)")
    p.add_argument("--no-compare", action="store_true", help="do not train the raw-click baseline")
    p.add_argument("--ship-without-online-test", action="store_true",
                   help="promote a challenger that passes the offline gate without waiting for its online A/B "
                        "test (the ship rule's default: hold it); for data where no A/B test can run")  # fmt: skip
    p.add_argument("--cache-dir", default=None, help="embedding cache (default ~/.cache/mlsd/embeddings)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="offline evaluation on CrowdFlower / Home Depot / WANDS")
    from mlsd.search import evaluate

    evaluate.add_arguments(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "serve",
        help="HTTP service of W/search's champion: GET /v1/search, POST /v1/events (-> data/clicklog)",
    )
    _workdir(p)
    p.add_argument("--config", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive("--port", 1, 65535), default=8000)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--experiments", default=None, metavar="FILE",
                   help="experiments YAML: search experiments route signed-in users by user_id")  # fmt: skip
    p.add_argument("--exposure-redis", default=None, metavar="URL",
                   help="log exposures to Redis Streams (several processes serving one experiment)")  # fmt: skip
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "bench",
        help="the sharded index over --products distinct titles on Dask (2 shards): build time, memory per "
        "product, recall@100 against exact search, latency under the deadline; --pipeline: the whole "
        "search path in one process",
    )
    p.add_argument("--products", type=_positive("--products", 100), default=1_000_000)
    p.add_argument("--queries", type=_positive("--queries", 1), default=1000, help="timed search requests")
    p.add_argument(
        "--sessions", type=_positive("--sessions", 0), default=20_000, help="logged searches to train LTR on"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="instead: the whole search path (parse, BM25, dense, LTR, rules) in one process over the "
        "simulator's catalog (about 30K distinct titles at 1M products), per-stage latency",
    )
    p.add_argument("--no-dense", action="store_true", help="with --pipeline: without the dense index")
    p.add_argument("--cache-dir", default=None)
    p.add_argument(
        "--dense-probe",
        type=_positive("--dense-probe", 1000),
        default=0,
        help="instead: time flat dense search over N distinct vectors (one shard without title grouping)",
    )
    p.add_argument(
        "--understanding",
        action="store_true",
        help="instead: query understanding accuracy and parse cost on --products simulated products and "
        "--queries simulated query texts (e.g. --products 5000 --queries 1000)",
    )
    p.add_argument(
        "--hnsw-sample",
        type=_positive("--hnsw-sample", 0),
        default=0,
        help="with --dense-probe: also build and time HNSW over this many of the vectors",
    )
    p.add_argument(
        "--shards",
        type=_shard_counts,
        default=None,
        metavar="N[,N...]",
        help="shard counts of the sharded bench (default 2; pip install mlsd[dask]): BM25 + ANN per shard, "
        "a broker under --deadline-ms; e.g. --shards 2,1 runs both (docs/scaling.md)",
    )
    p.add_argument("--deadline-ms", type=_positive("--deadline-ms", 1, 60_000), default=100,
                   help="the sharded bench's request deadline the broker gathers shards under")  # fmt: skip
    p.add_argument("--ann", choices=("ivf", "hnsw", "flat"), default="ivf",
                   help="the sharded bench: the ANN each shard builds over its title vectors")  # fmt: skip
    p.add_argument("--nprobe", type=_positive("--nprobe", 1, 65_536), default=None,
                   help="with --ann ivf: inverted lists searched per query (default 1/16 of them)")  # fmt: skip
    p.add_argument("--recall-queries", type=_positive("--recall-queries", 1), default=None,
                   help="the sharded bench: queries recall@100 is measured on (default: all --queries)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "online-result",
        help="record a live A/B test of the held challenger for the ship rule (from an experiment analysis JSON)",
    )
    _workdir(p)
    p.add_argument("--report", required=True,
                   help="the experiment's analysis as JSON (mlsd experiment analyze ... --json): primary metric, "
                        "per-arm diff and CI, SRM")  # fmt: skip
    p.add_argument("--arm", default="challenger", help="the treatment arm that served the challenger")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_online_result)

    p = sub.add_parser("demo", help="simulate, train with IPS, serve a few queries in-process, in W/search")
    _workdir(p, required=False)
    p.set_defaults(func=_demo)
