"""Typed configuration for the search product: objective, ranking, rules, deadline and serving limits.

Everything a product owner or an on-call engineer may want to turn lives here, in frozen dataclasses
whose defaults match the issue (top 48, 200 ms, objective 0.6 conversion + 0.3 revenue per click +
0.1 CTR). :meth:`SearchConfig.from_dict` builds one from a plain mapping (a YAML file, a test) and
rejects unknown keys with an :class:`~mlsd.platform.errors.InputError` naming the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mlsd.platform.config import override_sections
from mlsd.platform.errors import InputError


@dataclass(frozen=True)
class ObjectiveConfig:
    """How one impression's outcome becomes a training gain (revenue per search, decomposed).

    gain = conversion * purchase + revenue * min(order_value / revenue_ref, 1) + ctr * click, each outcome
    inverse-propensity weighted when the ranker is trained with IPS. ``revenue_ref`` caps the revenue term
    so one large basket does not dominate a query.
    """

    conversion: float = 0.6
    revenue: float = 0.3
    ctr: float = 0.1
    revenue_ref: float = 200.0


@dataclass(frozen=True)
class LTRConfig:
    """LambdaMART (LightGBM lambdarank) settings and the position-bias correction."""

    ips: bool = True
    # Propensities below this are clipped: 1/p at deep positions would otherwise let a handful of
    # clicks dominate the labels (the usual variance/bias trade of clipped IPS).
    propensity_clip: float = 0.05
    n_estimators: int = 200
    learning_rate: float = 0.05
    # IPS labels are unbiased but noisy (a click at rank 15 counts 15x): shallow trees, large leaves,
    # row/feature subsampling and L2 keep the ranker from fitting that noise.
    num_leaves: int = 15
    min_child_samples: int = 40
    subsample: float = 0.8
    colsample: float = 0.8
    l2: float = 1.0
    label_shrink: float = 5.0  # pseudo-impressions with no outcome added to each (query, product) pair
    # Random catalog products added per training query with gain 0. The log only holds what the old
    # ranker showed (mostly on-topic); serving ranks up to 1,000 retrieved candidates, many off-topic.
    # Without these easy negatives the ranker never learns how bad an off-category product is.
    random_negatives: int = 20
    grade_levels: int = 10  # continuous gains are quantised to 0..grade_levels with linear label_gain
    seed: int = 0


@dataclass(frozen=True)
class RuleConfig:
    """Business rules applied after ranking; a result failing one is never returned."""

    k_max_results: int = 48
    drop_out_of_stock: bool = True
    apply_price_filter: bool = True
    category_first: bool = True  # products of the query's parsed category before the others
    diversity_top: int = 10  # brand diversity applies to this many top slots
    max_per_brand: int = 3
    # normalised query text -> product ids pinned to the top, in order (merchandising)
    pinned: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Budgets:
    """Latency budget of one request (ms). A skippable stage runs only when the time left is at least its
    expected cost (an online average of its recent durations) times ``safety``."""

    deadline_ms: float = 200.0
    safety: float = 1.5
    initial_dense_ms: float = 20.0
    initial_ltr_ms: float = 10.0


@dataclass(frozen=True)
class RetrievalConfig:
    """How many candidates each retriever hands to ranking."""

    bm25_k: int = 500
    dense_k: int = 500
    candidates: int = 1000  # after hybrid fusion
    rerank_depth: int = 300  # LTR reorders this many of the fused candidates; the rest follow in fused order
    use_dense: bool = True


@dataclass(frozen=True)
class ServiceConfig:
    """Serving limits and model loading."""

    k_default: int = 48
    k_min: int = 1
    k_max: int = 200
    max_query_chars: int = 256  # longer queries answer 413 (query understanding's limit)
    max_events_per_request: int = 2_000  # an event is ~150 bytes: 2,000 fit the 1 MiB body limit with room
    model_name: str = "search-ltr"
    alias: str = "champion"
    reload_poll_s: float = 2.0  # how often the service checks the registry for a new champion (0: never)


def _normalise_pinned(rules: dict[str, Any]) -> dict[str, Any]:
    """YAML gives ``{query: [ids]}``; rules match on the lower-cased query and want tuples of ints."""
    if "pinned" in rules:
        rules["pinned"] = {
            str(q).strip().lower(): tuple(int(p) for p in ids) for q, ids in rules["pinned"].items()
        }
    return rules


@dataclass(frozen=True)
class SearchConfig:
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    ltr: LTRConfig = field(default_factory=LTRConfig)
    rules: RuleConfig = field(default_factory=RuleConfig)
    budgets: Budgets = field(default_factory=Budgets)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SearchConfig:
        """Build from ``{"rules": {"max_per_brand": 2}, ...}``; unknown sections or keys are an InputError."""
        config = override_sections(cls(), data, convert={"rules": _normalise_pinned})
        config.validate()
        return config

    def validate(self) -> None:
        o = self.objective
        if min(o.conversion, o.revenue, o.ctr) < 0 or o.conversion + o.revenue + o.ctr <= 0:
            raise InputError(
                "config.objective", asdict(o), "weights must be >= 0 and not all 0", "fix the blend"
            )
        if self.rules.max_per_brand < 1:
            raise InputError(
                "config.rules.max_per_brand", self.rules.max_per_brand, "must be >= 1", "use 1 or more"
            )
        if not self.budgets.deadline_ms > 0:
            raise InputError(
                "config.budgets.deadline_ms", self.budgets.deadline_ms, "must be > 0", "use e.g. 200"
            )
        if not 0 < self.ltr.propensity_clip <= 1:
            raise InputError(
                "config.ltr.propensity_clip", self.ltr.propensity_clip, "must be in (0, 1]", "use 0.05"
            )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rules"]["pinned"] = {q: list(v) for q, v in self.rules.pinned.items()}
        return out
