"""``mlsd recsys demo`` (and the recommender's part of ``mlsd demo``): the product end to end, small.

simulate a platform -> the daily train job (two-stage model, next-day evaluation, registry, champion)
-> the service loads the champion -> top 10 for two regular viewers, a brand-new viewer who only
made onboarding picks, and a visitor the platform has never seen -> readable tables with sources,
reasons and per-stage timings -> an A/B test (champion vs a challenger) through the service for a few
hundred simulated viewers, drift of the served requests against the training reference.

Files the dashboard finds (by content): ``experiments/<experiment>.json`` (the report, with the
simulator's true effects), ``monitoring/drift.json`` (:func:`mlsd.recsys.monitoring.drift_report`),
``monitoring/timings.json`` (``{"system": "recsys", "stages": {stage: [ms, ...]}}`` of the served
requests).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mlsd.recsys.config import RecsysConfig, ServiceConfig, TrainConfig

DEMO_SIZE = {"n_users": 1500, "n_items": 400, "days": 35, "seed": 7}
DEMO_TRAIN = TrainConfig(
    train_days=28,
    label_days=7,
    sources={"als": 120, "ease": 80, "content": 60, "popular": 40, "trending": 20, "new": 15},
    n_estimators=120,
)


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


DEMO_UNITS = 300  # viewers in the demo's experiment (about 8 s through the service on 2 cores)
DEMO_ARMS = ("champion", "challenger")
DEMO_TIMED_REQUESTS = 200  # single requests timed for monitoring/timings.json (~2 s)


def run_demo_experiment(
    workdir: Path,
    train: TrainConfig,
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
    from mlsd.recsys.experiment import simulate_experiment, timings_file
    from mlsd.recsys.monitoring import drift_report, save_served

    run = simulate_experiment(workdir, units=units, arms=arms, seed=0, train=train, progress=False)
    report = run.client.analyze(run.name, run.outcomes, covariates=run.covariates, looks=5)
    report = {
        **with_truth(report, run.truth), "world": run.world, "units": units, "seconds": round(run.seconds, 2),
    }  # fmt: skip
    paths = {"experiment": workdir / "experiments" / f"{run.name}.json",
             "drift": workdir / "monitoring" / "drift.json", "timings": workdir / "monitoring" / "timings.json"}  # fmt: skip
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    paths["experiment"].write_text(json.dumps(report, indent=1, default=str))
    if run.served_features is not None:
        save_served(workdir, run.served_features, source=f"demo experiment {run.name} ({units} viewers)")
    drift = drift_report(workdir)
    paths["drift"].write_text(json.dumps(drift, default=str))
    timings = timings_file(request_timings or run.timings)
    timings["path"] = (
        "single in-process requests (recommend)" if request_timings else "batched (recommend_many)"
    )
    paths["timings"].write_text(json.dumps(timings))

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
        f"(score PSI {drift['prediction']['psi']:.2f}) -> {paths['experiment'].parent}, {paths['drift'].parent}"
    )
    return {"experiment": report, "paths": {k: str(v) for k, v in paths.items()}}


TINY_SIZE = {"n_users": 400, "n_items": 120, "days": 16, "seed": 2, "events_per_user": 20.0}
TINY_TRAIN = TrainConfig(
    train_days=12, label_days=4, sources={"als": 40, "content": 30, "popular": 20, "trending": 10, "new": 10},
    n_estimators=30,
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def tiny_registry() -> Path:
    """A tiny simulated world trained into a registry once per process (tests and smoke runs share it;
    treat it as read-only)."""
    import tempfile

    from mlsd.recsys.pipeline import train_daily
    from mlsd.recsys.simulate import save, simulate

    root = Path(tempfile.mkdtemp(prefix="mlsd-recsys-tiny-"))
    dataset, truth = simulate(**TINY_SIZE)
    save(dataset, truth, root / "data")
    report = train_daily(dataset, root / "registry", TINY_TRAIN, progress=False)
    (root / "report.json").write_text(json.dumps(report, default=str))
    return root


def run(workdir: Path, *, size: dict | None = None, train: TrainConfig | None = None) -> dict[str, Any]:
    """Run the demo under ``workdir`` (data/, registry/); returns what happened, for ``mlsd demo``.

    ``size`` (simulate's keyword arguments) and ``train`` override the demo's defaults (tests run it tiny).
    """
    size = {**DEMO_SIZE, **(size or {})}
    train = train or DEMO_TRAIN
    from mlsd.recsys.pipeline import train_daily
    from mlsd.recsys.service import RecsysService
    from mlsd.recsys.simulate import save, simulate

    console = Console(width=max(Console().width, 130))
    workdir = Path(workdir)
    started = time.perf_counter()

    console.print("[bold]1. simulate[/] a streaming platform")
    dataset, truth = simulate(**size)
    save(dataset, truth, workdir / "data")
    inter = dataset.interactions
    counts = inter["event"].value_counts()
    console.print(
        f"   {len(dataset.users):,} users, {len(dataset.items):,} titles, {DEMO_SIZE['days']} days: "
        f"{counts.get('watch', 0):,} watches, {counts.get('browse', 0):,} browses, "
        f"{counts.get('onboarding', 0):,} onboarding picks -> {workdir / 'data'}"
    )

    console.print(
        f"[bold]2. train[/] the daily job: two-stage model on the last {train.train_days:g} days, "
        "evaluated on the next day"
    )
    report = train_daily(dataset, workdir / "registry", train, progress=False)
    m, p = report["metrics"], report["popularity"]
    console.print(
        f"   next-day ndcg@10 [bold]{m['ndcg@10']:.3f}[/] (popularity {p['ndcg@10']:.3f}), "
        f"recall@10 {m['recall@10']:.3f} (popularity {p['recall@10']:.3f}) over {report['eval_users']} users"
    )
    console.print(
        f"   registered {report['model']} v{report['version']}: "
        f"{'promoted to champion' if report['promoted'] else 'not promoted'} ({report['reason']})"
    )

    console.print("[bold]3. serve[/] the champion in-process (200 ms deadline, rules, re-ranking)")
    service = RecsysService(workdir / "registry", config=RecsysConfig(service=ServiceConfig(reload_poll_s=0)))
    genres = dataset.items.set_index("item_id")["genres"].to_dict()
    users = truth.users.set_index("user_id")
    known = service._state.model.users_.ids
    watch_counts = inter[inter["event"] == "watch"].groupby("user_id").size()
    regular = watch_counts[watch_counts.index.isin(known)].sort_values(ascending=False).index[:2].tolist()
    new_ids = users.index[users["is_new"]]
    onboarded = inter[(inter["event"] == "onboarding") & inter["user_id"].isin(new_ids)]["user_id"]
    shown: list[dict[str, Any]] = []
    for uid in regular:
        r = service.recommend(int(uid), 10)
        _table(console, f"user {uid} (true taste: {users.loc[uid, 'true_genre']})", r, genres)
        shown.append(
            {
                "user_id": int(uid),
                "kind": "regular",
                "cold_start": r["cold_start"],
                "timings_ms": r["timings_ms"],
            }
        )
    if len(onboarded):
        uid = int(onboarded.iloc[0])
        r = service.recommend(uid, 10)
        _table(console, f"user {uid}: signed up this week, onboarding picks only (taste: {users.loc[uid, 'true_genre']})",
               r, genres)  # fmt: skip
        shown.append(
            {"user_id": uid, "kind": "new", "cold_start": r["cold_start"], "timings_ms": r["timings_ms"]}
        )
    # A visitor the platform has never seen, with two onboarding picks from the app.
    stranger = int(np.max(dataset.users["user_id"])) + 1
    picks = inter[inter["event"] == "watch"]["item_id"].value_counts().index[:2].tolist()
    r = service.recommend(stranger, 10, region="EU", age=30, seed_items=[int(i) for i in picks])
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
        for stage, ms in service.recommend(int(uid), 10)["timings_ms"].items():
            request_timings.setdefault(stage, []).append(ms)
    service.close()

    console.print(
        f"[bold]4. experiment[/]: {DEMO_ARMS[0]} vs {DEMO_ARMS[1]} through the service for {DEMO_UNITS} simulated "
        "viewers (known true effect), then drift of the served requests"
    )
    ab = run_demo_experiment(workdir, train, console, request_timings=request_timings)

    seconds = time.perf_counter() - started
    console.print(f"recsys demo finished in {seconds:.1f} s; exposures logged: {len(service.exposures)}")
    return {
        "version": report["version"],
        "promoted": report["promoted"],
        "metrics": m,
        "popularity": p,
        "users": shown,
        "experiment": {
            k: ab["experiment"][k] for k in ("experiment", "verdict", "srm", "truth", "truth_covered")
        },
        "files": ab["paths"],
        "seconds": round(seconds, 2),
    }
