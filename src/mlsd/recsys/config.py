"""Typed configuration for the recommender product: budgets, business rules, re-ranking, k limits.

Everything a product owner or an on-call engineer may want to turn lives here, in frozen
dataclasses with defaults that match the issue (top 50, 200 ms, k in 1..500). ``RecsysConfig.from_dict``
builds one from a plain mapping (for a YAML file or a test) and rejects unknown keys with an
:class:`~mlsd.platform.errors.InputError` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mlsd.platform.config import override_sections
from mlsd.platform.errors import InputError

# The registered model the daily job trains and the engine serves (the system's ``model``).
MODEL_NAME = "recsys-ranker"
# The regions and age ratings the simulator produces and the rules understand.
REGIONS: tuple[str, ...] = ("US", "EU", "LATAM", "APAC", "IN")
# age rating -> minimum viewer age (a hard rule, not a preference)
AGE_RATINGS: dict[str, int] = {"G": 0, "PG": 8, "PG-13": 13, "R": 17, "NC-17": 18}


@dataclass(frozen=True)
class Budgets:
    """Latency budget of one request, in milliseconds.

    ``deadline_ms`` is the whole request. A stage that may be skipped runs only when the time left is
    at least its expected cost (an online estimate of its recent duration) times ``safety``, so the
    service degrades *before* missing the deadline rather than after.
    """

    deadline_ms: float = 200.0
    safety: float = 1.5
    # Initial cost guesses before any request was measured (ms); replaced by measured averages.
    initial_features_ms: float = 5.0
    initial_ranking_ms: float = 10.0
    initial_rerank_ms: float = 2.0


@dataclass(frozen=True)
class RuleConfig:
    """Hard filters. A title failing any enabled rule is never returned, whatever its score."""

    region: bool = True
    age_rating: bool = True
    license_window: bool = True
    # Titles whose release date is still in the future cannot be watched yet.
    released_only: bool = True
    # Age assumed for a user whose age is unknown (cold start): the strictest sensible default.
    unknown_age: int = 0


@dataclass(frozen=True)
class RerankConfig:
    """Re-ranking policy: diversity, freshness and exploration."""

    diversity: str = "genre_cap"  # "genre_cap" | "mmr" | "none"
    max_genre_share: float = 0.4  # genre_cap: at most this share of the list with the same primary genre
    mmr_lambda: float = 0.7  # mmr: relevance weight against similarity to what is already shown
    freshness_weight: float = 0.1  # added to the normalised score of a title released today
    freshness_half_life_days: float = 30.0
    epsilon: float = 0.05  # epsilon-greedy: probability a slot shows an explored title
    explore_pool: int = 200  # explored titles come from the next-best candidates, not the whole catalogue


# Where serving processes read users' rows (mlsd.recsys.engine.export_user_state): the workers'
# environment names them, and the training job reads the same variables to write a new champion's rows.
USER_STATE_ENV = "MLSD_RECSYS_USER_STATE"
USER_STATE_PREFIX_ENV = "MLSD_RECSYS_USER_STATE_PREFIX"
USER_STATE_PREFIX = "mlsd:"  # the key prefix when USER_STATE_PREFIX_ENV is unset


@dataclass(frozen=True)
class ServiceConfig:
    """Serving limits and model loading."""

    k_default: int = 50
    k_min: int = 1
    k_max: int = 500
    model_name: str = MODEL_NAME
    alias: str = "champion"
    reload_poll_s: float = 2.0  # cheap poll of the registry alias; 0 disables the background poller
    exposure_log_path: str | None = None  # JSONL file for exposures; None keeps them in memory only
    # "data": requests happen at the end of the training data (a simulated world has its own calendar);
    # "wall": the real clock (a production deployment). Licensing windows are checked against it.
    clock: str = "data"
    default_region: str = "US"  # for a cold-start request that names no region
    # Threads for BLAS / FAISS / OpenMP inside one request. 1: a request is small (one user, ~1,000
    # candidates) and thread start-up plus spin-waiting cost more than they save; concurrency comes
    # from serving requests side by side instead.
    threads: int = 1
    # Engine calls at once in one process; the HTTP service's other requests wait their turn (and the
    # wait is spent from their deadline). More only take turns at the GIL and stretch every request:
    # 2 workers, 8 requests in flight, 1M users: p99 122 ms with the thread pool's 40, 73-83 ms with 2-3,
    # and 1 loses the overlap of one request's Redis read and numpy work with another's Python (half
    # the throughput).
    concurrent_requests: int = 2


@dataclass(frozen=True)
class TrainConfig:
    """The daily job: which window trains, which day evaluates, how big the candidate lists are."""

    train_days: float = 30.0
    label_days: float = 7.0  # the last days of the train window give the ranker its labels
    eval_days: float = 1.0
    k: int = 10
    min_gain: float = 0.0  # the challenger must beat the champion's ndcg@k by more than this
    # Candidate list sizes per source and the ranker's tree count; None = the model definition's
    # (mlsd.recsys.model.model_spec: the one `mlsd recsys evaluate` measures).
    sources: dict[str, int] | None = None
    n_estimators: int | None = None
    # One LightGBM thread: OpenMP threads spin-wait, which on a busy 2-core box costs 3x the time.
    threads: int = 1

    def fit(self, days: float) -> TrainConfig:
        """This job shortened to a calendar of ``days`` days when it does not fit in it (one day of
        history before the label days, the evaluation day): data of any length still trains.

        >>> TrainConfig().fit(60).train_days, TrainConfig().fit(20).train_days, TrainConfig().fit(20).label_days
        (30.0, 18.0, 4.0)
        """
        if days >= self.train_days + self.eval_days + 1:
            return self
        train_days = max(float(days) - self.eval_days - 1.0, 2.0)
        return replace(self, train_days=train_days, label_days=max(1.0, float(int(train_days // 4))))


def make_data(root: Any) -> str:
    """The commands that fill ``W/recsys/data`` (the fix of a "holds no recsys data" error)."""
    return (f"mlsd recsys simulate --workdir {root} (or your own data: mlsd recsys import "
            f"--format movielens|csv|parquet --path P --workdir {root})")  # fmt: skip


@dataclass(frozen=True)
class RecsysConfig:
    """The whole product configuration."""

    budgets: Budgets = field(default_factory=Budgets)
    rules: RuleConfig = field(default_factory=RuleConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RecsysConfig:
        """Build from ``{"budgets": {...}, "rules": {...}, ...}``; unknown keys raise InputError."""
        config = override_sections(cls(), data)
        config.validate()
        return config

    def validate(self) -> None:
        """Reject settings that cannot work, naming the field."""
        s, b, r = self.service, self.budgets, self.rerank
        if not 1 <= s.k_min <= s.k_default <= s.k_max:
            raise InputError(
                "config.service.k_default", s.k_default, "must lie in k_min..k_max", "fix the k limits"
            )
        if b.deadline_ms <= 0:
            raise InputError("config.budgets.deadline_ms", b.deadline_ms, "must be positive", "use e.g. 200")
        if r.diversity not in {"genre_cap", "mmr", "none"}:
            raise InputError(
                "config.rerank.diversity", r.diversity, "unknown method", "use genre_cap, mmr or none"
            )
        if not 0.0 <= r.epsilon < 1.0:
            raise InputError("config.rerank.epsilon", r.epsilon, "must be in [0, 1)", "use e.g. 0.05")
        if (
            isinstance(s.concurrent_requests, bool)
            or not isinstance(s.concurrent_requests, int)
            or not (1 <= s.concurrent_requests <= 64)
        ):
            raise InputError("config.service.concurrent_requests", s.concurrent_requests,
                             "must be an integer in 1..64", "use e.g. 2")  # fmt: skip
        if s.clock not in {"data", "wall"}:
            raise InputError("config.service.clock", s.clock, "unknown clock", "use data or wall")
        if not 0.0 < r.max_genre_share <= 1.0:
            raise InputError(
                "config.rerank.max_genre_share", r.max_genre_share, "must be in (0, 1]", "use e.g. 0.4"
            )
