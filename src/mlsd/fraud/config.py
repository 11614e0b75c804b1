"""Typed configuration for the fraud product: thresholds, deadline, review queue, stream, retraining.

Everything an analyst or an on-call engineer may want to turn lives here, in frozen dataclasses whose
defaults match the issue (block >= 0.9, review 0.5-0.9, a 100 ms deadline, FPR < 1%).
``FraudConfig.from_dict`` builds one from a plain mapping (a YAML file or a test) and rejects unknown
keys with an :class:`~mlsd.platform.errors.InputError` naming the key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlsd.platform.config import override_sections
from mlsd.platform.errors import DataFormatError, InputError

# ISO 4217 codes the service accepts. A payment in any other currency is bad input (422), not a
# payment the model should guess about: the amount would be on an unknown scale.
CURRENCIES: tuple[str, ...] = ("EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN")


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds on the calibrated fraud probability.

    ``probability >= block`` blocks the payment, ``review <= probability < block`` sends it to manual
    review, anything lower is approved. Rules may raise (never lower) the outcome.
    """

    block: float = 0.9
    review: float = 0.5


@dataclass(frozen=True)
class ServiceConfig:
    """Online scoring limits."""

    deadline_ms: float = 100.0
    # A stage runs only when the time left is at least its recent cost times ``safety``: the service
    # falls back to rules-only *before* missing the deadline, not after.
    safety: float = 1.5
    max_batch: int = 1000
    top_reasons: int = 3
    model_name: str = "fraud"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    shadow: bool = True  # score the challenger alongside the champion; log only, never decide
    rules_path: str | None = None  # None: the packaged default rules.yaml
    rules_poll_s: float = 1.0
    # A live payment dated more than this many seconds after the service's clock is refused (422):
    # clocks drift a little, but a payment from the future would poison its card's windows.
    max_future_s: float = 300.0


@dataclass(frozen=True)
class ReviewConfig:
    """Review queue and label store backend."""

    backend: str = "sqlite"  # "sqlite" | "postgres"
    sqlite_path: str = "fraud.sqlite"
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/test"
    postgres_schema: str = "mlsd_fraud"
    daily_capacity: int = 200  # cases a review team can work through per day


@dataclass(frozen=True)
class StreamConfig:
    """Redis Streams worker settings."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "mlsd:fraud:"
    input_stream: str = "payments"
    output_stream: str = "decisions"
    group: str = "scorers"
    batch_size: int = 500  # entries per XREADGROUP: micro-batching is what makes 10k tx/s possible
    block_ms: int = 50
    claim_idle_ms: int = 5000  # a pending entry idle this long belongs to a dead worker: reclaim it
    dedup_window_s: int = 3600  # decided tx_ids are remembered for one to two windows, then expire


@dataclass(frozen=True)
class TrainingConfig:
    """Retraining and champion/challenger policy."""

    retrain_every_days: int = 7
    # Payments of the last label_delay_days before the cut-off are left out of training and evaluation:
    # their labels are still on the way (review takes hours, chargebacks 30-90 days). Older payments
    # without a fraud label count as legitimate - what the business knows at the cut-off.
    label_delay_days: int = 7
    eval_days: int = 7  # the latest matured period (before the delay) champion and challenger compete on
    min_improvement: float = 0.0  # challenger must beat the champion's average precision by more than this
    max_fpr: float = 0.01


@dataclass(frozen=True)
class FraudConfig:
    """The whole product configuration."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FraudConfig:
        """Build from ``{"thresholds": {...}, "service": {...}, ...}``; unknown keys raise InputError."""
        config = override_sections(cls(), data)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | Path | None) -> FraudConfig:
        """Read a YAML config file; ``None`` gives the defaults."""
        if path is None:
            return cls()
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            raise DataFormatError(
                path, None if line is None else line + 1, "not valid YAML", "fix the syntax"
            ) from err
        return cls.from_dict(data)

    def validate(self) -> None:
        """Reject settings that cannot work, naming the field."""
        t, s, r = self.thresholds, self.service, self.review
        if not 0.0 <= t.review <= t.block <= 1.0:
            raise InputError(
                "config.thresholds",
                f"review={t.review}, block={t.block}",
                "need 0 <= review <= block <= 1",
                "e.g. 0.5 / 0.9",
            )
        if s.deadline_ms <= 0:
            raise InputError("config.service.deadline_ms", s.deadline_ms, "must be positive", "use e.g. 100")
        if not s.max_future_s >= 0:
            raise InputError(
                "config.service.max_future_s", s.max_future_s, "must be >= 0", "use e.g. 300 (5 minutes)"
            )
        if s.max_batch < 1:
            raise InputError("config.service.max_batch", s.max_batch, "must be >= 1", "use e.g. 1000")
        if r.backend not in {"sqlite", "postgres"}:
            raise InputError("config.review.backend", r.backend, "unknown backend", "use sqlite or postgres")
        if not 0.0 < self.training.max_fpr < 1.0:
            raise InputError(
                "config.training.max_fpr", self.training.max_fpr, "must be in (0, 1)", "use e.g. 0.01"
            )
