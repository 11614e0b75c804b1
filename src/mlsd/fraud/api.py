"""The fraud HTTP API's bodies as pydantic models: what ``/openapi.json`` documents.

The handlers validate payments themselves (:func:`mlsd.fraud.data.from_records`), so errors name
the payment in a batch (``payments[3].amount``) and the value's JSON-safe spelling; these models say
the same rules in the OpenAPI document (``tests/fraud/test_fail_closed.py`` checks that the two agree
on the cases of issue 11). Responses are documented here and never validated at run time: the
scoring path does not pay for a second serialisation.

Examples:
    >>> Payment.model_validate({"tx_id": 1, "ts": 1767225600, "card_id": "c1", "terminal_id": 7,
    ...                         "amount": 12.5}).amount
    12.5
    >>> {"decision", "probability", "degraded", "degraded_reason"} <= set(ScoreResponse.model_json_schema()["required"])
    True
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mlsd.fraud.config import CURRENCIES
from mlsd.fraud.data import INT64, MAX_AMOUNT, MAX_ID_CHARS, MAX_TS
from mlsd.fraud.review import MAX_REVIEWER_CHARS, REVIEWER_PATTERN

__all__ = [
    "REQUEST_BODIES",
    "BatchResponse",
    "Case",
    "CasesResponse",
    "ClaimRequest",
    "ClaimResponse",
    "Decision",
    "Payment",
    "ResolveRequest",
    "ResolveResponse",
    "ScoreBatchRequest",
    "ScoreResponse",
]

_Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\u0000]+$")]
_Int64 = Annotated[int, Field(ge=INT64[0], le=INT64[1])]
Id = _Text | _Int64
Reviewer = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_REVIEWER_CHARS, pattern=REVIEWER_PATTERN)
]


class Payment(BaseModel):
    """One payment to score. Unknown fields are ignored; optional context is never guessed."""

    model_config = ConfigDict(extra="allow")

    tx_id: Id = Field(description="the payment's id: decisions and review cases are keyed by it")
    ts: int = Field(
        ge=0,
        lt=MAX_TS,
        description="seconds since the epoch (UTC); more than service.max_future_s (300 s) after "
        "the service's clock is refused",
    )
    card_id: Id
    terminal_id: Id
    amount: float = Field(ge=0, le=MAX_AMOUNT, description="in currency units (12.50), not cents")
    device_id: Id | None = None
    ip: Id | None = None
    email: Id | None = None
    mcc: Id | None = Field(None, description="merchant category")
    lat: float | None = Field(None, ge=-90, le=90, description="where the payment happened")
    lon: float | None = Field(None, ge=-180, le=180)
    currency: Literal[CURRENCIES] | None = None  # type: ignore[valid-type]
    country: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")] | None = Field(
        None, description="ISO 3166 alpha-2; read by the rules only"
    )


class ScoreBatchRequest(BaseModel):
    payments: list[Payment] = Field(min_length=1, description="at most service.max_batch (413 beyond)")


class ExperimentArm(BaseModel):
    name: str
    arm: str
    mode: Literal["shadow"]


class Decision(BaseModel):
    """One payment's decision. ``degraded``: taken without a usable model score (model error,
    NaN output, deadline), ``degraded_reason`` says which; such a payment is never approved by the
    model (review, or the rules' decision when the deadline forced rules only)."""

    tx_id: Id
    decision: Literal["approve", "review", "block"]
    probability: float | None = Field(ge=0, le=1, description="null when the model gave no usable score")
    reasons: list[str] = Field(
        description="score band (or RULES_ONLY / MODEL_FAILED), rules, MODEL:<feature>"
    )
    rules_only: bool
    degraded: bool
    degraded_reason: str | None
    experiments: list[ExperimentArm] | None = None


class Skipped(BaseModel):
    stage: str
    reason: str


class _BatchMeta(BaseModel):
    timings_ms: dict[str, float]
    skipped: list[Skipped]
    rules_version: int
    model_version: int | None
    deadline_ms: float


class ScoreResponse(_BatchMeta, Decision):
    """``POST /v1/score``: the decision and the batch's metadata."""

    experiments: Any = None  # the batch's experiments ({name: {mode, units_in, arms}}) when any


class BatchResponse(_BatchMeta):
    decisions: list[Decision]
    rules_only: bool
    experiments: dict[str, Any] | None = None


class ClaimRequest(BaseModel):
    reviewer: Reviewer | None = Field(
        None, description="the reviewer; with API keys it is the key's name (omit it, or send the same)"
    )
    limit: int = Field(1, ge=1, le=1000)


class ResolveRequest(BaseModel):
    reviewer: Reviewer | None = Field(None, description="as for claim: the API key's name when keys are on")
    outcome: Literal["fraud", "legit"]


class Case(BaseModel):
    tx_id: str
    probability: float
    amount: float
    priority: float
    decision: str
    reasons: list[str]
    status: Literal["open", "claimed", "resolved"]
    reviewer: str | None = Field(description="who claimed (and resolved) it: the audit trail")
    created_ts: int
    claimed_ts: int | None
    resolved_ts: int | None
    outcome: Literal["fraud", "legit"] | None
    terminal_id: str | None = None


class CasesResponse(BaseModel):
    cases: list[Case]
    counts: dict[str, int]


class ClaimResponse(BaseModel):
    cases: list[Case]


class ResolveResponse(BaseModel):
    case: Case
    label_recorded: bool
    feature_labels_updated: int


# the bodies the handlers validate themselves: (path, model) for the OpenAPI document
REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "/v1/score": Payment,
    "/v1/score/batch": ScoreBatchRequest,
    "/v1/review/claim": ClaimRequest,
    "/v1/review/cases/{tx_id}/resolve": ResolveRequest,
}
