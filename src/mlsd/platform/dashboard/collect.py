"""Read every source once and build the dashboard's *snapshot*: one plain, JSON-ready dict.

The snapshot is the seam between the data and the page: :mod:`~mlsd.platform.dashboard.render` turns
it into HTML, ``/api/snapshot`` returns it as JSON, and tests assert on it. Every section has a
``status`` -- ``ok``, ``empty`` (the source is not configured or holds nothing) or ``error`` (it raised;
``message`` says why) -- so one broken source shows a "no data" panel instead of taking the page down.

Sources (all optional, see :class:`Sources`):

* **registry** -- :class:`~mlsd.platform.registry.ModelRegistry` objects (or their root folders):
  every model name, its versions with metrics, and which version holds which alias.
* **experiments** -- reports of :func:`mlsd.platform.experiments.analyze_experiment` (dicts, JSON files,
  or ``(Experiment, {metric: MetricStats})`` pairs analysed here). A report may carry ``looks``: the
  same analysis at increasing exposure, which the page draws as the sequential boundary over time.
* **latency** -- the ``mlsd_stage_seconds{system,stage}`` histograms: of this process's
  :data:`mlsd.platform.serving.REGISTRY`, scraped from running services' ``/metrics`` URLs, or read
  from timings JSON files (bench output or ``StageTimer.to_dict()`` records).
* **drift** -- :meth:`mlsd.platform.monitoring.DriftMonitor.report` dicts (or JSON files), by label.
* **review** -- a fraud review queue (anything with ``counts()``; ``list(status, limit)`` adds the top
  open cases).
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsd.platform.errors import DataFormatError, InputError

STAGE_METRIC = "mlsd_stage_seconds"
QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Sources:
    """Where the dashboard reads from. Everything is optional; an absent source is a "no data" panel.

    ``prometheus``: a ``CollectorRegistry`` to read stage histograms from (``None``: this process's
    serving registry when ``use_process_metrics`` is true). ``metrics_urls``: ``/metrics`` endpoints of
    running services on this machine. ``review``: an object with ``counts()`` (and optionally ``list``).
    """

    registries: Sequence[Any] = ()
    experiments: Sequence[Any] = ()
    drift: Mapping[str, Any] = field(default_factory=dict)
    timings: Sequence[Any] = ()
    metrics_urls: Sequence[str] = ()
    prometheus: Any = None
    use_process_metrics: bool = True
    review: Any = None
    title: str = "mlsd dashboard"
    notes: Sequence[str] = ()


def collect(sources: Sources) -> dict[str, Any]:
    """The snapshot: ``{generated_at, title, notes, registry, experiments, latency, drift, review}``."""
    started = time.perf_counter()
    snapshot = {
        "title": sources.title,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "notes": list(sources.notes),
        "registry": _section(lambda: collect_registry(sources.registries)),
        "experiments": _section(lambda: collect_experiments(sources.experiments)),
        "latency": _section(
            lambda: collect_latency(
                sources.timings, sources.metrics_urls, sources.prometheus, sources.use_process_metrics
            )
        ),
        "drift": _section(lambda: collect_drift(sources.drift)),
        "review": _section(lambda: collect_review(sources.review)),
    }
    # made-up figures (mlsd dashboard --demo-data) anywhere on the page: the page says so at the top
    snapshot["synthetic"] = any(
        _has_synthetic(snapshot[k]) for k in ("registry", "experiments", "drift", "review")
    )
    snapshot["collect_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return _json_safe(snapshot)


def _has_synthetic(section: Mapping[str, Any]) -> bool:
    items = [*section.get("models", []), *section.get("experiments", []), *section.get("reports", [])]
    return bool(section.get("synthetic")) or any(item.get("synthetic") for item in items)


def _section(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one collector; a failure becomes ``status: error`` with the reason (the page still renders)."""
    try:
        out = build()
    except (InputError, DataFormatError) as err:
        return {"status": "error", "message": str(err)}
    except Exception as err:  # a dashboard shows a broken source; it does not die of it
        return {"status": "error", "message": f"{type(err).__name__}: {err}"}
    out.setdefault("status", "ok")
    return out


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so the snapshot is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise InputError(what, str(path), "file not found", "check the path")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        line = getattr(err, "lineno", None)
        raise DataFormatError(
            path, line, f"not valid JSON ({err})", f"write the {what} as one JSON object"
        ) from err


# ---------------------------------------------------------------------------------------------------
# Registry


def collect_registry(registries: Sequence[Any]) -> dict[str, Any]:
    """Every model of every registry: versions (metrics, params, lineage) and aliases."""
    from mlsd.platform.registry import ModelRegistry

    if not registries:
        return {"status": "empty", "message": "no model registry configured (--registry DIR)"}
    models = []
    roots = []
    for reg in registries:
        if not isinstance(reg, ModelRegistry):
            root = Path(reg)
            if not (root / "registry.sqlite").exists():
                # Opening would create an empty registry; a typo must not look like "no models".
                raise InputError("--registry", str(root), "no registry.sqlite there", "pass a registry root")
            reg = ModelRegistry(root)
        roots.append(str(reg.root))
        for name in reg.names():
            aliases = reg.aliases(name)
            by_version: dict[int, list[str]] = {}
            for alias, version in sorted(aliases.items()):
                by_version.setdefault(version, []).append(alias)
            versions = [
                {
                    "version": v.version,
                    "created_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.created_at)),
                    "metrics": dict(v.metrics),
                    "params": dict(v.params),
                    "data_fingerprint": v.data_fingerprint[:12],
                    "parent": v.parent,
                    "aliases": by_version.get(v.version, []),
                    "files": len(v.files),
                    "synthetic": bool(v.params.get("synthetic")),
                }
                for v in reg.versions(name)
            ]
            history = []
            for alias in aliases:
                history += [{"alias": alias, **h} for h in reg.history(name, alias)]
            history.sort(key=lambda h: h.get("at") or 0)
            models.append(
                {
                    "name": name,
                    "root": str(reg.root),
                    "aliases": aliases,
                    "versions": versions,
                    "history": history[-10:],
                    "synthetic": any(v["synthetic"] for v in versions),
                }
            )
    if not models:
        return {"status": "empty", "roots": roots, "message": "the registry holds no models yet"}
    return {"roots": roots, "models": models}


# ---------------------------------------------------------------------------------------------------
# Experiments


def _find_report(data: Any) -> dict[str, Any] | None:
    """The analysis report inside ``data``: the object itself, or one level down (CLI wrappers)."""
    if isinstance(data, Mapping):
        if "srm" in data and "metrics" in data:
            return dict(data)
        for value in data.values():
            if isinstance(value, Mapping) and "srm" in value and "metrics" in value:
                out = dict(value)
                if "looks" in data and "looks" not in out:
                    out["looks"] = data["looks"]
                return out
    return None


def _as_reports(item: Any) -> list[dict[str, Any]]:
    if isinstance(item, tuple) and len(item) == 2:
        from mlsd.platform.experiments import analyze_experiment

        return [analyze_experiment(item[0], item[1])]
    if isinstance(item, str | Path):
        path = Path(item)
        if path.is_dir():
            return [r for p in sorted(path.glob("*.json")) for r in _as_reports(p)]
        data = _read_json(path, "experiment report")
        items = data if isinstance(data, list) else data.get("experiments", [data])
        reports = [r for r in (_find_report(d) for d in items) if r is not None]
        if not reports:
            raise DataFormatError(
                path,
                None,
                "no experiment analysis in it (keys 'srm' and 'metrics')",
                "write the output of `mlsd experiment run ... --json`",
            )
        for r in reports:
            r.setdefault("source", str(path))
        return reports
    report = _find_report(item)
    if report is None:
        raise InputError(
            "experiments",
            type(item).__name__,
            "not an experiment analysis",
            "pass analyze_experiment(...) output, a JSON file, or (Experiment, stats)",
        )
    return [report]


def _directions(report: Mapping[str, Any]) -> dict[str, bool]:
    """Which way is better, per metric, where the report tells: ``higher_is_better`` per metric if the
    report carries it, the guardrails' own flag, and for the primary metric the verdict's sign (a "win"
    with a negative lift means lower is better). Unknown metrics are left out (drawn neutral)."""
    out: dict[str, bool] = {}
    for name, value in (report.get("higher_is_better") or {}).items():
        out[name] = bool(value)
    for g in report.get("guardrails", []):
        if "higher_is_better" in g:
            out.setdefault(g["metric"], bool(g["higher_is_better"]))
    primary = report.get("primary_metric")
    comps = {c.get("treatment"): c for c in (report.get("metrics") or {}).get(primary, [])}
    for arm, verdict in (report.get("verdict") or {}).items():
        c = comps.get(arm)
        if primary in out or c is None or c.get("relative") is None or verdict not in ("win", "loss"):
            continue
        out[primary] = (c["relative"] > 0) == (verdict == "win")
    return out


def summarize_experiment(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report plus what the page draws: one row per (metric, treatment) and the sequential looks."""
    primary = report.get("primary_metric")
    guard_status = {(g["metric"], g["treatment"]): g["status"] for g in report.get("guardrails", [])}
    direction = _directions(report)
    rows = []
    for metric, comps in (report.get("metrics") or {}).items():
        for c in comps:
            rows.append(
                {
                    "metric": metric,
                    "treatment": c.get("treatment"),
                    "control": c.get("control"),
                    "kind": c.get("kind"),
                    "primary": metric == primary,
                    "higher_is_better": direction.get(metric),
                    "guardrail": guard_status.get((metric, c.get("treatment"))),
                    "mean_control": c.get("mean_control"),
                    "mean_treatment": c.get("mean_treatment"),
                    "diff": c.get("diff"),
                    "relative": c.get("relative"),
                    "relative_low": c.get("relative_low"),
                    "relative_high": c.get("relative_high"),
                    "relative_cs_low": c.get("relative_cs_low"),
                    "relative_cs_high": c.get("relative_cs_high"),
                    "p_value": c.get("p_value"),
                    "significant": c.get("significant"),
                    "sequential_significant": c.get("sequential_significant"),
                    "variance_reduction": c.get("variance_reduction"),
                    "n_control": c.get("n_control"),
                    "n_treatment": c.get("n_treatment"),
                }
            )
    looks = []
    for look in report.get("looks") or []:
        comps = (look.get("metrics") or {}).get(primary) or []
        for c in comps[:1]:  # the first treatment: the sequential picture of the main comparison
            looks.append(
                {
                    # units exposed at that look (ExperimentClient.analyze writes it), else the pair's units
                    "n": look.get("n", (c.get("n_control") or 0) + (c.get("n_treatment") or 0)),
                    "relative": c.get("relative"),
                    "cs_low": c.get("relative_cs_low"),
                    "cs_high": c.get("relative_cs_high"),
                    "treatment": c.get("treatment"),
                }
            )
    srm = report.get("srm") or {}
    return {
        "name": report.get("experiment"),
        "system": report.get("system"),
        "mode": report.get("mode"),
        "arms": report.get("arms", []),
        "primary_metric": primary,
        "alpha": report.get("alpha"),
        "srm": {
            k: srm.get(k) for k in ("counts", "expected", "chi2", "p_value", "threshold", "flagged", "note")
        },
        "verdict": report.get("verdict", {}),
        "rows": rows,
        "looks": looks,
        "source": report.get("source"),
        "synthetic": bool(report.get("synthetic")),
    }


def collect_experiments(items: Sequence[Any]) -> dict[str, Any]:
    if not items:
        return {"status": "empty", "message": "no experiment reports (--experiments FILE|DIR)"}
    reports = [r for item in items for r in _as_reports(item)]
    if not reports:
        return {"status": "empty", "message": "no experiment reports found"}
    return {"experiments": [summarize_experiment(r) for r in reports]}


# ---------------------------------------------------------------------------------------------------
# Latency


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding rank q * count.

    ``buckets``: (upper bound, cumulative count), sorted, ending with +Inf. A rank in the +Inf bucket
    answers the last finite bound (the histogram cannot say more).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def stage_rows_from_families(families: Iterable[Any], source: str) -> dict[str, list[dict[str, Any]]]:
    """``mlsd_stage_seconds`` families (prometheus_client objects, live or parsed) -> rows per system."""
    raw: dict[tuple[str, str], dict[str, Any]] = {}
    for family in families:
        if family.name != STAGE_METRIC:
            continue
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("system", "?"), labels.get("stage", "?"))
            slot = raw.setdefault(key, {"buckets": [], "sum": 0.0, "count": 0.0})
            if sample.name.endswith("_bucket"):
                slot["buckets"].append((float(labels["le"]), float(sample.value)))
            elif sample.name.endswith("_sum"):
                slot["sum"] = float(sample.value)
            elif sample.name.endswith("_count"):
                slot["count"] = float(sample.value)
    out: dict[str, list[dict[str, Any]]] = {}
    for (system, stage), slot in sorted(raw.items()):
        if slot["count"] <= 0:
            continue
        buckets = sorted(slot["buckets"])
        row = {
            "stage": stage,
            "count": int(slot["count"]),
            "mean_ms": 1000 * slot["sum"] / slot["count"],
            "source": source,
        }
        for q in QUANTILES:
            v = histogram_quantile(q, buckets)
            row[f"p{round(q * 100)}_ms"] = None if v is None else 1000 * v
        out.setdefault(system, []).append(row)
    return out


def _percentiles_ms(samples: Sequence[Any]) -> dict[str, Any]:
    import numpy as np

    x = np.asarray([float(s) for s in samples], dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"count": 0}
    p = np.percentile(x, [q * 100 for q in QUANTILES])
    return {
        "count": int(len(x)),
        "mean_ms": float(x.mean()),
        **{f"p{round(q * 100)}_ms": float(v) for q, v in zip(QUANTILES, p, strict=True)},
    }


def stage_rows_from_timings(data: Any, source: str, system: str = "bench") -> dict[str, list[dict[str, Any]]]:
    """Timings JSON -> rows per system. Accepted shapes (what ``bench`` and ``StageTimer`` write):

    * ``[{"timings_ms": {stage: ms}}, ...]`` or ``[{stage: ms}, ...]`` -- one record per request;
    * ``{"system": S, "stages": {stage: [ms, ...] | {"p50_ms": .., "p99_ms": .., ...}}}``;
    * ``{S: {stage: [ms, ...] | {"p50_ms": ...}}}`` -- several systems.
    """
    if isinstance(data, list):
        samples: dict[str, list[float]] = {}
        for rec in data:
            timings = rec.get("timings_ms", rec) if isinstance(rec, Mapping) else {}
            for stage, ms in timings.items():
                if isinstance(ms, int | float):
                    samples.setdefault(stage, []).append(float(ms))
        return {system: [{"stage": s, **_percentiles_ms(v), "source": source} for s, v in samples.items()]}
    if not isinstance(data, Mapping):
        raise DataFormatError(source, None, "timings must be a JSON object or list", "see docs/dashboard.md")
    if "timings_ms" in data:
        return stage_rows_from_timings([data], source, system)
    if "stages" in data:
        data = {str(data.get("system", system)): data["stages"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for sys_name, stages in data.items():
        if not isinstance(stages, Mapping):
            continue
        rows = []
        for stage, value in stages.items():
            if isinstance(value, Sequence) and not isinstance(value, str):
                rows.append({"stage": stage, **_percentiles_ms(value), "source": source})
            elif isinstance(value, Mapping):
                keep = {k: value.get(k) for k in ("count", "mean_ms", "p50_ms", "p95_ms", "p99_ms")}
                rows.append({"stage": stage, **keep, "source": source})
        if rows:
            out[str(sys_name)] = rows
    if not out:
        raise DataFormatError(source, None, "no stage timings found", "see docs/dashboard.md for the shapes")
    return out


def scrape(url: str, timeout_s: float = 2.0) -> list[Any]:
    """Parse a Prometheus text endpoint (a running mlsd service's ``/metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families

    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        # Local services only: the dashboard never reaches out to the internet.
        raise InputError("--metrics-url", url, "not a local http URL", "use http://127.0.0.1:PORT/metrics")
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (local URL checked above)
        text = resp.read().decode()
    return list(text_string_to_metric_families(text))


def collect_latency(
    timings: Sequence[Any], metrics_urls: Sequence[str], prometheus: Any, use_process_metrics: bool
) -> dict[str, Any]:
    systems: dict[str, list[dict[str, Any]]] = {}
    errors: list[str] = []

    def merge(part: Mapping[str, list[dict[str, Any]]]) -> None:
        for sys_name, rows in part.items():
            systems.setdefault(sys_name, []).extend(rows)

    registry = prometheus
    if registry is None and use_process_metrics:
        from mlsd.platform.serving import REGISTRY

        registry = REGISTRY
    if registry is not None:
        merge(stage_rows_from_families(registry.collect(), "this process"))
    for url in metrics_urls:
        try:
            merge(stage_rows_from_families(scrape(url), url))
        except (OSError, InputError) as err:  # one service down: show the others, say which failed
            errors.append(f"{url}: {err}")
    for item in timings:
        if isinstance(item, str | Path):
            merge(stage_rows_from_timings(_read_json(item, "timings"), str(item), Path(item).stem))
        else:
            merge(stage_rows_from_timings(item, "timings"))
    if not systems:
        msg = "no stage timings recorded yet (serve requests, pass --metrics-url or --timings FILE)"
        return {"status": "empty" if not errors else "error", "message": "; ".join([msg, *errors])}
    return {"systems": systems, "errors": errors}


# ---------------------------------------------------------------------------------------------------
# Drift


def collect_drift(drift: Mapping[str, Any]) -> dict[str, Any]:
    """Drift reports by label (``recsys``, ``fraud:features``, ...), features sorted by PSI."""
    if not drift:
        return {
            "status": "empty",
            "message": "no drift report (--drift LABEL=FILE, from `mlsd monitor report --json`)",
        }
    reports = []
    for label, item in drift.items():
        report = _read_json(item, "drift report") if isinstance(item, str | Path) else item
        if not isinstance(report, Mapping) or "features" not in report:
            raise DataFormatError(
                str(item) if isinstance(item, str | Path) else label,
                None,
                "not a drift report (no 'features')",
                "write `mlsd monitor report --json`",
            )
        features = [
            {
                "feature": name,
                "kind": row.get("kind"),
                "psi": row.get("psi"),
                "band": row.get("band"),
                "ks_statistic": row.get("ks_statistic"),
                "ks_pvalue": row.get("ks_pvalue"),
                "null_rate_reference": row.get("null_rate_reference"),
                "null_rate_current": row.get("null_rate_current"),
                "bins_reference": (row.get("bins") or {}).get("reference", []),
                "bins_current": (row.get("bins") or {}).get("current", []),
            }
            for name, row in report["features"].items()
        ]
        features.sort(key=lambda f: -(f["psi"] if f["psi"] is not None else -1))
        reports.append(
            {
                "label": label,
                "n_reference": report.get("n_reference"),
                "n_current": report.get("n_current"),
                "summary": report.get("summary", {}),
                "features": features,
                "reference": report.get("reference"),
                "current": report.get("current"),
                "performance": _performance_rows(report.get("performance")),
                "synthetic": bool(report.get("synthetic")),
            }
        )
    return {"reports": reports}


PERFORMANCE_KEYS = ("age_days", "frauds_known", "auc_roc", "average_precision", "precision_at_block",
                    "recall_at_block", "share_of_final_frauds")  # fmt: skip


def _performance_rows(performance: Any) -> list[dict[str, Any]]:
    """Model performance on labels as they mature (fraud's drift report): one row per label age."""
    rows = performance.get("by_label_age") if isinstance(performance, Mapping) else performance
    if not isinstance(rows, list):
        return []
    return [{k: r.get(k) for k in PERFORMANCE_KEYS} for r in rows if isinstance(r, Mapping)]


# ---------------------------------------------------------------------------------------------------
# Review queue


def collect_review(queue: Any) -> dict[str, Any]:
    """Counts by status and the highest-priority open cases of a fraud review queue."""
    if queue is None:
        return {
            "status": "empty",
            "message": "no review queue configured (--review-sqlite FILE or --review-postgres DSN)",
        }
    counts = {str(k): int(v) for k, v in queue.counts().items()}
    top = []
    if hasattr(queue, "list"):
        for case in queue.list("open", 8):
            d = case.to_dict() if hasattr(case, "to_dict") else dict(case)
            top.append({k: d.get(k) for k in ("tx_id", "probability", "amount", "priority", "reasons")})
    outcomes: dict[str, int] = {}
    if hasattr(queue, "list") and counts.get("resolved"):
        # The protocol has no outcome counts; the latest <= 1000 resolved cases are a fair sample.
        for case in queue.list("resolved", 1000):
            outcome = str(getattr(case, "outcome", None) or "unknown")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    out: dict[str, Any] = {
        "counts": counts,
        "total": sum(counts.values()),
        "top_open": top,
        "outcomes": outcomes,
        "synthetic": bool(getattr(queue, "synthetic", False)),
    }
    if not out["total"]:
        out["status"] = "empty"
        out["message"] = "the review queue is empty"
    return out
