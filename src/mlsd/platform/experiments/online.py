"""What the systems' online world simulators share: one-experiment configs, arm presets, a planted
logging bug, A/A calibration by re-randomisation, and the known truth next to the estimate.

Each system's world simulator (``System.world()``, :class:`OnlineSimulator`) drives its real serving
engine in-process for N simulated units and returns :meth:`ExperimentClient.analyze`'s report; the simulator also knows what
every unit *would* have done under every arm (expected outcomes, no sampling noise), so the report can
carry the true effect and whether the interval covers it (:func:`with_truth`). ``mlsd experiment run
<system>`` prints that report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.analysis import compare
from mlsd.platform.experiments.assignment import (
    Arm,
    Experiment,
    ExperimentConfig,
    Layer,
    MetricSpec,
    bucket_of,
)
from mlsd.platform.experiments.exposures import MetricStats, metric_variables, unit_sums
from mlsd.platform.system import SystemDir

N_BUCKETS = 10_000


def arms_from_presets(
    presets: Mapping[str, Mapping[str, Any]], names: Sequence[str], field: str = "--arms"
) -> list[Arm]:
    """Arms for ``names`` from a system's presets (``name -> {"alias", "params", ...}``).

    A name given twice (an A/A test: ``champion,champion``) becomes ``champion`` and ``champion_2``
    with the same alias and params, so the two arms run the very same variant.
    """
    names = [str(n).strip() for n in names if str(n).strip()]
    if len(names) < 2:
        raise InputError(
            field,
            ",".join(names),
            "an experiment needs at least two arms",
            f"e.g. {','.join(list(presets)[:2])}",
        )
    arms, seen = [], {}
    for name in names:
        if name not in presets:
            raise InputError(field, name, "unknown arm", f"use one of {', '.join(presets)}")
        seen[name] = seen.get(name, 0) + 1
        preset = presets[name]
        arms.append(
            Arm(
                name=name if seen[name] == 1 else f"{name}_{seen[name]}",
                alias=preset.get("alias"),
                params=dict(preset.get("params") or {}),
            )
        )
    return arms


def make_experiment(
    system: str,
    arms: Sequence[Arm | Mapping[str, Any]],
    metrics: Sequence[MetricSpec | Mapping[str, Any]],
    *,
    name: str | None = None,
    mode: str = "split",
    unit: str = "user_id",
    salt: str | None = None,
    coverage: float = 1.0,
) -> ExperimentConfig:
    """A config holding one experiment: one layer, no holdout, ``coverage`` of the traffic (default all)."""
    arm_objs = tuple(a if isinstance(a, Arm) else Arm(**dict(a)) for a in arms)
    metric_objs = tuple(m if isinstance(m, MetricSpec) else MetricSpec(**dict(m)) for m in metrics)
    name = name or f"{system}-{'-vs-'.join(a.name for a in arm_objs)}"
    experiment = Experiment(
        name=name,
        arms=arm_objs,
        salt=salt or name,
        coverage=coverage,
        unit=unit,
        system=system,
        mode=mode,
        metrics=metric_objs,
    )
    return ExperimentConfig(layers=(Layer(name=f"{system}-online", experiments=(experiment,)),))


def lose_exposures(arm_idx: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """Keep-mask that drops ``fraction`` of the units in the treatment arms (arm >= 1).

    The planted bug behind a sample-ratio mismatch: e.g. a treatment that times out more often and so
    logs fewer exposures. ``fraction=0`` keeps everything.
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError("--lose-exposures", fraction, "must be in [0, 1)", "use e.g. 0.1 to drop 10%")
    arm_idx = np.asarray(arm_idx, dtype=np.int64)
    if fraction == 0.0:
        return np.ones(len(arm_idx), dtype=bool)
    rng = np.random.default_rng([seed, 7919])
    return ~((arm_idx >= 1) & (rng.random(len(arm_idx)) < fraction))


def _per_unit(
    outcomes: pd.DataFrame, covariates: pd.DataFrame | None, columns: Sequence[str], unit_column: str
) -> pd.DataFrame:
    """Outcome columns summed per unit, joined with the covariate columns (every outcome unit kept)."""
    cov_cols = [c for c in dict.fromkeys(columns) if covariates is not None and c in covariates.columns]
    frame = unit_sums(outcomes, [c for c in columns if c not in cov_cols], unit_column).sort_index()
    if cov_cols:
        frame = frame.join(unit_sums(covariates, cov_cols, unit_column, "covariates"), how="left")
    return frame.fillna(0.0)


class LossyExposureLog:
    """An exposure log with a planted bug: the exposures of ``lost_units`` never arrive.

    Wraps a real :class:`~mlsd.platform.experiments.exposures.ExposureLog`; what the simulators use to
    show that the sample-ratio check catches a logging bug (``lose_exposures`` picks the units).

    Examples:
        >>> from mlsd.platform.experiments.exposures import MemoryExposureLog
        >>> log = LossyExposureLog(MemoryExposureLog(), lost_units=["b"])
        >>> log.log("exp", ["a", "b", "c"], [0, 1, 0]).tolist()
        [True, False, True]
        >>> sorted(log.exposures("exp")["unit"])
        ['a', 'c']
    """

    def __init__(self, inner: Any, lost_units: Any = ()) -> None:
        self.inner = inner
        self.lost = pd.Index(np.asarray(list(lost_units)).astype(str))

    def log(self, experiment: str, unit_ids: Any, arms: Any, ts: Any = None) -> np.ndarray:
        units = np.asarray(unit_ids).reshape(-1).astype(str)
        keep = ~pd.Index(units).isin(self.lost)
        arms = np.asarray(arms).reshape(-1)
        new = np.zeros(len(units), dtype=bool)
        if keep.any():
            kept_ts = None if ts is None else np.broadcast_to(np.asarray(ts), units.shape)[keep]
            new[keep] = self.inner.log(experiment, units[keep], arms[keep], kept_ts)
        return new

    def exposures(self, experiment: str) -> pd.DataFrame:
        return self.inner.exposures(experiment)


def aa_rejection_rate(
    outcomes: pd.DataFrame,
    experiment: Experiment,
    *,
    covariates: pd.DataFrame | None = None,
    seeds: int = 200,
    alpha: float = 0.05,
    unit_column: str = "unit",
) -> dict[str, Any]:
    """How often an A/A test on these units rejects at level ``alpha``: the units are re-randomised into
    the experiment's arms under ``seeds`` fresh salts (the real hash, the configured weights) and each
    assignment is analysed like the service's report (Welch / delta method, CUPED where configured).

    Valid when the outcomes do not depend on the arm (an A/A run): then every rejection is a false
    positive and the rate should be close to ``alpha``. Vectorised: one ``MetricStats.from_batch`` per
    metric covers every seed.
    """
    if seeds < 1:
        raise InputError("seeds", seeds, "must be >= 1", "use e.g. 200")
    columns = [c for m in experiment.metrics for c in metric_variables(m).values()]
    if not columns:
        raise InputError("experiment.metrics", [], "no metrics to test", "configure at least one metric")
    per_unit = _per_unit(outcomes, covariates, columns, unit_column)
    units = per_unit.index.to_numpy()
    edges = np.cumsum(experiment.weights)[:-1] * N_BUCKETS
    arm_idx = np.stack(
        [
            np.searchsorted(edges, bucket_of(f"{experiment.salt}:aa:{s}", units), side="right")
            for s in range(seeds)
        ]
    )  # (seeds, units)
    arms = experiment.arm_names
    per_metric: dict[str, float] = {}
    rejected_any = np.zeros(seeds, dtype=bool)
    for spec in experiment.metrics:
        values = {
            v: np.broadcast_to(per_unit[c].to_numpy(np.float64), arm_idx.shape)
            for v, c in metric_variables(spec).items()
        }
        stats = MetricStats.from_batch(spec.name, arms, arm_idx, values)
        p = np.stack([np.asarray(compare(stats, t, 0, alpha).p_value) for t in range(1, len(arms))], axis=-1)
        rejected = (p < alpha).any(axis=-1)
        per_metric[spec.name] = float(rejected.mean())
        if not spec.guardrail:
            rejected_any |= rejected
    primary = next((m.name for m in experiment.metrics if not m.guardrail), experiment.metrics[0].name)
    return {
        "rate": per_metric[primary],
        "metric": primary,
        "any_primary_rate": float(rejected_any.mean()),
        "per_metric": per_metric,
        "seeds": seeds,
        "units": int(len(units)),
        "alpha": alpha,
    }


def with_truth(report: dict[str, Any], truth: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Put the simulator's true effects next to the estimates.

    ``truth = {metric: {treatment_arm: true absolute difference (treatment - control)}}``. Adds
    ``report["truth"]`` and ``report["truth_covered"] = {metric: {arm: diff_low <= truth <= diff_high}}``
    (the fixed-horizon interval; the always-valid one is wider still).
    """
    covered: dict[str, dict[str, bool]] = {}
    for metric, per_arm in truth.items():
        for comparison in report.get("metrics", {}).get(metric, []):
            arm = comparison.get("treatment")
            if arm in per_arm and comparison.get("diff_low") is not None:
                value = float(per_arm[arm])
                covered.setdefault(metric, {})[arm] = bool(
                    comparison["diff_low"] <= value <= comparison["diff_high"]
                )
    return {
        **report,
        "truth": {m: {a: float(v) for a, v in per_arm.items()} for m, per_arm in truth.items()},
        "truth_covered": covered,
    }


class OnlineSimulator(Protocol):
    """A system's world simulator, what ``System.world()`` returns (``mlsd experiment run <system>``).

    A module, not a class: ``ARM_PRESETS`` (name -> ``{"alias", "params", "description"}``),
    ``DEFAULT_ARMS`` (control first) and ``run_experiment``, which simulates (or reuses) a world sized
    for ``units`` in the system's folders ``dirs``, drives the system's real serving engine in-process
    for ``units`` simulated units and returns ``with_truth(client.analyze(...), truth)`` plus
    ``world``, ``units`` and ``seconds``. One contract test (``tests/platform/test_system_contract.py``)
    checks every registered system against it.
    """

    ARM_PRESETS: Mapping[str, Mapping[str, Any]]
    DEFAULT_ARMS: Sequence[str]

    def run_experiment(
        self,
        dirs: SystemDir,
        *,
        units: int = ...,
        arms: Sequence[str] | None = ...,
        seed: int = ...,
        looks: int = ...,
        lose_exposures: float = ...,
        progress: bool = ...,
    ) -> dict[str, Any]: ...
