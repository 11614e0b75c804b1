"""``mlsd search demo --workdir W`` (and the search part of ``mlsd demo``): the whole product in about a minute.

Everything lands in the workdir layout (``W/search/...``), so the champion it trains is the one
``mlsd search serve --workdir W`` serves afterwards:

1. simulate the demo world (:data:`~mlsd.search.world.WORLD_SIZES`) -- a catalog, a query stream and a
   position-biased click log -- into ``data/`` (a rerun reuses it);
2. train (:func:`mlsd.search.training.train`): propensities from the log's randomised swaps, LambdaMART
   with IPS and the same model on raw clicks, both scored on the judged set; the IPS model is
   registered in ``registry/`` (champion) and the run report written to ``runs/``;
3. load the engine from the workdir's champion, serve it in-process (FastAPI test client, no socket)
   and send a few searches -- a typo, a synonym, a price constraint, a Spanish query, a brand -- plus
   the events of one of them (appended to ``data/clicklog``);
4. print the results with the parsed query and per-stage timings;
5. run one small online experiment (LambdaMART vs BM25-only, ``experiment_units`` simulated users through
   the same router the service uses) and the drift report, and write what the dashboard discovers:
   ``monitoring/experiments/<name>.json``, ``monitoring/drift.json`` and ``monitoring/timings.json``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mlsd.platform.jsonio import write_json
from mlsd.platform.system import SystemDir

DEMO_QUERIES: tuple[tuple[str, str], ...] = (
    ("typo", "wireles earbuds"),
    ("synonym", "earphones"),
    ("price constraint", "headphones under $50"),
    ("Spanish", "auriculares negros"),
    ("brand", "sonix speaker"),
)


def run(
    dirs: SystemDir,
    *,
    products: int | None = None,
    sessions: int | None = None,
    dense: bool = True,
    quiet: bool = False,
    parser_options: dict[str, Any] | None = None,
    experiment_units: int = 300,
) -> dict[str, Any]:
    """Run the demo in ``dirs``; returns a summary (timings, metrics, the answers, the files written).

    ``products``, ``sessions``: override the demo world's size. ``experiment_units``: users in the
    demo's online experiment (0 skips the experiment and the monitoring files)."""
    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.table import Table

    from mlsd.platform.registry import ModelRegistry
    from mlsd.search.clicklog import ClickLog
    from mlsd.search.engine import MODEL_NAME, load_engine
    from mlsd.search.service import create_search_app
    from mlsd.search.training import train
    from mlsd.search.world import Simulation, simulate_into

    console = Console(quiet=quiet)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    made = simulate_into(dirs, size="demo", reuse=True, products=products, sessions=sessions)
    sim = Simulation.load(dirs.data)
    timings["simulate_s"] = time.perf_counter() - t
    imp = sim.impressions
    console.print(
        f"[bold]{'reused' if made['reused'] else 'simulated'}[/] {len(sim.products):,} products "
        f"({sim.products['title'].nunique():,} distinct titles), "
        f"{len(sim.queries)} query texts ({int((sim.queries['lang'] == 'es').sum())} Spanish, "
        f"{int(sim.queries['typo'].sum())} with typos), {imp['search_id'].nunique():,} searches, "
        f"{int(imp['clicked'].sum()):,} clicks, {int(imp['purchased'].sum()):,} purchases; "
        f"true examination 1/rank^{sim.click_model.eta:g} -> {dirs.data}"
    )

    t = time.perf_counter()
    report = train(dirs, dense=dense, parser_options=parser_options, progress=False,
                   log=lambda m: console.print(f"  [dim]{m}[/]"))  # fmt: skip
    timings["train_s"] = time.perf_counter() - t
    registry = ModelRegistry(dirs.registry)
    prop_file = registry.artifact_path(MODEL_NAME, report["version"]) / "propensity.json"
    prop = json.loads(prop_file.read_text())
    console.print(
        f"[bold]propensities[/] estimated from randomised swaps: eta={prop.get('eta', float('nan')):.2f} "
        f"(true {sim.click_model.eta:g}); ranks 1-5: {prop.get('propensities', [])[:5]}"
    )
    m = report["metrics"]
    console.print(
        f"[bold]LambdaMART[/] judged nDCG@10: IPS {m.get('truth_ndcg@10')} vs raw clicks "
        f"{m.get('raw_clicks_truth_ndcg@10')}; v{report['version']}: {report['reason']} "
        f"(champion v{report['champion']})"
    )

    t = time.perf_counter()
    engine = load_engine(dirs)
    timings["load_engine_s"] = time.perf_counter() - t

    clicklog = ClickLog(dirs.data / "clicklog")
    client = TestClient(create_search_app(engine, clicklog))

    answers = []
    for label, q in DEMO_QUERIES:
        resp = client.get("/v1/search", params={"q": q, "user_id": "7", "k": 5})
        body = resp.json()
        answers.append({"label": label, "query": q, "status": resp.status_code, "body": body})
        parsed = body["parsed"]
        ent = {k: v for k, v in parsed["entities"].items() if v is not None}
        table = Table(
            title=f"{label}: {q!r} -> {parsed['corrected']!r} [{parsed['language']}]"
            f" entities={ent} expansions={parsed['expansions'][:3]}",
            title_justify="left",
        )
        for col in ("#", "title", "brand", "price", "score"):
            table.add_column(col)
        for r in body["results"]:
            table.add_row(
                str(r["position"]), r["title"], r["brand"], f"{r['price']:.2f}", f"{r['score']:.3f}"
            )
        console.print(table)
        skipped = ", ".join(f"{s['stage']} ({s['reason']})" for s in body["skipped"]) or "none"
        console.print(f"  ranked by {body['ranked_by']}; timings ms {body['timings_ms']}; skipped: {skipped}")

    first = answers[0]["body"]
    # The showcase search happens on the simulated clock (the second after the last logged search), so
    # the drift report's window ("the log's last 7 days") stays the simulated week, not these 7 events.
    now = int(imp["ts"].max()) + 1
    events = [
        {
            "type": "impression",
            "search_id": first["search_id"],
            "query": first["query"],
            "user_id": "7",
            "product_id": r["product_id"],
            "position": r["position"],
            "ts": now,
        }
        for r in first["results"]
    ]
    if first["results"]:
        top = first["results"][0]
        events += [
            {"type": "click", "search_id": first["search_id"], "product_id": top["product_id"], "ts": now},
            {
                "type": "purchase",
                "search_id": first["search_id"],
                "product_id": top["product_id"],
                "value": top["price"],
                "ts": now,
            },
        ]
    posted = client.post("/v1/events", json={"events": events}).json()
    clicklog.flush()  # the service buffers events; the next training must see them
    bad = client.get("/v1/search", params={"q": "", "k": 5})
    console.print(
        f"POST /v1/events -> {posted}; GET /v1/search?q= -> {bad.status_code} {bad.json()['error']['message']}"
    )
    written: dict[str, str] = {}
    experiment_summary: dict[str, Any] | None = None
    if experiment_units > 0:
        t = time.perf_counter()
        written, experiment_summary = _experiment_and_monitoring(
            dirs, sim, engine, answers, experiment_units, console
        )
        timings["experiment_and_monitoring_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    console.print(f"[bold]search demo[/] finished in {timings['total_s']:.1f} s")
    return {
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "metrics": m,
        "propensity_eta": prop.get("eta"),
        "world_reused": made["reused"],
        "version": report["version"],
        "champion": report["champion"],
        "answers": [
            {
                "label": a["label"],
                "query": a["query"],
                "status": a["status"],
                "corrected": a["body"]["parsed"]["corrected"],
                "top": [r["title"] for r in a["body"]["results"]],
            }
            for a in answers
        ],
        "events_accepted": posted.get("accepted"),
        "experiment": experiment_summary,
        "files": written,
    }


def _experiment_and_monitoring(
    dirs: SystemDir, sim: Any, engine: Any, answers: list, units: int, console: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """The demo's experiment (LTR vs BM25), drift report and served stage timings, written as JSON
    to ``dirs.monitoring``."""
    from mlsd.search.monitoring import drift_report
    from mlsd.search.world import run_experiment, summary_lines, world_from_simulation

    world = world_from_simulation(sim, engine, dirs.registry)
    report = run_experiment(dirs, units=units, looks=5, progress=False, world=world, keep_stages=True)
    stages = report.pop("stages_ms")
    for a in answers:  # the showcase queries were served too
        for stage, ms in a["body"]["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    out = dirs.monitoring
    written = {
        "experiment": str(write_json(out / "experiments" / f"{report['experiment']}.json", report)),
        "timings": str(write_json(out / "timings.json", {"system": "search", "stages": stages})),
    }
    drift = drift_report(dirs, engine=engine)
    written["drift"] = str(write_json(out / "drift.json", drift))
    for line in summary_lines(report):
        console.print(f"[bold]experiment[/] {line}")
    s = drift["summary"]
    console.print(
        f"[bold]drift[/] {s['stable']} stable / {s['moderate']} moderate / {s['significant']} significant "
        f"features (max PSI {s['max_psi']:.3f}); current = {drift['current']}"
    )
    primary = report["primary_metric"]
    return written, {
        "name": report["experiment"],
        "primary_metric": primary,
        "comparison": report["metrics"][primary][0],
        "truth": report["truth"].get(primary),
        "truth_covered": report["truth_covered"].get(primary),
        "srm_flagged": report["srm"]["flagged"],
        "verdict": report["verdict"],
    }
