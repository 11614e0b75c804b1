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

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.analysis import analyze_experiment, paired_compare
from mlsd.platform.experiments.assignment import Arm, Assigner, Experiment, ExperimentConfig
from mlsd.platform.experiments.exposures import (
    ExposureLog,
    MemoryExposureLog,
    MetricStats,
    aggregate_many,
    exposure_counts,
    first_exposures,
    unit_sums,
)

logger = logging.getLogger("mlsd.experiments")

# The exposure log is written on the serving path, after the answer was built: a Redis call may wait at
# most this long (socket connect and read timeouts), and an outage pauses the experiments for
# ``outage_retry_s`` (every unit gets the default, i.e. control, path) instead of failing requests.
EXPOSURE_TIMEOUT_S = 0.05


def bound_waits(log: Any, timeout_s: float = EXPOSURE_TIMEOUT_S) -> Any:
    """Give a Redis exposure log socket connect/read timeouts (its connections are made lazily from the
    pool's settings, so this holds for every one of them; on a cluster, for every node's pool and for
    nodes found later); returns ``log``."""
    from mlsd.platform.redis_cluster import LazyCluster

    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    client = log._client  # RedisExposureLog builds its client from the URL alone
    if isinstance(client, LazyCluster):
        client.configure(**timeouts)
    else:
        client.connection_pool.connection_kwargs.update(timeouts)
    return log


def is_outage(err: BaseException) -> bool:
    """A dependency that did not answer (connection refused or reset, timeout), as opposed to a bug."""
    try:
        import redis
        from redis import exceptions as e

        if isinstance(err, redis.ConnectionError | redis.TimeoutError | e.ClusterError):
            return True
        if isinstance(err, e.RedisClusterUnreachableError | e.SlotNotCoveredError):  # a cluster's node down
            return True
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return isinstance(err, ConnectionError | TimeoutError)


class ExperimentClient:
    """Assignment + exposure log (+ the ``mlsd_experiment_exposures_total`` counter) + analysis.

    ``log`` defaults to an in-process :class:`MemoryExposureLog`; pass a :class:`RedisExposureLog` when
    several processes serve the same experiment. ``registry``: Prometheus registry for the exposure
    counter (default: the services' registry; ``False`` to count nothing).

    Examples:
        >>> spec = {"name": "ranker", "metrics": [{"name": "minutes"}],
        ...         "arms": [{"name": "control"}, {"name": "challenger", "alias": "challenger"}]}
        >>> config = ExperimentConfig.from_dict({"experiments": [spec]})
        >>> client = ExperimentClient(config, registry=False)   # exposures in memory, no counter
        >>> users = [1, 2, 3, 4, 5, 6]
        >>> arms = client.assign("ranker", users)
        >>> {arm: rows.tolist() for arm, rows in client.groups(arms).items()}   # rows per sub-batch
        {0: [0, 1, 2, 4, 5], 1: [3]}
        >>> client.arm("ranker", 1).alias   # what arm 1 serves
        'challenger'
        >>> client.expose("ranker", users, arms, ts=0).tolist()   # once served; True = first exposure
        [True, True, True, True, True, True]
    """

    def __init__(
        self,
        config: ExperimentConfig,
        log: ExposureLog | None = None,
        registry: CollectorRegistry | None | bool = None,
        *,
        outage_retry_s: float = 1.0,
    ) -> None:
        self.config = config
        self.log = log if log is not None else MemoryExposureLog()
        self.registry = registry
        self.assigner = Assigner(config)
        self.outage_retry_s = outage_retry_s
        self._outage: tuple[float, str] | None = None  # (monotonic time, reason) of the last failed log
        self._outage_lock = threading.Lock()

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> ExperimentClient:
        return cls(ExperimentConfig.from_yaml(path), **kwargs)

    @classmethod
    def from_options(
        cls, config_path: str | Path | None, exposure_redis: str | None = None, prefix: str = "mlsd:"
    ) -> ExperimentClient | None:
        """What a ``serve`` command builds from ``--experiments FILE [--exposure-redis URL]``: ``None``
        without a config (the service then serves its champion to everyone); exposures go to Redis
        Streams when a URL is given (several processes serving one experiment), else in-process.

        Examples:
            >>> ExperimentClient.from_options(None) is None   # no --experiments: the champion for all
            True
        """
        if config_path is None:
            if exposure_redis is not None:
                raise InputError(
                    "--exposure-redis", exposure_redis, "needs --experiments", "pass --experiments FILE too"
                )
            return None
        path = Path(config_path)
        if not path.is_file():
            raise InputError("--experiments", str(path), "file not found", "pass an experiments YAML file")
        log = None
        if exposure_redis is not None:
            from mlsd.platform.experiments.exposures import RedisExposureLog

            # Written on the serving path: bounded waits (see EXPOSURE_TIMEOUT_S), never a hung request.
            log = bound_waits(RedisExposureLog(exposure_redis, prefix=prefix))
        return cls.from_yaml(path, log=log)

    def experiments_for(self, system: str) -> list[Experiment]:
        """The experiments of ``system`` (their ``system:`` field), in config order."""
        return [e for e in self.config.experiments.values() if e.system == system]

    def assign(self, experiment: str, unit_ids: Any) -> np.ndarray:
        """Arm index per unit, -1 for units not in the experiment (held out, not covered, other experiment).

        While the exposure log is unreachable (:meth:`outage`), every unit gets -1: the default path,
        since an arm served without its exposure logged would bias the analysis."""
        arms = self.assigner.assign(experiment, unit_ids)
        return np.full_like(arms, -1) if self.outage() is not None else arms

    def outage(self) -> str | None:
        """Why experiments are paused (the exposure log failed less than ``outage_retry_s`` ago), else
        None. After that time the next exposure is tried again: a success ends the outage."""
        found = self._outage
        if found is None or time.monotonic() - found[0] >= self.outage_retry_s:
            return None
        return found[1]

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
        """Log that these units experienced their arm; True where it is their first exposure.

        In a shadow experiment every unit in it experiences arm 0 (the champion decides; the other arms
        are only scored), so any arm index >= 0 is logged as 0.
        """
        if self.config.experiment(experiment).mode == "shadow":
            arm_idx = np.minimum(np.asarray(arm_idx, dtype=np.int64), 0)
        try:
            new = self.log.log(experiment, unit_ids, arm_idx, ts)
        except Exception as err:
            if not is_outage(err):
                raise
            # The answers were served already; failing them now would turn an outage into errors.
            # Experiments pause (assign answers -1) and callers flag their answers degraded.
            reason = f"exposure log unreachable ({type(err).__name__}: {err}); experiments paused"
            with self._outage_lock:
                self._outage = (time.monotonic(), reason)
            logger.warning("%s: %d exposures of %s not logged", reason, int(np.sum(np.asarray(arm_idx) >= 0)),
                           experiment)  # fmt: skip
            return np.zeros(len(np.asarray(unit_ids, dtype=object)), dtype=bool)
        if self._outage is not None:
            with self._outage_lock:
                self._outage = None
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

        Examples:
            >>> import pandas as pd
            >>> spec = {"name": "ranker", "metrics": [{"name": "minutes"}],
            ...         "arms": [{"name": "control"}, {"name": "challenger", "alias": "challenger"}]}
            >>> config = ExperimentConfig.from_dict({"experiments": [spec]})
            >>> client = ExperimentClient(config, registry=False)
            >>> users = np.arange(2000)
            >>> arms = client.assign("ranker", users)
            >>> _ = client.expose("ranker", users, arms, ts=0)
            >>> minutes = np.random.default_rng(0).normal(10, 2, 2000) + 1.0 * (arms == 1)   # planted +1
            >>> report = client.analyze("ranker", pd.DataFrame({"unit": users, "minutes": minutes}))
            >>> report["srm"]["flagged"], report["verdict"]
            (False, {'challenger': 'win'})
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
        if exp.mode == "shadow":
            return analyze_shadow(exp, exposures, outcomes, unit_column, alpha, planned_n)
        stats = aggregate_many(exposures, outcomes, exp.metrics, exp.arm_names, covariates, unit_column)
        counts = exposure_counts(exposures, len(exp.arms))
        return analyze_experiment(exp, stats, counts=counts, alpha=alpha, planned_n=planned_n)


def analyze_shadow(
    exp: Experiment,
    exposures: pd.DataFrame,
    outcomes: pd.DataFrame,
    unit_column: str = "unit",
    alpha: float = 0.05,
    planned_n: float = 10_000,
) -> dict[str, Any]:
    """The report of a shadow experiment: every arm measured on the *same* exposed units.

    ``outcomes`` carry one column per arm for each metric variable, ``f"{column}@{arm}"`` (what that arm
    did, or would have done, for the unit: e.g. ``fraud_loss@champion`` and ``fraud_loss@challenger``).
    Each treatment is compared with arm 0 by :func:`paired_compare`. A ratio metric's denominator must be
    shared (one column without ``@``, e.g. payments scored): both arms see the same traffic, so the ratio
    difference is the paired numerator difference over the mean denominator. There is no split, so no
    sample-ratio check: ``srm`` says so instead of pretending a p-value.

    Examples:
        >>> from mlsd.platform.experiments import MetricSpec
        >>> arms, spec = (Arm("champion"), Arm("challenger")), MetricSpec("loss", higher_is_better=False)
        >>> exp = Experiment("fraud", arms, mode="shadow", metrics=(spec,))
        >>> units = np.arange(400)
        >>> exposures = pd.DataFrame({"unit": units.astype(str), "arm": 0, "ts": 0})   # all saw the champion
        >>> loss = np.random.default_rng(0).exponential(10, 400)
        >>> outcomes = pd.DataFrame({"unit": units, "loss@champion": loss, "loss@challenger": 0.9 * loss})
        >>> report = analyze_shadow(exp, exposures, outcomes)
        >>> report["verdict"], round(report["metrics"]["loss"][0]["relative"], 3), report["srm"]["flagged"]
        ({'challenger': 'better than the champion'}, -0.1, False)
    """
    first = first_exposures(exposures)
    units = first["unit"].astype(str).to_numpy() if len(first) else np.zeros(0, dtype=str)
    per_unit = pd.DataFrame(index=pd.Index(units, name="unit"))
    if len(outcomes):
        numeric = [
            c for c in outcomes.columns if c != unit_column and pd.api.types.is_numeric_dtype(outcomes[c])
        ]
        per_unit = per_unit.join(unit_sums(outcomes, numeric, unit_column), how="left")
    per_unit = per_unit.fillna(0.0)
    control = exp.arms[0].name
    metrics: dict[str, list[dict[str, Any]]] = {}
    verdicts: dict[str, str] = {}
    primary = next((m.name for m in exp.metrics if not m.guardrail), None)
    for spec in exp.metrics:
        base = spec.numerator if spec.kind == "ratio" else spec.value_column
        scale = 1.0
        if spec.kind == "ratio":
            den = per_unit.get(spec.denominator)
            if den is None:
                raise InputError(
                    f"outcomes.{spec.denominator}", list(per_unit.columns), "shared denominator not found",
                    f"add one column {spec.denominator!r} (the same for every arm in shadow mode)",
                )  # fmt: skip
            scale = float(den.mean()) if len(den) and den.mean() > 0 else float("nan")
        rows = []
        for arm in exp.arms[1:]:
            cols = [f"{base}@{control}", f"{base}@{arm.name}"]
            missing = [c for c in cols if c not in per_unit.columns]
            if missing and len(per_unit):
                raise InputError(
                    f"outcomes.{missing[0]}", list(per_unit.columns), "column not found",
                    "shadow outcomes need one column per arm: '<column>@<arm name>'",
                )  # fmt: skip
            a = per_unit[cols[0]].to_numpy(np.float64) if len(per_unit) else np.zeros(0)
            b = per_unit[cols[1]].to_numpy(np.float64) if len(per_unit) else np.zeros(0)
            stats = MetricStats.from_arrays(
                spec.name, ["shadow"], np.zeros(len(a), np.int64), {"champion": a, "challenger": b}
            )
            rows.append(_shadow_row(paired_compare(stats, alpha, planned_n), control, arm.name, scale, alpha))
        metrics[spec.name] = rows
    for t, arm in enumerate(exp.arms[1:]):
        if primary is None:
            verdicts[arm.name] = "no metrics"
            continue
        spec = next(m for m in exp.metrics if m.name == primary)
        row = metrics[primary][t]
        if row["sequential_significant"]:
            better = (row["diff"] > 0) == spec.higher_is_better
            verdicts[arm.name] = "better than the champion" if better else "worse than the champion"
        else:
            verdicts[arm.name] = "keep running"
    return {
        "experiment": exp.name,
        "system": exp.system,
        "mode": "shadow",
        "arms": [
            {"name": a.name, "weight": a.weight, "alias": a.alias, "params": dict(a.params)} for a in exp.arms
        ],
        "alpha": alpha,
        "planned_n": planned_n,
        "srm": {
            "flagged": False,
            "p_value": None,
            "counts": [int(len(units))],
            "note": "shadow mode: every unit is scored by every arm, so there is no split to check",
        },
        "primary_metric": primary,
        "higher_is_better": {m.name: m.higher_is_better for m in exp.metrics},
        "metrics": metrics,
        "guardrails": [],
        "verdict": verdicts,
    }


def _shadow_row(
    paired: dict[str, Any], control: str, treatment: str, scale: float, alpha: float
) -> dict[str, Any]:
    """paired_compare's output in the keys a split comparison has (the dashboard draws both alike)."""
    out = dict(paired)
    if scale != 1.0:  # ratio metric with a shared denominator: every absolute field divides by it
        for key in (
            "mean_champion",
            "mean_challenger",
            "diff",
            "se",
            "diff_low",
            "diff_high",
            "cs_low",
            "cs_high",
        ):
            if out.get(key) is not None:
                out[key] = out[key] / scale
    m0 = out.get("mean_champion")
    rel = lambda v: None if v is None or not m0 else v / m0  # noqa: E731 - relative to the control mean
    p = out.get("p_value")
    cs_low, cs_high = out.get("cs_low"), out.get("cs_high")
    out.update(
        kind="paired",
        treatment=treatment,
        control=control,
        mean_control=m0,
        mean_treatment=out.get("mean_challenger"),
        n_control=out.get("n"),
        n_treatment=out.get("n"),
        relative_cs_low=rel(cs_low),
        relative_cs_high=rel(cs_high),
        significant=None if p is None else bool(p < alpha),
        sequential_significant=bool(
            cs_low is not None and cs_high is not None and (cs_low > 0 or cs_high < 0)
        ),
    )
    return out
