"""Analysis from sufficient statistics only: lift, CIs, CUPED, SRM, guardrails, confidence sequences.

Every function takes :class:`~mlsd.platform.experiments.exposures.MetricStats` (or plain arrays) and
broadcasts over leading dimensions, so one call analyses one experiment or 2,000 simulated ones.

* **Per-arm estimate** and the variance of that estimate:
  mean metric -- sample mean, ``s^2 / n``;
  ratio metric (``sum num / sum den`` over units, e.g. clicks per search) -- delta method,
  ``Var(R) ~ (s_nn - 2 R s_nd + R^2 s_dd) / (n mean_d^2)``, because units, not searches, are independent;
  CUPED (mean metric with a pre-period covariate ``x``) -- ``y - theta (x - mean_x)`` with ``theta =
  cov(y, x) / var(x)`` pooled over arms; the variance shrinks by ``corr(y, x)^2``.
* **Lift** of each treatment over the control (arm 0): absolute with a Welch t interval (Welch-
  Satterthwaite degrees of freedom; normal for ratio metrics), relative ``m1 / m0 - 1`` with the delta
  method ``Var ~ v1 / m0^2 + m1^2 v0 / m0^4``.
* **Sample-ratio mismatch**: chi-square of the exposed counts against the configured weights, flagged
  at p < 0.001 -- a broken assignment or logging path invalidates every other number.
* **Guardrails**: non-inferiority against a relative margin.
* **Sequential**: an always-valid confidence sequence (Gaussian-mixture boundary of Howard et al. 2021, in
  the asymptotic form of Waudby-Smith et al. 2023), so the experiment can be looked at after every batch
  and stopped as soon as the sequence excludes 0 while keeping the false-positive rate <= alpha.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import stats as sps

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.assignment import Experiment, MetricSpec
from mlsd.platform.experiments.exposures import MetricStats
from mlsd.platform.jsonio import plain

SRM_THRESHOLD = 1e-3

# ---------------------------------------------------------------------------------------------------
# Per-arm estimates


@dataclass
class ArmEstimates:
    """Per arm (last axis): the metric's estimate, the variance of that estimate, the unit count."""

    mean: np.ndarray
    var: np.ndarray
    n: np.ndarray
    raw_var: np.ndarray  # variance of the estimate without CUPED (equal to var when CUPED is off)
    kind: str


def _moments(stats: MetricStats, a: str, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-arm means of a and b and their sample covariance (n - 1 denominator)."""
    i, j = stats.var_index(a), stats.var_index(b)
    n = stats.n
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = stats.s[..., i] / n, stats.s[..., j] / n
        cov = (stats.q[..., i, j] - n * ma * mb) / (n - 1)
    return ma, mb, cov


def arm_estimates(stats: MetricStats, cuped: bool = True) -> ArmEstimates:
    """Estimates per arm; CUPED is used when the stats carry a covariate ``x`` and ``cuped`` is True."""
    n = stats.n
    with np.errstate(invalid="ignore", divide="ignore"):
        if stats.variables[:2] == ("num", "den"):
            m_num, m_den, cov_nd = _moments(stats, "num", "den")
            _, _, var_num = _moments(stats, "num", "num")
            _, _, var_den = _moments(stats, "den", "den")
            ratio = m_num / m_den
            var = (var_num - 2 * ratio * cov_nd + ratio**2 * var_den) / (n * m_den**2)
            return ArmEstimates(ratio, var, n, var, "ratio")
        if "y" not in stats.variables:
            raise InputError(
                "stats.variables", stats.variables, "unknown layout", "use ('y',), ('y','x') or ('num','den')"
            )
        my, _, var_y = _moments(stats, "y", "y")
        raw = var_y / n
        if not (cuped and "x" in stats.variables):
            return ArmEstimates(my, raw, n, raw, "mean")
        mx, _, var_x = _moments(stats, "x", "x")
        _, _, cov_xy = _moments(stats, "y", "x")
        # theta from all arms pooled: randomisation makes x independent of the arm, so pooling is unbiased
        # and every arm is adjusted with the same theta (a per-arm theta would bias the difference).
        ix, iy = stats.var_index("x"), stats.var_index("y")
        big_n = n.sum(axis=-1)
        sx, sy = stats.s[..., ix].sum(axis=-1), stats.s[..., iy].sum(axis=-1)
        pooled_var_x = (stats.q[..., ix, ix].sum(axis=-1) - sx * sx / big_n) / (big_n - 1)
        pooled_cov = (stats.q[..., iy, ix].sum(axis=-1) - sx * sy / big_n) / (big_n - 1)
        theta = np.where(pooled_var_x > 0, pooled_cov / pooled_var_x, 0.0)[..., None]
        grand_mx = (sx / big_n)[..., None]
        adj_mean = my - theta * (mx - grand_mx)
        adj_var = (var_y - 2 * theta * cov_xy + theta**2 * var_x) / n
        return ArmEstimates(adj_mean, adj_var, n, raw, "cuped")


# ---------------------------------------------------------------------------------------------------
# Confidence sequences


def _mixture_rho2(alpha: float, planned_n: float) -> float:
    """Mixing variance (in units of the per-unit variance) that makes the sequence tightest at planned_n."""
    la = -2.0 * np.log(alpha)
    return (la + np.log(la + 1.0)) / planned_n


def cs_multiplier(n_total: Any, alpha: float = 0.05, planned_n: float = 10_000) -> np.ndarray:
    """How many standard errors wide the always-valid sequence is after ``n_total`` units.

    Two-sided Gaussian-mixture boundary: ``sqrt(2 (t r + 1) / (t r) * log(sqrt(t r + 1) / alpha))`` with
    ``r`` the mixing variance. It is ~3.0 at ``planned_n`` for alpha = 0.05 (the fixed-horizon 1.96 is the
    price of never being allowed to look), and grows like ``sqrt(log log t)`` elsewhere.

    Examples:
        >>> cs_multiplier([100, 10_000, 1_000_000]).round(2).tolist()
        [9.08, 3.04, 3.56]
    """
    t = np.asarray(n_total, dtype=np.float64)
    tr = t * _mixture_rho2(alpha, planned_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(2.0 * (tr + 1.0) / tr * np.log(np.sqrt(tr + 1.0) / alpha))


def confidence_sequence(
    estimate: Any, se: Any, n_total: Any, alpha: float = 0.05, planned_n: float = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid ``(low, high)`` around ``estimate`` with standard error ``se`` after ``n_total`` units.

    Valid simultaneously over all looks: P(the true value ever leaves the sequence) <= alpha
    (asymptotically; the simulation test checks it at the sizes used here). ``planned_n`` only tunes
    where the sequence is tightest; any value keeps it valid.

    Examples:
        >>> low, high = confidence_sequence(0.5, 0.1, n_total=10_000)   # estimate 0.5, se 0.1
        >>> round(float(low), 3), round(float(high), 3)   # +-3.04 se, where a fixed-horizon CI is +-1.96
        (0.196, 0.804)
    """
    half = np.asarray(se) * cs_multiplier(n_total, alpha, planned_n)
    est = np.asarray(estimate, dtype=np.float64)
    return est - half, est + half


# ---------------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class Comparison:
    """One treatment arm against the control on one metric. Fields broadcast like the input stats.

    Examples:
        >>> stats = MetricStats.from_arrays("y", ["control", "treatment"], [0, 0, 0, 1, 1, 1],
        ...                                 {"y": [1.0, 2.0, 3.0, 2.0, 3.0, 4.0]})
        >>> c = compare(stats)
        >>> float(c.diff), round(float(c.relative), 2), bool(c.significant), c.to_dict()["kind"]
        (1.0, 0.5, False, 'mean')
    """

    metric: str
    control: str
    treatment: str
    alpha: float
    kind: str
    n_control: Any
    n_treatment: Any
    mean_control: Any
    mean_treatment: Any
    diff: Any
    se: Any
    diff_low: Any
    diff_high: Any
    p_value: Any
    relative: Any
    relative_se: Any
    relative_low: Any
    relative_high: Any
    variance_reduction: Any  # 1 - Var(CUPED) / Var(raw) of the difference; 0 without CUPED
    cs_low: Any  # always-valid confidence sequence for the absolute difference
    cs_high: Any
    relative_cs_low: Any
    relative_cs_high: Any

    @property
    def significant(self) -> Any:
        """Fixed-horizon: the CI excludes 0 (valid only if you look once, at the planned size)."""
        return (self.diff_low > 0) | (self.diff_high < 0)

    @property
    def sequential_significant(self) -> Any:
        """Always valid: the confidence sequence excludes 0 (safe to check after every batch)."""
        return (self.cs_low > 0) | (self.cs_high < 0)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: plain(getattr(self, f.name)) for f in fields(self)}
        out["significant"] = plain(self.significant)
        out["sequential_significant"] = plain(self.sequential_significant)
        return out


def compare(
    stats: MetricStats,
    treatment: int = 1,
    control: int = 0,
    alpha: float = 0.05,
    cuped: bool = True,
    planned_n: float = 10_000,
) -> Comparison:
    """Treatment vs control on ``stats``: absolute and relative lift, CIs, p-value, confidence sequence.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> arm = rng.integers(0, 2, 10_000)
        >>> minutes = rng.normal(10, 2, 10_000) + 0.5 * arm   # a planted +0.5 for the treatment
        >>> stats = MetricStats.from_arrays("minutes", ["control", "treatment"], arm, {"y": minutes})
        >>> c = compare(stats)
        >>> round(float(c.diff), 3), round(float(c.diff_low), 3), round(float(c.diff_high), 3)   # covers 0.5
        (0.512, 0.434, 0.59)
        >>> round(float(c.relative), 3), bool(c.significant), bool(c.sequential_significant)
        (0.051, True, True)
        >>> pre = rng.normal(10, 2, 10_000)   # CUPED: a pre-period covariate explaining 80% of the variance
        >>> stats = MetricStats.from_arrays("minutes", ["control", "treatment"], arm,
        ...                                 {"y": pre + rng.normal(0, 1, 10_000) + 0.5 * arm, "x": pre})
        >>> c = compare(stats)
        >>> c.kind, round(float(c.diff), 3), round(float(c.variance_reduction), 2)
        ('cuped', 0.502, 0.8)
    """
    n_arms = len(stats.arms)
    for name, idx in (("treatment", treatment), ("control", control)):
        if not 0 <= idx < n_arms:
            raise InputError(
                name, idx, f"arm index out of range (0..{n_arms - 1})", f"use one of {list(stats.arms)}"
            )
    if not 0 < alpha < 1:
        raise InputError("alpha", alpha, "must be in (0, 1)", "use e.g. 0.05")
    est = arm_estimates(stats, cuped=cuped)
    m0, m1 = est.mean[..., control], est.mean[..., treatment]
    v0, v1 = est.var[..., control], est.var[..., treatment]
    n0, n1 = est.n[..., control], est.n[..., treatment]
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = m1 - m0
        se = np.sqrt(v0 + v1)
        if est.kind == "ratio":
            df = np.full_like(se, np.inf)  # delta method: asymptotically normal
        else:
            df = (v0 + v1) ** 2 / (v0**2 / (n0 - 1) + v1**2 / (n1 - 1))
        crit = sps.t.ppf(1 - alpha / 2, df)
        p_value = 2 * sps.t.sf(np.abs(diff / se), df)
        relative = m1 / m0 - 1
        relative_se = np.sqrt(v1 / m0**2 + m1**2 * v0 / m0**4)
        z = sps.norm.ppf(1 - alpha / 2)
        raw = est.raw_var[..., control] + est.raw_var[..., treatment]
        reduction = 1 - (v0 + v1) / raw
        cs_low, cs_high = confidence_sequence(diff, se, n0 + n1, alpha, planned_n)
        rcs_low, rcs_high = confidence_sequence(relative, relative_se, n0 + n1, alpha, planned_n)
    return Comparison(
        metric=stats.metric,
        control=stats.arms[control],
        treatment=stats.arms[treatment],
        alpha=alpha,
        kind=est.kind,
        n_control=n0,
        n_treatment=n1,
        mean_control=m0,
        mean_treatment=m1,
        diff=diff,
        se=se,
        diff_low=diff - crit * se,
        diff_high=diff + crit * se,
        p_value=p_value,
        relative=relative,
        relative_se=relative_se,
        relative_low=relative - z * relative_se,
        relative_high=relative + z * relative_se,
        variance_reduction=reduction,
        cs_low=cs_low,
        cs_high=cs_high,
        relative_cs_low=rcs_low,
        relative_cs_high=rcs_high,
    )


# ---------------------------------------------------------------------------------------------------
# Shadow mode: both models on the same units


def paired_compare(stats: MetricStats, alpha: float = 0.05, planned_n: float = 10_000) -> dict[str, Any]:
    """Challenger vs champion measured on the *same* units (shadow mode), from stats with variables
    ``("champion", "challenger")`` and one arm, e.g.
    ``MetricStats.from_arrays("loss", ["shadow"], np.zeros(n), {"champion": a, "challenger": b})``.

    Pairing removes the between-unit variance: ``Var(d) = Var(a) + Var(b) - 2 Cov(a, b)``, so a shadow
    comparison needs far fewer units than a split test. Returns the mean difference (challenger minus
    champion) with a t interval, p-value, relative difference (delta method, with the covariance) and the
    always-valid confidence sequence. Mergeable like any stats: shards add up.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(2)
        >>> champion = rng.normal(10, 3, 500)   # loss per unit; the challenger is 0.2 better on each
        >>> challenger = champion - 0.2 + rng.normal(0, 0.1, 500)
        >>> values = {"champion": champion, "challenger": challenger}
        >>> result = paired_compare(MetricStats.from_arrays("loss", ["shadow"], np.zeros(500), values))
        >>> round(result["diff"], 3), result["cs_high"] < 0   # 500 units suffice when paired
        (-0.199, True)
        >>> round(result["variance_reduction_vs_unpaired"], 3)
        0.999
    """
    if tuple(stats.variables) != ("champion", "challenger"):
        raise InputError(
            "stats.variables", stats.variables, "paired stats need variables ('champion', 'challenger')",
            "build them with values={'champion': ..., 'challenger': ...}",
        )  # fmt: skip
    n = stats.n[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb, cov_ab = (m[..., 0] for m in _moments(stats, "champion", "challenger"))
        var_a = _moments(stats, "champion", "champion")[2][..., 0]
        var_b = _moments(stats, "challenger", "challenger")[2][..., 0]
        diff = mb - ma
        se = np.sqrt((var_a + var_b - 2 * cov_ab) / n)
        crit = sps.t.ppf(1 - alpha / 2, n - 1)
        p_value = 2 * sps.t.sf(np.abs(diff / se), n - 1)
        relative = mb / ma - 1
        relative_se = np.sqrt((var_b / ma**2 + mb**2 * var_a / ma**4 - 2 * mb * cov_ab / ma**3) / n)
        cs_low, cs_high = confidence_sequence(diff, se, n, alpha, planned_n)
        unpaired_se = np.sqrt((var_a + var_b) / n)
        # identical arms (an A/A shadow): 0/0 -> NaN -> null in the report, without a warning
        reduction = 1 - se**2 / unpaired_se**2
    return {
        "metric": stats.metric,
        "n": plain(n),
        "mean_champion": plain(ma),
        "mean_challenger": plain(mb),
        "diff": plain(diff),
        "se": plain(se),
        "diff_low": plain(diff - crit * se),
        "diff_high": plain(diff + crit * se),
        "p_value": plain(p_value),
        "relative": plain(relative),
        "relative_low": plain(relative - sps.norm.ppf(1 - alpha / 2) * relative_se),
        "relative_high": plain(relative + sps.norm.ppf(1 - alpha / 2) * relative_se),
        "cs_low": plain(cs_low),
        "cs_high": plain(cs_high),
        "variance_reduction_vs_unpaired": plain(reduction),
        "alpha": alpha,
    }


# ---------------------------------------------------------------------------------------------------
# Sample-ratio mismatch and guardrails


def srm_check(counts: Any, weights: Any, threshold: float = SRM_THRESHOLD) -> dict[str, Any]:
    """Chi-square goodness of fit of exposed ``counts`` per arm (last axis) against ``weights``.

    ``flagged`` when p < ``threshold`` (0.001: with many experiments running, a looser threshold would
    cry wolf daily). A unit counted in an arm of weight 0 is an SRM by definition (p = 0).

    Examples:
        >>> srm_check([5000, 5000], [1, 1])["flagged"]
        False
        >>> check = srm_check([5000, 4600], [1, 1])   # 4% of the treatment's exposures went missing
        >>> check["flagged"], check["expected"], round(check["chi2"], 2)
        (True, [4800.0, 4800.0], 16.67)
        >>> srm_check([90, 10], [0.9, 0.1])["p_value"], srm_check([90, 10], [1, 0])["p_value"]
        (1.0, 0.0)
    """
    counts = np.asarray(counts, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if counts.shape[-1] != w.shape[-1]:
        raise InputError(
            "weights", w.tolist(), f"{w.shape[-1]} weights for {counts.shape[-1]} arms", "one weight per arm"
        )
    w = w / w.sum(axis=-1, keepdims=True)
    total = counts.sum(axis=-1, keepdims=True)
    expected = total * w
    live = w > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(live, (counts - expected) ** 2 / np.where(live, expected, 1.0), 0.0).sum(axis=-1)
    dof = max(int(live.sum(axis=-1).max()) - 1, 1)
    p = sps.chi2.sf(chi2, dof)
    p = np.where(((counts > 0) & ~live).any(axis=-1), 0.0, p)
    return {
        "counts": plain(counts),
        "expected": plain(expected),
        "chi2": plain(chi2),
        "p_value": plain(p),
        "threshold": threshold,
        "flagged": plain(p < threshold),
    }


def guardrail(comparison: Comparison, spec: MetricSpec, sequential: bool = False) -> dict[str, Any]:
    """Non-inferiority of a guardrail metric: may it have degraded by more than ``spec.margin``?

    ``pass``: the (relative) interval rules out a degradation beyond the margin; ``fail``: the whole
    interval lies beyond it; ``inconclusive``: neither yet. ``sequential`` uses the confidence sequence.

    Examples:
        >>> from dataclasses import replace
        >>> import numpy as np
        >>> rng = np.random.default_rng(3)
        >>> arm = rng.integers(0, 2, 20_000)
        >>> latency = rng.normal(100, 10, 20_000)   # no real change
        >>> spec = MetricSpec("latency", higher_is_better=False, guardrail=True, margin=0.02)
        >>> same = compare(MetricStats.from_arrays("latency", ["control", "treatment"], arm, {"y": latency}))
        >>> slower = compare(MetricStats.from_arrays("latency", ["control", "treatment"], arm,
        ...                                          {"y": latency * (1 + 0.05 * arm)}))   # 5% slower
        >>> guardrail(same, spec)["status"], guardrail(slower, spec)["status"]
        ('pass', 'fail')
        >>> guardrail(same, replace(spec, margin=0.001))["status"]   # too tight for 20,000 units
        'inconclusive'
    """
    low = comparison.relative_cs_low if sequential else comparison.relative_low
    high = comparison.relative_cs_high if sequential else comparison.relative_high
    # Express everything as "improvement" so one rule serves both directions.
    if spec.higher_is_better:
        worst, best = np.asarray(low), np.asarray(high)
    else:
        worst, best = -np.asarray(high), -np.asarray(low)
    status = np.select([worst > -spec.margin, best < -spec.margin], ["pass", "fail"], "inconclusive")
    return {
        "metric": spec.name,
        "treatment": comparison.treatment,
        "margin": spec.margin,
        "higher_is_better": spec.higher_is_better,
        "relative": plain(comparison.relative),
        "interval": [plain(low), plain(high)],
        "status": plain(status),
    }


# ---------------------------------------------------------------------------------------------------
# One experiment, every metric: the report services, the CLI and the dashboard show


def analyze_experiment(
    experiment: Experiment,
    stats: Mapping[str, MetricStats],
    counts: Sequence[int] | None = None,
    alpha: float = 0.05,
    planned_n: float = 10_000,
    cuped: bool = True,
) -> dict[str, Any]:
    """JSON-ready report: SRM, every metric's comparisons, guardrails and a verdict per treatment.

    ``counts`` are the exposed units per arm (default: ``n`` of the first metric's stats). The verdict
    uses the confidence sequence, so it may be read at any time: ``invalid (SRM)`` beats everything,
    then ``guardrail failed``, then the primary metric (the first non-guardrail metric):
    ``win``/``loss`` when the sequence excludes 0, else ``keep running``.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> arm = rng.integers(0, 2, 10_000)
        >>> minutes = rng.normal(10, 2, 10_000) + 0.5 * arm   # a planted +0.5 for the treatment
        >>> stats = MetricStats.from_arrays("minutes", ["control", "treatment"], arm, {"y": minutes})
        >>> from mlsd.platform.experiments import Arm
        >>> exp = Experiment("ranker", (Arm("control"), Arm("treatment")), metrics=(MetricSpec("minutes"),))
        >>> report = analyze_experiment(exp, {"minutes": stats})
        >>> report["srm"]["flagged"], report["primary_metric"], report["verdict"]
        (False, 'minutes', {'treatment': 'win'})
        >>> analyze_experiment(exp, {"minutes": stats}, counts=[5000, 4600])["verdict"]   # SRM beats all
        {'treatment': 'invalid (SRM)'}
    """
    specs = {m.name: m for m in experiment.metrics}
    missing = [name for name in specs if name not in stats]
    if missing:
        raise InputError(
            "stats", sorted(stats), f"no stats for metric {missing[0]!r}", "aggregate every metric"
        )
    if counts is None:
        if not stats:
            raise InputError("stats", {}, "no stats and no counts", "pass stats for the experiment's metrics")
        counts = next(iter(stats.values())).n
    srm = srm_check(counts, experiment.weights)
    metrics: dict[str, list[dict[str, Any]]] = {}
    guardrails: list[dict[str, Any]] = []
    comparisons: dict[str, list[Comparison]] = {}
    for name, st in stats.items():
        spec = specs.get(name, MetricSpec(name))
        comps = [compare(st, t, 0, alpha, cuped, planned_n) for t in range(1, len(st.arms))]
        comparisons[name] = comps
        metrics[name] = [c.to_dict() for c in comps]
        if spec.guardrail:
            guardrails += [guardrail(c, spec, sequential=True) for c in comps]
    primary = next((m.name for m in experiment.metrics if not m.guardrail), next(iter(stats), None))
    verdicts = {}
    for t, arm in enumerate(experiment.arms[1:], start=1):
        failed = [g["metric"] for g in guardrails if g["treatment"] == arm.name and g["status"] == "fail"]
        if srm["flagged"]:
            verdict = "invalid (SRM)"
        elif failed:
            verdict = f"guardrail failed: {', '.join(failed)}"
        elif primary is None:
            verdict = "no metrics"
        else:
            c = comparisons[primary][t - 1]
            better = 1 if specs.get(primary, MetricSpec(primary)).higher_is_better else -1
            if c.sequential_significant:
                verdict = "win" if better * c.diff > 0 else "loss"
            else:
                verdict = "keep running"
        verdicts[arm.name] = verdict
    return {
        "experiment": experiment.name,
        "system": experiment.system,
        "mode": experiment.mode,
        "arms": [
            {"name": a.name, "weight": a.weight, "alias": a.alias, "params": dict(a.params)}
            for a in experiment.arms
        ],
        "alpha": alpha,
        "planned_n": planned_n,
        "srm": srm,
        "primary_metric": primary,
        "higher_is_better": {name: specs.get(name, MetricSpec(name)).higher_is_better for name in stats},
        "metrics": metrics,
        "guardrails": guardrails,
        "verdict": verdicts,
    }
