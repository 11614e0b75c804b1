"""Training the fraud model on the labels known at a cut-off, registering it, and the weekly retrain.

Data flows top to bottom:

1. **Labels at the cut-off** -- :meth:`~mlsd.fraud.engine.FraudDirs.ingest_labels` records the label
   events known by the cut-off in the label store (``W/fraud/features/labels.sqlite``); a label known
   only later stays invisible to the training set by construction.
2. **Training frame** -- :func:`training_frame`: features see fraud labels only from their
   ``label_ts`` on, targets are the labels known at the cut-off; the last ``label_delay_days`` are too
   fresh and dropped; the ``eval_days`` before them are the latest matured period (the gate's data).
3. **Fit** -- :func:`fit`: LightGBM (+ optional GRU), calibrated; scores the matured period, suggests
   thresholds there, keeps a reference sample (the drift baseline). :func:`save_artifact` writes
   ``model/``, ``ring/`` and ``reference.parquet``.
4. **The weekly retrain** -- :class:`FraudRetrainSteps` is the fraud half of the platform's
   :func:`mlsd.platform.retraining.retrain` (window -> fingerprint -> earlier run? -> train -> register
   -> challenger alias -> gate -> promote -> report in ``W/fraud/runs``). Its gate scores champion and
   challenger on the same matured period (average precision) and promotes only a winner.
   :func:`train` (``mlsd fraud train``, ``System.train``) and :func:`retrain`
   (``mlsd pipeline run weekly``, ``System.retrain``) both run it; there is no separate schedule module.
5. :func:`train_version` registers a fitted model under any alias without the gate: what the world
   simulator and the demo use to build models with fixed roles (a planted worse model, a champion at
   an earlier cut-off).

Thresholds (:func:`tune_on_history`, ``mlsd fraud tune-thresholds``) are chosen on the champion's
matured, out-of-sample days with the labels known at the tuning time (:func:`tuning_window`) and saved
as ``W/fraud/registry/thresholds.json``; rule backtests over labelled
history are :func:`backtest_history`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.fraud.config import FraudConfig
from mlsd.fraud.contract import CONTEXT_COLUMNS
from mlsd.fraud.engine import MODEL_NAME, FraudDirs, ModelScorer, Scorer, feature_config_for
from mlsd.platform.errors import InputError
from mlsd.platform.retraining import Trained, Verdict, Window, resolve_run_date
from mlsd.platform.retraining import retrain as platform_retrain
from mlsd.platform.system import SystemDir

__all__ = [
    "DAY",
    "LGBM_PARAMS",
    "FraudRetrainSteps",
    "Fitted",
    "TrainingFrame",
    "TuningWindow",
    "backtest_history",
    "fit",
    "reference_sample",
    "retrain",
    "save_artifact",
    "train",
    "train_version",
    "training_frame",
    "tune_on_history",
    "tuning_window",
]

DAY = 86_400
# a run needs label_delay (7) + eval (7) days before the cut-off plus a week to train on
MIN_HISTORY_DAYS = 21
# a shorter history (one real week of payments with its labels) trains when this many days have matured
MIN_SHORT_MATURED_DAYS = 4
# the scheduled job's model: LightGBM only, 60 trees (a weekly retrain on the default world in seconds)
LGBM_PARAMS: dict[str, Any] = {"n_estimators": 60}
REFERENCE_ROWS = 20_000


# ---------------------------------------------------------------------------------------------------
# The training set at a cut-off: what the label store knew then, and nothing later


@dataclass
class TrainingFrame:
    """Features and labels as known at ``cutoff``; ``split`` is "train", "eval" or "" (unusable)."""

    features: pd.DataFrame
    y: np.ndarray
    split: np.ndarray
    ts: np.ndarray
    cutoff: int
    eval_window: tuple[int, int]
    ring: Any = None


def training_frame(
    tx: pd.DataFrame, labels: Any, cutoff: int, config: FraudConfig | None = None, feature_config: Any = None
) -> TrainingFrame:
    """Build the training set at ``cutoff`` from what the label store knew then, and nothing later.

    Every row's features are as of its own ``ts``: the terminal risk sees a fraud label from its
    ``label_ts`` on, the ring features the links and labels from strictly before the row
    (:func:`~mlsd.fraud.graph.ring_features_as_of`); the graph fitted at the cut-off is only what the
    model serves with (``ring``), never a training feature. Targets come from
    :func:`~mlsd.fraud.labels.training_labels` (labels known at the cut-off; the last
    ``label_delay_days`` are too fresh and dropped). The latest ``eval_days`` before that delay are
    the evaluation period champion and challenger compete on; training uses the days before it.
    """
    from mlsd.fraud.features import compute_features
    from mlsd.fraud.labels import training_labels

    tcfg = (config or FraudConfig()).training
    hist = tx.loc[tx["ts"].to_numpy() <= cutoff].reset_index(drop=True)
    known = labels.labels_known_at(cutoff)
    fraud_known = known.loc[known["label"] == 1].set_index("tx_id")["label_ts"]
    key = hist["tx_id"].astype(str)
    label_ts = key.map(fraud_known)
    # only what the business knew feeds the features: ground-truth columns are replaced, never used
    for_features = hist.drop(columns=["fraud", "label_ts", "scenario"], errors="ignore")
    for_features["fraud"] = label_ts.notna().astype(np.int8).to_numpy()
    for_features["label_ts"] = label_ts.to_numpy(np.float64)
    fcfg = feature_config or feature_config_for(hist)
    feats = compute_features(for_features, fcfg)
    ring = None
    if "device" in fcfg.entities:  # ring features need devices / IPs / emails: absent in the handbook
        from mlsd.fraud.graph import RingGraph, ring_features_as_of

        ring = RingGraph().fit(for_features, as_of=cutoff)
        feats = pd.concat([feats, ring_features_as_of(for_features, max_share=ring.max_share)], axis=1)
    delay = tcfg.label_delay_days * DAY
    y = training_labels(hist["tx_id"].to_numpy(), hist["ts"].to_numpy(), known, cutoff, delay_s=delay)
    # imported data may know labels long after its last payment (cutoff = its as_of): the matured
    # period then ends with the payments, not `delay` before a cut-off that lies after all of them
    eval_end = min(cutoff - delay, int(hist["ts"].max())) if len(hist) else cutoff - delay
    eval_start = eval_end - tcfg.eval_days * DAY
    ts = hist["ts"].to_numpy()
    usable = ~np.isnan(y)
    split = np.where(usable & (ts < eval_start), "train", np.where(usable & (ts <= eval_end), "eval", ""))
    return TrainingFrame(feats, y, split, ts, int(cutoff), (int(eval_start), int(eval_end)), ring)


# ---------------------------------------------------------------------------------------------------
# Fit one model on the labels known at a cut-off


@dataclass
class Fitted:
    """A model fitted at ``frame.cutoff``, its scores on the matured period and what to save with it."""

    model: Any
    scorer: ModelScorer
    frame: TrainingFrame
    all_features: pd.DataFrame  # the full feature set (the champion is scored on its own features)
    train: np.ndarray
    eval: np.ndarray
    eval_metrics: dict[str, Any]
    suggested_thresholds: dict[str, Any] | None
    reference: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)


def fit(
    tx: pd.DataFrame,
    labels: Any,
    cutoff: int,
    config: FraudConfig | None = None,
    *,
    sequence: bool = True,
    seed: int = 0,
    seq_epochs: int = 8,
    lgbm_params: Mapping[str, Any] | None = None,
    drop_features: tuple[str, ...] = (),
    dask_client: Any = None,
) -> Fitted:
    """Fit a model on the labels ``labels`` knew at ``cutoff``; score the latest matured period.

    ``drop_features``: feature columns (or prefixes ending in ``*``) the model must not see (e.g. a
    planted worse model). A reference sample of the training rows with the model's score
    (``prediction``, <= 20k rows) is the drift monitor's baseline. ``dask_client``: train the
    LightGBM part over that Dask cluster (:mod:`mlsd.fraud.distributed_training`).
    """
    from mlsd.fraud.models import FraudModel

    model_kind: Any = FraudModel
    extra: dict[str, Any] = {}
    if dask_client is not None:
        from mlsd.fraud.distributed_training import DaskFraudModel

        model_kind, extra = DaskFraudModel, {"client": dask_client}

    config = config or FraudConfig()
    fcfg = feature_config_for(tx)
    frame = training_frame(tx, labels, cutoff, config, fcfg)
    all_features = frame.features
    if drop_features:
        frame.features = frame.features.drop(columns=_matching(frame.features.columns, drop_features))
    train, ev = frame.split == "train", frame.split == "eval"
    y_train = frame.y[train].astype(np.int8)
    if y_train.sum() < 2 or (y_train == 0).sum() < 2:
        raise InputError(
            "--date", _day(cutoff), "too few labelled frauds known before the evaluation period",
            "simulate more days or train at a later date",
        )  # fmt: skip
    if not ev.any():
        raise InputError(
            "--date", _day(cutoff), "no payments in the evaluation period before the label delay",
            "train at a date within label_delay_days of the data's end",
        )  # fmt: skip
    model = model_kind(
        lgbm_params=None if lgbm_params is None else dict(lgbm_params), sequence=sequence, seed=seed,
        seq_epochs=seq_epochs, **extra,
    ).fit(frame.features.loc[train], y_train, time=frame.ts[train])  # fmt: skip
    scorer = ModelScorer(model)
    y_eval = frame.y[ev].astype(np.int8)
    p_eval = scorer.predict(frame.features.loc[ev])
    # the drift baseline: labelled rows whose windows were already full (the data's first days have
    # cold windows and would make every served payment look drifted)
    warm = (train | ev) & (frame.ts >= frame.ts.min() + max(fcfg.windows))
    reference = reference_sample(frame.features.loc[warm if warm.any() else train], scorer, seed=seed)
    params = {
        "cutoff": int(cutoff),
        "feature_config": "default" if "device" in fcfg.entities else "handbook",
        "sequence": bool(sequence),
        "train_rows": int(train.sum()),
        "train_frauds": int(y_train.sum()),
        "eval_window": list(frame.eval_window),
        "label_delay_days": config.training.label_delay_days,
        "drop_features": list(drop_features),
        "train_window": [int(frame.ts[train].min()), int(frame.ts[train].max())],
        "reference_window": [int(frame.ts[warm].min()), int(frame.ts[warm].max())] if warm.any() else None,
        **features_used_and_dropped(tx, frame.features.columns, all_features.columns),
    }
    return Fitted(
        model, scorer, frame, all_features, train, ev, metrics(y_eval, p_eval),
        _suggest_thresholds(y_eval, p_eval, frame.ts[ev], frame, config), reference, params,
    )  # fmt: skip


def features_used_and_dropped(tx: pd.DataFrame, used: Any, computed: Any) -> dict[str, Any]:
    """The model card's feature lists: ``features_used``, ``features_dropped`` (of the full set, those
    the data cannot support or ``drop_features`` removed) and ``missing_columns`` (why)."""
    from mlsd.fraud.features import FeatureConfig
    from mlsd.fraud.graph import FEATURES as RING_FEATURES

    used = [str(c) for c in used]
    have = set(map(str, computed))
    full = [*FeatureConfig().feature_names(), *RING_FEATURES]
    return {
        "features_used": used,
        "features_dropped": [f for f in full if f not in have or f not in used],
        "missing_columns": [c for c in CONTEXT_COLUMNS if c not in tx.columns],
    }


def save_artifact(fitted: Fitted, out: Path) -> Path:
    """``out/model`` (+ ``out/ring``) and ``out/reference.parquet``: one registry artifact."""
    out = Path(out)
    fitted.model.save(out / "model")
    if fitted.frame.ring is not None:
        fitted.frame.ring.save(out / "ring")
    fitted.reference.to_parquet(out / "reference.parquet", index=False)
    return out


def score_eval(fitted: Fitted, scorer: Scorer) -> dict[str, Any]:
    """``scorer``'s metrics on ``fitted``'s matured period (each model on its own feature set)."""
    y = fitted.frame.y[fitted.eval].astype(np.int8)
    return metrics(y, scorer.predict(fitted.all_features.loc[fitted.eval]))


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Average precision and ROC AUC (NaN when the period has one class only), rows and frauds."""
    from mlsd.platform.metrics import average_precision, roc_auc

    both = len(y) > 0 and y.min() != y.max()
    return {
        "average_precision": float(average_precision(y, p)) if both else float("nan"),
        "auc_roc": float(roc_auc(y, p)) if both else float("nan"),
        "n": int(len(y)),
        "frauds": int(y.sum()),
    }


def _matching(columns: Any, patterns: tuple[str, ...]) -> list[str]:
    """Columns named by ``patterns`` (exact names, or prefixes written ``card_*``)."""
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    exact = {p for p in patterns if not p.endswith("*")}
    return [c for c in columns if c in exact or (prefixes and c.startswith(prefixes))]


def reference_sample(features: pd.DataFrame, scorer: Scorer, seed: int = 0) -> pd.DataFrame:
    """<= 20k training rows (seeded sample) of the model's own features plus its score as
    ``prediction``: what the drift monitor compares served traffic with."""
    rng = np.random.default_rng([seed, 20_000])
    rows = features if len(features) <= REFERENCE_ROWS else features.iloc[
        np.sort(rng.choice(len(features), REFERENCE_ROWS, replace=False))
    ]  # fmt: skip
    out = rows[list(scorer.feature_names)].reset_index(drop=True)
    out["prediction"] = scorer.predict(rows)
    return out


def _suggest_thresholds(
    y: np.ndarray, p: np.ndarray, ts: np.ndarray, frame: TrainingFrame, config: FraudConfig
) -> Any:
    """Thresholds for FPR < max_fpr and the review capacity on the evaluation period: after the
    training days (out of sample), matured, with the labels known at the cut-off (``y``); applied
    only by ``tune-thresholds`` or the operator."""
    from mlsd.fraud.decision import tune_thresholds

    if len(y) == 0 or y.min() == y.max():
        return None
    start, end = frame.eval_window
    tuned = tune_thresholds(
        y, p, (ts - start) // DAY, max_fpr=config.training.max_fpr, daily_capacity=config.review.daily_capacity,
    ).to_dict()  # fmt: skip
    tuned["tuned_on"] = {
        "first_day": _day(int(ts.min())),
        "last_day": _day(end),
        "labels_known_at": _day(frame.cutoff),
        "payments": int(len(y)),
        "fraud_labels_known": int(y.sum()),
    }
    return tuned


def _day(ts: int) -> str:
    return pd.Timestamp(int(ts), unit="s").strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------------
# A version with a fixed role (the world simulator, the demo): fit + register under an alias


def train_version(
    tx: pd.DataFrame,
    state: FraudDirs,
    *,
    cutoff: int,
    alias: str = "challenger",
    compete: bool = True,
    sequence: bool = True,
    seed: int = 0,
    seq_epochs: int = 8,
    lgbm_params: Mapping[str, Any] | None = None,
    drop_features: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fit at ``cutoff`` (labels already in ``state``'s label store), register under ``alias`` and,
    with ``compete``, promote to champion if it beats the champion's AP on the matured period (or
    there is no champion). ``compete=False`` never promotes (a variant kept for experiments)."""
    from mlsd.platform.registry import fingerprint

    fitted = fit(
        tx, state.labels, cutoff, state.config, sequence=sequence, seed=seed, seq_epochs=seq_epochs,
        lgbm_params=lgbm_params, drop_features=drop_features,
    )  # fmt: skip
    champion = state.scorer("champion")
    champion_eval = score_eval(fitted, champion) if champion is not None else None
    state.dirs.create()
    with tempfile.TemporaryDirectory(prefix="mlsd-fraud-model-") as tmp:
        mv = state.registry.register(
            MODEL_NAME, save_artifact(fitted, Path(tmp)), params={**fitted.params, "alias": alias},
            metrics={"eval": fitted.eval_metrics, "champion_eval": champion_eval},
            data_fingerprint=fingerprint(tx.loc[tx["ts"] <= cutoff, ["tx_id", "ts", "amount"]]),
            parent=None if champion is None else int(champion.version),
        )  # fmt: skip
    state.registry.promote(MODEL_NAME, mv.version, alias=alias)
    verdict = _gate(fitted.eval_metrics, champion_eval, state.config)
    promoted = champion is None or (compete and verdict.promote)
    if promoted:
        state.registry.promote(MODEL_NAME, mv.version, alias="champion")
    return {
        "cutoff": int(cutoff),
        "challenger_version": mv.version,
        "champion_version_before": None if champion is None else int(champion.version),
        "promoted": bool(promoted),
        "champion_version": int(state.model_version("champion").version),
        "train_rows": fitted.params["train_rows"],
        "train_frauds": fitted.params["train_frauds"],
        "eval_window": list(fitted.frame.eval_window),
        "challenger_eval": fitted.eval_metrics,
        "champion_eval": champion_eval,
        "labels_known": int(len(state.labels.labels_known_at(cutoff))),
        "suggested_thresholds": fitted.suggested_thresholds,
    }


def _gate(new: Mapping[str, Any], old: Mapping[str, Any] | None, config: FraudConfig) -> Verdict:
    """Promote when the challenger's AP beats the champion's by more than ``min_improvement``."""
    ap_new = new["average_precision"]
    if old is None:
        return Verdict(True, "no champion to compare with")
    ap_old = old["average_precision"]
    need = config.training.min_improvement
    if np.isnan(ap_new):
        return Verdict(False, "the matured period has one class only: no AP, kept the champion")
    if np.isnan(ap_old) or ap_new > ap_old + need:
        return Verdict(
            True, f"challenger AP {ap_new:.4f} beat the champion's {ap_old:.4f} on the same matured period"
        )
    return Verdict(
        False, f"challenger AP {ap_new:.4f} did not beat the champion's {ap_old:.4f} (+{need} needed): kept the champion"
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The retrain job: the fraud half of mlsd.platform.retraining.retrain


@dataclass
class _Payload:
    state: FraudDirs
    tx: pd.DataFrame
    cutoff: int
    fitted: Fitted | None = None
    config: FraudConfig | None = None  # the run's (a short history evaluates on fewer days)


@dataclass
class FraudRetrainSteps:
    """The fraud :class:`~mlsd.platform.retraining.RetrainSteps`: a window ending at ``run_date``'s
    end, labels known then, a challenger fitted on them and a gate on the latest matured period."""

    config: FraudConfig | None = None
    sequence: bool = False
    lgbm_params: Mapping[str, Any] | None = field(default_factory=lambda: dict(LGBM_PARAMS))
    seed: int = 0
    seq_epochs: int = 8
    system: str = "fraud"
    model: str = MODEL_NAME
    # "local" (one process) or "dask": LightGBM over a Dask cluster (dask_scheduler, else a
    # LocalCluster of dask_workers processes on loopback) for a frame beyond one machine
    engine: str = "local"
    dask_scheduler: str | None = None
    dask_workers: int = 2

    def window(self, dirs: SystemDir, run_date: dt.date | None, champion: Any, *, progress: bool) -> Window:
        from mlsd.platform.registry import fingerprint

        state = FraudDirs(dirs, self.config)
        tx = read_transactions(state)
        first_day = int(tx["ts"].min()) // DAY * DAY
        # imported data was exported at `as_of` (its latest label): the labels up to then are known,
        # so the cut-off may lie after the last payment; simulated data knows no later than its last day
        last_ts = max(int(tx["ts"].max()), int(_as_of(state) or 0))
        last_day = last_ts // DAY * DAY
        delay_days = state.config.training.label_delay_days
        earliest = first_day + MIN_HISTORY_DAYS * DAY
        short = earliest > last_day
        if short:  # a short history (one real week): evaluate on its last days, train on the rest
            earliest = first_day + (delay_days + MIN_SHORT_MATURED_DAYS) * DAY
        if earliest > last_day:
            raise InputError(
                "--workdir", str(dirs.root), f"holds {(last_day - first_day) // DAY + 1} days of payments and labels",
                f"a fraud model needs {delay_days + MIN_SHORT_MATURED_DAYS + 1}+ days (label delay + "
                f"{MIN_SHORT_MATURED_DAYS} matured days), {MIN_HISTORY_DAYS + 1}+ for a full evaluation week: "
                f"import more days (mlsd fraud import --workdir {dirs.root} ...) or "
                f"mlsd fraud simulate --workdir {dirs.root} --days 35",
            )  # fmt: skip
        run_date = resolve_run_date(
            run_date, _date(earliest), _date(last_day),
            what=f"the days with {(earliest - first_day) // DAY} days of history before them "
            f"(data from {_date(first_day)})",
        )  # fmt: skip
        day = int(pd.Timestamp(run_date).tz_localize("UTC").timestamp())
        cutoff = min(day + DAY - 1, last_ts)
        config = state.config
        if short:
            matured = (min(cutoff - delay_days * DAY, int(tx["ts"].max())) - first_day) // DAY
            eval_days = max(1, min(config.training.eval_days, matured // 3))
            config = dataclasses.replace(
                config, training=dataclasses.replace(config.training, eval_days=eval_days)
            )
            if progress:
                print(
                    f"fraud: {matured} matured days of history: evaluating on the last {eval_days}, "
                    f"training on the {matured - eval_days} before (a full run needs {MIN_HISTORY_DAYS + 1}+ days)",
                    flush=True,
                )
        window_tx = tx.loc[tx["ts"] <= cutoff].reset_index(drop=True)
        settings = {
            "cutoff": cutoff,
            "sequence": self.sequence,
            "lgbm_params": dict(self.lgbm_params or {}),
            "drop_features": [],
            "label_delay_days": state.config.training.label_delay_days,
            **({"eval_days": config.training.eval_days} if short else {}),
            **({"engine": self.engine} if self.engine != "local" else {}),
        }
        seen = None if champion is None else champion.params.get("cutoff")
        backfill = seen is not None and int(seen) > cutoff
        return Window(
            run_date, fingerprint(window_tx[["tx_id", "ts", "amount"]]), settings,
            data=_Payload(state, window_tx, cutoff, config=config), backfill=backfill,
            backfill_reason=f"backfill: the champion was trained up to {_day(int(seen))}, after this "
            "window; registered as challenger only (gating it would leak)" if backfill else "",
        )  # fmt: skip

    def train(self, window: Window, out: Path, *, progress: bool) -> Trained:
        payload: _Payload = window.data
        state = payload.state
        # the label events known at the cut-off (idempotent); later ones stay invisible to training
        state.ingest_labels(payload.tx, known_at=payload.cutoff)
        if progress:
            print(f"fraud: training on labels known at {_day(payload.cutoff)} 23:59", flush=True)
            missing = [c for c in CONTEXT_COLUMNS if c not in payload.tx.columns]
            if missing:  # said once per run; the model card lists the features used and dropped
                print(
                    f"fraud: the payments have no {', '.join(missing)}: training without the features "
                    "that need them (device, IP, e-mail, ring, geo); see features_dropped in the registry",
                    flush=True,
                )
        with contextlib.ExitStack() as stack:
            client = None
            if self.engine == "dask":
                from mlsd.fraud.distributed_training import dask_client

                client = stack.enter_context(dask_client(self.dask_scheduler, self.dask_workers))
            payload.fitted = fitted = fit(
                payload.tx, state.labels, payload.cutoff, payload.config or state.config,
                sequence=self.sequence, seed=self.seed, seq_epochs=self.seq_epochs,
                lgbm_params=self.lgbm_params, dask_client=client,
            )  # fmt: skip
        save_artifact(fitted, out)
        return Trained(
            out,
            params={**fitted.params, "alias": "challenger"},
            metrics={"eval": fitted.eval_metrics, "suggested_thresholds": fitted.suggested_thresholds},
        )

    def gate(self, window: Window, challenger: Any, champion: Any, *, progress: bool) -> Verdict:
        """Champion and challenger on the same matured period (labels as known at the cut-off)."""
        payload: _Payload = window.data
        state = payload.state
        old = ModelScorer(
            _load(state, champion.version), version=int(champion.version)
        )  # the champion, on its own feature set
        champion_eval = score_eval(payload.fitted, old)
        verdict = _gate(payload.fitted.eval_metrics, champion_eval, state.config)
        verdict.reason = f"v{challenger.version} vs champion v{champion.version}: {verdict.reason}"
        verdict.metrics = {
            "challenger_eval": payload.fitted.eval_metrics,
            "champion_eval": champion_eval,
            "eval_window": [_day(t) for t in payload.fitted.frame.eval_window],
        }
        return verdict


def _load(state: FraudDirs, version: int) -> Any:
    from mlsd.fraud.engine import load_model

    return load_model(state.registry.artifact_path(MODEL_NAME, int(version)))


def _date(ts: int) -> dt.date:
    return pd.Timestamp(int(ts), unit="s").date()


def require_transactions(state: FraudDirs) -> Path:
    """``W/fraud/data/transactions.parquet``, or an InputError naming the command that makes it."""
    root = state.dirs.root
    if not state.transactions_path.is_file():
        raise InputError(
            "--workdir", str(root), f"holds no fraud payments ({state.transactions_path})",
            f"import them (mlsd fraud import --format handbook|csv|parquet --path P --workdir {root}) "
            f"or simulate them (mlsd fraud simulate --workdir {root})",
        )  # fmt: skip
    return state.transactions_path


def _as_of(state: FraudDirs) -> int | None:
    """When imported data was known up to (``imports.json``); None for simulated data."""
    from mlsd.fraud.contract import read_manifest

    manifest = read_manifest(state.dirs.data)
    return None if manifest is None else manifest.get("as_of")


def read_transactions(state: FraudDirs) -> pd.DataFrame:
    """The workdir's payments, validated (see :func:`require_transactions`)."""
    from mlsd.fraud.data import validate_transactions

    return validate_transactions(pd.read_parquet(require_transactions(state)))


def train(
    dirs: SystemDir,
    run_date: dt.date | None = None,
    *,
    config: FraudConfig | None = None,
    sequence: bool = False,
    lgbm_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    engine: str = "local",
    dask_scheduler: str | None = None,
    dask_workers: int = 2,
) -> dict[str, Any]:
    """``mlsd fraud train``: train on ``dirs.data`` up to ``run_date`` (default: the data's last day),
    register, promote when there is no champion yet (otherwise the gate decides). The run's report.

    ``engine="dask"``: LightGBM trained over a Dask cluster (``dask_scheduler``, else a LocalCluster
    of ``dask_workers`` processes on loopback); the model registered is an ordinary one."""
    if engine not in ("local", "dask"):
        raise InputError("--engine", engine, "unknown training engine", "use local or dask")
    if engine == "dask":
        from mlsd.fraud.distributed_training import _require_dask

        _require_dask()  # before any work: the fix names the extra
    steps = FraudRetrainSteps(
        config=config, sequence=sequence, seed=seed,
        lgbm_params=dict(LGBM_PARAMS) if lgbm_params is None else dict(lgbm_params),
        engine=engine, dask_scheduler=dask_scheduler, dask_workers=dask_workers,
    )  # fmt: skip
    require_transactions(FraudDirs(dirs, config))  # no data: the fix, before the job creates the layout
    return platform_retrain(steps, dirs, run_date, progress=progress)


def retrain(dirs: SystemDir, run_date: dt.date | None = None, *, progress: bool = True) -> dict[str, Any]:
    """The weekly scheduled job (``mlsd pipeline run weekly``): :func:`train` with the job's settings."""
    return train(dirs, run_date, progress=progress)


# ---------------------------------------------------------------------------------------------------
# Thresholds and rule backtests over labelled history


@dataclass
class TuningWindow:
    """The payments thresholds are tuned on, and their labels as known at the tuning time ``at``.

    ``rows`` masks the payments in ``(start, end]``: after the model's training window (out of sample)
    and matured (``end <= at - label delay``). ``y`` holds their labels as known at ``at``: a fraud
    label recorded by then is 1, any other matured payment 0 -- a chargeback arriving after ``at``
    is not seen, as it would not have been by whoever tuned then.
    """

    rows: np.ndarray
    y: np.ndarray
    start: int
    end: int
    at: int
    left_out_training: int
    left_out_unmatured: int

    def summary(self) -> dict[str, Any]:
        """What the thresholds were tuned on, for the command's output and ``thresholds.json``."""
        return {
            "tuned_on": {
                "first_day": _day(self.start + 1),
                "last_day": _day(self.end),
                "labels_known_at": _day(self.at),
                "payments": int(self.rows.sum()),
                "fraud_labels_known": int(self.y.sum()),
                "left_out_training_days": self.left_out_training,
                "left_out_unmatured": self.left_out_unmatured,
            }
        }


def tuning_window(
    tx: pd.DataFrame, known: pd.DataFrame, at: int, *, delay_s: int, trained_until: int, valid_days: int = 7
) -> TuningWindow:
    """The last ``valid_days`` of matured, out-of-sample payments and their labels known at ``at``.

    ``known`` is ``labels_known_at(at)`` (never the simulator's ``fraud`` column: ground truth of the
    last days is what the business did not know yet). Payments up to ``trained_until`` (the end of the
    model's training window) are left out -- thresholds chosen on the days a model learnt are
    optimistic -- and so are payments after ``at - delay_s``, whose labels may still be on the way
    (they are not counted as legitimate).

    Examples:
        >>> tx = pd.DataFrame({"tx_id": ["a", "b", "c", "d"], "ts": [0, 2 * DAY, 3 * DAY, 9 * DAY]})
        >>> known = pd.DataFrame({"tx_id": ["c"], "label": [1], "label_ts": [4 * DAY], "source": ["x"]})
        >>> w = tuning_window(tx, known, 10 * DAY, delay_s=7 * DAY, trained_until=DAY)
        >>> w.rows.tolist(), w.y.tolist(), w.left_out_training, w.left_out_unmatured
        ([False, True, True, False], [0.0, 1.0], 1, 1)
    """
    from mlsd.fraud.labels import training_labels

    ts = tx["ts"].to_numpy()
    end = min(int(at) - int(delay_s), int(ts.max()))
    start = max(int(trained_until), end - valid_days * DAY)
    rows = (ts > start) & (ts <= end)
    # every row matured (ts <= at - delay_s): a 0/1 label each, no NaN
    y = training_labels(tx["tx_id"].to_numpy()[rows], ts[rows], known, at, delay_s=delay_s)
    return TuningWindow(
        rows, y, start, end, int(at), int((ts <= trained_until).sum()), int((ts > end).sum())
    )  # fmt: skip


def tune_on_history(
    tx: pd.DataFrame,
    ws: FraudDirs,
    *,
    valid_days: int = 7,
    max_fpr: float = 0.01,
    capacity: int = 200,
    save: bool = True,
    at: int | None = None,
) -> dict[str, Any]:
    """Score the champion's last ``valid_days`` matured, out-of-sample days and pick thresholds there.

    The labels are those known at ``at`` (default: the data's latest time, ``as_of`` for imported
    data), never the ``fraud`` column: see :func:`tuning_window`. The window starts after the
    champion's training window. Each payment gets its features as of its own ``ts`` (the ring
    features from links and labels before it, not the champion's graph, which may know labels that
    arrived after the payment)."""
    from mlsd.fraud.decision import tune_thresholds
    from mlsd.fraud.features import compute_features

    champion = ws.scorer("champion")
    if champion is None:
        raise InputError("--workdir", str(ws.root), "no champion model", "run `mlsd fraud train` first")
    at = max(int(tx["ts"].max()), int(_as_of(ws) or 0)) if at is None else int(at)
    ws.ingest_labels(tx, known_at=at)  # idempotent: the label events known at `at`, and no later ones
    window = tuning_window(
        tx, ws.labels_known_at(at), at, delay_s=ws.config.training.label_delay_days * DAY,
        trained_until=_trained_until(ws), valid_days=valid_days,
    )  # fmt: skip
    _require_both_classes(window, ws)
    feats = compute_features(tx, ws.feature_config())
    ring = ws.ring("champion")
    if ring is not None:
        from mlsd.fraud.graph import ring_features_as_of

        feats = pd.concat(
            [feats, ring_features_as_of(tx, max_share=ring.max_share).set_axis(feats.index)], axis=1
        )
    valid = window.rows
    p = champion.predict(feats.loc[valid])
    ts = tx["ts"].to_numpy()
    result = tune_thresholds(
        window.y, p, (ts[valid] - window.start) // DAY, max_fpr=max_fpr, daily_capacity=capacity,
        amount=tx["amount"].to_numpy()[valid],
    ).to_dict()  # fmt: skip
    result["model_version"] = champion.version
    result.update(window.summary())
    if save:
        from mlsd.platform.jsonio import write_json

        write_json(ws.thresholds_path, result)
    return result


def _trained_until(ws: FraudDirs) -> int:
    """The last payment time the champion trained on (its model card's ``train_window``)."""
    params = ws.model_version("champion").params
    window = params.get("train_window") or [None, params.get("cutoff")]
    if window[1] is None:
        raise InputError(
            "--workdir", str(ws.root), "the champion's model card has no training window",
            f"retrain it (mlsd fraud train --workdir {ws.root}) so thresholds can be tuned out of sample",
        )  # fmt: skip
    return int(window[1])


def _require_both_classes(window: TuningWindow, ws: FraudDirs) -> None:
    """No matured out-of-sample fraud (or legit) known yet: say which days and what to do."""
    n, frauds = int(window.rows.sum()), int(window.y.sum())
    if n and 0 < frauds < n:
        return
    raise InputError(
        "--valid-days", f"{_day(window.start + 1)}..{_day(window.end)}",
        f"the matured days after the champion's training window hold {n} payments, {frauds} with a fraud "
        f"label known at {_day(window.at)}: nothing to tune on",
        f"train at an earlier date (mlsd fraud train --workdir {ws.root} --date ...) so its evaluation "
        "days stay out of training, or import later days and labels",
    )  # fmt: skip


def backtest_history(rules: Any, tx: pd.DataFrame) -> pd.DataFrame:
    """Per-rule hit rate, precision and recall over labelled history (features computed offline)."""
    from mlsd.fraud.features import compute_features
    from mlsd.fraud.rules import backtest

    if "fraud" not in tx.columns:
        raise InputError(
            "--data", "", "backtest needs labelled payments (a fraud column)", "use labelled history"
        )
    feats = compute_features(tx, feature_config_for(tx))
    frame = {c: tx[c].to_numpy() for c in tx.columns if c not in ("fraud", "scenario", "label_ts")}
    frame.update({c: feats[c].to_numpy() for c in feats.columns})
    return backtest(rules, pd.DataFrame(frame), tx["fraud"].to_numpy())
