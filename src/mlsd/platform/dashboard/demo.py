"""``mlsd dashboard --demo-data``: fill real sources with generated data, so the page can be shown
without running the three systems.

Everything goes through the real code paths, only the *inputs* are synthetic (and seeded). Every
made-up figure is marked where it is stored -- ``synthetic: true`` in each registry version's params, in
each experiment and drift report, and on the review queue (:class:`SyntheticQueue`) -- so the page
shows a "synthetic demo data" badge next to it, also when the workdir is opened again with
``mlsd dashboard --workdir``:

* a :class:`~mlsd.platform.registry.ModelRegistry` in ``workdir/registry`` with versions of three models,
  their offline metrics, and champion/challenger aliases;
* three experiments assigned by :class:`~mlsd.platform.experiments.Assigner`, logged exactly once in a
  :class:`~mlsd.platform.experiments.MemoryExposureLog`, folded into sufficient statistics by
  :func:`~mlsd.platform.experiments.aggregate` and analysed by
  :func:`~mlsd.platform.experiments.analyze_experiment` -- with planted effects (a recsys win with CUPED, a
  three-arm search test, and a fraud shadow test whose logging drops exposures: a planted SRM), each
  analysed at eight looks for the sequential boundary;
* a :class:`~mlsd.platform.monitoring.DriftMonitor` fitted on a reference frame and reporting on a
  current frame with planted shifts;
* a fraud review queue (SQLite) with cases opened, claimed and resolved;
* stage latencies: the stages above are timed with :class:`~mlsd.platform.serving.StageTimer`, so the
  latency panel shows real ``mlsd_stage_seconds`` histograms of this process (system ``demo``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.dashboard.collect import Sources

N_LOOKS = 8
# the mark every generated figure carries (collect reads it; the page badges it)
SYNTHETIC = {"synthetic": True}


class SyntheticQueue:
    """A review queue whose cases were generated: reads pass through, ``synthetic`` says so."""

    synthetic = True

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def counts(self) -> Any:
        return self.queue.counts()

    def list(self, *args: Any, **kwargs: Any) -> Any:
        return self.queue.list(*args, **kwargs)


def build_demo(workdir: str | Path | None = None, seed: int = 7, units: int = 6000) -> Sources:
    """Generate the demo sources under ``workdir`` (default: a new temp dir) and return them."""
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlsd-dashboard-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    registry = demo_registry(root / "registry", rng)
    reports = demo_experiments(rng, units)
    (root / "experiments").mkdir(exist_ok=True)
    for report in reports:
        (root / "experiments" / f"{report['experiment']}.json").write_text(json.dumps(report | SYNTHETIC))
    drift = demo_drift(rng) | SYNTHETIC
    (root / "drift.json").write_text(json.dumps(drift))
    review = demo_review(root / "review.sqlite", rng)  # None (panel says "no data") without a queue
    return Sources(
        registries=[registry],
        experiments=[root / "experiments"],
        drift={"fraud · payment features": drift},
        review=None if review is None else SyntheticQueue(review),
        title="mlsd dashboard · synthetic demo data",
        notes=[f"Demo data generated with seed {seed} under {root} (mlsd dashboard --demo-data)."],
    )


# ---------------------------------------------------------------------------------------------------
# Registry


def demo_registry(root: Path, rng: np.random.Generator) -> Any:
    from mlsd.platform.registry import ModelRegistry, fingerprint

    registry = ModelRegistry(root)
    if registry.names():  # re-running on the same workdir: keep what is there (idempotent)
        return registry
    models = {
        "recsys-ranker": ({"ndcg@10": 0.312, "recall@50": 0.241, "coverage@50": 0.38}, 3),
        "fraud-model": ({"auc": 0.921, "average_precision": 0.66, "recall@1%fpr": 0.58}, 3),
        "search-ltr": ({"ndcg@10": 0.581, "mrr": 0.49}, 2),
    }
    art = root.parent / "artifacts"
    for name, (base, n_versions) in models.items():
        for v in range(1, n_versions + 1):
            folder = art / name / f"v{v}"
            folder.mkdir(parents=True, exist_ok=True)
            weights = rng.normal(size=64)
            np.save(folder / "weights.npy", weights)
            metrics = {
                k: round(min(val * (1 + 0.02 * (v - 1) + rng.normal(0, 0.004)), 0.999), 4)
                for k, val in base.items()
            }
            registry.register(
                name,
                folder,
                params={"learning_rate": 0.05, "num_leaves": 31 + 16 * v, **SYNTHETIC},
                metrics=metrics,
                data_fingerprint=fingerprint(weights),
                parent=v - 1 or None,
            )
        registry.promote(name, n_versions - 1)
        registry.promote(name, n_versions, "challenger")
    return registry


# ---------------------------------------------------------------------------------------------------
# Experiments


def _experiments() -> list[Any]:
    from mlsd.platform.experiments import Arm, Experiment, MetricSpec

    return [
        Experiment(
            "recsys-ranker-challenger",
            (Arm("champion", 1, alias="champion"), Arm("challenger", 1, alias="challenger")),
            system="recsys",
            metrics=(
                MetricSpec("watch_minutes", covariate="pre_watch_minutes"),
                MetricSpec(
                    "completion_rate",
                    kind="ratio",
                    numerator="completions",
                    denominator="starts",
                    guardrail=True,
                    margin=0.02,
                ),
            ),
        ),
        Experiment(
            "search-ltr-vs-bm25",
            (
                Arm("bm25", 1, params={"ranker": "bm25"}),
                Arm("ltr", 1, alias="champion"),
                Arm("hybrid", 1, params={"ranker": "hybrid"}),
            ),
            system="search",
            metrics=(
                MetricSpec("clicks_per_search", kind="ratio", numerator="clicks", denominator="searches"),
                MetricSpec("revenue", guardrail=True, margin=0.03),
            ),
        ),
        Experiment(
            "fraud-challenger-shadow",
            (Arm("champion", 1, alias="champion"), Arm("challenger", 1, alias="challenger")),
            system="fraud",
            mode="shadow",
            unit="card_id",
            metrics=(
                MetricSpec("fraud_loss", higher_is_better=False),
                MetricSpec("false_declines", higher_is_better=False, guardrail=True, margin=0.05),
            ),
        ),
    ]


def _outcomes(name: str, arm: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Per-unit outcomes with planted effects (relative to arm 0)."""
    n = len(arm)
    if name.startswith("recsys"):
        pre = rng.gamma(2.0, 20.0, n)
        lift = np.where(arm == 1, 1.04, 1.0)  # +4% watch time
        watch = np.maximum(0.0, (0.7 * pre + rng.gamma(2.0, 6.0, n)) * lift)
        starts = rng.poisson(4, n) + 1
        completions = rng.binomial(starts, 0.55)
        return pd.DataFrame(
            {"watch_minutes": watch, "pre_watch_minutes": pre, "starts": starts, "completions": completions}
        )
    if name.startswith("search"):
        searches = rng.poisson(5, n) + 1
        ctr = np.choose(arm, [0.30, 0.33, 0.315])
        clicks = rng.binomial(searches, ctr)
        revenue = rng.binomial(clicks, 0.08) * rng.gamma(2.0, 25.0, n)
        return pd.DataFrame({"searches": searches, "clicks": clicks, "revenue": revenue})
    loss = rng.binomial(1, 0.02, n) * rng.gamma(2.0, 60.0, n) * np.where(arm == 1, 0.85, 1.0)
    false_declines = rng.poisson(np.where(arm == 1, 0.084, 0.080), n).astype(float)
    return pd.DataFrame({"fraud_loss": loss, "false_declines": false_declines})


def demo_experiments(rng: np.random.Generator, units: int = 6000) -> list[dict[str, Any]]:
    """Assign, log exposures, aggregate and analyse each demo experiment; attach 8 sequential looks."""
    from mlsd.platform.experiments import (
        Assigner,
        ExperimentConfig,
        Layer,
        MemoryExposureLog,
        aggregate,
        analyze_experiment,
    )
    from mlsd.platform.experiments.exposures import exposure_counts
    from mlsd.platform.serving import StageTimer

    experiments = _experiments()
    # One layer per experiment: the three systems' experiments are independent of each other.
    config = ExperimentConfig(layers=tuple(Layer(e.name, (e,)) for e in experiments))
    assigner = Assigner(config)
    log = MemoryExposureLog()
    reports = []
    for exp in experiments:
        ids = np.array([f"{exp.unit}-{i}" for i in range(units)])
        timer = StageTimer("experiments")
        with timer.stage("assign"):
            arm = assigner.assign(exp.name, ids)
        ts = 1_700_000_000 + np.sort(rng.integers(0, 14 * 86400, units))  # two weeks of traffic
        if exp.mode == "shadow":
            # Planted logging bug: 20% of the challenger's exposures are dropped -> SRM.
            lost = (arm == 1) & (rng.random(units) < 0.20)
            arm = np.where(lost, -1, arm)
        with timer.stage("log_exposures"):
            log.log(exp.name, ids, arm, ts)
        out = _outcomes(exp.name, np.maximum(arm, 0), rng)
        out.insert(0, "unit", ids)
        exposures = log.exposures(exp.name)
        covariates = out[["unit", "pre_watch_minutes"]] if "pre_watch_minutes" in out else None
        looks = []
        cutoffs = np.quantile(exposures["ts"], np.linspace(1 / N_LOOKS, 1, N_LOOKS))
        for cut in cutoffs:
            part = exposures[exposures["ts"] <= cut]
            look_timer = StageTimer("experiments")
            with look_timer.stage("aggregate"):
                stats = {m.name: aggregate(part, out, m, exp.arm_names, covariates) for m in exp.metrics}
                counts = exposure_counts(part, len(exp.arms))
            with look_timer.stage("analyze"):
                looks.append(analyze_experiment(exp, stats, counts=counts, planned_n=units))
        report = dict(looks[-1])
        report["looks"] = [{k: lk[k] for k in ("metrics", "srm", "verdict")} for lk in looks]
        reports.append(report)
    return reports


# ---------------------------------------------------------------------------------------------------
# Drift and review queue


def demo_drift(rng: np.random.Generator, n: int = 4000) -> dict[str, Any]:
    from mlsd.platform.monitoring import DriftMonitor

    def frame(shift: bool) -> pd.DataFrame:
        amount = rng.lognormal(3.5 + (0.6 if shift else 0.0), 1.0, n)
        hour = rng.integers(0, 24, n).astype(float)
        cats = ["grocery", "travel", "electronics", "fuel", "gaming"]
        p = [0.4, 0.15, 0.15, 0.2, 0.1] if not shift else [0.3, 0.14, 0.2, 0.18, 0.18]
        device_age = rng.exponential(120 if not shift else 100, n)
        device_age[rng.random(n) < (0.02 if not shift else 0.09)] = np.nan
        return pd.DataFrame(
            {
                "amount": amount,
                "hour": hour,
                "merchant_category": rng.choice(cats, n, p=p),
                "device_age_days": device_age,
                "tx_count_1h": rng.poisson(1.2 if not shift else 1.25, n).astype(float),
                "distance_km": rng.gamma(1.5, 30.0 if not shift else 31.0, n),
            }
        )

    from mlsd.platform.serving import StageTimer

    reference = frame(False)
    timer = StageTimer("monitoring")
    with timer.stage("drift_fit"):
        monitor = DriftMonitor(bins=10, random_state=0).fit(reference)
    report = None
    for day in range(7):  # a week of daily reports; the page shows the last (the most shifted)
        current = frame(True) if day == 6 else frame(day >= 4)
        day_timer = StageTimer("monitoring")
        with day_timer.stage("drift_report"):
            report = monitor.report(current)
    return report


def demo_review(path: Path, rng: np.random.Generator, n: int = 80) -> Any:
    from mlsd.platform.dashboard.discover import open_review_queue

    queue = open_review_queue(path)
    if queue is None:  # no registered system keeps a review queue
        return None
    if sum(queue.counts().values()):
        return queue
    prob = rng.beta(2, 5, n)
    amount = np.round(rng.lognormal(4.0, 1.0, n), 2)
    reasons = [["velocity_1h"], ["new_device"], ["geo_jump", "amount_spike"], ["amount_spike"]]
    queue.enqueue(
        [
            {
                "tx_id": f"tx-{i:05d}",
                "probability": float(prob[i]),
                "amount": float(amount[i]),
                "reasons": reasons[i % len(reasons)],
                "ts": 1_700_000_000 + i * 60,
            }
            for i in range(n)
        ],
        now=1_700_000_000,
    )
    claimed = queue.claim("alice", limit=18, now=1_700_003_600) + queue.claim(
        "bob", limit=12, now=1_700_003_700
    )
    for j, case in enumerate(claimed[:22]):
        outcome = "fraud" if case.probability > 0.45 or j % 5 == 0 else "legit"
        queue.resolve(case.tx_id, case.reviewer, outcome, now=1_700_007_200 + j)
    return queue
