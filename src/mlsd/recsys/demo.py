"""``mlsd recsys demo --workdir W`` (and the recommender's part of ``mlsd demo``): the product end to
end, small, in the workdir layout ``W/recsys/{data,registry,runs,monitoring}``.

simulate a platform (:data:`mlsd.recsys.world.SIZES` ``demo``) -> the daily train job (two-stage model,
next-day evaluation, registry, champion) -> the engine loads the champion -> top 10 for two regular
viewers, a brand-new viewer who only made onboarding picks, and a visitor the platform has never seen
-> readable tables with sources, reasons and per-stage timings -> an A/B test (champion vs a
challenger) through the engine for a few hundred simulated viewers, drift of the served requests
against the training reference. ``mlsd recsys serve --workdir W`` then serves the same champion.

Files the dashboard finds (by content), all in ``W/recsys/monitoring``: ``experiments/<experiment>.json``
(the report, with the simulator's true effects), ``drift.json``
(:func:`mlsd.recsys.monitoring.drift_report`), ``timings.json`` (``{"system": "recsys", "stages":
{stage: [ms, ...]}}`` of the served requests).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mlsd.platform.jsonio import write_json
from mlsd.platform.system import SystemDir
from mlsd.recsys.config import RecsysConfig, ServiceConfig


def _table(console: Console, title: str, response: dict[str, Any], genres) -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    for col, kw in (("#", {"justify": "right"}), ("title", {}), ("genres", {}), ("score", {"justify": "right"}),
                    ("sources", {}), ("why", {})):  # fmt: skip
        table.add_column(col, **kw)
    for pos, item in enumerate(response["items"], 1):
        table.add_row(
            str(pos), item["title"], str(genres.get(item["item_id"], "")), f"{item['score']:.3f}",
            ", ".join(item["sources"]), item["reasons"][-1] if item["explored"] else item["reasons"][0],
        )  # fmt: skip
    console.print(table)
    timings = "  ".join(f"{s} {ms:.1f}" for s, ms in response["timings_ms"].items())
    skipped = ", ".join(s["stage"] for s in response["skipped"]) or "none"
    console.print(f"  stage ms: {timings}  | total {response['total_ms']:.1f} ms | skipped: {skipped}\n")


DEMO_UNITS = 300  # viewers in the demo's experiment (about 8 s through the engine on 2 cores)
DEMO_ARMS = ("champion", "challenger")
DEMO_TIMED_REQUESTS = 200  # single requests timed for monitoring/timings.json (~2 s)


def run_demo_experiment(
    dirs: SystemDir,
    console: Console,
    *,
    units: int = DEMO_UNITS,
    arms=DEMO_ARMS,
    request_timings: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The demo's A/B test, drift report and timings files; prints a short summary; returns the paths.

    ``request_timings`` (stage -> ms of single in-process requests) go to ``timings.json``; without
    them, the experiment's batched per-user shares do."""
    from mlsd.platform.experiments.online import with_truth
    from mlsd.recsys.monitoring import drift_report, save_served
    from mlsd.recsys.world import simulate_experiment, timings_file

    run = simulate_experiment(dirs, units=units, arms=arms, seed=0, progress=False)
    report = run.client.analyze(run.name, run.outcomes, covariates=run.covariates, looks=5)
    report = {
        **with_truth(report, run.truth), "world": run.world, "units": units, "seconds": round(run.seconds, 2),
    }  # fmt: skip
    paths = {"experiment": dirs.monitoring / "experiments" / f"{run.name}.json",
             "drift": dirs.monitoring / "drift.json", "timings": dirs.monitoring / "timings.json"}  # fmt: skip
    write_json(paths["experiment"], report)
    if run.served_features is not None:
        save_served(dirs, run.served_features, source=f"demo experiment {run.name} ({units} viewers)")
    drift = drift_report(dirs)
    write_json(paths["drift"], drift)
    timings = timings_file(request_timings or run.timings)
    timings["path"] = "single in-process requests (batches of one)" if request_timings else "batched requests"
    write_json(paths["timings"], timings)

    c = report["metrics"]["watch_minutes"][0]
    control, treatment = report["arms"][0]["name"], report["arms"][1]["name"]
    console.print(
        f"   {run.name}: {units} viewers, watch minutes per viewer {control} {c['mean_control']:.1f} vs "
        f"{treatment} {c['mean_treatment']:.1f}: diff {c['diff']:+.1f} [{c['diff_low']:+.1f}, {c['diff_high']:+.1f}] "
        f"(true {report['truth']['watch_minutes'][treatment]:+.1f}), CUPED variance -{c['variance_reduction']:.0%}"
    )
    srm = report["srm"]
    console.print(
        f"   verdict [bold]{report['verdict'][treatment]}[/]; SRM p={srm['p_value']:.2f} "
        f"({'FLAGGED' if srm['flagged'] else 'ok'}); drift: {drift['summary']['significant']} significant, "
        f"{drift['summary']['moderate']} moderate of {len(drift['features'])} features "
        f"(score PSI {drift['prediction']['psi']:.2f}) -> {dirs.monitoring}"
    )
    return {"experiment": report, "paths": {k: str(v) for k, v in paths.items()}}


def run(dirs: SystemDir, *, size: str = "demo") -> dict[str, Any]:
    """Run the demo in ``dirs`` (``W/recsys``); returns what happened, for ``mlsd demo``.

    ``size`` is one of :data:`mlsd.recsys.world.SIZES` (tests run it ``tiny``). The data is simulated
    afresh; the registry keeps earlier versions (the daily job registers nothing new for the same data
    and settings)."""
    from mlsd.recsys.data import load
    from mlsd.recsys.engine import RecsysEngine
    from mlsd.recsys.training import train
    from mlsd.recsys.world import simulate_into

    console = Console(width=max(Console().width, 130))
    started = time.perf_counter()

    console.print("[bold]1. simulate[/] a streaming platform")
    sim = simulate_into(dirs, size)
    dataset = load(dirs.data)
    inter = dataset.interactions
    counts = inter["event"].value_counts()
    console.print(
        f"   {len(dataset.users):,} users, {len(dataset.items):,} titles, {dataset.meta.get('days')} days: "
        f"{counts.get('watch', 0):,} watches, {counts.get('browse', 0):,} browses, "
        f"{counts.get('onboarding', 0):,} onboarding picks -> {dirs.data}"
    )

    job = sim["train"]
    console.print(
        f"[bold]2. train[/] the daily job: two-stage model on the last {job['train_days']:g} days, "
        "evaluated on the next day"
    )
    report = train(dirs, progress=False)
    m = report["metrics"]
    console.print(
        f"   next-day ndcg@10 [bold]{m['ndcg@10']:.3f}[/] (popularity {m['popularity_ndcg@10']:.3f}), "
        f"recall@10 {m['recall@10']:.3f} (popularity {m['popularity_recall@10']:.3f}) over {m['eval_users']} users"
    )
    console.print(
        f"   {'registered' if report['registered'] else 'already registered'} {report['model']} v{report['version']}: "
        f"{'promoted to champion' if report['promoted'] else 'champion v' + str(report['champion'])} ({report['reason']})"
    )

    console.print("[bold]3. serve[/] the champion in-process (200 ms deadline, rules, re-ranking)")
    engine = RecsysEngine.from_dirs(dirs, config=RecsysConfig(service=ServiceConfig(reload_poll_s=0)))
    truth = _truth_users(dirs)
    genres = dataset.items.set_index("item_id")["genres"].to_dict()
    known = engine.snapshot().model.users_.ids
    watch_counts = inter[inter["event"] == "watch"].groupby("user_id").size()
    regular = watch_counts[watch_counts.index.isin(known)].sort_values(ascending=False).index[:2].tolist()
    new_ids = truth.index[truth["is_new"]]
    onboarded = inter[(inter["event"] == "onboarding") & inter["user_id"].isin(new_ids)]["user_id"]
    shown: list[dict[str, Any]] = []
    for uid in regular:
        r = engine.handle([{"user_id": int(uid), "k": 10}])[0]
        _table(console, f"user {uid} (true taste: {truth.loc[uid, 'true_genre']})", r, genres)
        shown.append({"user_id": int(uid), "kind": "regular", "cold_start": r["cold_start"],
                      "timings_ms": r["timings_ms"]})  # fmt: skip
    if len(onboarded):
        uid = int(onboarded.iloc[0])
        r = engine.handle([{"user_id": uid, "k": 10}])[0]
        _table(console, f"user {uid}: signed up this week, onboarding picks only (taste: {truth.loc[uid, 'true_genre']})",
               r, genres)  # fmt: skip
        shown.append(
            {"user_id": uid, "kind": "new", "cold_start": r["cold_start"], "timings_ms": r["timings_ms"]}
        )
    # A visitor the platform has never seen, with two onboarding picks from the app.
    stranger = int(np.max(dataset.users["user_id"])) + 1
    picks = [int(i) for i in inter[inter["event"] == "watch"]["item_id"].value_counts().index[:2]]
    r = engine.handle([{"user_id": stranger, "k": 10, "region": "EU", "age": 30, "seed_items": picks}])[0]
    _table(
        console,
        f"user {stranger}: never seen before (cold start), picked titles {picks} at onboarding",
        r,
        genres,
    )
    shown.append(
        {"user_id": stranger, "kind": "unknown", "cold_start": r["cold_start"], "timings_ms": r["timings_ms"]}
    )
    # Per-stage latency of single requests for the dashboard (timings.json): a few hundred regulars.
    request_timings: dict[str, list[float]] = {}
    for uid in known[:DEMO_TIMED_REQUESTS]:
        for stage, ms in engine.handle([{"user_id": int(uid), "k": 10}])[0]["timings_ms"].items():
            request_timings.setdefault(stage, []).append(ms)
    engine.close()

    console.print(
        f"[bold]4. experiment[/]: {DEMO_ARMS[0]} vs {DEMO_ARMS[1]} through the engine for {DEMO_UNITS} simulated "
        "viewers (known true effect), then drift of the served requests"
    )
    ab = run_demo_experiment(dirs, console, request_timings=request_timings)

    seconds = time.perf_counter() - started
    console.print(f"recsys demo finished in {seconds:.1f} s; exposures logged: {len(engine.exposures)}; "
                  f"serve it: mlsd recsys serve --workdir {dirs.root}")  # fmt: skip
    return {
        "version": report["version"],
        "promoted": report["promoted"],
        "metrics": m,
        "users": shown,
        "experiment": {
            k: ab["experiment"][k] for k in ("experiment", "verdict", "srm", "truth", "truth_covered")
        },
        "files": ab["paths"],
        "seconds": round(seconds, 2),
    }


def _truth_users(dirs: SystemDir):
    """The simulator's truth about the viewers (true taste genre, new or not), for the tables' titles."""
    import pandas as pd

    return pd.read_parquet(dirs.data / "truth_users.parquet").set_index("user_id")
