"""The fraud serving core: a micro-batch of payments in, one decision per payment out.

:class:`FraudPipeline` is the one serving path of the HTTP service, the stream workers, the bench and
the world simulator. It is batch-first: :meth:`FraudPipeline.handle` takes payment bodies (the JSON
objects of ``POST /v1/score``), a single payment being a batch of one. One micro-batch flows top to
bottom::

    features (update windows, idempotent on tx_id) -> rules -> model (skippable) -> decision
        -> shadow (challenger scores, logged only) -> review queue (review decisions)

The feature update always runs: skipping it would corrupt the windows for every later payment. The
model is the stage the deadline may skip: it runs only when the time left covers its learned cost
(:class:`~mlsd.platform.serving.StageCost`) times a safety factor; otherwise the batch is decided by
rules alone and every response says so (``rules_only`` and ``skipped``, and ``degraded`` with the
deadline as ``degraded_reason``).

Failing closed: a model that raises, answers the wrong shape, or gives a probability that is NaN,
infinite or outside [0, 1] never approves: those payments go to review (block when a rule blocks),
``degraded`` with the reason (:meth:`~mlsd.fraud.decision.DecisionEngine.decide`). Live payments
(:meth:`FraudPipeline.score_bodies`) dated more than ``max_future_s`` after :attr:`FraudPipeline.clock`
are refused before they touch the windows.

With an :class:`~mlsd.platform.experiments.client.ExperimentClient` (``experiments=``), every fraud
experiment (``mode="shadow"``) assigns the batch's units (its ``unit`` column, e.g. ``card_id``), keeps
the champion's decision for everyone, scores every other arm's model (its registry ``alias``, loaded
next to the champion) for the units in the experiment, derives the decision that arm *would* have
taken (same rules, the arm's thresholds) and logs the exposures once the batch was decided.

:class:`FraudDirs` is the system's state in the platform layout (:class:`~mlsd.platform.system.SystemDir`,
``W/fraud/...``): the registry (``registry/``, with the tuned ``thresholds.json``), the label store
(``features/labels.sqlite``: what the features and the training sets may know, and when), the review
queue (``review/review.sqlite``, the label store attached so a resolution and its label are one
transaction) and the served samples (``monitoring/``). Opening it creates nothing; :func:`load_engine`
builds a pipeline from its champion (no champion: an InputError naming the commands that make one).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlsd.fraud.config import FraudConfig, ServiceConfig
from mlsd.fraud.decision import REVIEW, DecisionEngine, Decisions
from mlsd.fraud.rules import RuleEngine, RuleHits
from mlsd.platform.errors import InputError
from mlsd.platform.serving import Deadline, StageCost, StageTimer
from mlsd.platform.system import SystemDir

log = logging.getLogger(__name__)

SYSTEM = "fraud"
MODEL_NAME = "fraud"  # the registry's model name (System.model)
# what an experiment arm's ``params`` may set (documented in docs/fraud.md):
# thresholds -- {"block": .., "review": ..}: the arm decides with these instead of the live ones
ARM_PARAMS = frozenset({"thresholds"})
# Payment fields an experiment may randomise on (required fields: every payment has them).
UNIT_COLUMNS = ("card_id", "terminal_id")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class FeatureEngine(Protocol):
    """Online features (:class:`mlsd.fraud.features.FeatureEngine`): fold a micro-batch into the
    windows, idempotent on ``tx_id``, and return each payment's features (rows in batch order)."""

    def update_batch(self, frame: pd.DataFrame) -> pd.DataFrame: ...


class Scorer(Protocol):
    """A fitted model as the pipeline sees it (see :class:`ModelScorer`)."""

    version: int | None
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
        version: int | None,
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
    model_version: int | None
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
        # what "now" is for live payments (score_bodies refuses ts too far ahead of it); tests set it
        self.clock: Callable[[], float] = time.time
        # what the model and the explanations cost, learnt online; the first guess is deliberately
        # cheap so a fresh service tries the model rather than falling back on its first request.
        self.model_cost = StageCost(fixed_ms=1.0, per_item_ms=0.05, small_batch=4)
        self.explain_cost = StageCost(per_item_ms=1.0)

    @property
    def model_version(self) -> int | None:
        """The champion's registry version (None: a deliberately rules-only pipeline)."""
        return None if self.champion is None else self.champion.version

    @property
    def rules_only(self) -> bool:
        return self.champion is None

    @property
    def experiments(self) -> Any:
        """The :class:`~mlsd.platform.experiments.client.ExperimentClient` (or None)."""
        return self._experiments

    @experiments.setter
    def experiments(self, client: Any) -> None:
        """Attach a client: every ``system == "fraud"`` experiment must be ``mode="shadow"`` (a fraud
        challenger never decides a payment while it is evaluated) and every arm's alias must be loaded
        (``variants``), checked here at start-up rather than on the first payment."""
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
                        f"register a model under alias {arm.alias!r} (load_engine loads every arm's alias)",
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

    def handle(
        self, requests: Sequence[Mapping[str, Any]], *, deadline: Deadline | None = None
    ) -> list[dict]:
        """Decide payment bodies (JSON objects, the ``POST /v1/score`` body): one dict per payment,
        in order, each with the batch's ``rules_version``, ``model_version`` and ``rules_only``.

        The one serving path: the service, the stream workers and the contract call this (through
        :meth:`score_bodies` when they also want the batch's timings). A bad body raises InputError
        naming the field (``payments[3].amount``).
        """
        batch = self.score_bodies(requests, deadline=deadline)
        meta = {
            "rules_version": batch.decisions.rules_version,
            "model_version": batch.model_version,
            "rules_only": batch.decisions.rules_only,
        }
        return [{**r, **meta} for r in batch.records()]

    def score_bodies(
        self, requests: Sequence[Mapping[str, Any]], *, deadline: Deadline | None = None
    ) -> ScoredBatch:
        """Validate payment bodies (:func:`mlsd.fraud.data.from_records`, plus the rule-only
        ``country``) and :meth:`score` them as one micro-batch.

        Live payments are checked against :attr:`clock`: a ``ts`` more than ``max_future_s`` ahead
        of it is refused (422) before it can touch the windows: one payment dated in year 3000 would
        otherwise be the newest event of its card forever. Replays of history (:meth:`score` on a
        frame) are not: their ``ts`` is in the past by construction."""
        from mlsd.fraud.data import check_not_future, from_records

        tx = from_records(requests, max_batch=self.config.max_batch)
        check_not_future(tx["ts"].to_numpy(), now=self.clock(), max_skew_s=self.config.max_future_s)
        return self.score(tx, deadline=deadline, context=_context(requests))

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
        degraded = failed = None
        model = self.champion
        if model is None:
            timer.skip("model", "no model loaded: rules only")
        elif deadline is not None and not deadline.allows(self.model_cost.expect(n) * self.config.safety):
            degraded = (
                f"deadline: {deadline.remaining_ms():.1f} ms left, model needs "
                f"~{self.model_cost.expect(n):.1f} ms: rules only"
            )
            timer.skip("model", degraded)
            self.model_cost.skipped()  # not measured while skipped: try it again after a slow spell
        else:
            probability, failed = self._predict(model, feats, timer)
            if failed is None:
                names = model.feature_names
                contributions = self._explain(model, feats, probability, hits, deadline, timer)
        with timer.stage("decision"):
            decisions = self.decision.decide(
                hits, probability, contributions, names, degraded=degraded, model_failed=failed
            )
        if failed is None and probability is not None:
            self._observe("scores", probability[~decisions.degraded], "champion")
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
            if deadline is None or deadline.allows(self.model_cost.expect(n) * self.config.safety):
                with timer.stage("shadow"):
                    shadow_p = self._shadow_predict(self.challenger, feats, timer)
                    if shadow_p is not None:
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

    def _predict(
        self, model: Scorer, feats: pd.DataFrame, timer: StageTimer
    ) -> tuple[np.ndarray | None, str | None]:
        """The model's probabilities, or None and why: a model that raises or answers the wrong shape
        must not take the service down, nor approve anything (the decision reviews every payment)."""
        n = len(feats)
        before = timer.timings_ms.get("model", 0.0)
        try:
            with timer.stage("model"):
                probability = np.asarray(model.predict(feats), dtype=np.float64)
        except Exception as err:  # any model failure fails closed, logged for the operator
            log.exception("fraud model failed on a batch of %d: every payment goes to review", n)
            return None, f"model error: {type(err).__name__}"
        self.model_cost.observe(timer.timings_ms["model"] - before, n)
        if probability.shape != (n,):
            log.error("fraud model answered shape %s for %d payments", probability.shape, n)
            return None, f"model output missing: shape {probability.shape} for {n} payments"
        return probability, None

    @staticmethod
    def _shadow_predict(model: Scorer, feats: pd.DataFrame, timer: StageTimer) -> np.ndarray | None:
        """A shadow model's probabilities, or None (logged, stage skipped): it decides nothing, so its
        failure must not fail the payments it was only watching."""
        try:
            p = np.asarray(model.predict(feats), dtype=np.float64)
        except Exception as err:
            log.exception("shadow model failed on a batch of %d", len(feats))
            timer.skip("shadow", f"shadow model error: {type(err).__name__}")
            return None
        if p.shape != (len(feats),):
            timer.skip("shadow", f"shadow model output has shape {p.shape}")
            return None
        return p

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
                and not deadline.allows(self.model_cost.expect(inside.size) * len(extra) * self.config.safety)
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
                        arm_p = self._shadow_predict(scorer, sub, timer)
                        p[inside] = np.nan if arm_p is None else arm_p
                    if scorer is self.champion and engine is self.decision:
                        d = decisions.decision.copy()
                    else:
                        d = engine.decision_only(hits, p)
                    d[arm_idx < 0] = -1
                    probability[arm.name], decision[arm.name] = p, d
                out[exp.name] = ShadowArms(arm_idx, tuple(exp.arm_names), probability, decision)
            for arm in exp.arms[1:]:
                scores = probability[arm.name][inside]
                self._observe("scores", scores[np.isfinite(scores)], arm.name)
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
                try:
                    model.predict(row)
                    model.contributions(row)
                except Exception:  # serve anyway: every batch it fails on is reviewed (fail closed)
                    log.exception("fraud model %s failed its warm-up", getattr(model, "version", None))

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
            self.explain_cost.expect(need.sum()) * self.config.safety
        ):
            timer.skip("explain", "deadline: reasons without model contributions")
            self.explain_cost.skipped()
            return None
        try:
            with timer.stage("explain"):
                part = np.asarray(model.contributions(feats.iloc[np.flatnonzero(need)]), dtype=np.float64)
        except Exception as err:  # reasons are a courtesy: their failure must not fail the decision
            log.exception("fraud model contributions failed")
            timer.skip("explain", f"explain error: {type(err).__name__}")
            return None
        self.explain_cost.observe(timer.timings_ms["explain"], int(need.sum()))
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


def _context(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame | None:
    """Rule-only context fields the model schema does not carry (``country``, ISO 3166 alpha-2)."""
    if not any(isinstance(r, Mapping) and "country" in r for r in records):
        return None
    countries = []
    for i, r in enumerate(records):
        value = r.get("country")
        if value is not None and (not isinstance(value, str) or not _COUNTRY.match(value.upper())):
            where = f"payments[{i}]." if len(records) > 1 else ""
            raise InputError(f"{where}country", value, "is not an ISO 3166 alpha-2 code", "send e.g. 'FR'")
        countries.append(None if value is None else value.upper())
    return pd.DataFrame({"country": countries})


# ---------------------------------------------------------------------------------------------------
# Models as the pipeline sees them.


class ModelScorer:
    """A fitted :class:`~mlsd.fraud.models.FraudModel` behind the :class:`Scorer` seam.

    ``predict`` returns the calibrated ensemble probability; ``contributions`` LightGBM's
    per-feature contributions (``(n, n_features + 1)``, log-odds, bias last), which the decision
    engine turns into ``MODEL:<feature>`` reason codes.
    """

    def __init__(self, model: Any, version: int | None = None) -> None:
        self.model = model
        self.version = version
        self.feature_names = tuple(model.feature_names_)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict_proba(features), dtype=np.float64)

    def contributions(self, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.contributions(features), dtype=np.float64)


def load_model(path: Path) -> Any:
    """A registered artifact: ``model/`` (:class:`~mlsd.fraud.models.FraudModel`) [+ ``ring/``]."""
    from mlsd.fraud.models import FraudModel

    return FraudModel.load(Path(path) / "model")


def feature_config_for(tx: pd.DataFrame) -> Any:
    """The feature set the data supports: the full one, or the handbook's when device/location are absent."""
    from mlsd.fraud.features import FeatureConfig

    return FeatureConfig() if "device_id" in tx.columns else FeatureConfig.handbook()


def feature_config_named(name: str) -> Any:
    """The feature set a registered version was trained with (its ``feature_config`` param)."""
    from mlsd.fraud.features import FeatureConfig

    return FeatureConfig.handbook() if name == "handbook" else FeatureConfig()


# ---------------------------------------------------------------------------------------------------
# The system's state in the platform layout, and the engine built from its champion.


class FraudDirs:
    """The fraud state under a :class:`~mlsd.platform.system.SystemDir` (``W/fraud/...``).

    * ``dirs.data/transactions.parquet`` -- the payments (simulated or imported);
    * ``dirs.registry`` -- model versions and aliases, and ``thresholds.json`` (the live block/review
      thresholds chosen by ``tune-thresholds``, replacing the configured ones);
    * ``dirs.features/labels.sqlite`` -- the label store: every label event with the time it became
      known (what training sets and the terminal-risk windows may see; the online windows themselves
      live in memory or Redis);
    * ``dirs.review/review.sqlite`` -- the review queue, with the label store attached, so resolving
      a case records its label in the same transaction;
    * ``dirs.monitoring`` -- served samples, stage timings, drift reports, the challenger shadow log.

    With ``config.review.backend == "postgres"`` labels and cases share one PostgreSQL schema instead.
    Constructing one creates nothing; only the stores a caller opens are created (write paths).
    """

    def __init__(self, dirs: SystemDir, config: FraudConfig | None = None) -> None:
        self.dirs = dirs
        self.config = config or FraudConfig()
        if self.thresholds_path.is_file():  # chosen by tune-thresholds: they replace the configured ones
            chosen = json.loads(self.thresholds_path.read_text())
            t = {"block": chosen["block"], "review": chosen["review"]}
            self.config = FraudConfig.from_dict({**_as_dict(self.config), "thresholds": t})
        self._registry: Any = None
        self._labels: Any = None
        self._queue: Any = None

    # where things are
    @property
    def transactions_path(self) -> Path:
        return self.dirs.data / "transactions.parquet"

    @property
    def thresholds_path(self) -> Path:
        return self.dirs.registry / "thresholds.json"

    @property
    def labels_path(self) -> Path:
        return self.dirs.features / "labels.sqlite"

    @property
    def review_path(self) -> Path:
        return self.dirs.review / "review.sqlite"

    @property
    def root(self) -> Path:
        """The folder ``thresholds.json`` lives in (the registry's)."""
        return self.dirs.registry

    # the stores
    @property
    def registry(self) -> Any:
        """The model registry (created on first use: write paths only; readers ask :meth:`model_version`)."""
        if self._registry is None:
            from mlsd.platform.registry import ModelRegistry

            self._registry = ModelRegistry(self.dirs.registry)
        return self._registry

    def has_registry(self) -> bool:
        return (self.dirs.registry / "registry.sqlite").is_file()

    @property
    def labels(self) -> Any:
        """The label store (created on first use)."""
        if self._labels is None:
            if self._queue is not None:
                self._labels = self._queue.labels
            else:
                from mlsd.fraud.labels import SQLLabelStore

                r = self.config.review
                self._labels = (
                    SQLLabelStore.postgres(r.postgres_dsn, r.postgres_schema)
                    if r.backend == "postgres"
                    else SQLLabelStore.sqlite(self.labels_path)
                )
        return self._labels

    def labels_known_at(self, t: int) -> pd.DataFrame:
        """``labels.labels_known_at(t)``, or no labels when there is no label store yet (creates nothing)."""
        from mlsd.fraud.labels import LABEL_COLUMNS

        if self._labels is None and self.config.review.backend == "sqlite" and not self.labels_path.is_file():
            return pd.DataFrame(columns=LABEL_COLUMNS)
        return self.labels.labels_known_at(t)

    @property
    def queue(self) -> Any:
        """The review queue (and ``.labels``, the same label store), created on first use."""
        if self._queue is None:
            from mlsd.fraud.review import SQLReviewQueue

            r = self.config.review
            if r.backend == "postgres":
                self._queue = SQLReviewQueue.postgres(r.postgres_dsn, r.postgres_schema)
            else:
                self._queue = SQLReviewQueue.sqlite(self.review_path, labels_path=self.labels_path)
            if self._labels is not None:
                self._labels.close()
            self._labels = self._queue.labels
        return self._queue

    def ingest_labels(self, tx: pd.DataFrame, known_at: int | None = None) -> int:
        """Record the fraud labels of ``tx`` (simulated truth) that are known at ``known_at`` (all when None).

        Imported data (``W/fraud/data/labels.parquet``, :mod:`mlsd.fraud.contract`) records its own label
        events instead (fraud and legitimate, with their source), those known at ``known_at``.

        Labels arriving within a day of the payment came from review, later ones from chargebacks.
        Legitimate payments need no event: a payment without a fraud label is taken as legitimate.
        """
        from mlsd.fraud.contract import read_labels_table

        table = read_labels_table(self.dirs.data)
        if table is not None:  # imported data: its label events, with their own source
            if known_at is not None:
                table = table.loc[table["label_ts"].to_numpy(np.int64) <= known_at]
            return self.labels.add(
                table["tx_id"].to_numpy(), table["label"].to_numpy(np.int8),
                table["label_ts"].to_numpy(np.int64), table["source"].astype(str).tolist(),
            )  # fmt: skip
        if "fraud" not in tx.columns or "label_ts" not in tx.columns:
            return 0
        mask = (tx["fraud"].to_numpy() == 1) & tx["label_ts"].notna().to_numpy()
        if known_at is not None:
            mask &= tx["label_ts"].to_numpy(np.float64) <= known_at
        frauds = tx.loc[mask]
        label_ts = frauds["label_ts"].to_numpy(np.int64)
        source = np.where(label_ts - frauds["ts"].to_numpy(np.int64) < 86_400, "review", "chargeback")
        return self.labels.add(
            frauds["tx_id"].to_numpy(), np.ones(len(frauds), np.int8), label_ts, source.tolist()
        )

    # the models
    def model_version(self, alias: str) -> Any:
        """The registry's ModelVersion holding ``alias`` (None: no registry yet, or no such alias)."""
        if not self.has_registry() or MODEL_NAME not in self.registry.names():
            return None
        return self.registry.alias(MODEL_NAME, alias)

    def scorer(self, alias: str) -> ModelScorer | None:
        """The model holding ``alias`` in the registry, or None when no version holds it."""
        mv = self.model_version(alias)
        if mv is None:
            return None
        path = self.registry.artifact_path(MODEL_NAME, mv.version)
        return ModelScorer(load_model(path), version=int(mv.version))

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
        return feature_config_named(mv.params.get("feature_config", "default") if mv else "default")

    def close(self) -> None:
        for store in (self._queue, self._labels):
            if store is not None:
                store.close()
        self._queue = self._labels = None


def _as_dict(config: FraudConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


def load_engine(
    dirs: SystemDir | FraudDirs,
    *,
    config: FraudConfig | None = None,
    rules_path: str | Path | None = None,
    review: bool = True,
    rules_only: bool = False,
    feature_backend: str = "memory",
    redis_url: str = "redis://127.0.0.1:6379/0",
    redis_prefix: str = "mlsd:fraud:fw:",
    shadow: bool = True,
    experiments: Any = None,
    features: Any = None,
    metrics_registry: Any = None,
    warm: bool = True,
) -> FraudPipeline:
    """A ready :class:`FraudPipeline` from the workdir's champion (+ challenger in shadow), rules,
    online features and the review queue.

    No champion is an InputError naming the commands that train one (``mlsd fraud serve`` exits 2):
    a fraud service never falls back to rules only in silence. ``rules_only=True`` is the deliberate
    choice (no model loaded, ``/health`` says ``rules_only``). ``experiments``: an ExperimentClient;
    the registry alias of every arm of its fraud experiments is loaded next to the champion.
    ``features``: an already warmed feature engine to share. Otherwise in-memory windows are warmed
    from the workdir's stored payments (:func:`warm_windows`, ``warm=False`` starts them empty);
    Redis windows outlive the process and are left as they are.
    """
    from mlsd.fraud.features import FeatureEngine

    state = dirs if isinstance(dirs, FraudDirs) else FraudDirs(dirs, config)
    svc = state.config.service
    champion = challenger = None
    if not rules_only:
        state.dirs.require_champion(MODEL_NAME, alias=svc.champion_alias)  # exit 2 with the fix
        champion = state.scorer(svc.champion_alias)
        challenger = state.scorer(svc.challenger_alias) if shadow and svc.shadow else None
    if challenger is not None and champion is not None and challenger.version == champion.version:
        challenger = None  # the challenger won and is the champion now: nothing to shadow
    if experiments is not None and any(e.system == SYSTEM for e in experiments.config.experiments.values()):
        challenger = None  # the shadow experiment scores the arms; the legacy shadow would score twice
    variants: dict[str, Any] = {}
    if experiments is not None and not rules_only:
        for exp in experiments.config.experiments.values():
            for arm in exp.arms if exp.system == SYSTEM else ():
                if arm.alias not in (None, svc.champion_alias) and arm.alias not in variants:
                    variants[arm.alias] = state.scorer(arm.alias)
        variants = {k: v for k, v in variants.items() if v is not None}  # missing: the setter says so
    engine = features
    if engine is None:
        engine = FeatureEngine(
            state.feature_config(), backend=feature_backend, redis_url=redis_url, prefix=redis_prefix
        )
        if feature_backend == "memory" and warm:
            warm_windows(engine, state)
    return FraudPipeline(
        engine,
        RuleEngine(rules_path or svc.rules_path, poll_s=svc.rules_poll_s),
        champion,
        decision=DecisionEngine(state.config.thresholds, top_reasons=svc.top_reasons),
        challenger=challenger,
        config=svc,
        review_queue=state.queue if review else None,
        shadow_log=ShadowLog(path=state.dirs.monitoring / "shadow.jsonl"),
        ring=None if rules_only else state.ring(svc.champion_alias),
        experiments=experiments,
        variants=variants,
        metrics_registry=metrics_registry,
    )


def warm_windows(features: Any, state: FraudDirs) -> dict[str, Any]:
    """Replay the stored payments of the last feature horizon into fresh in-memory ``features``.

    A new process would otherwise start with empty windows, and a card's first payment after a
    restart would look like a card's first payment ever (``card_count_30d = 1``, no terminal risk):
    the model was trained on payments with their history, so a cold service scores genuine payments
    as unusual. The stored payments of the longest window before the newest one are fed through the
    same online path a live stream takes, with the fraud labels known by the data's ``as_of`` (the
    export time of imported data; the last payment for simulated data) arriving at their
    ``label_ts``. Done once at load time; a workdir without payments starts empty.
    """
    from mlsd.fraud.contract import read_manifest
    from mlsd.fraud.data import validate_transactions
    from mlsd.fraud.features import replay

    if not state.transactions_path.is_file():
        return {"payments": 0}
    tx = validate_transactions(pd.read_parquet(state.transactions_path))
    if tx.empty:
        return {"payments": 0}
    horizon = max(features.config.horizon(kind) for kind in features.config.entities)
    end = int(tx["ts"].max())
    recent = tx.loc[tx["ts"] > end - horizon].reset_index(drop=True)
    manifest = read_manifest(state.dirs.data) or {}
    known_at = max(end, int(manifest.get("as_of") or 0))
    if {"fraud", "label_ts"} <= set(recent.columns):
        known = (recent["fraud"] == 1) & (recent["label_ts"] <= known_at)
        recent["fraud"] = known.astype(np.int8)
        recent["label_ts"] = recent["label_ts"].where(known)
    replay(features, recent, batch_size=4096)
    return {"payments": len(recent), "from_ts": int(recent["ts"].min()), "to_ts": end}
