"""The online scoring pipeline and the feedback loop (retraining, champion/challenger, shadow scoring).

Online, one micro-batch of validated payments flows top to bottom::

    features (update windows, idempotent on tx_id) -> rules -> model (skippable) -> decision
        -> shadow (challenger scores, logged only) -> review queue (review decisions)

The feature update always runs: skipping it would corrupt the windows for every later payment. The
model is the stage the deadline may skip: it runs only when the time left covers its recent cost
(an exponential moving average per row) times a safety factor; otherwise the batch is decided by
rules alone and every response says so (``rules_only`` and ``skipped``).

With an :class:`~mlsd.platform.experiments.client.ExperimentClient` (``experiments=``), every fraud
experiment (``mode="shadow"``) assigns the batch's units (its ``unit`` column, e.g. ``card_id``), keeps
the champion's decision for everyone, scores every other arm's model (its registry ``alias``, loaded
next to the champion) for the units in the experiment, derives the decision that arm *would* have
taken (same rules, the arm's thresholds) and logs the exposures once the batch was decided.

Offline, :func:`retrain` builds a training set from the label store *as known at the cut-off*,
fits a challenger, registers it, scores champion and challenger on the latest matured period and
promotes the challenger only if it wins (see ``docs/fraud.md``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlsd.fraud.config import FraudConfig, ServiceConfig
from mlsd.fraud.decision import REVIEW, DecisionEngine, Decisions
from mlsd.fraud.rules import RuleEngine, RuleHits
from mlsd.platform.serving import Deadline, StageTimer

log = logging.getLogger(__name__)

SYSTEM = "fraud"
# what an experiment arm's ``params`` may set (documented in docs/fraud.md):
# thresholds -- {"block": .., "review": ..}: the arm decides with these instead of the live ones
ARM_PARAMS = frozenset({"thresholds"})
# Payment fields an experiment may randomise on (required fields: every payment has them).
UNIT_COLUMNS = ("card_id", "terminal_id")


class FeatureEngine(Protocol):
    """Online features (:class:`mlsd.fraud.features.FeatureEngine`): fold a micro-batch into the
    windows, idempotent on ``tx_id``, and return each payment's features (rows in batch order)."""

    def update_batch(self, frame: pd.DataFrame) -> pd.DataFrame: ...


class Scorer(Protocol):
    """A fitted model as the pipeline sees it (see :class:`ModelScorer`)."""

    version: str | None
    feature_names: tuple[str, ...]

    def predict(self, features: pd.DataFrame) -> np.ndarray: ...

    def contributions(self, features: pd.DataFrame) -> np.ndarray: ...


@dataclass
class ShadowLog:
    """Challenger scores next to the champion's, for offline comparison; never used to decide."""

    path: Path | None = None
    keep: int = 10_000
    rows: deque = field(default_factory=lambda: deque(maxlen=10_000))
    disagreements: int = 0
    scored: int = 0

    def record(
        self,
        tx_id: np.ndarray,
        champion: Decisions,
        challenger_p: np.ndarray,
        challenger_band: np.ndarray,
        version: str | None,
    ) -> None:
        agree = champion.band == challenger_band
        self.scored += len(tx_id)
        self.disagreements += int((~agree).sum())
        batch = pd.DataFrame(
            {
                "tx_id": tx_id,
                "champion_p": champion.probability,
                "challenger_p": challenger_p,
                "champion_band": champion.band,
                "challenger_band": challenger_band,
                "challenger_version": version,
            }
        )
        self.rows.extend(batch.to_dict("records"))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            batch.to_json(self.path, orient="records", lines=True, mode="a")


@dataclass
class ScoredBatch:
    """What one pass of the pipeline produced for a batch."""

    tx_id: np.ndarray
    amount: np.ndarray
    decisions: Decisions
    timer: StageTimer
    model_version: str | None
    shadow_probability: np.ndarray | None = None
    experiments: dict[str, ShadowArms] = field(default_factory=dict)
    features: pd.DataFrame | None = None  # the model's input rows (for monitoring samples)

    def records(self) -> list[dict[str, Any]]:
        records = self.decisions.records(self.tx_id.tolist())
        for name, result in self.experiments.items():
            names = np.asarray(result.arm_names, dtype=object)
            for i in np.flatnonzero(result.arm >= 0).tolist():
                records[i].setdefault("experiments", []).append(
                    {"name": name, "arm": names[result.arm[i]], "mode": "shadow"}
                )
        return records

    def response(self) -> dict[str, Any]:
        """Batch-level metadata: timings, skipped stages, rule and model versions, experiments."""
        out = {
            **self.timer.to_dict(),
            "rules_version": self.decisions.rules_version,
            "model_version": self.model_version,
            "rules_only": self.decisions.rules_only,
        }
        if self.experiments:
            out["experiments"] = {
                name: {"mode": "shadow", "units_in": int((r.arm >= 0).sum()), "arms": list(r.arm_names)}
                for name, r in self.experiments.items()
            }
        return out


@dataclass
class ShadowArms:
    """One shadow experiment on one batch: per row the assigned arm index (-1: not in it) and, per
    arm name, the probability and decision that arm gave (NaN / -1 outside the experiment). Arm 0's
    decision is the live one when arm 0 is the champion; the others are counterfactual."""

    arm: np.ndarray
    arm_names: tuple[str, ...]
    probability: dict[str, np.ndarray]
    decision: dict[str, np.ndarray]


class FraudPipeline:
    """Score micro-batches: features -> rules -> model -> decision (-> shadow, review queue).

    Thread-safe: the feature update (stateful) runs under a lock; a service may call :meth:`score`
    from many request threads.
    """

    def __init__(
        self,
        features: FeatureEngine,
        rules: RuleEngine,
        champion: Scorer | None = None,
        *,
        decision: DecisionEngine | None = None,
        challenger: Scorer | None = None,
        config: ServiceConfig | None = None,
        review_queue: Any = None,
        ring: Any = None,
        shadow_log: ShadowLog | None = None,
        explain: bool = True,
        experiments: Any = None,
        variants: Mapping[str, Scorer] | None = None,
        metrics_registry: Any = None,
    ) -> None:
        self.features = features
        self.rules = rules
        self.champion = champion
        self.challenger = challenger
        self.config = config or ServiceConfig()
        self.decision = decision or DecisionEngine(top_reasons=self.config.top_reasons)
        self.review_queue = review_queue
        self.shadow_log = shadow_log if shadow_log is not None else ShadowLog()
        self.explain = explain
        self.ring = ring  # RingGraph fitted in batch with the champion; looked up per payment
        self.variants = dict(variants or {})  # registry alias -> Scorer, for experiment arms
        self.metrics_registry = metrics_registry  # None: the services' Prometheus registry
        self.experiments = experiments
        self._lock = threading.Lock()
        # ms per payment of the model stage, learnt online; the first guess is deliberately cheap so a
        # fresh service tries the model rather than falling back on its first request.
        self._model_ms_per_row = 0.05
        self._model_ms_fixed = 1.0
        self._explain_ms_per_row = 1.0

    @property
    def experiments(self) -> Any:
        """The :class:`~mlsd.platform.experiments.client.ExperimentClient` (or None)."""
        return self._experiments

    @experiments.setter
    def experiments(self, client: Any) -> None:
        """Attach a client: every ``system == "fraud"`` experiment must be ``mode="shadow"`` (a fraud
        challenger never decides a payment while it is evaluated) and every arm's alias must be loaded
        (``variants``), checked here at start-up rather than on the first payment."""
        from mlsd.platform.errors import InputError

        self._experiments = client
        self._fraud_experiments: list[Any] = []
        if client is None:
            return
        for exp in client.config.experiments.values():
            if exp.system != SYSTEM:
                continue
            if exp.mode != "shadow":
                raise InputError(
                    f"experiments.{exp.name}.mode", exp.mode, "fraud experiments run in shadow mode",
                    "set mode: shadow (the champion decides, the other arms are scored and logged)",
                )  # fmt: skip
            if exp.unit not in UNIT_COLUMNS:
                raise InputError(
                    f"experiments.{exp.name}.unit", exp.unit, "is not a payment field a unit can be",
                    f"use one of {', '.join(UNIT_COLUMNS)} (card_id: one cardholder)",
                )  # fmt: skip
            for arm in exp.arms:
                # the champion's own alias needs no extra model (a rules-only service scores nothing)
                if arm.alias not in (None, self.config.champion_alias) and self._scorer_for(arm) is None:
                    raise InputError(
                        f"experiments.{exp.name}.arms.{arm.name}.alias", arm.alias, "no model loaded for it",
                        f"register a model under alias {arm.alias!r} or load it with Workspace.pipeline",
                    )  # fmt: skip
                unknown = sorted(set(arm.params) - ARM_PARAMS)
                if unknown:
                    raise InputError(
                        f"experiments.{exp.name}.arms.{arm.name}.params.{unknown[0]}", arm.params[unknown[0]],
                        "unknown fraud arm parameter", f"use one of {sorted(ARM_PARAMS)}",
                    )  # fmt: skip
                _check_thresholds(arm.params.get("thresholds"), f"experiments.{exp.name}.arms.{arm.name}")
            self._fraud_experiments.append(exp)

    def _scorer_for(self, arm: Any) -> Scorer | None:
        """The model an arm runs: its alias's scorer, the champion when the alias is the champion's."""
        if arm.alias is None or arm.alias == self.config.champion_alias:
            return self.champion
        return self.variants.get(arm.alias)

    def _engine_for(self, arm: Any) -> DecisionEngine:
        """The decision engine of an arm: the live one, or the arm's ``thresholds`` param."""
        chosen = arm.params.get("thresholds")
        if not chosen:
            return self.decision
        from mlsd.fraud.config import Thresholds

        t = {**vars(self.decision.thresholds), **dict(chosen)}
        return DecisionEngine(Thresholds(block=float(t["block"]), review=float(t["review"])))

    def expected_model_ms(self, n: int) -> float:
        return self._model_ms_fixed + self._model_ms_per_row * n

    def _learn_cost(self, n: int, ms: float) -> None:
        alpha = 0.2
        if n <= 4:
            self._model_ms_fixed = (1 - alpha) * self._model_ms_fixed + alpha * ms
        else:
            per_row = max(ms - self._model_ms_fixed, 0.0) / n
            self._model_ms_per_row = (1 - alpha) * self._model_ms_per_row + alpha * per_row

    def score(
        self, tx: pd.DataFrame, *, deadline: Deadline | None = None, context: pd.DataFrame | None = None
    ) -> ScoredBatch:
        """Decide every payment of ``tx`` (validated schema frame). ``context`` adds rule-only columns."""
        timer = StageTimer(SYSTEM)
        n = len(tx)
        with timer.stage("features"), self._lock:
            matrix, names = self._feature_matrix(tx)
        if self.ring is not None:
            with timer.stage("ring"):
                ring = self.ring.lookup_arrays(tx)
                if ring:
                    matrix = np.column_stack([matrix, *ring.values()])
                    names = [*names, *ring]
        # one float block: the DataFrame wraps the matrix without copying, and every column the
        # rules or the model read is a view of it
        feats = pd.DataFrame(matrix, columns=names, copy=False)
        frame = _rule_frame(tx, matrix, names, context)
        with timer.stage("rules"):
            hits: RuleHits = self.rules.evaluate(frame)
        probability = contributions = None
        names: tuple[str, ...] = ()
        model = self.champion
        if model is None:
            timer.skip("model", "no model loaded: rules only")
        elif deadline is not None and not deadline.allows(self.expected_model_ms(n) * self.config.safety):
            timer.skip(
                "model",
                f"deadline: {deadline.remaining_ms():.1f} ms left, model needs "
                f"~{self.expected_model_ms(n):.1f} ms: rules only",
            )
        else:
            before = timer.timings_ms.get("model", 0.0)
            with timer.stage("model"):
                probability = model.predict(feats)
            self._learn_cost(n, timer.timings_ms["model"] - before)
            names = model.feature_names
            contributions = self._explain(model, feats, probability, hits, deadline, timer)
        with timer.stage("decision"):
            decisions = self.decision.decide(hits, probability, contributions, names)
        if probability is not None:
            self._observe("scores", probability, "champion")
        self._observe("decisions", decisions.labels, None)
        experiments: dict[str, ShadowArms] = {}
        if self._fraud_experiments:
            experiments = self._shadow_experiments(tx, feats, hits, decisions, deadline, timer)
        shadow_p = None
        if (
            self.challenger is not None
            and self.config.shadow
            and probability is not None
            and not self._fraud_experiments  # an experiment's arms replace the blanket shadow
        ):
            if deadline is None or deadline.allows(self.expected_model_ms(n) * self.config.safety):
                with timer.stage("shadow"):
                    shadow_p = self.challenger.predict(feats)
                    band = self.decision.decide(hits, shadow_p).band
                    self.shadow_log.record(
                        tx["tx_id"].to_numpy(), decisions, shadow_p, band, self.challenger.version
                    )
            else:
                timer.skip("shadow", "deadline")
        if self.review_queue is not None:
            to_review = decisions.decision == REVIEW
            if to_review.any():
                with timer.stage("review_queue"):
                    self.enqueue_reviews(tx, decisions, to_review)
        if experiments:
            # exposures once the batch was decided: a unit counts only if its arms were really scored
            with timer.stage("expose"):
                ts = tx["ts"].to_numpy()
                for exp in self._fraud_experiments:
                    result = experiments.get(exp.name)
                    if result is None:
                        continue
                    inside = np.flatnonzero(result.arm >= 0)
                    if inside.size:
                        units = tx[exp.unit].to_numpy()[inside]
                        self._experiments.expose(exp.name, units, result.arm[inside], ts=ts[inside])
        return ScoredBatch(
            tx_id=tx["tx_id"].to_numpy(),
            amount=tx["amount"].to_numpy(dtype=np.float64),
            decisions=decisions,
            timer=timer,
            model_version=None if model is None or probability is None else model.version,
            shadow_probability=shadow_p,
            experiments=experiments,
            features=feats,
        )

    def _observe(self, kind: str, values: np.ndarray, model: str | None) -> None:
        """Prometheus, batch-level (one histogram / counter update per batch, not per payment)."""
        from mlsd.platform.monitoring.metrics import count_decisions, observe_scores

        if kind == "scores":
            observe_scores(SYSTEM, values, model=model or "champion", registry=self.metrics_registry)
        else:
            count_decisions(SYSTEM, values, registry=self.metrics_registry)

    def _shadow_experiments(
        self,
        tx: pd.DataFrame,
        feats: pd.DataFrame,
        hits: RuleHits,
        decisions: Decisions,
        deadline: Deadline | None,
        timer: StageTimer,
    ) -> dict[str, ShadowArms]:
        """Assign the batch's units to each fraud experiment and score every arm for those in it.

        The champion's probability and decision are reused for any arm that runs the champion with the
        live thresholds (arm 0 normally; both arms of an A/A test), so such arms cost nothing. A model
        that did not run (rules only) or a deadline that leaves no time for the extra models means
        nothing is scored *and nothing is exposed*: those units stay out of the comparison rather than
        entering it with a made-up score.
        """
        out: dict[str, ShadowArms] = {}
        n = len(tx)
        if decisions.rules_only:
            timer.skip("shadow", "champion did not run: no experiment scoring")
            return out
        for exp in self._fraud_experiments:
            with timer.stage("assign"):
                arm_idx = np.asarray(self._experiments.assign(exp.name, tx[exp.unit].to_numpy()), np.int64)
            inside = np.flatnonzero(arm_idx >= 0)
            if inside.size == 0:
                continue
            extra = [a for a in exp.arms if self._scorer_for(a) is not self.champion]
            if (
                extra
                and deadline is not None
                and not deadline.allows(self.expected_model_ms(inside.size) * len(extra) * self.config.safety)
            ):
                timer.skip("shadow", f"deadline: experiment {exp.name} not scored")
                continue
            probability: dict[str, np.ndarray] = {}
            decision: dict[str, np.ndarray] = {}
            with timer.stage("shadow"):
                sub = feats.iloc[inside] if inside.size < n else feats
                for arm in exp.arms:
                    scorer = self._scorer_for(arm)
                    engine = self._engine_for(arm)
                    p = np.full(n, np.nan)
                    if scorer is self.champion:
                        p[inside] = decisions.probability[inside]
                    else:
                        p[inside] = scorer.predict(sub)
                    if scorer is self.champion and engine is self.decision:
                        d = decisions.decision.copy()
                    else:
                        d = engine.decision_only(hits, p)
                    d[arm_idx < 0] = -1
                    probability[arm.name], decision[arm.name] = p, d
                out[exp.name] = ShadowArms(arm_idx, tuple(exp.arm_names), probability, decision)
            for arm in exp.arms[1:]:
                self._observe("scores", probability[arm.name][inside], arm.name)
        return out

    def _feature_matrix(self, tx: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """The feature engine's output as a matrix + column names (its fast path when it has one)."""
        update_matrix = getattr(self.features, "update_matrix", None)
        if update_matrix is not None:
            return update_matrix(tx), list(self.features.feature_names)  # type: ignore[attr-defined]
        feats = self.features.update_batch(tx)
        return feats.to_numpy(dtype=np.float64), list(feats.columns)

    def warm_up(self) -> None:
        """Run the models once on a neutral row (no feature state touched): the first real request
        must not pay one-off costs (lazy allocations, first-call set-up) against its deadline."""
        names = list(getattr(self.features, "feature_names", []))
        if self.ring is not None:
            from mlsd.fraud.graph import FEATURES as RING_FEATURES

            names += list(RING_FEATURES)
        if not names:
            return
        row = pd.DataFrame(np.zeros((1, len(names))), columns=names)
        for model in (self.champion, self.challenger):
            if model is not None:
                model.predict(row)
                model.contributions(row)

    def _explain(
        self,
        model: Scorer,
        feats: pd.DataFrame,
        probability: np.ndarray,
        hits: RuleHits,
        deadline: Deadline | None,
        timer: StageTimer,
    ) -> np.ndarray | None:
        """Per-feature contributions for the payments someone will look at (review or block).

        TreeSHAP costs ~100x a prediction per row, and an approved payment's reasons are read by
        nobody, so only suspicious rows are explained; under deadline pressure none are.
        """
        if not self.explain:
            return None
        t = self.decision.thresholds
        need = (probability >= t.review) | (hits.severity >= 2)
        if not need.any():
            return None
        if deadline is not None and not deadline.allows(
            self._explain_ms_per_row * need.sum() * self.config.safety
        ):
            timer.skip("explain", "deadline: reasons without model contributions")
            return None
        with timer.stage("explain"):
            part = np.asarray(model.contributions(feats.iloc[np.flatnonzero(need)]), dtype=np.float64)
        self._explain_ms_per_row = (
            0.8 * self._explain_ms_per_row + 0.2 * timer.timings_ms["explain"] / need.sum()
        )
        out = np.zeros((len(feats), part.shape[1]))
        out[need] = part
        return out

    def enqueue_reviews(self, tx: pd.DataFrame, decisions: Decisions, mask: np.ndarray) -> int:
        idx = np.nonzero(mask)[0]
        reasons = decisions.reasons()
        prob = np.nan_to_num(decisions.probability, nan=0.5)  # rules-only reviews: unknown -> neutral
        cases = [
            {
                "tx_id": tx["tx_id"].iat[i],
                "probability": float(prob[i]),
                "amount": float(tx["amount"].iat[i]),
                "reasons": reasons[i],
                "ts": int(tx["ts"].iat[i]),
                "terminal_id": tx["terminal_id"].iat[i],
            }
            for i in idx.tolist()
        ]
        return self.review_queue.enqueue(cases)

    def add_labels(self, tx_id: list[Any], terminal_id: list[Any], label_ts: list[int]) -> int:
        """Fraud labels that just became known (review, chargeback) -> terminal-risk windows, at once."""
        add = getattr(self.features, "add_labels", None)
        if add is None or not tx_id:
            return 0
        frame = pd.DataFrame({"tx_id": tx_id, "terminal_id": terminal_id, "label_ts": label_ts, "fraud": 1})
        with self._lock:
            return int(add(frame))

    def score_records(self, tx: pd.DataFrame) -> list[dict[str, Any]]:
        """The stream worker's scorer: decisions as JSON-ready dicts."""
        batch = self.score(tx)
        meta = {"rules_version": batch.decisions.rules_version, "model_version": batch.model_version}
        return [{**r, **meta} for r in batch.records()]


class _RuleColumns(Mapping):
    """Columns the rules may name: raw payment fields, features, request context.

    Read lazily: converting every payment column (strings included) to numpy on every micro-batch
    costs more than the rules themselves, and a rule set names only a few of them.
    """

    def __init__(
        self, tx: pd.DataFrame, matrix: np.ndarray, names: list[str], context: pd.DataFrame | None
    ) -> None:
        self._sources: dict[str, Any] = dict.fromkeys(tx.columns, tx)
        self._features = {name: k for k, name in enumerate(names)}
        self._sources.update(dict.fromkeys(names, matrix))
        if context is not None:
            self._sources.update(dict.fromkeys(context.columns, context))
        self._matrix = matrix
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            source = self._sources[name]
            if source is self._matrix:
                self._cache[name] = self._matrix[:, self._features[name]]
            else:
                self._cache[name] = source[name].to_numpy()
        return self._cache[name]

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def _check_thresholds(value: Any, where: str) -> None:
    """An arm's ``thresholds`` param: ``{block, review}`` with ``0 <= review <= block <= 1``."""
    from mlsd.platform.errors import InputError

    if value is None:
        return
    ok = isinstance(value, Mapping) and set(value) <= {"block", "review"}
    nums = [value.get(k) for k in ("block", "review")] if ok else []
    ok = ok and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in nums)
    if ok:
        block = float(value.get("block", 1.0))
        review = float(value.get("review", 0.0))
        ok = 0.0 <= review <= block <= 1.0
    if not ok:
        raise InputError(
            f"{where}.params.thresholds", value, "must be {block, review} with 0 <= review <= block <= 1",
            "e.g. thresholds: {block: 0.95, review: 0.6}",
        )  # fmt: skip


def _rule_frame(
    tx: pd.DataFrame, matrix: np.ndarray, names: list[str], context: pd.DataFrame | None
) -> Mapping[str, Any]:
    """Columns the rules may name (a lazy mapping: nothing is converted until a rule reads it)."""
    return _RuleColumns(tx, matrix, names, context)


def freeze_heap() -> None:
    """Collect once, then move every object alive now (modules, models, the loaded pipeline) out of
    the garbage collector's reach (``gc.freeze``).

    A long-running scorer holds a few hundred thousand start-up objects that never die; without this
    every full collection re-scans them - a pause of hundreds of ms on a loaded 2-core host, which
    the stream queues behind (p99). Call once, after loading, in a serving process.
    """
    import gc

    gc.collect()
    gc.freeze()


def to_json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(type(value).__name__)


def default_config() -> FraudConfig:
    return FraudConfig()


# ---------------------------------------------------------------------------------------------------
# Models as the pipeline sees them.


class ModelScorer:
    """A fitted :class:`~mlsd.fraud.models.FraudModel` behind the :class:`Scorer` seam.

    ``predict`` returns the calibrated ensemble probability; ``contributions`` LightGBM's
    per-feature contributions (``(n, n_features + 1)``, log-odds, bias last), which the decision
    engine turns into ``MODEL:<feature>`` reason codes.
    """

    def __init__(self, model: Any, version: str | None = None) -> None:
        self.model = model
        self.version = version
        self.feature_names = tuple(model.feature_names_)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict_proba(features), dtype=np.float64)

    def contributions(self, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.contributions(features), dtype=np.float64)


# ---------------------------------------------------------------------------------------------------
# Data and the workspace (registry + label store + review queue + thresholds under one folder).

DAY = 86_400
MODEL_NAME = "fraud"


def load_history(path: str | Path) -> pd.DataFrame:
    """Payments from a simulated folder / Parquet file or the handbook's CSV file(s)."""
    from mlsd.fraud.data import validate_transactions
    from mlsd.fraud.handbook import load_handbook

    path = Path(path)
    if path.is_dir() and (path / "transactions.parquet").exists():
        path = path / "transactions.parquet"
    if path.suffix == ".parquet":
        if not path.exists():
            raise FileNotFoundError(2, "No such file", str(path))
        return validate_transactions(pd.read_parquet(path))
    return load_handbook(path)


def parse_time(value: str | int, field: str = "time") -> int:
    """Epoch seconds from an int or an ISO date/time (UTC)."""
    from mlsd.platform.errors import InputError

    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as err:
        raise InputError(field, value, "not a date", "use YYYY-MM-DD or epoch seconds") from err
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.timestamp())


def feature_config_for(tx: pd.DataFrame) -> Any:
    """The feature set the data supports: the full one, or the handbook's when device/location are absent."""
    from mlsd.fraud.features import FeatureConfig

    return FeatureConfig() if "device_id" in tx.columns else FeatureConfig.handbook()


def _feature_config_by_name(name: str) -> Any:
    from mlsd.fraud.features import FeatureConfig

    return FeatureConfig.handbook() if name == "handbook" else FeatureConfig()


class Workspace:
    """One deployment's state under ``root``: ``registry/``, ``fraud.sqlite`` (labels + review queue),
    ``thresholds.json`` (from ``tune-thresholds``) and ``shadow.jsonl`` (challenger scores)."""

    def __init__(self, root: Path, config: FraudConfig | None = None) -> None:
        from mlsd.platform.registry import ModelRegistry

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = config or FraudConfig()
        thresholds = self.root / "thresholds.json"
        if thresholds.exists():  # chosen by tune-thresholds: they replace the defaults
            chosen = json.loads(thresholds.read_text())
            self.config = FraudConfig.from_dict(
                {
                    **_as_dict(self.config),
                    "thresholds": {"block": chosen["block"], "review": chosen["review"]},
                }
            )
        self.registry = ModelRegistry(self.root / "registry")
        self._queue: Any = None

    @property
    def queue(self) -> Any:
        """The review queue (and ``.labels``), on the configured backend."""
        if self._queue is None:
            from mlsd.fraud.review import open_review_queue

            r = self.config.review
            path = Path(r.sqlite_path)
            self._queue = open_review_queue(
                r.backend,
                sqlite_path=path if path.is_absolute() else self.root / path,
                postgres_dsn=r.postgres_dsn,
                schema=r.postgres_schema,
            )
        return self._queue

    @property
    def labels(self) -> Any:
        return self.queue.labels

    def ingest_labels(self, tx: pd.DataFrame, known_at: int | None = None) -> int:
        """Record the fraud labels of ``tx`` that are known at ``known_at`` (all when None).

        Labels arriving within a day of the payment came from review, later ones from chargebacks.
        Legitimate payments need no event: a payment without a fraud label is taken as legitimate.
        """
        if "fraud" not in tx.columns or "label_ts" not in tx.columns:
            return 0
        mask = (tx["fraud"].to_numpy() == 1) & tx["label_ts"].notna().to_numpy()
        if known_at is not None:
            mask &= tx["label_ts"].to_numpy(np.float64) <= known_at
        frauds = tx.loc[mask]
        label_ts = frauds["label_ts"].to_numpy(np.int64)
        source = np.where(label_ts - frauds["ts"].to_numpy(np.int64) < DAY, "review", "chargeback")
        return self.labels.add(
            frauds["tx_id"].to_numpy(), np.ones(len(frauds), np.int8), label_ts, source.tolist()
        )

    def model_version(self, alias: str) -> Any:
        """The registry's ModelVersion holding ``alias`` (None before the first training)."""
        if MODEL_NAME not in self.registry.names():
            return None
        return self.registry.alias(MODEL_NAME, alias)

    def scorer(self, alias: str) -> ModelScorer | None:
        """The model holding ``alias`` in the registry, or None when no version holds it."""
        mv = self.model_version(alias)
        if mv is None:
            return None
        path = self.registry.artifact_path(MODEL_NAME, mv.version)
        return ModelScorer(load_model(path), version=str(mv.version))

    def ring(self, alias: str = "champion") -> Any:
        """The ring graph saved with the ``alias`` model (None for data without devices/IPs/emails)."""
        from mlsd.fraud.graph import RingGraph

        mv = self.model_version(alias)
        if mv is None:
            return None
        path = self.registry.artifact_path(MODEL_NAME, mv.version) / "ring"
        return RingGraph.load(path) if path.exists() else None

    def feature_config(self) -> Any:
        mv = self.model_version("champion")
        return _feature_config_by_name(mv.params.get("feature_config", "default") if mv else "default")

    def pipeline(
        self,
        *,
        rules_path: str | Path | None = None,
        review: bool = True,
        feature_backend: str = "memory",
        redis_url: str = "redis://127.0.0.1:6379/0",
        redis_prefix: str = "mlsd:fraud:fw:",
        shadow: bool = True,
        experiments: Any = None,
        features: Any = None,
        metrics_registry: Any = None,
    ) -> FraudPipeline:
        """A ready :class:`FraudPipeline`: champion (+ challenger in shadow), rules, features, queue.

        ``experiments``: an ExperimentClient; the registry alias of every arm of its fraud experiments
        is loaded next to the champion. ``features``: an already warmed feature engine to share.
        """
        from mlsd.fraud.decision import DecisionEngine
        from mlsd.fraud.features import FeatureEngine

        svc = self.config.service
        champion = self.scorer(svc.champion_alias)
        challenger = self.scorer(svc.challenger_alias) if shadow and svc.shadow else None
        if challenger is not None and champion is not None and challenger.version == champion.version:
            challenger = None  # the challenger won and is the champion now: nothing to shadow
        if experiments is not None and any(
            e.system == SYSTEM for e in experiments.config.experiments.values()
        ):
            challenger = None  # the shadow experiment scores the arms; the legacy shadow would score twice
        variants: dict[str, Any] = {}
        if experiments is not None:
            for exp in experiments.config.experiments.values():
                for arm in exp.arms if exp.system == SYSTEM else ():
                    if arm.alias not in (None, svc.champion_alias) and arm.alias not in variants:
                        variants[arm.alias] = self.scorer(arm.alias)
            variants = {k: v for k, v in variants.items() if v is not None}  # missing: the setter says so
        engine = features or FeatureEngine(
            self.feature_config(), backend=feature_backend, redis_url=redis_url, prefix=redis_prefix
        )
        return FraudPipeline(
            engine,
            RuleEngine(rules_path or svc.rules_path, poll_s=svc.rules_poll_s),
            champion,
            decision=DecisionEngine(self.config.thresholds, top_reasons=svc.top_reasons),
            challenger=challenger,
            config=svc,
            review_queue=self.queue if review else None,
            shadow_log=ShadowLog(path=self.root / "shadow.jsonl"),
            ring=self.ring(svc.champion_alias),
            experiments=experiments,
            variants=variants,
            metrics_registry=metrics_registry,
        )


def _as_dict(config: FraudConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


# ---------------------------------------------------------------------------------------------------
# Training with labels as known at the cut-off; champion / challenger.


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
    eval_end = cutoff - delay
    eval_start = eval_end - tcfg.eval_days * DAY
    ts = hist["ts"].to_numpy()
    usable = ~np.isnan(y)
    split = np.where(usable & (ts < eval_start), "train", np.where(usable & (ts <= eval_end), "eval", ""))
    return TrainingFrame(feats, y, split, ts, int(cutoff), (int(eval_start), int(eval_end)), ring)


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from mlsd.platform.metrics import average_precision, roc_auc

    if len(y) == 0 or y.min() == y.max():
        return {
            "average_precision": float("nan"),
            "auc_roc": float("nan"),
            "n": int(len(y)),
            "frauds": int(y.sum()),
        }
    return {
        "average_precision": float(average_precision(y, p)),
        "auc_roc": float(roc_auc(y, p)),
        "n": int(len(y)),
        "frauds": int(y.sum()),
    }


def retrain(
    tx: pd.DataFrame,
    ws: Workspace,
    *,
    cutoff: int,
    sequence: bool = True,
    progress: bool = False,
    seed: int = 0,
    seq_epochs: int = 8,
    lgbm_params: dict[str, Any] | None = None,
    alias: str = "challenger",
    compete: bool = True,
    drop_features: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Weekly retraining: fit a challenger on labels known at ``cutoff``, register it, promote it only
    if it beats the champion's average precision on the latest matured period.

    ``alias``: the registry alias the new version gets (``challenger``); ``compete=False`` never
    promotes it to champion (a variant kept for experiments); ``drop_features``: feature columns (or
    prefixes ending in ``*``) the model must not see (e.g. a planted worse model). A reference
    sample of the training rows with the model's score (``prediction``, <= 20k rows) is saved next
    to the model (``reference.parquet``): the drift monitor's baseline.
    """
    import shutil
    import tempfile

    from mlsd.fraud.models import FraudModel
    from mlsd.platform.registry import fingerprint

    tcfg = ws.config.training
    fcfg = feature_config_for(tx)
    frame = training_frame(tx, ws.labels, cutoff, ws.config, fcfg)
    all_features = frame.features  # the champion is scored on its own (full) feature set
    if drop_features:
        frame.features = frame.features.drop(columns=_matching(frame.features.columns, drop_features))
    train, ev = frame.split == "train", frame.split == "eval"
    y_train = frame.y[train].astype(np.int8)
    if y_train.sum() < 2 or (y_train == 0).sum() < 2:
        from mlsd.platform.errors import InputError

        raise InputError(
            "--cutoff",
            cutoff,
            "too few labelled frauds known before the evaluation period",
            "simulate more days or move the cut-off later",
        )
    if not ev.any():
        from mlsd.platform.errors import InputError

        raise InputError(
            "--cutoff",
            cutoff,
            "no payments in the evaluation period before the label delay",
            "move the cut-off to within label_delay_days of the data's end",
        )
    model = FraudModel(lgbm_params=lgbm_params, sequence=sequence, seed=seed, seq_epochs=seq_epochs).fit(
        frame.features.loc[train], y_train, time=frame.ts[train]
    )
    challenger = ModelScorer(model)
    y_eval = frame.y[ev].astype(np.int8)
    x_eval = frame.features.loc[ev]
    p_eval = challenger.predict(x_eval)
    challenger_metrics = _metrics(y_eval, p_eval)
    suggested = _suggest_thresholds(y_eval, p_eval, frame.ts[ev], frame.eval_window[0], ws.config)
    champion = ws.scorer("champion")
    champion_metrics = _metrics(y_eval, champion.predict(all_features.loc[ev])) if champion else None
    tmp = Path(tempfile.mkdtemp(prefix="mlsd-fraud-model-"))
    try:
        model.save(tmp / "model")
        if frame.ring is not None:
            frame.ring.save(tmp / "ring")
        # the drift baseline: labelled rows whose windows were already full (the data's first days
        # have cold windows and would make every served payment look drifted)
        warm = (train | ev) & (frame.ts >= frame.ts.min() + max(fcfg.windows))
        reference_sample(frame.features.loc[warm if warm.any() else train], challenger, seed=seed).to_parquet(
            tmp / "reference.parquet", index=False
        )
        mv = ws.registry.register(
            MODEL_NAME,
            tmp,
            params={
                "cutoff": int(cutoff),
                "feature_config": "default" if "device" in fcfg.entities else "handbook",
                "sequence": sequence,
                "train_rows": int(train.sum()),
                "eval_window": list(frame.eval_window),
                "label_delay_days": tcfg.label_delay_days,
                "alias": alias,
                "drop_features": list(drop_features),
                "train_window": [int(frame.ts[train].min()), int(frame.ts[train].max())],
                "reference_window": [int(frame.ts[warm].min()), int(frame.ts[warm].max())]
                if warm.any()
                else None,
            },
            metrics={"eval": challenger_metrics, "champion_eval": champion_metrics},
            data_fingerprint=fingerprint(tx.loc[tx["ts"] <= cutoff, ["tx_id", "ts", "amount"]]),
            parent=None if champion is None else int(champion.version),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ws.registry.promote(MODEL_NAME, mv.version, alias=alias)
    ap_new = challenger_metrics["average_precision"]
    ap_old = None if champion_metrics is None else champion_metrics["average_precision"]
    promoted = champion is None or (
        compete and not np.isnan(ap_new) and (np.isnan(ap_old) or ap_new > ap_old + tcfg.min_improvement)
    )
    if promoted:
        ws.registry.promote(MODEL_NAME, mv.version, alias="champion")
    return {
        "cutoff": int(cutoff),
        "challenger_version": mv.version,
        "champion_version_before": None if champion is None else int(champion.version),
        "promoted": bool(promoted),
        "champion_version": int(ws.model_version("champion").version),
        "train_rows": int(train.sum()),
        "train_frauds": int(y_train.sum()),
        "eval_window": list(frame.eval_window),
        "challenger_eval": challenger_metrics,
        "champion_eval": champion_metrics,
        "labels_known": int(len(ws.labels.labels_known_at(cutoff))),
        # thresholds the challenger would need for FPR < max_fpr and the review capacity on the
        # matured period (labels as known now); applied only by `tune-thresholds` / the operator
        "suggested_thresholds": suggested,
    }


def _matching(columns: Any, patterns: tuple[str, ...]) -> list[str]:
    """Columns named by ``patterns`` (exact names, or prefixes written ``card_*``)."""
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    exact = {p for p in patterns if not p.endswith("*")}
    return [c for c in columns if c in exact or (prefixes and c.startswith(prefixes))]


REFERENCE_ROWS = 20_000


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


def _suggest_thresholds(y: np.ndarray, p: np.ndarray, ts: np.ndarray, start: int, config: FraudConfig) -> Any:
    from mlsd.fraud.decision import tune_thresholds

    if len(y) == 0 or y.min() == y.max():
        return None
    return tune_thresholds(
        y,
        p,
        (ts - start) // DAY,
        max_fpr=config.training.max_fpr,
        daily_capacity=config.review.daily_capacity,
    ).to_dict()


# ---------------------------------------------------------------------------------------------------
# Threshold tuning and rule backtests over history.


def tune_on_history(
    tx: pd.DataFrame,
    ws: Workspace,
    *,
    valid_days: int = 7,
    max_fpr: float = 0.01,
    capacity: int = 200,
    save: bool = True,
) -> dict[str, Any]:
    """Score the last ``valid_days`` of ``tx`` with the champion and pick thresholds there.

    Each payment gets its features as of its own ``ts`` (the ring features from links and labels
    before it, not the champion's graph, which may know labels that arrived after the payment)."""
    from mlsd.fraud.decision import tune_thresholds
    from mlsd.fraud.features import compute_features
    from mlsd.platform.errors import InputError

    champion = ws.scorer("champion")
    if champion is None:
        raise InputError("--workdir", str(ws.root), "no champion model", "run `mlsd fraud train` first")
    if "fraud" not in tx.columns:
        raise InputError(
            "--data", "", "validation needs labelled payments (a fraud column)", "use labelled history"
        )
    ts = tx["ts"].to_numpy()
    start = ts.max() - valid_days * DAY
    feats = compute_features(tx, ws.feature_config())
    ring = ws.ring("champion")
    if ring is not None:
        from mlsd.fraud.graph import ring_features_as_of

        feats = pd.concat(
            [feats, ring_features_as_of(tx, max_share=ring.max_share).set_axis(feats.index)], axis=1
        )
    valid = ts > start
    p = champion.predict(feats.loc[valid])
    result = tune_thresholds(
        tx["fraud"].to_numpy()[valid],
        p,
        (ts[valid] - start) // DAY,
        max_fpr=max_fpr,
        daily_capacity=capacity,
        amount=tx["amount"].to_numpy()[valid],
    ).to_dict()
    result["model_version"] = champion.version
    if save:
        (ws.root / "thresholds.json").write_text(json.dumps(result, indent=2))
    return result


def backtest_history(rules: Any, tx: pd.DataFrame) -> pd.DataFrame:
    """Per-rule hit rate, precision and recall over labelled history (features computed offline)."""
    from mlsd.fraud.features import compute_features
    from mlsd.fraud.rules import backtest
    from mlsd.platform.errors import InputError

    if "fraud" not in tx.columns:
        raise InputError(
            "--data", "", "backtest needs labelled payments (a fraud column)", "use labelled history"
        )
    feats = compute_features(tx, feature_config_for(tx))
    frame = {c: tx[c].to_numpy() for c in tx.columns if c not in ("fraud", "scenario", "label_ts")}
    frame.update({c: feats[c].to_numpy() for c in feats.columns})
    return backtest(rules, pd.DataFrame(frame), tx["fraud"].to_numpy())


def bootstrap(
    root: Path,
    *,
    cards: int = 600,
    days: int = 35,
    seed: int = 0,
    sequence: bool = False,
    lgbm_params: dict[str, Any] | None = None,
) -> Workspace:
    """A workspace with a trained champion on simulated history (for the bench and tests)."""
    from mlsd.fraud.simulate import simulate

    ws = Workspace(Path(root))
    tx = simulate(n_cards=cards, n_terminals=max(50, cards // 4), days=days, seed=seed)
    tx.to_parquet(ws.root / "history.parquet", index=False)
    cutoff = int(tx["ts"].max())
    ws.ingest_labels(tx, known_at=cutoff)
    retrain(tx, ws, cutoff=cutoff, sequence=sequence, seed=seed, lgbm_params=lgbm_params)
    return ws


def load_model(path: Path) -> Any:
    """A registered artifact: ``model/`` (:class:`~mlsd.fraud.models.FraudModel`) [+ ``ring/``]."""
    from mlsd.fraud.models import FraudModel

    return FraudModel.load(Path(path) / "model")
