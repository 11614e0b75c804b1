"""The fraud online world simulator: a shadow experiment through the real :class:`FraudPipeline`.

``run_experiment(workdir, units=2000, arms=["champion", "challenger"])``:

1. **World** -- ``workdir/data/transactions.parquet`` (the default simulated world, written once,
   deterministically, when absent; :func:`ensure_data`) and ``workdir/workspace`` (registry, label
   store). The **live period** is the data's last ``LIVE_DAYS`` days. Every arm's model comes from the
   registry by alias, reused when it was trained on this very data (its lineage fingerprint matches)
   and before the live period (no leakage); otherwise it is trained here: ``champion`` at the cut-off a
   week before the live period, ``challenger`` = the weekly retrain at the live period's start (labels
   known then, never promoted), ``no_velocity`` = the planted worse model (same cut-off as the champion,
   trained without any ``card_*`` feature: blind to card velocity and history).
2. **Serve** -- the live period's payments stream through the real pipeline in micro-batches (labels
   reach the feature windows when they arrive, as in production). The experiment is
   ``mode="shadow"``, ``unit="card_id"``: the champion decides every payment; the pipeline scores every
   other arm for the cards in the experiment, derives the decision that arm *would* have taken (same
   rules, same thresholds unless the arm's ``params`` set others) and logs the exposures.
3. **Outcomes** -- per payment and arm, from the simulator's final labels (``fraud``): ``fraud_loss``
   (amount of fraud *approved*; a reviewed fraud counts as caught), ``false_declines`` (legitimate
   payments blocked) and ``reviews``. The experiment uses the final labels, i.e. the truth as it will
   be known once every chargeback arrived (30-90 days): real monitoring has to wait for it (see
   :mod:`mlsd.fraud.monitoring`, performance by label age).
4. **Truth** -- the experiment covers a hash-chosen sample of ``units`` cards out of every card active
   in the live period (the population). A second pass over the same payments (fed the feature rows
   the served pass computed, :class:`RecordedFeatures`, so every payment gets the very same features
   by construction, whatever the window store does with a replayed event) scores
   every arm for *every* card: the true effect is the population's mean paired difference per card,
   exactly, with no sampling noise. The report's interval is for the sample; the test checks it covers
   the population value.

``lose_exposures``: a shadow experiment has no split to mismatch -- every unit is scored by every arm
-- so no sample-ratio mismatch can be planted. Here it drops the challenger logs (the exposures) of
that share of the experiment's cards, as a shadow logger that loses writes would: those cards leave
the paired analysis. Random loss costs power, not validity (pairing is within a card); the report's
``lost_exposures`` says how many were dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError

DAY = 86_400
LIVE_DAYS = 7
# the default world (`mlsd experiment run fraud`, `mlsd pipeline run weekly`): ~200k payments, 6 weeks
WORLD: dict[str, int] = {"cards": 3000, "terminals": 600, "days": 42, "seed": 0}
LGBM_PARAMS: dict[str, Any] = {"n_estimators": 60}  # a small model: the world trains in seconds
NO_VELOCITY_DROP = ("card_*",)

ARM_PRESETS: dict[str, dict[str, Any]] = {
    "champion": {
        "alias": "champion",
        "params": {},
        "description": "the model in production (trained a week before the live period)",
    },
    "challenger": {
        "alias": "challenger",
        "params": {},
        "description": "the weekly retrain: same recipe, labels known at the live period's start",
    },
    "no_velocity": {
        "alias": "no_velocity",
        "params": {},
        "description": "planted worse model: the champion's cut-off, trained without any card_* feature",
    },
    "lenient": {
        "alias": "champion",
        "params": {"thresholds": {"block": 0.995, "review": 0.99}},
        "description": "planted worse policy: the champion's model with far higher thresholds",
    },
}
DEFAULT_ARMS = ("champion", "challenger")
METRICS: tuple[dict[str, Any], ...] = (
    {"name": "fraud_loss", "higher_is_better": False},  # EUR of fraud approved, per card
    {"name": "false_declines", "higher_is_better": False},  # legitimate payments blocked, per card
    # reviews per payment scored: a ratio over the shared denominator (both arms see the same payments)
    {"name": "review_load", "kind": "ratio", "numerator": "reviews", "denominator": "payments",
     "higher_is_better": False},
)  # fmt: skip
OUTCOME_COLUMNS = ("fraud_loss", "false_declines", "reviews")
TRUTH_COLUMNS = ("fraud", "scenario", "label_ts")


# ---------------------------------------------------------------------------------------------------
# The world: data and the models the arms need


def ensure_data(workdir: Path, world: Mapping[str, int] | None = None) -> pd.DataFrame:
    """``workdir/data/transactions.parquet``, simulated once (seeded, so the same world every time)."""
    from mlsd.fraud.simulate import simulate

    path = Path(workdir) / "data" / "transactions.parquet"
    if path.exists():
        return pd.read_parquet(path)
    w = {**WORLD, **(world or {})}
    tx = simulate(n_cards=w["cards"], n_terminals=w["terminals"], days=w["days"], seed=w["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tx.to_parquet(tmp, index=False)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return tx


def live_start(tx: pd.DataFrame) -> int:
    """First second of the live period: the data's last ``LIVE_DAYS`` days."""
    last_day = int(tx["ts"].max()) // DAY * DAY
    return last_day - (LIVE_DAYS - 1) * DAY


def _trained_on(mv: Any, tx: pd.DataFrame) -> bool:
    """Was ``mv`` trained on this data (lineage fingerprint of the rows up to its cut-off)?"""
    from mlsd.platform.registry import fingerprint

    cutoff = mv.params.get("cutoff")
    if cutoff is None:
        return False
    rows = tx.loc[tx["ts"] <= cutoff, ["tx_id", "ts", "amount"]]
    return mv.data_fingerprint == fingerprint(rows)


@dataclass
class World:
    """What the simulator serves: the data, the workspace and the live period's first second."""

    tx: pd.DataFrame
    ws: Any
    live_start: int
    models: dict[str, dict[str, Any]]


def ensure_world(
    workdir: Path,
    aliases: Sequence[str],
    *,
    world: Mapping[str, int] | None = None,
    lgbm_params: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> World:
    """Data + a model for every alias in ``aliases`` (reused or trained, see the module docstring)."""
    from mlsd.fraud.pipeline import MODEL_NAME, Workspace, retrain

    workdir = Path(workdir)
    tx = ensure_data(workdir, world)
    start = live_start(tx)
    ws = Workspace(workdir / "workspace")
    ws.ingest_labels(tx, known_at=start)  # idempotent: the label events known when the live period starts
    recipes = {
        "champion": {"cutoff": start - 7 * DAY},
        "challenger": {"cutoff": start},
        "no_velocity": {"cutoff": start - 7 * DAY, "drop_features": NO_VELOCITY_DROP},
    }
    models: dict[str, dict[str, Any]] = {}
    ordered = ["champion", *[a for a in dict.fromkeys(aliases) if a != "champion"]]
    for alias in ordered:
        mv = ws.model_version(alias)
        reuse = mv is not None and mv.params.get("cutoff", start + 1) <= start and _trained_on(mv, tx)
        if not reuse:
            if alias not in recipes:
                raise InputError(
                    "--arms", alias, "no model under this alias and no recipe to train one",
                    f"register a model as {alias!r} in {ws.root / 'registry'} or use {sorted(recipes)}",
                )  # fmt: skip
            recipe = recipes[alias]
            t = time.perf_counter()
            if progress:
                print(f"fraud: training {alias} (cut-off {_day(recipe['cutoff'])})", flush=True)
            result = retrain(
                tx.loc[tx["ts"] <= recipe["cutoff"]],
                ws,
                cutoff=recipe["cutoff"],
                sequence=False,
                lgbm_params={**LGBM_PARAMS, **(lgbm_params or {})},
                alias=alias,
                compete=False,  # the world's roles are fixed: the weekly gate lives in schedule.py
                drop_features=tuple(recipe.get("drop_features", ())),
            )
            if alias == "champion" and result["suggested_thresholds"] is not None:
                # the live thresholds, tuned with the champion on its matured week (FPR < 1%, review
                # capacity), as `mlsd fraud tune-thresholds` would: every arm decides with them
                (ws.root / "thresholds.json").write_text(json.dumps(result["suggested_thresholds"], indent=2))
                ws = Workspace(ws.root)
            mv = ws.model_version(alias)
            models[alias] = {"version": mv.version, "trained_s": round(time.perf_counter() - t, 1)}
        else:
            models[alias] = {"version": mv.version, "reused": True}
        models[alias].update(
            cutoff=_day(mv.params["cutoff"]),
            ap_eval=(mv.metrics.get("eval") or {}).get("average_precision"),
            drop_features=mv.params.get("drop_features", []),
        )
    assert MODEL_NAME in ws.registry.names()
    models["thresholds"] = {"block": ws.config.thresholds.block, "review": ws.config.thresholds.review}
    return World(tx, ws, start, models)


def _day(ts: int) -> str:
    return pd.Timestamp(int(ts), unit="s").strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------------
# Serving the live period


class _LossyLog:
    """An exposure log that silently loses the writes of some units (the planted logging bug)."""

    def __init__(self, inner: Any, dropped: set[str]) -> None:
        self.inner = inner
        self.dropped = dropped

    def log(self, experiment: str, unit_ids: Any, arms: Any, ts: Any = None) -> np.ndarray:
        units = np.asarray(unit_ids).astype(str)
        keep = ~pd.Index(units).isin(list(self.dropped)) if self.dropped else np.ones(len(units), bool)
        new = np.zeros(len(units), dtype=bool)
        if keep.any():
            ts_arr = None if ts is None else np.broadcast_to(np.asarray(ts), units.shape)[keep]
            new[keep] = self.inner.log(experiment, units[keep], np.asarray(arms)[keep], ts_arr)
        return new

    def exposures(self, experiment: str) -> pd.DataFrame:
        return self.inner.exposures(experiment)


def warm_features(engine: Any, history: pd.DataFrame, known: pd.DataFrame) -> int:
    """Feed ``history`` through the online feature windows with fraud labels as ``known`` says
    (``labels_known_at`` of the live period's start): the windows a service has when it starts."""
    from mlsd.fraud.features import replay

    warm = history.drop(columns=list(TRUTH_COLUMNS), errors="ignore")
    fraud_ts = known.loc[known["label"] == 1].set_index("tx_id")["label_ts"]
    label_ts = warm["tx_id"].astype(str).map(fraud_ts)
    warm["fraud"] = label_ts.notna().astype(np.int8).to_numpy()
    warm["label_ts"] = label_ts.to_numpy(np.float64)
    if hasattr(engine, "presize"):  # size the windows once: no growth copies while serving
        engine.presize(warm)
    replay(engine, warm, batch_size=2000)
    return len(warm)


@dataclass
class ServedPeriod:
    """What serving a period produced: per-payment outcome events of the experiment's units, stage
    timings per batch, and a sample of served feature rows with the champion's score."""

    outcomes: pd.DataFrame
    timings: dict[str, list[float]]
    served: pd.DataFrame
    payments: int
    seconds: float


class RecordedFeatures:
    """A feature engine that passes every batch to ``engine`` and keeps each payment's feature row.

    :meth:`replay` returns an engine that answers the same payments with the same rows and touches no
    window state: the truth pass scores every arm on exactly what the served pass saw. Rows are kept
    per batch (one matrix and its tx ids), so recording costs one reference per batch.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.feature_names = list(engine.feature_names)
        self._ids: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []

    def update_matrix(self, tx: pd.DataFrame) -> np.ndarray:
        matrix = self.engine.update_matrix(tx)
        self._ids.append(tx["tx_id"].to_numpy())
        self._rows.append(matrix)
        return matrix

    def __getattr__(self, name: str) -> Any:  # add_labels, config, ...: the live engine's
        return getattr(self.engine, name)

    def replay(self) -> _ReplayedFeatures:
        return _ReplayedFeatures(self.feature_names, self._ids, self._rows)


class _ReplayedFeatures:
    """The recorded rows, looked up by ``tx_id`` (one sorted search per batch)."""

    def __init__(self, names: list[str], ids: list[np.ndarray], rows: list[np.ndarray]) -> None:
        self.feature_names = names
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        self._order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[self._order]
        self._rows = np.concatenate(rows) if rows else np.zeros((0, len(names)))

    def update_matrix(self, tx: pd.DataFrame) -> np.ndarray:
        wanted = tx["tx_id"].to_numpy()
        at = np.searchsorted(self._ids, wanted)
        found = (at < len(self._ids)) & (self._ids[np.minimum(at, len(self._ids) - 1)] == wanted)
        if not found.all():
            raise InputError(
                "tx_id", wanted[~found][:5].tolist(), "was not served in the recorded pass",
                "replay only the payments the served pass scored",
            )  # fmt: skip
        return self._rows[self._order[at]]

    def add_labels(self, frame: pd.DataFrame) -> int:  # the rows are fixed: labels change nothing
        return 0


def serve_period(
    pipeline: Any,
    live: pd.DataFrame,
    experiment: str,
    *,
    batch_size: int = 500,
    sample_rows: int = 20_000,
    seed: int = 0,
    feed_labels: bool = True,
) -> ServedPeriod:
    """Stream ``live`` (with the simulator's truth columns) through ``pipeline`` as the stream would:
    payments in micro-batches without their labels, fraud labels into the feature windows when they
    arrive. Returns the outcome events of the units in ``experiment`` (one row per payment, columns
    ``unit, ts, payments`` and ``<outcome>@<arm>``), per-batch stage timings and a served sample."""
    from mlsd.fraud.decision import APPROVE, BLOCK, REVIEW
    from mlsd.fraud.features import replay_events
    from mlsd.platform.monitoring.sample import ServingSample

    events, timings = [], {}
    served = ServingSample(max_rows=sample_rows, seed=seed)
    truth = live.set_index("tx_id")
    t0 = time.perf_counter()
    n = 0
    # without labels to feed, no label arrival splits the micro-batches
    stream = live if feed_labels else live.assign(fraud=np.int8(0))  # truth still comes from `live`
    for kind, chunk in replay_events(stream, batch_size):
        if kind == "labels":
            if feed_labels:
                pipeline.features.add_labels(chunk[["tx_id", "terminal_id", "label_ts", "fraud"]])
            continue
        batch = pipeline.score(chunk.drop(columns=list(TRUTH_COLUMNS), errors="ignore"))
        n += len(chunk)
        for stage, ms in batch.timer.timings_ms.items():
            timings.setdefault(stage, []).append(round(float(ms), 3))
        if sample_rows and batch.features is not None and not batch.decisions.rules_only:
            keep = batch.features.copy()
            keep["prediction"] = batch.decisions.probability
            keep["model_version"] = str(batch.model_version)
            keep["tx_id"] = batch.tx_id
            keep["ts"] = chunk["ts"].to_numpy()
            keep["decision"] = batch.decisions.labels
            served.add(keep)
        result = batch.experiments.get(experiment)
        if result is None:
            continue
        inside = np.flatnonzero(result.arm >= 0)
        if inside.size == 0:
            continue
        rows = truth.loc[batch.tx_id[inside]]
        fraud = rows["fraud"].to_numpy() == 1
        amount = rows["amount"].to_numpy(np.float64)
        frame = {
            "unit": rows["card_id"].astype(str).to_numpy(),
            "ts": rows["ts"].to_numpy(np.int64),
            "payments": np.ones(inside.size),
        }
        for arm, decision in result.decision.items():
            d = decision[inside]
            frame[f"fraud_loss@{arm}"] = np.where(fraud & (d == APPROVE), amount, 0.0)
            frame[f"false_declines@{arm}"] = (~fraud & (d == BLOCK)).astype(np.float64)
            frame[f"reviews@{arm}"] = (d == REVIEW).astype(np.float64)
        events.append(pd.DataFrame(frame))
    seconds = time.perf_counter() - t0
    outcomes = pd.concat(events, ignore_index=True) if events else pd.DataFrame(columns=["unit", "ts"])
    return ServedPeriod(outcomes, timings, served.frame(), n, seconds)


def per_unit_means(outcomes: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Per-unit totals of every outcome under every arm (the quantities the paired analysis averages)."""
    cols = ["payments", *[f"{c}@{a}" for c in OUTCOME_COLUMNS for a in arms]]
    return outcomes.groupby("unit", sort=True)[cols].sum()


def true_effects(per_unit: pd.DataFrame, arms: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{metric: {arm: mean over units of (metric@arm - metric@control)}}`` for the arms after the first."""
    out: dict[str, dict[str, float]] = {}
    for spec in METRICS:
        col = spec.get("numerator") or spec.get("column") or spec["name"]
        # a ratio over the shared denominator: mean numerator difference / mean denominator
        scale = float(per_unit[spec["denominator"]].mean()) if spec.get("kind") == "ratio" else 1.0
        out[spec["name"]] = {
            arm: float((per_unit[f"{col}@{arm}"] - per_unit[f"{col}@{arms[0]}"]).mean()) / scale
            for arm in arms[1:]
        }
    return out


def experiment_client(
    arm_names: Sequence[str], *, seed: int = 0, coverage: float = 1.0, log: Any = None, registry: Any = None
) -> Any:
    """The fraud shadow experiment (card_id units) over the named presets, as an ExperimentClient."""
    from mlsd.platform.experiments.client import ExperimentClient
    from mlsd.platform.experiments.online import arms_from_presets, make_experiment

    arms = arms_from_presets(ARM_PRESETS, arm_names)
    name = f"fraud-{'-vs-'.join(a.name for a in arms)}"
    config = make_experiment(
        "fraud", arms, list(METRICS), name=name, mode="shadow", unit="card_id", salt=f"{name}:{seed}"
    )
    if coverage < 1.0:  # a sample of the population: the rest is the truth's reference population
        layer = config.layers[0]
        exp = replace(layer.experiments[0], coverage=float(coverage))
        config = replace(config, layers=(replace(layer, experiments=(exp,)),))
    return ExperimentClient(config, log=log, registry=registry)


# ---------------------------------------------------------------------------------------------------
# The experiment


def run_experiment(
    workdir: Path,
    *,
    units: int = 2000,
    arms: Sequence[str] | None = None,
    seed: int = 0,
    looks: int = 10,
    lose_exposures: float = 0.0,
    progress: bool = True,
    world: Mapping[str, int] | None = None,
    lgbm_params: Mapping[str, Any] | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Run the fraud shadow experiment in ``workdir`` and return the report with its truth.

    ``units``: cards in the experiment (a hash-chosen sample of the cards active in the live period;
    all of them when there are fewer). ``arms``: preset names, control first (default
    champion, challenger); a name given twice is an A/A test. ``world``: override the default world's
    size (``cards``, ``terminals``, ``days``, ``seed``) when ``workdir`` has no data yet.
    """
    from prometheus_client import CollectorRegistry

    from mlsd.platform.experiments.exposures import MemoryExposureLog
    from mlsd.platform.experiments.online import lose_exposures as lose_mask
    from mlsd.platform.experiments.online import with_truth

    started = time.perf_counter()
    arm_names = list(arms or DEFAULT_ARMS)
    if isinstance(units, bool) or not isinstance(units, int | np.integer) or units < 2:
        raise InputError("--units", units, "must be an integer >= 2", "use e.g. 2000")
    if not 0.0 <= lose_exposures < 1.0:
        raise InputError("--lose-exposures", lose_exposures, "must be in [0, 1)", "use e.g. 0.1")
    probe = experiment_client(arm_names, seed=seed)  # validates the arm names before any training
    aliases = [a.alias for a in probe.config.layers[0].experiments[0].arms if a.alias]
    w = ensure_world(Path(workdir), aliases, world=world, lgbm_params=lgbm_params, progress=progress)
    tx, ws = w.tx, w.ws
    history = tx.loc[tx["ts"] < w.live_start].reset_index(drop=True)
    live = tx.loc[tx["ts"] >= w.live_start].reset_index(drop=True)
    population = np.unique(live["card_id"].to_numpy())
    coverage = min(1.0, units / len(population))

    # the experiment's cards, and the planted logging bug (which of them lose their exposure writes)
    registry = CollectorRegistry()  # the simulation's Prometheus metrics stay out of the service's
    probe = experiment_client(arm_names, seed=seed, coverage=coverage)
    name = next(iter(probe.config.experiments))
    in_exp = population[probe.assign(name, population) >= 0].astype(str)
    keep = lose_mask(np.ones(len(in_exp), np.int64), lose_exposures, seed)
    dropped = set(in_exp[~keep].tolist())
    client = experiment_client(
        arm_names,
        seed=seed,
        coverage=coverage,
        log=_LossyLog(MemoryExposureLog(), dropped),
        registry=registry,
    )
    pipeline = ws.pipeline(review=False, shadow=False, experiments=client, metrics_registry=registry)
    t = time.perf_counter()
    warmed = warm_features(pipeline.features, history, ws.labels.labels_known_at(w.live_start))
    pipeline.features = RecordedFeatures(pipeline.features)  # the served pass keeps every feature row
    warm_s = time.perf_counter() - t
    if progress:
        print(
            f"fraud: windows warmed on {warmed:,} payments in {warm_s:.1f} s; serving {len(live):,} live "
            f"payments of {len(population):,} cards ({len(in_exp):,} in the experiment)",
            flush=True,
        )
    period = serve_period(pipeline, live, name, batch_size=batch_size, seed=seed)
    arm_labels = list(client.config.experiment(name).arm_names)

    # truth: every arm for every card of the population, on the very same features (replayed)
    oracle = experiment_client(arm_names, seed=seed, coverage=1.0, registry=False)
    truth_pipe = ws.pipeline(
        review=False, shadow=False, experiments=oracle, features=pipeline.features.replay()
    )
    truth_pipe.metrics_registry = registry
    full = serve_period(truth_pipe, live, name, batch_size=2000, sample_rows=0, feed_labels=False)
    population_units = per_unit_means(full.outcomes, arm_labels)
    truth = true_effects(population_units, arm_labels)

    report = client.analyze(name, period.outcomes, looks=looks)
    report = with_truth(report, truth)
    exposed = client.exposures(name)["unit"].nunique()
    report["units"] = int(exposed)
    report["lost_exposures"] = {
        "fraction": lose_exposures,
        "units_in_experiment": int(len(in_exp)),
        "units_dropped": int(len(dropped)),
        "note": "shadow mode: every card is scored by every arm, so there is no split to mismatch (no "
        "SRM); lost challenger logs only remove those cards from the paired comparison",
    }
    report["truth_population"] = {
        "units": int(len(population_units)),
        "what": "every card active in the live period, every arm, same features: the exact mean paired "
        "difference per card (the experiment's cards are a hash-chosen sample of them)",
    }
    report["world"] = {
        "payments": int(len(tx)),
        "cards": int(tx["card_id"].nunique()),
        "frauds": int(tx["fraud"].sum()),
        "live_period": [_day(w.live_start), _day(int(live["ts"].max()))],
        "live_payments": int(len(live)),
        "live_frauds": int(live["fraud"].sum()),
        "coverage": round(coverage, 4),
        "models": w.models,
        "labels": "final (simulator truth, incl. chargebacks that arrive after the live period)",
        "served_tx_per_s": round(period.payments / max(period.seconds, 1e-9)),
        "warmup_payments": warmed,
    }
    report["arm_presets"] = {a: ARM_PRESETS[a]["description"] for a in dict.fromkeys(arm_names)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write_monitoring(Path(workdir), period)
    return report


def _write_monitoring(workdir: Path, period: ServedPeriod) -> None:
    """The served sample (drift's "current") and the stage timings, under ``workdir/monitoring``."""
    out = workdir / "monitoring"
    out.mkdir(parents=True, exist_ok=True)
    if len(period.served):
        period.served.to_parquet(out / "served.parquet", index=False)
    (out / "timings.json").write_text(json.dumps({"system": "fraud", "stages": period.timings}))
