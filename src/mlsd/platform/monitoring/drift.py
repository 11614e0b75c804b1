"""Data and prediction drift against a training reference: PSI (with bands) and KS, per feature.

``DriftMonitor(bins=10).fit(reference_df).report(current_df) -> dict``. ``fit`` does the work once: for a
numeric feature, quantile bin edges of the reference (so each bin holds ~1/bins of the training data)
and the reference's share per bin; for a categorical feature, the reference's categories (the rarest
folded into ``__other__``). Missing values (NaN/None) get a bin of their own in both, so a feature that
starts arriving empty drifts visibly instead of silently vanishing from the comparison. ``report``
bins the current data with the same edges: one ``searchsorted`` + ``bincount`` per feature.

PSI = sum((cur - ref) * ln(cur / ref)) over bins; the usual bands are < 0.1 stable, 0.1-0.25 moderate,
> 0.25 significant. KS (two-sample, numeric features) is reported next to it; with large samples its
p-value flags even negligible shifts, so PSI's band is the alert and KS the corroboration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from mlsd.platform.errors import InputError

PSI_STABLE = 0.1
PSI_SIGNIFICANT = 0.25
OTHER = "__other__"
MISSING = "__missing__"
# An empty bin would make ln(cur/ref) infinite; a floor this small still makes a bin that appears from
# nowhere (1% of current traffic) contribute ~0.07, clearly visible.
EPS = 1e-4


def psi_band(value: float) -> str:
    """``stable`` (< 0.1), ``moderate`` (0.1-0.25) or ``significant`` (> 0.25).

    Examples:
        >>> psi_band(0.05), psi_band(0.1), psi_band(0.25), psi_band(0.3)
        ('stable', 'moderate', 'moderate', 'significant')
    """
    if value < PSI_STABLE:
        return "stable"
    return "moderate" if value <= PSI_SIGNIFICANT else "significant"


def psi_from_counts(reference_counts: Any, current_counts: Any, eps: float = EPS) -> float:
    """PSI between two histograms over the same bins (counts or proportions).

    Examples:
        >>> # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
        >>> round(psi_from_counts([50, 50], [25, 75]), 4)
        0.2747
        >>> psi_from_counts([50, 50], [0.5, 0.5])   # counts and proportions mix: shares are compared
        0.0
    """
    ref = np.asarray(reference_counts, dtype=np.float64)
    cur = np.asarray(current_counts, dtype=np.float64)
    ref = np.maximum(ref / max(ref.sum(), 1e-300), eps)
    cur = np.maximum(cur / max(cur.sum(), 1e-300), eps)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_edges(reference: Any, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (deduplicated: a spike of equal values is one bin)."""
    values = np.asarray(reference, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.array([], dtype=np.float64)
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


def numeric_counts(values: Any, edges: np.ndarray) -> np.ndarray:
    """Counts per bin ``(-inf, e0), [e0, e1), ..., [e_last, inf)`` plus a last bin for NaN."""
    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    idx = np.searchsorted(edges, x[~nan], side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return np.append(counts, nan.sum())


def categorical_counts(values: Any, categories: Sequence[str]) -> np.ndarray:
    """Counts per known category, then ``__other__`` (unseen or rare), then missing."""
    s = pd.Series(values, dtype=object)
    missing = s.isna().to_numpy()
    codes = pd.Categorical(s[~missing].astype(str), categories=list(categories)).codes  # -1 = not a category
    counts = np.bincount(np.where(codes < 0, len(categories), codes), minlength=len(categories) + 1)
    return np.append(counts, missing.sum())


def psi(reference: Any, current: Any, bins: int = 10, categorical: bool | None = None) -> float:
    """PSI of one feature; categorical when the values are not numbers (or when told).

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> reference, shifted = rng.normal(0, 1, 5000), rng.normal(1, 1, 5000)
        >>> psi(reference, reference), round(psi(reference, shifted), 2)
        (0.0, 0.96)
        >>> round(psi(["a"] * 50 + ["b"] * 50, ["a"] * 25 + ["b"] * 75), 4)   # categories
        0.2747
    """
    ref, cur = pd.Series(reference), pd.Series(current)
    if categorical is None:
        categorical = not _is_numeric(ref)
    if categorical:
        cats = _categories(ref, max_categories=1000)
        return psi_from_counts(categorical_counts(ref, cats), categorical_counts(cur, cats))
    edges = quantile_edges(ref, bins)
    return psi_from_counts(numeric_counts(ref, edges), numeric_counts(cur, edges))


def ks(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value on the non-missing values (scipy).

    Examples:
        >>> ks([1, 2, 3], [1, 2, 3, float("nan")])
        (0.0, 1.0)
        >>> stat, p = ks([1, 2, 3], [4, 5, 6]); stat, round(p, 3)
        (1.0, 0.1)
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return float("nan"), float("nan")
    result = sps.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _categories(s: pd.Series, max_categories: int) -> list[str]:
    counts = s.dropna().astype(str).value_counts()
    return counts.index[:max_categories].tolist()


class DriftMonitor:
    """Per-feature drift of a current frame against a reference (training) frame.

    Parameters: ``reference`` the training frame (or pass it to ``fit``); ``bins`` quantile bins per numeric feature; ``features`` to watch (default: every column
    of the reference); ``categorical`` columns to treat as categories even if numeric (ids, codes);
    ``max_categories`` kept per categorical feature (the rest is ``__other__``); ``ks_sample`` reference
    values kept per numeric feature for KS (a seeded random sample, so the fitted monitor stays small).
    ``discrete_max``: a numeric feature with at most this many distinct reference values (flags, counts,
    ring sizes) is compared as categories (0: never). Quantile bins cannot split such spikes, and one
    spike moving between two merged bins reads as a huge PSI; as categories they compare cleanly.

    Examples:
        >>> import numpy as np
        >>> import pandas as pd
        >>> rng = np.random.default_rng(0)
        >>> reference = pd.DataFrame({"amount": rng.normal(0, 1, 5000), "age": rng.normal(40, 10, 5000)})
        >>> current = pd.DataFrame({"amount": rng.normal(1, 1, 5000), "age": rng.normal(40, 10, 5000)})
        >>> report = DriftMonitor(bins=10).fit(reference).report(current)   # amount shifted by 1 sd
        >>> {name: f["band"] for name, f in report["features"].items()}
        {'amount': 'significant', 'age': 'stable'}
        >>> report["summary"]["drifted"], round(report["features"]["amount"]["psi"], 2)
        (['amount'], 0.95)
    """

    def __init__(
        self,
        reference: pd.DataFrame | None = None,
        *,
        bins: int = 10,
        features: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        max_categories: int = 50,
        ks_sample: int = 20_000,
        random_state: int = 0,
        discrete_max: int = 0,
    ) -> None:
        self.reference = reference
        self.bins = bins
        self.features = features
        self.categorical = categorical
        self.max_categories = max_categories
        self.ks_sample = ks_sample
        self.random_state = random_state
        self.discrete_max = discrete_max

    def fit(self, reference: pd.DataFrame | None = None) -> DriftMonitor:
        """Learn bins, reference shares and a KS sample per feature, from ``reference`` or, when it is
        omitted, from the frame given to the constructor: ``DriftMonitor(ref).fit()`` ==
        ``DriftMonitor().fit(ref)``."""
        if reference is None:
            reference = self.reference
        if reference is None:
            raise InputError(
                "reference",
                None,
                "no reference frame",
                "pass DriftMonitor(reference_df) or fit(reference_df)",
            )
        _check_frame(reference, "reference")
        if len(reference) == 0:
            raise InputError("reference", 0, "the reference has no rows", "pass the training frame")
        if self.bins < 2:
            raise InputError("bins", self.bins, "need at least 2 bins", "use e.g. 10")
        features = list(self.features) if self.features is not None else list(reference.columns)
        _check_columns(reference, features, "reference")
        rng = np.random.default_rng(self.random_state)
        self.profiles_: dict[str, dict[str, Any]] = {}
        for name in features:
            col = reference[name]
            discrete = self.discrete_max > 0 and _is_numeric(col) and col.nunique() <= self.discrete_max
            if name in self.categorical or discrete or not _is_numeric(col):
                cats = _categories(col, self.max_categories)
                counts = categorical_counts(col, cats)
                self.profiles_[name] = {"kind": "categorical", "categories": cats, "counts": counts.tolist()}
                continue
            values = col.to_numpy(np.float64)
            edges = quantile_edges(values, self.bins)
            present = values[~np.isnan(values)]
            sample = (
                present
                if len(present) <= self.ks_sample
                else rng.choice(present, self.ks_sample, replace=False)
            )
            self.profiles_[name] = {
                "kind": "numeric",
                "edges": edges.tolist(),
                "counts": numeric_counts(values, edges).tolist(),
                "mean": float(present.mean()) if len(present) else None,
                "std": float(present.std()) if len(present) else None,
                "sample": np.sort(sample),
            }
        self.n_reference_ = len(reference)
        return self

    def report(self, current: pd.DataFrame) -> dict[str, Any]:
        """JSON-ready drift report: per feature PSI, band, KS, null rates, the histograms; a summary."""
        if not hasattr(self, "profiles_"):
            raise InputError("monitor", "unfitted", "the monitor is not fitted", "call fit(reference) first")
        _check_frame(current, "current")
        if len(current) == 0:
            raise InputError("current", 0, "the current frame has no rows", "pass at least one row")
        _check_columns(current, list(self.profiles_), "current")
        features: dict[str, dict[str, Any]] = {}
        for name, prof in self.profiles_.items():
            col = current[name]
            ref_counts = np.asarray(prof["counts"])
            if prof["kind"] == "categorical":
                cur_counts = categorical_counts(col, prof["categories"])
                labels = [*prof["categories"], OTHER, MISSING]
                ks_stat = ks_p = None
                extra: dict[str, Any] = {}
            else:
                edges = np.asarray(prof["edges"])
                if not _is_numeric(col) and not col.isna().all():
                    raise InputError(
                        f"current.{name}", str(col.dtype), "expected a numeric column", "cast it to numbers"
                    )
                values = col.to_numpy(np.float64)
                cur_counts = numeric_counts(values, edges)
                labels = _interval_labels(edges) + [MISSING]
                ks_stat, ks_p = ks(prof["sample"], values)
                present = values[~np.isnan(values)]
                extra = {
                    "mean_reference": prof["mean"],
                    "mean_current": float(present.mean()) if len(present) else None,
                }
            value = psi_from_counts(ref_counts, cur_counts)
            features[name] = {
                "kind": prof["kind"],
                "psi": value,
                "band": psi_band(value),
                "ks_statistic": _finite(ks_stat),
                "ks_pvalue": _finite(ks_p),
                "null_rate_reference": float(ref_counts[-1] / max(ref_counts.sum(), 1)),
                "null_rate_current": float(cur_counts[-1] / max(cur_counts.sum(), 1)),
                **extra,
                "bins": {
                    "labels": labels,
                    "reference": (ref_counts / max(ref_counts.sum(), 1)).tolist(),
                    "current": (cur_counts / max(cur_counts.sum(), 1)).tolist(),
                },
            }
        ranked = sorted(features, key=lambda f: -features[f]["psi"])
        bands = [features[f]["band"] for f in features]
        return {
            "n_reference": self.n_reference_,
            "n_current": len(current),
            "features": features,
            "summary": {
                "stable": bands.count("stable"),
                "moderate": bands.count("moderate"),
                "significant": bands.count("significant"),
                "drifted": [f for f in ranked if features[f]["band"] != "stable"],
                "max_psi": features[ranked[0]]["psi"] if ranked else None,
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write the fitted state as JSON (small: bins, shares, the KS sample), e.g. next to a model."""
        if not hasattr(self, "profiles_"):
            raise InputError("monitor", "unfitted", "the monitor is not fitted", "call fit(reference) first")
        path = Path(path)
        profiles = {
            n: {**p, "sample": p["sample"].tolist()} if "sample" in p else p
            for n, p in self.profiles_.items()
        }
        settings = {k: getattr(self, k) for k in ("bins", "max_categories", "ks_sample", "random_state")}
        settings["features"] = list(self.profiles_)
        settings["categorical"] = list(self.categorical)
        path.write_text(
            json.dumps({"settings": settings, "n_reference": self.n_reference_, "profiles": profiles})
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> DriftMonitor:
        data = json.loads(Path(path).read_text())
        monitor = cls(**data["settings"])
        monitor.profiles_ = {
            n: {**p, "sample": np.asarray(p["sample"], dtype=np.float64)} if "sample" in p else p
            for n, p in data["profiles"].items()
        }
        monitor.n_reference_ = data["n_reference"]
        return monitor


def prediction_drift(reference_scores: Any, current_scores: Any, bins: int = 10) -> dict[str, Any]:
    """Drift of a model's output: the score distribution now vs at training/validation time.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> drift = prediction_drift(rng.beta(2, 5, 5000), rng.beta(2, 3, 5000))   # scores crept up
        >>> drift["band"], round(drift["mean_reference"], 2), round(drift["mean_current"], 2)
        ('significant', 0.29, 0.4)
    """
    monitor = DriftMonitor(bins=bins).fit(
        pd.DataFrame({"score": np.asarray(reference_scores, dtype=np.float64)})
    )
    return monitor.report(pd.DataFrame({"score": np.asarray(current_scores, dtype=np.float64)}))["features"][
        "score"
    ]


def _interval_labels(edges: np.ndarray) -> list[str]:
    bounds = ["-inf", *[f"{e:.4g}" for e in edges], "inf"]
    return [f"[{lo}, {hi})" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _check_frame(frame: Any, field: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(field, type(frame).__name__, "expected a pandas DataFrame", "pass a DataFrame")


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], field: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"{field}.{missing[0]}",
            list(frame.columns)[:20],
            "feature column not found",
            f"add column {missing[0]!r} or drop it from the monitored features",
        )


def empty_report(n_reference: int = 0, n_current: int = 0) -> dict[str, Any]:
    """A drift report with no feature compared, in :meth:`DriftMonitor.report`'s shape: what a system
    returns when its data cannot give a reference or a current window (it says why in
    ``not_computed``, ``{what: why}``, which ``mlsd monitor report`` prints).

    Examples:
        >>> empty_report()["summary"]
        {'stable': 0, 'moderate': 0, 'significant': 0, 'drifted': [], 'max_psi': None}
    """
    return {
        "n_reference": n_reference,
        "n_current": n_current,
        "features": {},
        "summary": {"stable": 0, "moderate": 0, "significant": 0, "drifted": [], "max_psi": None},
    }
