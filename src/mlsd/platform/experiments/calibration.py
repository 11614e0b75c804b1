"""Calibration of the analysis by simulation, and the assignment/exposure throughput: the figures in
docs/experiments.md come from here (``mlsd experiment calibrate --json``, ``mlsd experiment bench --json``).

Each simulation is vectorised: ``seeds`` experiments are one array, their stats one
:class:`MetricStats` with a leading dimension, analysed in one call.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mlsd.platform.experiments.analysis import compare, srm_check
from mlsd.platform.experiments.exposures import MetricStats

ARMS = ("control", "treatment")


def _cumulative_stats(y: np.ndarray, x: np.ndarray | None, looks: np.ndarray) -> MetricStats:
    """Stats after each look of (seeds, units) outcomes; units alternate arms."""
    seeds, units = y.shape
    arm = np.arange(units) % 2
    cols = [y] if x is None else [y, x]
    k = len(cols)
    n = np.stack([np.cumsum(arm == a)[looks - 1] for a in (0, 1)], axis=-1).astype(np.float64)
    s = np.empty((seeds, len(looks), 2, k))
    q = np.empty((seeds, len(looks), 2, k, k))
    for a in (0, 1):
        mask = arm == a
        for i in range(k):
            s[:, :, a, i] = np.cumsum(cols[i] * mask, axis=1)[:, looks - 1]
            for j in range(i, k):
                q[:, :, a, i, j] = q[:, :, a, j, i] = np.cumsum(cols[i] * cols[j] * mask, axis=1)[
                    :, looks - 1
                ]
    return MetricStats(
        "y", ("y",) if x is None else ("y", "x"), ARMS, np.broadcast_to(n, (seeds, *n.shape)), s, q
    )


def calibrate(
    seeds: int = 2000,
    units: int = 2000,
    looks: int = 100,
    alpha: float = 0.05,
    rho: float = 0.7,
    seed: int = 0,
    srm_units: int = 100_000,
    srm_loss: float = 0.03,
) -> dict[str, Any]:
    """A/A and planted-effect simulations; returns the rates the docs quote.

    * ``fixed_horizon_fpr``: A/A rejections of one Welch test at the end (should be ~alpha);
    * ``naive_peeking_fpr``: A/A, stop at the first of ``looks`` looks with p < alpha (inflated);
    * ``sequential_fpr``: A/A, stop when the confidence sequence excludes 0 at any look (<= alpha);
    * ``cuped_variance_reduction``: with a covariate of correlation ``rho`` (theory: rho^2);
    * ``srm_false_alarm_rate`` / ``srm_power``: the SRM check on clean splits and when the treatment
      path loses ``srm_loss`` of its exposures, on ``srm_units`` units.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    points = np.unique(np.linspace(max(units // looks, 100), units, looks).astype(int))
    y = rng.normal(0.0, 1.0, (seeds, units))
    aa = compare(_cumulative_stats(y, None, points), alpha=alpha, planned_n=units)
    x = rng.normal(0.0, 1.0, (seeds, units))
    y_cov = rho * x + np.sqrt(1 - rho**2) * y
    cuped = compare(_cumulative_stats(y_cov, x, points[-1:]), alpha=alpha, planned_n=units)
    effect = 0.1
    y_eff = y + effect * (np.arange(units) % 2)
    power = compare(_cumulative_stats(y_eff, None, points), alpha=alpha, planned_n=units)
    clean = rng.multinomial(srm_units, [0.5, 0.5], size=seeds)
    lossy = rng.multinomial(srm_units, [0.5, 0.5], size=seeds)
    lossy[:, 1] = rng.binomial(lossy[:, 1], 1 - srm_loss)  # the treatment path drops some exposures
    return {
        "seeds": seeds,
        "units": units,
        "looks": len(points),
        "alpha": alpha,
        "fixed_horizon_fpr": float(np.mean(aa.p_value[:, -1] < alpha)),
        "naive_peeking_fpr": float(np.mean((aa.p_value < alpha).any(axis=1))),
        "sequential_fpr": float(np.mean(aa.sequential_significant.any(axis=1))),
        "effect_sd": effect,
        "fixed_horizon_power": float(np.mean(power.significant[:, -1])),
        "sequential_power": float(np.mean(power.sequential_significant.any(axis=1))),
        "rho": rho,
        "cuped_variance_reduction": float(np.mean(cuped.variance_reduction)),
        "srm_units": srm_units,
        "srm_false_alarm_rate": float(np.mean(srm_check(clean, [1, 1])["flagged"])),
        "srm_loss": srm_loss,
        "srm_power": float(np.mean(srm_check(lossy, [1, 1])["flagged"])),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def bench(units: int = 200_000, redis_url: str | None = None) -> dict[str, Any]:
    """Throughput of assignment (3 layers) and exposure logging (memory, and Redis when given)."""
    from mlsd.platform.experiments.assignment import Assigner, ExperimentConfig
    from mlsd.platform.experiments.exposures import MemoryExposureLog, RedisExposureLog

    exp = {"arms": [{"name": "c"}, {"name": "t"}]}
    config = ExperimentConfig.from_dict(
        {
            "holdout": {"fraction": 0.05},
            "layers": [{"name": f"l{i}", "experiments": [{"name": f"e{i}", **exp}]} for i in range(3)],
        }
    )
    assigner = Assigner(config)
    ids = np.arange(units)
    t0 = time.perf_counter()
    arms = assigner.assign_all(ids)
    assign_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "units": units,
        "experiments": 3,
        "assign_all_units_per_s": round(units / assign_s),
    }
    logs: dict[str, Any] = {"memory": MemoryExposureLog()}
    if redis_url:
        logs["redis"] = RedisExposureLog(redis_url, prefix=f"mlsd-bench:{time.time_ns()}:")
    n_log = min(units, 50_000)
    for name, log in logs.items():
        t0 = time.perf_counter()
        log.log("e0", ids[:n_log], arms["e0"][:n_log], ts=0)
        out[f"{name}_exposures_per_s"] = round(n_log / (time.perf_counter() - t0))
        if name == "redis":
            client = log._client
            keys = list(client.scan_iter(match=log.prefix + "*"))
            if keys:
                client.delete(*keys)
            log.close()
    return out
