"""Decision engine: rules + calibrated model probability -> approve / review / block, with reasons.

The model's probability is cut by two thresholds (block >= 0.9, review 0.5-0.9 by default, see
:class:`~mlsd.fraud.config.Thresholds`); fired rules can only make the outcome *stricter* (a ``review``
rule lifts an approve to review, a ``block`` rule blocks; a ``flag`` rule only adds its reason code).
When the model could not run (deadline, no model loaded), the decision is **rules-only**: rules decide
alone and the result says so.

**Failing closed.** A probability the thresholds cannot read (NaN, +-inf, outside [0, 1]: a broken
feature, a missing output) never bands as low: that payment goes to ``review`` (``block`` when a rule
blocks), its probability is reported as ``null``, its score reason is ``MODEL_FAILED`` and it is
``degraded`` with a ``degraded_reason``. ``decide(..., model_failed=reason)`` does the same for a whole
batch (the model raised); ``decide(None, degraded=reason)`` marks a rules-only batch the deadline
forced (rules decide, flagged so nobody takes it for the model's verdict).

Every decision carries reason codes: the score band (``SCORE_BLOCK`` / ``SCORE_REVIEW`` /
``SCORE_LOW``, or ``RULES_ONLY`` when the model did not run), the fired rules' codes and the features that pushed the score up most
(``MODEL:<feature>``, from LightGBM's per-feature contributions).

:func:`tune_thresholds` picks the thresholds on a validation period: the lowest block threshold whose
false-positive rate (legitimate payments blocked / legitimate payments) stays under ``max_fpr``, then
the lowest review threshold whose daily case count fits the review team's capacity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlsd.fraud.config import Thresholds
from mlsd.fraud.rules import ACTIONS, RuleHits
from mlsd.platform.errors import InputError

APPROVE, REVIEW, BLOCK = 0, 1, 2
DECISION_NAMES = np.array(["approve", "review", "block"])
SCORE_REASONS = np.array(["SCORE_LOW", "SCORE_REVIEW", "SCORE_BLOCK"])
MODEL_FAILED = "MODEL_FAILED"  # the score reason of a payment whose probability was unusable
# rule severity (0 none, 1 flag, 2 review, 3 block) -> the least strict decision it implies
_RULE_FLOOR = np.array([APPROVE, APPROVE, REVIEW, BLOCK], dtype=np.int8)
assert ACTIONS == {"flag": 1, "review": 2, "block": 3}


@dataclass
class Decisions:
    """Decisions for a batch of ``n`` payments (arrays of length ``n``).

    ``probability`` is NaN where the model did not score (``rules_only``). ``top_features`` /
    ``top_values`` hold the ``k`` largest positive model contributions per row (-1 / 0 padded).
    """

    decision: np.ndarray  # int8: APPROVE, REVIEW, BLOCK
    probability: np.ndarray
    rule_reasons: list[list[str]]
    top_features: np.ndarray  # (n, k) int, index into feature_names, -1 = none
    top_values: np.ndarray  # (n, k) float
    feature_names: tuple[str, ...]
    rules_only: bool
    rules_version: int
    band: np.ndarray  # int8 score band from the thresholds alone (ignored when rules_only)
    # per row: why the decision was taken without a usable model score (None: it was not)
    degraded_reason: np.ndarray | None = None

    @property
    def degraded(self) -> np.ndarray:
        """Per row: True where the model's verdict is missing for a reason nobody chose."""
        if self.degraded_reason is None:
            return np.zeros(len(self.decision), dtype=bool)
        return np.not_equal(self.degraded_reason, None)

    def __len__(self) -> int:
        return len(self.decision)

    @property
    def labels(self) -> np.ndarray:
        return DECISION_NAMES[self.decision]

    def reasons(self) -> list[list[str]]:
        """Reason codes per row: score band (or ``RULES_ONLY``), fired rules, top model features."""
        out: list[list[str]] = []
        # rules-only: say so, so that even an approval carries a reason (the model did not vouch for it)
        score_codes = np.full(len(self.band), "RULES_ONLY") if self.rules_only else SCORE_REASONS[self.band]
        if not self.rules_only:
            score_codes = np.where(self.degraded, MODEL_FAILED, score_codes)
        names = self.feature_names
        for i, rule_codes in enumerate(self.rule_reasons):
            codes = [str(score_codes[i])]
            codes.extend(rule_codes)
            codes.extend(f"MODEL:{names[j]}" for j in self.top_features[i] if j >= 0)
            out.append(codes)
        return out

    def records(self, tx_ids: Any) -> list[dict[str, Any]]:
        """JSON-ready dicts, one per payment."""
        probs = np.where(self.degraded, np.nan, self.probability).tolist()
        labels = self.labels.tolist()
        why = [None] * len(labels) if self.degraded_reason is None else self.degraded_reason.tolist()
        return [
            {
                "tx_id": tx,
                "decision": labels[i],
                # never NaN/inf in an answer: a missing or unusable score is null
                "probability": round(probs[i], 6) if math.isfinite(probs[i]) else None,
                "reasons": reasons,
                "rules_only": self.rules_only,
                "degraded": why[i] is not None,
                "degraded_reason": why[i],
            }
            for i, (tx, reasons) in enumerate(zip(list(tx_ids), self.reasons(), strict=True))
        ]


def usable(probability: np.ndarray) -> np.ndarray:
    """Per row: is this a probability the thresholds can read (finite, in [0, 1])?"""
    p = np.asarray(probability, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(p) & (p >= 0.0) & (p <= 1.0)


def _band(probability: np.ndarray, t: Thresholds) -> np.ndarray:
    """The score band; an unusable probability bands as REVIEW (fail closed), never as low."""
    p = np.asarray(probability, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        band = np.where(p >= t.block, BLOCK, np.where(p >= t.review, REVIEW, APPROVE))
    return np.where(usable(p), band, REVIEW).astype(np.int8)


class DecisionEngine:
    """Combine rule hits and model probabilities into decisions (vectorised over the batch)."""

    def __init__(self, thresholds: Thresholds | None = None, top_reasons: int = 3) -> None:
        self.thresholds = thresholds or Thresholds()
        self.top_reasons = top_reasons

    def decision_only(self, hits: RuleHits, probability: np.ndarray) -> np.ndarray:
        """Just the decision codes :meth:`decide` would give for ``probability`` (no reasons): the
        shadow path's counterfactual decision, vectorised, without building reason lists."""
        band = _band(probability, self.thresholds)
        return np.maximum(band, _RULE_FLOOR[hits.severity]).astype(np.int8)

    def decide(
        self,
        hits: RuleHits,
        probability: np.ndarray | None = None,
        contributions: np.ndarray | None = None,
        feature_names: tuple[str, ...] | list[str] = (),
        *,
        degraded: str | None = None,
        model_failed: str | None = None,
    ) -> Decisions:
        """Decide a batch. ``probability=None`` means rules-only (the model did not run).

        ``contributions`` is ``(n, n_features)`` (a trailing bias column, as LightGBM's
        ``pred_contrib`` returns, is dropped when it is one wider than ``feature_names``).
        ``model_failed``: the model was asked and gave nothing usable (it raised): every payment is
        reviewed (blocked when a rule blocks), degraded with this reason. ``degraded``: the reason a
        rules-only batch had no model (the deadline); rules decide, each row flagged degraded. A
        probability that is NaN, infinite or outside [0, 1] degrades that row as ``model_failed`` does.
        """
        n = hits.fired.shape[0]
        floor = _RULE_FLOOR[hits.severity]
        why = np.full(n, None, dtype=object)
        if model_failed is not None:
            probability = np.full(n, np.nan)  # nothing usable: every row bands as review below
        rules_only = probability is None
        if rules_only:
            prob = np.full(n, np.nan)
            band = np.zeros(n, dtype=np.int8)
            decision = floor.astype(np.int8)
            why[:] = degraded
        else:
            prob = np.asarray(probability, dtype=np.float64)
            if prob.shape != (n,):
                raise ValueError(f"probability has shape {prob.shape}, expected ({n},)")
            band = _band(prob, self.thresholds)
            decision = np.maximum(band, floor).astype(np.int8)
            bad = ~usable(prob)
            why[bad] = model_failed or "model output not a probability in [0, 1] (NaN, inf or out of range)"
            prob = np.where(bad, np.nan, prob)
        k = self.top_reasons
        top_idx = np.full((n, k), -1, dtype=np.int64)
        top_val = np.zeros((n, k))
        names = tuple(feature_names)
        if contributions is not None and k > 0 and n:
            contrib = np.asarray(contributions, dtype=np.float64)
            if contrib.shape[1] == len(names) + 1:
                contrib = contrib[:, :-1]
            kk = min(k, contrib.shape[1])
            # only rows with a positive contribution can have a reason (the pipeline explains just
            # the suspicious rows and leaves the others at zero): rank those alone
            rows = np.flatnonzero((contrib > 0).any(axis=1))
            sub = contrib[rows]
            # argpartition then a small sort: O(n * f) instead of sorting every row fully
            part = np.argpartition(-sub, kk - 1, axis=1)[:, :kk]
            vals = np.take_along_axis(sub, part, axis=1)
            order = np.argsort(-vals, axis=1)
            part = np.take_along_axis(part, order, axis=1)
            vals = np.take_along_axis(vals, order, axis=1)
            positive = vals > 0  # only features that pushed *towards* fraud explain a suspicion
            top_idx[rows, :kk] = np.where(positive, part, -1)
            top_val[rows, :kk] = np.where(positive, vals, 0.0)
        return Decisions(
            decision=decision,
            probability=prob,
            rule_reasons=hits.reasons(),
            top_features=top_idx,
            top_values=top_val,
            feature_names=names,
            rules_only=rules_only,
            rules_version=hits.version,
            band=band,
            degraded_reason=why,
        )


# ---------------------------------------------------------------------------------------------------
# Threshold tuning on a validation period.


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune_thresholds` chose and how the validation period fares at it."""

    block: float
    review: float
    fpr: float  # legitimate payments blocked / legitimate payments
    recall_block: float  # frauds blocked / frauds
    recall_review_or_block: float  # frauds blocked or sent to review / frauds
    reviews_per_day_mean: float
    reviews_per_day_max: float
    n_days: int
    n_payments: int
    n_fraud: int
    fraud_amount_stopped: float  # amount of fraud blocked or reviewed (money saved if reviews catch it)
    legit_amount_blocked: float  # amount of legitimate payments refused (friction)
    # why these thresholds should not go live as they are (empty: none); tune-thresholds refuses to save
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def tune_thresholds(
    y: np.ndarray,
    probability: np.ndarray,
    day: np.ndarray,
    *,
    max_fpr: float = 0.01,
    daily_capacity: int = 200,
    amount: np.ndarray | None = None,
    grid_step: float = 0.001,
) -> TuneResult:
    """Pick block/review thresholds on labelled validation payments.

    block = the lowest grid threshold with FPR < ``max_fpr`` (the most fraud blocked within the
    friction budget); review = the lowest grid threshold <= block whose busiest day sends at most
    ``daily_capacity`` payments to review. Everything is computed for all grid points at once.
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(probability, dtype=np.float64)
    day = np.asarray(day)
    if not (len(y) == len(p) == len(day)):
        raise InputError(
            "probability", len(p), "y, probability and day differ in length", "pass aligned arrays"
        )
    if len(y) == 0 or y.all() or not y.any():
        raise InputError(
            "y", int(y.sum()), "validation needs both frauds and legitimate payments", "widen the period"
        )
    if not 0.0 < max_fpr < 1.0:
        raise InputError("max_fpr", max_fpr, "must be in (0, 1)", "use e.g. 0.01")
    if daily_capacity < 0:
        raise InputError("daily_capacity", daily_capacity, "must be >= 0", "use the team's cases per day")
    amount = np.ones_like(p) if amount is None else np.asarray(amount, dtype=np.float64)
    grid = np.round(np.arange(0.0, 1.0 + grid_step / 2, grid_step), 10)

    def at_least(scores: np.ndarray) -> np.ndarray:
        """#scores >= t for every grid t."""
        s = np.sort(scores)
        return len(s) - np.searchsorted(s, grid, side="left")

    legit_ge = at_least(p[~y])
    fpr = legit_ge / (~y).sum()
    ok = np.nonzero(fpr < max_fpr)[0]
    b = int(ok[0]) if len(ok) else len(grid) - 1
    days, day_idx = np.unique(day, return_inverse=True)
    per_day = np.stack([at_least(p[day_idx == d]) for d in range(len(days))])  # (n_days, n_grid)
    reviews = per_day - per_day[:, [b]]  # payments in [t, block) per day, for every candidate t
    fits = np.nonzero((reviews.max(axis=0) <= daily_capacity) & (np.arange(len(grid)) <= b))[0]
    r = int(fits[0]) if len(fits) else b
    block_t, review_t = float(grid[b]), float(grid[r])
    blocked = p >= block_t
    flagged = p >= review_t
    chosen_reviews = reviews[:, r]
    warnings = _tuning_warnings(
        fpr=float(fpr[b]), max_fpr=max_fpr, review_index=r, block_index=b, per_day=per_day,
        chosen_reviews=chosen_reviews, daily_capacity=daily_capacity, n=len(y), grid=grid,
    )  # fmt: skip
    return TuneResult(
        block=block_t,
        review=review_t,
        fpr=float(fpr[b]),
        recall_block=float((blocked & y).sum() / y.sum()),
        recall_review_or_block=float((flagged & y).sum() / y.sum()),
        reviews_per_day_mean=float(chosen_reviews.mean()),
        reviews_per_day_max=float(chosen_reviews.max()),
        n_days=len(days),
        n_payments=len(y),
        n_fraud=int(y.sum()),
        fraud_amount_stopped=float(amount[flagged & y].sum()),
        legit_amount_blocked=float(amount[blocked & ~y].sum()),
        warnings=tuple(warnings),
    )


MAX_REVIEW_SHARE = 0.05  # more than 1 payment in 20 sent to review is a queue nobody works through


def _tuning_warnings(
    *, fpr: float, max_fpr: float, review_index: int, block_index: int, per_day: np.ndarray,
    chosen_reviews: np.ndarray, daily_capacity: int, n: int, grid: np.ndarray,
) -> list[str]:  # fmt: skip
    """What makes a tuning result unfit to go live: the FPR target missed, or a review threshold that
    only the tuning window's small volume allowed (it would overflow the queue at production volume)."""
    out = []
    if fpr >= max_fpr:
        out.append(
            f"no block threshold meets FPR < {max_fpr:g} on the tuning window (FPR {fpr:.4f} at "
            f"{grid[block_index]:.3f}): the model cannot separate these payments well enough"
        )
    per_day_payments = float(per_day[:, 0].mean())
    share = float(chosen_reviews.sum()) / max(n, 1)
    if review_index == 0 and block_index > 0:
        out.append(
            f"review >= {grid[0]:.3f} sends every payment below the block threshold to review: the tuning "
            f"window has {per_day_payments:.0f} payments a day, under the capacity of {daily_capacity}, so the "
            "capacity never bound the choice; tune on production volume (more days, or a capacity scaled "
            "to this window's share of traffic)"
        )
    elif share > MAX_REVIEW_SHARE:
        out.append(
            f"review >= {grid[review_index]:.3f} sends {share:.1%} of payments to review (more than "
            f"{MAX_REVIEW_SHARE:.0%}): {chosen_reviews.mean():.0f} a day of {per_day_payments:.0f}; lower the capacity "
            "to what the team clears, or tune on production volume"
        )
    return out
