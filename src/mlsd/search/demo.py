"""``mlsd search demo`` (and the search part of ``mlsd demo``): the whole product in about a minute.

1. simulate a small catalog, query stream and position-biased click log into ``workdir/data``;
2. estimate propensities from the log's randomised swaps, train LambdaMART with IPS and the same model
   on raw clicks, score both against the simulator's ground truth, register the IPS model (champion);
3. load the service in-process (FastAPI test client, no socket) and send a few searches -- a typo, a
   synonym, a price constraint, a Spanish query, a brand -- plus the events of one of them;
4. print the results with the parsed query and per-stage timings;
5. run one small online experiment (LambdaMART vs BM25-only, ``experiment_units`` simulated users through
   the same router the service uses) and the drift report, and write what the dashboard discovers:
   ``experiments/<name>.json``, ``monitoring/drift.json`` and ``monitoring/timings.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DEMO_QUERIES: tuple[tuple[str, str], ...] = (
    ("typo", "wireles earbuds"),
    ("synonym", "earphones"),
    ("price constraint", "headphones under $50"),
    ("Spanish", "auriculares negros"),
    ("brand", "sonix speaker"),
)


def run(
    workdir: Path,
    *,
    products: int = 1500,
    sessions: int = 20_000,
    dense: bool = True,
    quiet: bool = False,
    parser_options: dict[str, Any] | None = None,
    experiment_units: int = 300,
) -> dict[str, Any]:
    """Run the demo under ``workdir``; returns a summary (timings, metrics, the answers, the files written).

    ``experiment_units``: users in the demo's online experiment (0 skips the experiment and the
    monitoring files)."""
    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.table import Table

    from mlsd.search.clicklog import ClickLog
    from mlsd.search.pipeline import default_cache_dir, train_and_register
    from mlsd.search.service import create_search_app
    from mlsd.search.simulate import simulate

    console = Console(quiet=quiet)
    workdir = Path(workdir)
    data_dir, registry_dir = workdir / "data", workdir / "registry"
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    # 100 query texts and 500 users: ~200 logged searches per query, enough impressions per (query,
    # product) for IPS to pay off (with ~130 per query and 1,000 users it only ties raw clicks, see docs).
    sim = simulate(products, sessions, seed=0, n_queries=100, n_users=500)
    sim.save(data_dir)
    ClickLog(data_dir / "clicklog").append_impressions(sim.impressions)
    timings["simulate_s"] = time.perf_counter() - t
    imp = sim.impressions
    console.print(
        f"[bold]simulated[/] {len(sim.products):,} products ({sim.products['title'].nunique():,} distinct titles), "
        f"{len(sim.queries)} query texts ({int((sim.queries['lang'] == 'es').sum())} Spanish, "
        f"{int(sim.queries['typo'].sum())} with typos), {imp['search_id'].nunique():,} searches, "
        f"{int(imp['clicked'].sum()):,} clicks, {int(imp['purchased'].sum()):,} purchases; "
        f"true examination 1/rank^{sim.click_model.eta:g}"
    )

    t = time.perf_counter()
    cache_dir = default_cache_dir()
    report, engine = train_and_register(
        data_dir,
        registry_dir,
        dense=dense,
        cache_dir=cache_dir,
        log=(lambda m: console.print(f"  [dim]{m}[/]")),
        parser_options=parser_options,
        return_engine=True,
    )
    timings["train_s"] = time.perf_counter() - t
    prop = report["propensity"] or {}
    est = prop.get("propensities", [])[:5]
    console.print(
        f"[bold]propensities[/] estimated from randomised swaps: eta={prop.get('eta', float('nan')):.2f} "
        f"(true {sim.click_model.eta:g}); ranks 1-5: {est}"
    )
    m = report["metrics"]
    console.print(
        f"[bold]LambdaMART[/] ground-truth nDCG@10: IPS {m.get('truth_ndcg@10')} vs raw clicks "
        f"{m.get('raw_clicks_truth_ndcg@10')}; registered v{report['version']} "
        f"({'champion' if report['promoted'] else 'not promoted'})"
    )

    t = time.perf_counter()
    client = TestClient(create_search_app(engine, ClickLog(data_dir / "clicklog")))
    timings["load_service_s"] = time.perf_counter() - t

    answers = []
    for label, q in DEMO_QUERIES:
        resp = client.get("/v1/search", params={"q": q, "user_id": "7", "k": 5})
        body = resp.json()
        answers.append({"label": label, "query": q, "status": resp.status_code, "body": body})
        parsed = body["parsed"]
        ent = {k: v for k, v in parsed["entities"].items() if v is not None}
        table = Table(
            title=f"{label}: {q!r} -> {parsed['corrected']!r} [{parsed['language']}, {parsed['intent']}]"
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
    events = [
        {
            "type": "impression",
            "search_id": first["search_id"],
            "query": first["query"],
            "user_id": "7",
            "product_id": r["product_id"],
            "position": r["position"],
        }
        for r in first["results"]
    ]
    if first["results"]:
        top = first["results"][0]
        events += [
            {"type": "click", "search_id": first["search_id"], "product_id": top["product_id"]},
            {
                "type": "purchase",
                "search_id": first["search_id"],
                "product_id": top["product_id"],
                "value": top["price"],
            },
        ]
    posted = client.post("/v1/events", json={"events": events}).json()
    bad = client.get("/v1/search", params={"q": "", "k": 5})
    console.print(
        f"POST /v1/events -> {posted}; GET /v1/search?q= -> {bad.status_code} {bad.json()['error']['message']}"
    )
    written: dict[str, str] = {}
    experiment_summary: dict[str, Any] | None = None
    if experiment_units > 0:
        t = time.perf_counter()
        written, experiment_summary = _experiment_and_monitoring(
            workdir, sim, engine, registry_dir, answers, experiment_units, console
        )
        timings["experiment_and_monitoring_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    console.print(f"[bold]search demo[/] finished in {timings['total_s']:.1f} s")
    return {
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "metrics": m,
        "propensity_eta": prop.get("eta"),
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


def _write_json(path: Path, obj: Any) -> str:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_plain))
    tmp.replace(path)
    return str(path)


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return str(value)


def _experiment_and_monitoring(
    workdir: Path, sim: Any, engine: Any, registry_dir: Path, answers: list, units: int, console: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """The demo's experiment (LTR vs BM25), drift report and served stage timings, written as JSON."""
    from mlsd.search.experiment import run_experiment, summary_lines, world_from_simulation
    from mlsd.search.monitoring import drift_report

    world = world_from_simulation(sim, engine, registry_dir)
    report = run_experiment(workdir, units=units, looks=5, progress=False, world=world, keep_stages=True)
    stages = report.pop("stages_ms")
    for a in answers:  # the showcase queries were served too
        for stage, ms in a["body"]["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    written = {
        "experiment": _write_json(workdir / "experiments" / f"{report['experiment']}.json", report),
        "timings": _write_json(
            workdir / "monitoring" / "timings.json", {"system": "search", "stages": stages}
        ),
    }
    drift = drift_report(workdir, engine=engine)
    written["drift"] = _write_json(workdir / "monitoring" / "drift.json", drift)
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
