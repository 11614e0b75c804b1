"""Snapshot -> one self-contained HTML page: inline CSS, inline SVG charts, no script, no external URL.

The same string is served at ``/`` and written by ``mlsd dashboard --html FILE``, so the static file
and the live page never disagree. Sections follow the order an on-call reader asks questions in:
is an experiment telling us something (and can we trust it: SRM), are the services fast, is the data
drifting, is the review team keeping up, and which model versions are live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from mlsd.platform.dashboard.charts import (
    PALETTE,
    band_chart,
    bar_chart,
    fmt,
    heat_color,
    histogram_pair,
    interval_chart,
)

GOOD, BAD, WARN, NEUTRAL = "#16a34a", "#dc2626", "#d97706", "#2563eb"

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f1f5f9;color:#1e293b;
 font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif}
header{background:#0f172a;color:#f8fafc;padding:18px 28px;display:flex;align-items:baseline;gap:18px;flex-wrap:wrap}
header h1{margin:0;font-size:22px;font-weight:650;letter-spacing:.2px}
header .when{color:#94a3b8;font-size:13px}
nav{display:flex;gap:6px;margin-left:auto;flex-wrap:wrap}
nav a{color:#cbd5e1;text-decoration:none;font-size:13px;padding:3px 10px;border:1px solid #334155;border-radius:14px}
nav a:hover{background:#1e293b}
main{padding:20px 28px 40px;max-width:1500px;margin:0 auto}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin-bottom:18px}
.kpi{background:#fff;border-radius:10px;padding:12px 16px;box-shadow:0 1px 2px rgba(15,23,42,.08);border:1px solid #e2e8f0}
.kpi .v{font-size:24px;font-weight:650}
.kpi .l{color:#64748b;font-size:12px;text-transform:uppercase;letter-spacing:.5px}
section{background:#fff;border-radius:12px;padding:16px 20px 18px;margin-bottom:18px;
 box-shadow:0 1px 3px rgba(15,23,42,.08);border:1px solid #e2e8f0}
section>h2{margin:0 0 4px;font-size:17px;font-weight:650}
section>.sub{color:#64748b;font-size:12.5px;margin-bottom:12px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:18px}
@media (max-width:1000px){.grid2{grid-template-columns:1fr}}
.card{border:1px solid #e2e8f0;border-radius:10px;padding:12px 14px;margin-top:12px}
.card h3{margin:0 0 8px;font-size:15px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.tables{display:grid;grid-template-columns:minmax(350px,1fr) minmax(0,2.3fr);gap:18px;margin-top:8px}
.tables>div{min-width:0;overflow-x:auto}
.small{font-size:11.5px}
td.num{white-space:nowrap}
@media (max-width:1100px){.tables{grid-template-columns:1fr}}
.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
.badge{display:inline-block;padding:1px 9px;border-radius:11px;font-size:11.5px;font-weight:600;
 border:1px solid transparent;white-space:nowrap}
.b-good{background:#dcfce7;color:#166534;border-color:#bbf7d0}
.b-bad{background:#fee2e2;color:#991b1b;border-color:#fecaca}
.b-warn{background:#fef3c7;color:#92400e;border-color:#fde68a}
.b-info{background:#dbeafe;color:#1e40af;border-color:#bfdbfe}
.b-mute{background:#f1f5f9;color:#475569;border-color:#e2e8f0}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th{text-align:left;color:#64748b;font-weight:600;border-bottom:1px solid #e2e8f0;padding:5px 8px;white-space:nowrap}
td{border-bottom:1px solid #f1f5f9;padding:5px 8px;vertical-align:middle}
td.nw{white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.champ td{background:#f0fdf4}
.nodata{color:#64748b;background:repeating-linear-gradient(45deg,#f8fafc,#f8fafc 10px,#f1f5f9 10px,#f1f5f9 20px);
 border:1px dashed #cbd5e1;border-radius:10px;padding:22px;text-align:center}
.nodata b{display:block;color:#334155;font-size:14px;margin-bottom:4px}
.err{color:#991b1b}
.muted{color:#64748b}
footer{color:#94a3b8;font-size:12px;text-align:center;padding:10px}
code{background:#f1f5f9;padding:1px 5px;border-radius:4px;font-size:12px}
"""


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge b-{kind}">{escape(text)}</span>'


def _no_data(section: Mapping[str, Any], what: str) -> str:
    status = section.get("status", "empty")
    msg = section.get("message") or "no data"
    cls = ' class="err"' if status == "error" else ""
    head = "no data" if status != "error" else "source failed"
    return (
        f'<div class="nodata" data-status="{escape(status)}"><b>{escape(head)}: {escape(what)}</b>'
        f"<span{cls}>{escape(str(msg))}</span></div>"
    )


def _pct(value: Any, digits: int = 2, signed: bool = True) -> str:
    try:
        v = float(value) * 100
    except (TypeError, ValueError):
        return "–"
    return f"{v:+.{digits}f}%" if signed else f"{v:.{digits}f}%"


def _interval(lo: Any, hi: Any) -> str:
    if lo is None or hi is None:
        return "–"
    return f"{_pct(lo)[:-1]} … {_pct(hi)}"


# ---------------------------------------------------------------------------------------------------
# Sections


def _verdict_kind(verdict: str) -> str:
    if verdict in ("win", "better than the champion"):  # split / shadow wording
        return "good"
    if verdict in ("loss", "worse than the champion") or verdict.startswith(("invalid", "guardrail")):
        return "bad"
    return "warn" if verdict == "keep running" else "mute"


def _row_color(row: Mapping[str, Any]) -> str:
    """Green = significant improvement, red = significant harm, blue = significant with unknown
    direction (the report does not say which way is better), grey = not significant."""
    if row.get("guardrail") == "fail":
        return BAD
    if not row.get("sequential_significant") and not row.get("significant"):
        return "#64748b"
    better = row.get("higher_is_better")
    if better is None:
        return NEUTRAL
    rel = row.get("relative") or 0
    return GOOD if (rel > 0) == bool(better) else BAD


def render_experiments(section: Mapping[str, Any]) -> str:
    if section.get("status") != "ok":
        return _no_data(section, "experiments")
    out = []
    for exp in section["experiments"]:
        srm = exp["srm"]
        if srm.get("p_value") is None and srm.get("note"):  # shadow mode: no split, nothing to check
            srm_badge = _badge("no split: SRM n/a", "mute")
        elif srm.get("flagged"):
            srm_badge = _badge(f"SRM flagged (p={fmt(srm.get('p_value'), 2)})", "bad")
        else:
            srm_badge = _badge(f"SRM ok (p={fmt(srm.get('p_value'), 2)})", "good")
        verdicts = " ".join(
            _badge(f"{arm}: {v}", _verdict_kind(str(v))) for arm, v in (exp.get("verdict") or {}).items()
        )
        mode = _badge(exp["mode"], "info") if exp.get("mode") else ""
        system = _badge(exp["system"], "mute") if exp.get("system") else ""
        rows = exp["rows"]
        chart_rows = [
            {
                "label": f"{r['metric']} · {r['treatment']}" if len(exp["arms"]) > 2 else str(r["metric"]),
                "estimate": r["relative"],
                "low": r["relative_low"],
                "high": r["relative_high"],
                "seq_low": r["relative_cs_low"],
                "seq_high": r["relative_cs_high"],
                "color": _row_color(r),
            }
            for r in rows
        ]
        forest = interval_chart(chart_rows, title="relative lift vs control") if chart_rows else ""
        looks = exp.get("looks") or []
        seq = ""
        if looks:
            seq = band_chart(
                [lk["n"] for lk in looks],
                [lk["relative"] for lk in looks],
                [lk["cs_low"] for lk in looks],
                [lk["cs_high"] for lk in looks],
                title=f"sequential boundary: {exp.get('primary_metric')} ({looks[0].get('treatment')}) by look",
            )
        counts = srm.get("counts") or []
        expected = srm.get("expected") or []
        arm_rows = "".join(
            f"<tr><td><b>{escape(str(a.get('name')))}</b>{' <span class=muted>(control)</span>' if i == 0 else ''}"
            f"<div class='muted small'>{escape(_changes(a))}</div></td>"
            f'<td class="num">{fmt(a.get("weight"))}</td>'
            f'<td class="num">{fmt(counts[i]) if i < len(counts) else "–"}</td>'
            f'<td class="num">{fmt(expected[i], 5) if i < len(expected) else "–"}</td></tr>'
            for i, a in enumerate(exp.get("arms") or [])
        )
        arms_table = (
            '<table class="arms"><tr><th>arm · what it changes</th><th class="num">weight</th>'
            f'<th class="num">exposed</th><th class="num">expected</th></tr>{arm_rows}</table>'
        )
        metric_rows = "".join(
            f"<tr><td class=nw>{escape(str(r['metric']))}{' ★' if r['primary'] else ''}"
            f"{'<br>' + _badge('guardrail ' + r['guardrail'], 'good' if r['guardrail'] == 'pass' else 'bad' if r['guardrail'] == 'fail' else 'warn') if r.get('guardrail') else ''}</td>"
            f"<td>{escape(str(r['treatment']))}</td>"
            f'<td class="num">{fmt(r["mean_control"], 4)}</td><td class="num">{fmt(r["mean_treatment"], 4)}</td>'
            f'<td class="num" style="color:{_row_color(r)};font-weight:600">{_pct(r["relative"])}</td>'
            f'<td class="num">{_interval(r["relative_low"], r["relative_high"])}</td>'
            f'<td class="num">{_interval(r["relative_cs_low"], r["relative_cs_high"])}</td>'
            f'<td class="num">{fmt(r["p_value"], 2)}</td>'
            f'<td class="num">{_pct(r["variance_reduction"], 0, signed=False) if r.get("variance_reduction") else "–"}</td></tr>'
            for r in rows
        )
        metrics_table = (
            '<table class="metrics"><tr><th>metric</th><th>arm</th><th class="num">control</th>'
            '<th class="num">treatment</th><th class="num">lift</th><th class="num">95% CI</th>'
            '<th class="num">always-valid</th><th class="num">p</th><th class="num" title="variance cut by CUPED">CUPED</th></tr>'
            f"{metric_rows}</table>"
        )
        out.append(
            f'<div class="card experiment" data-experiment="{escape(str(exp["name"]))}">'
            f"<h3>{escape(str(exp['name']))} {system} {mode} {srm_badge} {verdicts}</h3>"
            f'<div class="row"><div>{forest}</div><div>{seq}</div></div>'
            f'<div class="tables"><div>{arms_table}</div><div>{metrics_table}</div></div></div>'
        )
    return "".join(out)


def _changes(arm: Mapping[str, Any]) -> str:
    parts = [f"alias {arm['alias']}"] if arm.get("alias") else []
    parts += [f"{k}={v}" for k, v in dict(arm.get("params") or {}).items()]
    return ", ".join(parts) or "–"


def render_latency(section: Mapping[str, Any]) -> str:
    if section.get("status") != "ok":
        return _no_data(section, "stage latency")
    out = []
    for system, rows in section["systems"].items():
        labels = [r["stage"] for r in rows]
        chart = bar_chart(
            labels,
            {
                "p50": [r.get("p50_ms") for r in rows],
                "p95": [r.get("p95_ms") for r in rows],
                "p99": [r.get("p99_ms") for r in rows],
            },
            unit=" ms",
            width=620,
            colors=("#93c5fd", "#3b82f6", "#1e3a8a"),
            title=system,
            log_hint=True,
        )
        counts = ", ".join(f"{r['stage']} {fmt(r.get('count'))}" for r in rows)
        src = sorted({str(r.get("source", "")) for r in rows})
        out.append(
            f'<div class="card latency" data-system="{escape(system)}">{chart}'
            f'<div class="muted" style="font-size:12px">samples: {escape(counts)} · from '
            f"{escape(', '.join(src))}</div></div>"
        )
    errors = section.get("errors") or []
    if errors:
        out.append(
            '<div class="err" style="font-size:12px">' + "<br>".join(escape(e) for e in errors) + "</div>"
        )
    return "".join(out)


def render_drift(section: Mapping[str, Any]) -> str:
    if section.get("status") != "ok":
        return _no_data(section, "feature drift")
    out = []
    band_kind = {"stable": "good", "moderate": "warn", "significant": "bad"}
    for rep in section["reports"]:
        s = rep.get("summary") or {}
        head = (
            f"<h3>{escape(str(rep['label']))} "
            f"{_badge(str(s.get('stable', 0)) + ' stable', 'good')} "
            f"{_badge(str(s.get('moderate', 0)) + ' moderate', 'warn')} "
            f"{_badge(str(s.get('significant', 0)) + ' significant', 'bad')} "
            f"<span class=muted style='font-weight:400;font-size:12px'>reference n={fmt(rep.get('n_reference'))}"
            f" · current n={fmt(rep.get('n_current'))}</span></h3>"
        )
        body = "".join(
            f'<tr data-feature="{escape(str(f["feature"]))}"><td>{escape(str(f["feature"]))}</td>'
            f'<td class="muted">{escape(str(f.get("kind") or ""))}</td>'
            f'<td class="num psi" style="background:{heat_color(f.get("psi"))};font-weight:600">{fmt(f.get("psi"), 3)}</td>'
            f"<td>{_badge(str(f.get('band')), band_kind.get(str(f.get('band')), 'mute'))}</td>"
            f'<td class="num">{fmt(f.get("ks_statistic"), 3)}</td><td class="num">{fmt(f.get("ks_pvalue"), 2)}</td>'
            f'<td class="num">{_pct(f.get("null_rate_reference"), 1, False)} → {_pct(f.get("null_rate_current"), 1, False)}</td>'
            f"<td>{histogram_pair(f.get('bins_reference') or [], f.get('bins_current') or [])}</td></tr>"
            for f in rep["features"]
        )
        windows = "".join(
            f"<p class=muted style='margin:2px 0'>{name}: {escape(str(rep[name]))}</p>"
            for name in ("reference", "current")
            if rep.get(name)
        )
        head += windows + _performance_table(rep.get("performance") or [])
        out.append(
            f'<div class="card drift">{head}<table class="drift-table"><tr><th>feature</th><th>kind</th>'
            '<th class="num">PSI</th><th>band</th><th class="num">KS</th><th class="num">KS p</th>'
            '<th class="num">nulls ref → cur</th><th>bins: <span style="color:#94a3b8">■ reference</span> '
            f'<span style="color:#2563eb">■ current</span></th></tr>{body}</table></div>'
        )
    return "".join(out)


def _performance_table(rows: list[Mapping[str, Any]]) -> str:
    """Performance on labels known N days after scoring: how much of the truth had arrived, and what it said."""
    if not rows:
        return ""
    heads = ("labels known after", "frauds known", "AUC", "AP", "precision @ block", "recall @ block",
             "share of final frauds")  # fmt: skip
    body = "".join(
        "<tr>"
        + f"<td>{escape(str(r.get('age_days')))}{'' if r.get('age_days') == 'final' else ' d'}</td>"
        + "".join(
            f'<td class="num">{fmt(r.get(k), 3)}</td>'
            for k in (
                "frauds_known",
                "auc_roc",
                "average_precision",
                "precision_at_block",
                "recall_at_block",
                "share_of_final_frauds",
            )  # fmt: skip
        )
        + "</tr>"
        for r in rows
    )
    head = "".join(f'<th class="{"num" if i else ""}">{h}</th>' for i, h in enumerate(heads))
    return (
        "<h4 style='margin:8px 0 4px'>performance on labels as they mature</h4>"
        f'<table class="performance-table"><tr>{head}</tr>{body}</table>'
    )


def render_review(section: Mapping[str, Any]) -> str:
    if section.get("status") != "ok":
        return _no_data(section, "fraud review queue")
    counts = section["counts"]
    chart = bar_chart(
        list(counts), {"cases": list(counts.values())}, width=520, colors=(NEUTRAL,), title="cases by status"
    )
    outcomes = section.get("outcomes") or {}
    outcome_chart = ""
    if outcomes:
        outcome_chart = bar_chart(
            list(outcomes),
            {"resolved": list(outcomes.values())},
            width=520,
            colors=("#9333ea",),
            title="review outcomes",
        )
    top = section.get("top_open") or []
    rows = "".join(
        f"<tr><td>{escape(str(c.get('tx_id')))}</td><td class='num'>{fmt(c.get('probability'), 3)}</td>"
        f"<td class='num'>{fmt(c.get('amount'), 6)}</td><td class='num'>{fmt(c.get('priority'), 4)}</td>"
        f"<td>{escape(', '.join(map(str, c.get('reasons') or [])))}</td></tr>"
        for c in top
    )
    table = (
        '<table><tr><th>open case</th><th class="num">p(fraud)</th><th class="num">amount</th>'
        f'<th class="num">priority</th><th>reasons</th></tr>{rows}</table>'
        if rows
        else ""
    )
    return f'<div class="card review">{chart}{outcome_chart}{table}</div>'


def _metric_keys(versions: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for v in versions:
        for k, val in (v.get("metrics") or {}).items():
            if isinstance(val, int | float) and not isinstance(val, bool) and k not in keys:
                keys.append(k)
    return keys


def render_registry(section: Mapping[str, Any]) -> str:
    if section.get("status") != "ok":
        return _no_data(section, "model registry")
    out = []
    for model in section["models"]:
        versions = model["versions"]
        keys = _metric_keys(versions)
        aliases = " ".join(
            _badge(f"{a} → v{v}", "good" if a == "champion" else "info")
            for a, v in sorted(model["aliases"].items())
        ) or _badge("no alias", "mute")
        head_cells = "".join(f'<th class="num">{escape(k)}</th>' for k in keys[:6])
        body = "".join(
            f'<tr class="{"champ" if "champion" in v["aliases"] else ""}"><td>v{v["version"]}</td>'
            f"<td>{' '.join(_badge(a, 'good' if a == 'champion' else 'info') for a in v['aliases'])}</td>"
            f"<td class='muted nw'>{escape(v['created_at'])}</td>"
            f"<td class='muted'>{'v' + str(v['parent']) if v.get('parent') else '–'}</td>"
            f"<td class='muted'><code>{escape(v['data_fingerprint'])}</code></td>"
            + "".join(f'<td class="num">{fmt((v.get("metrics") or {}).get(k), 4)}</td>' for k in keys[:6])
            + "</tr>"
            for v in reversed(versions)
        )
        table = (
            "<table><tr><th>version</th><th>aliases</th><th>created (UTC)</th><th>parent</th><th>data</th>"
            f"{head_cells}</tr>{body}</table>"
        )
        charts = ""
        for i, k in enumerate(keys[:2]):
            labels = [f"v{v['version']}" + (" ★" if "champion" in v["aliases"] else "") for v in versions]
            charts += bar_chart(
                labels,
                {k: [(v.get("metrics") or {}).get(k) for v in versions]},
                width=330,
                colors=(PALETTE[i + 2],),
                title=k,
                bar_height=16,
            )
        out.append(
            f'<div class="card model" data-model="{escape(model["name"])}">'
            f"<h3>{escape(model['name'])} {aliases} <span class=muted style='font-weight:400;font-size:12px'>"
            f"{len(versions)} version{'s' if len(versions) != 1 else ''}</span></h3>"
            f'<div class="row"><div style="flex:3 1 600px">{table}</div><div class="row" style="flex:2 1 340px">'
            f"{charts}</div></div></div>"
        )
    return "".join(out)


# ---------------------------------------------------------------------------------------------------
# Page


def _kpis(snapshot: Mapping[str, Any]) -> str:
    reg, exps = snapshot["registry"], snapshot["experiments"]
    lat, drift, review = snapshot["latency"], snapshot["drift"], snapshot["review"]
    items = []
    n_models = len(reg.get("models", [])) if reg.get("status") == "ok" else 0
    n_versions = sum(len(m["versions"]) for m in reg.get("models", [])) if n_models else 0
    items.append((f"{n_models}", f"models · {n_versions} versions"))
    if exps.get("status") == "ok":
        ex = exps["experiments"]
        flagged = sum(1 for e in ex if e["srm"].get("flagged"))
        wins = sum(
            1
            for e in ex
            for v in (e.get("verdict") or {}).values()
            if v in ("win", "better than the champion")
        )
        items.append((f"{len(ex)}", f"experiments · {wins} win · {flagged} SRM"))
    else:
        items.append(("–", "experiments"))
    if lat.get("status") == "ok":
        worst = max((r.get("p99_ms") or 0 for rows in lat["systems"].values() for r in rows), default=0)
        items.append((f"{fmt(worst, 3)} ms", "worst stage p99"))
    else:
        items.append(("–", "stage latency"))
    if drift.get("status") == "ok":
        n_drift = sum(len((r.get("summary") or {}).get("drifted", [])) for r in drift["reports"])
        items.append((f"{n_drift}", "features drifting (PSI ≥ 0.1)"))
    else:
        items.append(("–", "feature drift"))
    if review.get("status") == "ok":
        items.append((f"{review['counts'].get('open', 0)}", "open review cases"))
    else:
        items.append(("–", "review queue"))
    return (
        '<div class="kpis">'
        + "".join(
            f'<div class="kpi"><div class="v">{escape(v)}</div><div class="l">{escape(lab)}</div></div>'
            for v, lab in items
        )
        + "</div>"
    )


def render_page(snapshot: Mapping[str, Any]) -> str:
    """The whole page as one string (UTF-8, no external resources)."""
    title = escape(str(snapshot.get("title", "mlsd dashboard")))
    notes = "".join(
        f'<div class="muted" style="margin-bottom:10px">{escape(n)}</div>' for n in snapshot.get("notes", [])
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{CSS}</style></head>
<body>
<header><h1>{title}</h1><span class="when">snapshot {escape(str(snapshot.get("generated_at", "")))}</span>
<nav><a href="#experiments">experiments</a><a href="#latency">latency</a><a href="#drift">drift</a>
<a href="#review">review queue</a><a href="#registry">registry</a></nav></header>
<main>
{notes}{_kpis(snapshot)}
<section id="experiments"><h2>Experiments</h2>
<div class="sub">Relative lift of each treatment over the control with its 95% confidence interval (thick) and
the always-valid confidence sequence (thin) — the sequential boundary: a result counts once the sequence
leaves 0. Sample-ratio mismatch is checked against the configured weights (flagged at p &lt; 0.001).</div>
{render_experiments(snapshot["experiments"])}</section>
<div class="grid2">
<section id="latency"><h2>Latency per stage</h2>
<div class="sub">p50 / p95 / p99 per pipeline stage, from the <code>mlsd_stage_seconds</code> histograms
(bucket-interpolated like Prometheus' <code>histogram_quantile</code>) or bench timings.</div>
{render_latency(snapshot["latency"])}</section>
<section id="review"><h2>Fraud review queue</h2>
<div class="sub">Cases the decision engine sent to manual review, by status; open cases by priority
(probability × amount).</div>
{render_review(snapshot["review"])}</section>
</div>
<section id="drift"><h2>Drift per feature</h2>
<div class="sub">Population stability index against the training reference (&lt; 0.1 stable, 0.1–0.25 moderate,
&gt; 0.25 significant), two-sample KS for numeric features, and the binned shares.</div>
{render_drift(snapshot["drift"])}</section>
<section id="registry"><h2>Model registry</h2>
<div class="sub">Every registered version with its offline metrics; the champion row is highlighted.</div>
{render_registry(snapshot["registry"])}</section>
</main>
<footer>mlsd · served locally, no external resources · snapshot built in {fmt(snapshot.get("collect_ms"))} ms</footer>
</body></html>
"""
