"""A/B testing shared by the three systems: assignment, exposure logging, analysis.

Data flows top to bottom through three modules:

* :mod:`~mlsd.platform.experiments.assignment` -- typed config (layers, experiments, arms, holdout) and
  deterministic hashing of ``(salt, unit id)`` into 10,000 buckets: ``Assigner(config).assign(name, ids)``.
* :mod:`~mlsd.platform.experiments.exposures` -- exposure logging exactly once per (unit, experiment, arm)
  into an :class:`ExposureLog` (in-process or Redis Streams), and outcomes aggregated into mergeable
  sufficient statistics (:class:`MetricStats`).
* :mod:`~mlsd.platform.experiments.analysis` -- lift with confidence intervals (Welch, delta method),
  CUPED, sample-ratio mismatch, guardrails and always-valid confidence sequences, all computed from the
  statistics alone.

:class:`~mlsd.platform.experiments.client.ExperimentClient` bundles the three for a service (split and
shadow experiments); :mod:`~mlsd.platform.experiments.online` holds what the systems' online world
simulators share (``mlsd experiment run <system>``).
"""

from mlsd.platform.experiments.analysis import (
    Comparison,
    analyze_experiment,
    compare,
    confidence_sequence,
    guardrail,
    paired_compare,
    srm_check,
)
from mlsd.platform.experiments.assignment import (
    Arm,
    Assigner,
    Experiment,
    ExperimentConfig,
    Holdout,
    Layer,
    MetricSpec,
    bucket_of,
)
from mlsd.platform.experiments.client import ExperimentClient, analyze_shadow
from mlsd.platform.experiments.exposures import (
    ExposureLog,
    MemoryExposureLog,
    MetricStats,
    RedisExposureLog,
    aggregate,
)
from mlsd.platform.experiments.online import (
    aa_rejection_rate,
    arms_from_presets,
    lose_exposures,
    make_experiment,
    with_truth,
)

__all__ = [
    "Arm",
    "Assigner",
    "Comparison",
    "Experiment",
    "ExperimentClient",
    "ExperimentConfig",
    "ExposureLog",
    "Holdout",
    "Layer",
    "MemoryExposureLog",
    "MetricSpec",
    "MetricStats",
    "RedisExposureLog",
    "aa_rejection_rate",
    "aggregate",
    "analyze_experiment",
    "analyze_shadow",
    "arms_from_presets",
    "bucket_of",
    "compare",
    "confidence_sequence",
    "guardrail",
    "lose_exposures",
    "make_experiment",
    "paired_compare",
    "srm_check",
    "with_truth",
]
