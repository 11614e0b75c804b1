"""Prometheus helpers the services share: score histograms, decision mix, exposures, drift gauges.

Batch-first like the services: ``observe_scores(system, scores)`` takes the whole batch of scores and
bins it with one ``np.histogram`` (prometheus_client's ``Histogram.observe`` is one Python call per
value, which at 10k transactions/s would be its own hot loop). Metrics live in
:data:`mlsd.platform.serving.REGISTRY` by default, so every service's ``/metrics`` shows them; tests
pass their own ``CollectorRegistry``.

========================================  =============================  ===============================
metric                                    labels                         helper
========================================  =============================  ===============================
``mlsd_score`` (histogram)                system, model                  :func:`observe_scores`
``mlsd_rank_score`` (histogram)           system, model                  ``observe_scores(bounded=False)``
``mlsd_decisions_total`` (counter)        system, decision               :func:`count_decisions`
``mlsd_experiment_exposures_total``       experiment, arm                :func:`count_exposures`
``mlsd_feature_psi`` (gauge)              system, feature                :func:`set_drift`
========================================  =============================  ===============================

Latency per stage and request counts are :mod:`mlsd.platform.serving`'s (``mlsd_stage_seconds``,
``mlsd_requests_total``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

# Probability-like scores (fraud, CTR): 20 equal bins over [0, 1].
PROBABILITY_BUCKETS = tuple(np.round(np.linspace(0.05, 1.0, 20), 2).tolist())
# Unbounded ranking scores (LambdaMART, ranker margins): 0.5-wide bins over [-8, 8]; the rest overflows.
RANK_SCORE_BUCKETS = tuple(np.round(np.arange(-8.0, 8.01, 0.5), 1).tolist())


class BatchHistogram(Collector):
    """A labelled Prometheus histogram fed whole arrays at a time (``observe_many``).

    Same constructor shape as prometheus_client's metrics, so :func:`mlsd.platform.serving.metric` can
    get-or-create it. Exposed in the standard histogram format (``_bucket{le=...}``, ``_sum``, ``_count``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = PROBABILITY_BUCKETS,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._labelnames = tuple(labelnames)
        self.upper = np.asarray(sorted(float(b) for b in buckets if np.isfinite(b)), dtype=np.float64)
        self._lock = threading.Lock()
        self._state: dict[tuple[str, ...], list[Any]] = {}  # labels -> [bucket counts, sum]
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: Any, **labels: str) -> None:
        """Add every finite value of ``values`` (NaN/inf are dropped: they have no bucket to go in)."""
        key = tuple(str(labels[name]) for name in self._labelnames)
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        x = x[np.isfinite(x)]
        # Bucket i counts values <= upper[i] (Prometheus "le"); the last slot is the +Inf overflow.
        counts = np.bincount(np.searchsorted(self.upper, x, side="left"), minlength=len(self.upper) + 1)
        with self._lock:
            state = self._state.setdefault(key, [np.zeros(len(self.upper) + 1, dtype=np.int64), 0.0])
            state[0] += counts
            state[1] += float(x.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)
        with self._lock:
            items = [(k, v[0].copy(), v[1]) for k, v in self._state.items()]
        for key, counts, total in items:
            cumulative = np.cumsum(counts)
            buckets = [(_le(u), int(c)) for u, c in zip(self.upper, cumulative[:-1], strict=True)]
            buckets.append(("+Inf", int(cumulative[-1])))
            family.add_metric(list(key), buckets, total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)


def _le(value: float) -> str:
    return repr(float(value))


# ---------------------------------------------------------------------------------------------------
# Get-or-create: serving's registry by default, a private cache for test registries.

_private: dict[tuple[int, str], Any] = {}
_private_lock = threading.Lock()


def _metric(
    kind: type, name: str, doc: str, labels: tuple[str, ...], registry: CollectorRegistry | None, **kw: Any
) -> Any:
    if registry is None:
        from mlsd.platform.serving import metric

        return metric(kind, name, doc, labels, **kw)
    with _private_lock:
        key = (id(registry), name)
        if key not in _private:
            _private[key] = kind(name, doc, labels, registry=registry, **kw)
        return _private[key]


def score_histogram(registry: CollectorRegistry | None = None) -> BatchHistogram:
    return _metric(
        BatchHistogram, "mlsd_score", "model scores, by system and model", ("system", "model"), registry
    )


def rank_score_histogram(registry: CollectorRegistry | None = None) -> BatchHistogram:
    return _metric(
        BatchHistogram,
        "mlsd_rank_score",
        "unbounded ranking scores, by system and model",
        ("system", "model"),
        registry,
        buckets=RANK_SCORE_BUCKETS,
    )


def observe_scores(
    system: str,
    scores: Any,
    model: str = "champion",
    registry: CollectorRegistry | None = None,
    bounded: bool = True,
) -> None:
    """Record a batch of model scores for ``system`` / ``model``.

    ``bounded=True``: probabilities in [0, 1] (``mlsd_score``; fraud's champion and shadow challenger
    both report here, ``model="challenger"``). ``bounded=False``: unbounded ranking scores such as
    LambdaMART outputs (``mlsd_rank_score``, 0.5-wide buckets over [-8, 8]), for recsys and search,
    whose ranker scores only order a list and have no fixed range.
    """
    histogram = score_histogram(registry) if bounded else rank_score_histogram(registry)
    histogram.observe_many(scores, system=system, model=model)


def count_decisions(system: str, decisions: Any, registry: CollectorRegistry | None = None) -> dict[str, int]:
    """Count a batch of decisions (e.g. approve/review/decline) into ``mlsd_decisions_total``."""
    counter = _metric(
        Counter, "mlsd_decisions", "decisions taken, by system and decision", ("system", "decision"), registry
    )
    values, counts = np.unique(np.asarray(decisions).astype(str), return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        counter.labels(system=system, decision=value).inc(count)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def count_exposures(
    experiment: str,
    arm_names: Sequence[str],
    new_mask: Any,
    arms: Any,
    registry: CollectorRegistry | None = None,
) -> None:
    """Count first exposures per arm: pass the mask returned by ``ExposureLog.log`` and the arm indices."""
    counter = _metric(
        Counter,
        "mlsd_experiment_exposures",
        "units exposed for the first time, by experiment and arm",
        ("experiment", "arm"),
        registry,
    )
    arms = np.asarray(arms, dtype=np.int64)[np.asarray(new_mask, dtype=bool)]
    counts = np.bincount(arms[arms >= 0], minlength=len(arm_names))
    for name, count in zip(arm_names, counts.tolist(), strict=True):
        if count:
            counter.labels(experiment=experiment, arm=name).inc(count)


def set_drift(system: str, report: Mapping[str, Any], registry: CollectorRegistry | None = None) -> None:
    """Publish a :meth:`DriftMonitor.report` as ``mlsd_feature_psi{system, feature}`` gauges."""
    gauge = _metric(
        Gauge, "mlsd_feature_psi", "population stability index per feature", ("system", "feature"), registry
    )
    for feature, row in report["features"].items():
        gauge.labels(system=system, feature=feature).set(row["psi"])
