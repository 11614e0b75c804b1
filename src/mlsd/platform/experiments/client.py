"""What a service holds: one object to assign, log exposures, and analyse, for every experiment.

A service wires experiments in four lines (batch-first, like every service call)::

    client = ExperimentClient.from_yaml("experiments.yaml", log=RedisExposureLog(url))   # at startup
    arms = client.assign("recsys-ranker", user_ids)            # -1: not in the experiment -> default
    for arm, rows in client.groups(arms).items():              # each sub-batch runs its arm's variant
        ...  # arm >= 0: client.config.experiment(name).arms[arm].alias / .params pick the model/params
    client.expose("recsys-ranker", user_ids, arms)             # once the response was actually served

and the simulator (or a batch job over the outcome events) asks for the report::

    report = client.analyze("recsys-ranker", outcomes, covariates=pre_period)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from mlsd.platform.experiments.analysis import analyze_experiment
from mlsd.platform.experiments.assignment import Arm, Assigner, ExperimentConfig
from mlsd.platform.experiments.exposures import (
    ExposureLog,
    MemoryExposureLog,
    MetricStats,
    aggregate_many,
    exposure_counts,
    first_exposures,
)


class ExperimentClient:
    """Assignment + exposure log (+ the ``mlsd_experiment_exposures_total`` counter) + analysis.

    ``log`` defaults to an in-process :class:`MemoryExposureLog`; pass a :class:`RedisExposureLog` when
    several processes serve the same experiment. ``registry``: Prometheus registry for the exposure
    counter (default: the services' registry; ``False`` to count nothing).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        log: ExposureLog | None = None,
        registry: CollectorRegistry | None | bool = None,
    ) -> None:
        self.config = config
        self.log = log if log is not None else MemoryExposureLog()
        self.registry = registry
        self.assigner = Assigner(config)

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> ExperimentClient:
        return cls(ExperimentConfig.from_yaml(path), **kwargs)

    def assign(self, experiment: str, unit_ids: Any) -> np.ndarray:
        """Arm index per unit, -1 for units not in the experiment (held out, not covered, other experiment)."""
        return self.assigner.assign(experiment, unit_ids)

    def arm(self, experiment: str, index: int) -> Arm | None:
        """The arm for an index (``None`` for -1): its ``alias`` and ``params`` say what to run."""
        return None if index < 0 else self.config.experiment(experiment).arms[index]

    @staticmethod
    def groups(arm_idx: Any) -> dict[int, np.ndarray]:
        """Row positions per arm index (including -1), so each sub-batch runs its variant in one call."""
        arm_idx = np.asarray(arm_idx)
        order = np.argsort(arm_idx, kind="stable")
        values, starts = np.unique(arm_idx[order], return_index=True)
        return {int(v): part for v, part in zip(values, np.split(order, starts[1:]), strict=True)}

    def expose(self, experiment: str, unit_ids: Any, arm_idx: Any, ts: Any = None) -> np.ndarray:
        """Log that these units experienced their arm; True where it is their first exposure."""
        new = self.log.log(experiment, unit_ids, arm_idx, ts)
        if self.registry is not False:
            from mlsd.platform.monitoring.metrics import count_exposures

            names = self.config.experiment(experiment).arm_names
            count_exposures(experiment, names, new, arm_idx, registry=self.registry or None)
        return new

    def exposures(self, experiment: str) -> pd.DataFrame:
        return self.log.exposures(experiment)

    def stats(
        self,
        experiment: str,
        outcomes: pd.DataFrame,
        covariates: pd.DataFrame | None = None,
        unit_column: str = "unit",
    ) -> dict[str, MetricStats]:
        """Sufficient statistics of every configured metric over the units exposed so far."""
        exp = self.config.experiment(experiment)
        return aggregate_many(
            self.exposures(experiment), outcomes, exp.metrics, exp.arm_names, covariates, unit_column
        )

    def analyze(
        self,
        experiment: str,
        outcomes: pd.DataFrame,
        covariates: pd.DataFrame | None = None,
        unit_column: str = "unit",
        alpha: float = 0.05,
        planned_n: float = 10_000,
        looks: int = 0,
        time_column: str = "ts",
    ) -> dict[str, Any]:
        """The JSON-ready report of :func:`analyze_experiment` for ``experiment``, from the exposure log.

        ``looks > 0`` adds ``report["looks"]``: the analysis at ``looks`` evenly spaced points of the
        exposure order (units exposed so far, and their outcome events up to that time when the events
        carry ``time_column``), which is the path of the confidence sequence the dashboard draws.
        """
        exp = self.config.experiment(experiment)
        exposures = first_exposures(self.exposures(experiment))
        report = self._report(exp, exposures, outcomes, covariates, unit_column, alpha, planned_n)
        if looks > 0 and len(exposures):
            report["looks"] = []
            cuts = np.unique(np.linspace(len(exposures) / looks, len(exposures), looks).round().astype(int))
            for cut in cuts:
                seen = exposures.iloc[:cut]
                upto = int(seen["ts"].max())
                events = outcomes
                if time_column in outcomes.columns:
                    events = outcomes[outcomes[time_column].to_numpy() <= upto]
                look = self._report(exp, seen, events, covariates, unit_column, alpha, planned_n)
                report["looks"].append(
                    {"n": int(cut), "ts": upto, "metrics": look["metrics"], "verdict": look["verdict"]}
                )
        return report

    @staticmethod
    def _report(exp, exposures, outcomes, covariates, unit_column, alpha, planned_n) -> dict[str, Any]:
        stats = aggregate_many(exposures, outcomes, exp.metrics, exp.arm_names, covariates, unit_column)
        counts = exposure_counts(exposures, len(exp.arms))
        return analyze_experiment(exp, stats, counts=counts, alpha=alpha, planned_n=planned_n)
