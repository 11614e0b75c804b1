"""Dashboard without a browser: charts, each collector on real sources, the page, the app and the CLI.

The browser test (real headless Chromium against a real uvicorn server) is test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram

from mlsd.cli import main as mlsd_main
from mlsd.platform.dashboard import Sources, collect, render_page, write_html
from mlsd.platform.dashboard.app import create_dashboard_app
from mlsd.platform.dashboard.charts import bar_chart, fmt, heat_color, histogram_pair, interval_chart
from mlsd.platform.dashboard.collect import (
    collect_latency,
    histogram_quantile,
    stage_rows_from_timings,
    summarize_experiment,
)
from mlsd.platform.dashboard.discover import discover
from mlsd.platform.experiments import Arm, Experiment, MetricSpec, MetricStats, analyze_experiment
from mlsd.platform.monitoring import DriftMonitor
from mlsd.platform.registry import ModelRegistry

SVG_NS = "{http://www.w3.org/2000/svg}"


# ---------------------------------------------------------------------------------------------------
# Real sources, tiny


def make_registry(root) -> ModelRegistry:
    reg = ModelRegistry(root / "registry")
    for v, auc in ((1, 0.91), (2, 0.93)):
        art = root / f"art{v}"
        art.mkdir()
        (art / "model.txt").write_text(f"model {v}")
        reg.register(
            "fraud-model",
            art,
            params={"v": v},
            metrics={"auc": auc, "ap": auc - 0.2},
            data_fingerprint=f"fp{v}",
            parent=v - 1 or None,
        )
    reg.promote("fraud-model", 1)
    reg.promote("fraud-model", 2, "challenger")
    return reg


def make_experiment(effect: float = 0.5, n: int = 4000, seed: int = 0):
    """A two-arm experiment with a planted effect on a mean metric; returns (Experiment, stats)."""
    rng = np.random.default_rng(seed)
    exp = Experiment(
        "ranker-test",
        (Arm("control", 1), Arm("treatment", 1, alias="challenger")),
        system="recsys",
        metrics=(MetricSpec("watch"),),
    )
    arm = np.arange(n) % 2
    y = rng.normal(10.0, 2.0, n) + effect * arm
    return exp, {"watch": MetricStats.from_arrays("watch", exp.arm_names, arm, {"y": y})}


def make_drift(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({"amount": rng.normal(0, 1, 3000), "hour": rng.integers(0, 24, 3000).astype(float)})
    cur = pd.DataFrame({"amount": rng.normal(1.0, 1, 3000), "hour": rng.integers(0, 24, 3000).astype(float)})
    return DriftMonitor(bins=10).fit(ref).report(cur)


# ---------------------------------------------------------------------------------------------------
# Charts


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML or this raises


def test_bar_chart_draws_one_bar_per_present_value_and_escapes_labels():
    svg = bar_chart(
        ["<script>x</script>", "b", "c"], {"p50": [1.0, None, 3.0], "p99": [2.0, 4.0, float("nan")]}
    )
    root = _parse(svg)
    bars = [r for r in root.iter(f"{SVG_NS}rect") if r.get("class") == "bar"]
    assert len(bars) == 4  # 6 slots, 2 missing
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    widths = {float(b.get("width")) for b in bars}
    assert max(widths) > 3 * min(widths)  # 4.0 vs 1.0 on a linear axis


def test_interval_chart_places_the_estimate_between_its_bounds():
    rows = [{"label": "m", "estimate": 0.05, "low": 0.01, "high": 0.09, "seq_low": -0.01, "seq_high": 0.11}]
    root = _parse(interval_chart(rows))
    point = next(c for c in root.iter(f"{SVG_NS}circle") if c.get("class") == "point")
    ci = next(line for line in root.iter(f"{SVG_NS}line") if line.get("class") == "ci")
    cs = next(line for line in root.iter(f"{SVG_NS}line") if line.get("class") == "cs")
    x = float(point.get("cx"))
    assert float(cs.get("x1")) < float(ci.get("x1")) < x < float(ci.get("x2")) < float(cs.get("x2"))


def test_heat_color_follows_the_psi_bands_and_formatting():
    stable, moderate, significant = heat_color(0.02), heat_color(0.18), heat_color(0.6)
    green = int(stable[3:5], 16)
    assert green > int(stable[1:3], 16) - 40  # greenish/light
    assert int(significant[3:5], 16) < int(moderate[3:5], 16) < green  # less green as PSI grows
    assert heat_color(None) == "#f1f5f9"
    assert fmt(12345.6) == "12,346" and fmt(0.01234) == "0.0123" and fmt(None) == "–"
    _parse(histogram_pair([0.5, 0.5], [0.2, 0.8]))


# ---------------------------------------------------------------------------------------------------
# Collectors


def test_histogram_quantile_known_answers():
    buckets = [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_latency_from_a_prometheus_registry_and_from_timings():
    reg = CollectorRegistry()
    h = Histogram("mlsd_stage_seconds", "t", ("system", "stage"), registry=reg, buckets=(0.001, 0.002, 0.004))
    for _ in range(10):
        h.labels("fraud", "score").observe(0.0015)  # all in (1 ms, 2 ms]
    h.labels("fraud", "features").observe(0.003)
    out = collect_latency([], [], reg, use_process_metrics=False)
    rows = {r["stage"]: r for r in out["systems"]["fraud"]}
    assert rows["score"]["count"] == 10
    assert rows["score"]["mean_ms"] == pytest.approx(1.5)
    assert 1.0 <= rows["score"]["p50_ms"] <= 2.0 and rows["score"]["p99_ms"] <= 2.0
    assert rows["features"]["count"] == 1
    timings = stage_rows_from_timings([{"timings_ms": {"rank": ms}} for ms in range(1, 101)], "t", "search")
    rank = timings["search"][0]
    assert (
        rank["count"] == 100
        and rank["p50_ms"] == pytest.approx(50.5)
        and rank["p99_ms"] == pytest.approx(99.01)
    )
    bench = stage_rows_from_timings({"system": "recsys", "stages": {"rank": {"p50_ms": 3, "p99_ms": 9}}}, "b")
    assert bench["recsys"][0]["p99_ms"] == 9


def test_snapshot_from_real_sources(tmp_path):
    from mlsd.fraud.review import SQLReviewQueue

    reg = make_registry(tmp_path)
    exp, stats = make_experiment()
    queue = SQLReviewQueue.sqlite(tmp_path / "fraud.sqlite")
    queue.enqueue([{"tx_id": f"t{i}", "probability": 0.1 * i, "amount": 10.0} for i in range(1, 6)], now=0)
    claimed = queue.claim("ann", limit=2, now=1)
    queue.resolve(claimed[0].tx_id, "ann", "fraud", now=2)
    snap = collect(
        Sources(
            registries=[reg],
            experiments=[(exp, stats)],
            drift={"fraud": make_drift()},
            review=queue,
            use_process_metrics=False,
        )
    )
    json.dumps(snap, allow_nan=False)  # strict JSON
    model = snap["registry"]["models"][0]
    assert model["name"] == "fraud-model" and model["aliases"] == {"champion": 1, "challenger": 2}
    assert [v["aliases"] for v in model["versions"]] == [["champion"], ["challenger"]]
    assert model["versions"][1]["metrics"]["auc"] == 0.93
    row = snap["experiments"]["experiments"][0]["rows"][0]
    truth = analyze_experiment(exp, stats)["metrics"]["watch"][0]
    assert row["relative"] == pytest.approx(truth["relative"]) and row["relative_low"] > 0  # planted +5%
    assert snap["experiments"]["experiments"][0]["srm"]["flagged"] is False
    assert snap["experiments"]["experiments"][0]["verdict"] == {"treatment": "win"}
    feats = snap["drift"]["reports"][0]["features"]
    assert feats[0]["feature"] == "amount" and feats[0]["band"] == "significant"
    assert feats[1]["band"] == "stable"
    assert snap["review"]["counts"] == {"open": 3, "claimed": 1, "resolved": 1}
    assert snap["review"]["outcomes"] == {"fraud": 1}
    assert snap["latency"]["status"] == "empty"


def test_planted_srm_and_direction_reach_the_page():
    exp, stats = make_experiment(effect=-0.5)
    report = analyze_experiment(exp, stats, counts=[2200, 1800])  # planted SRM
    summary = summarize_experiment(report)
    assert summary["srm"]["flagged"] is True
    html = render_page(collect(Sources(experiments=[report], use_process_metrics=False)))
    assert "SRM flagged" in html and "invalid (SRM)" in html


def test_missing_and_broken_sources_give_no_data_panels(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    snap = collect(
        Sources(registries=[tmp_path / "nowhere"], experiments=[bad], drift={}, use_process_metrics=False)
    )
    assert snap["registry"]["status"] == "error" and "registry.sqlite" in snap["registry"]["message"]
    assert snap["experiments"]["status"] == "error" and "bad.json" in snap["experiments"]["message"]
    assert snap["drift"]["status"] == snap["review"]["status"] == snap["latency"]["status"] == "empty"
    assert not (tmp_path / "nowhere").exists()  # reading never creates a registry
    html = render_page(snap)
    assert html.count('class="nodata"') == 5
    assert "source failed" in html


def test_page_is_self_contained(tmp_path):
    exp, stats = make_experiment()
    html = render_page(
        collect(
            Sources(
                registries=[make_registry(tmp_path)],
                experiments=[(exp, stats)],
                drift={"d": make_drift()},
                use_process_metrics=False,
            )
        )
    )
    assert "<script" not in html and "<link" not in html and "@import" not in html
    urls = set(re.findall(r"https?://[^\s\"')]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched
    kinds = set(re.findall(r'data-chart="(\w+)"', html))
    assert {"bar", "interval", "histogram"} <= kinds
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        _parse(svg)


# ---------------------------------------------------------------------------------------------------
# App, CLI, discovery, demo


def test_app_serves_page_snapshot_and_health(tmp_path):
    exp, stats = make_experiment()
    app = create_dashboard_app(Sources(registries=[make_registry(tmp_path)], experiments=[(exp, stats)]))
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-chart="interval"' in page.text
    snap = client.get("/api/snapshot").json()
    assert snap["registry"]["models"][0]["name"] == "fraud-model"
    # the page timed itself into the process' stage histograms, which the next snapshot shows
    stages = {r["stage"] for r in snap["latency"]["systems"]["dashboard"]}
    assert {"collect", "render"} <= stages
    assert client.get("/health").json()["sources"] == ["registry", "experiments", "latency"]
    assert client.get("/nope").status_code == 404


def test_cli_json_html_and_bad_input(tmp_path, capsys):
    reg = make_registry(tmp_path)
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps(make_drift()))
    assert mlsd_main(["dashboard", "--registry", str(reg.root), "--drift", f"fraud={drift}", "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["drift"]["reports"][0]["label"] == "fraud" and snap["registry"]["status"] == "ok"
    out = tmp_path / "page" / "d.html"
    assert mlsd_main(["dashboard", "--registry", str(reg.root), "--html", str(out)]) == 0
    assert "fraud-model" in out.read_text()
    assert mlsd_main(["dashboard", "--port", "70000", "--json"]) == 2
    assert "--port" in capsys.readouterr().err
    assert mlsd_main(["dashboard", "--size", "big", "--json"]) == 2


def test_discover_finds_sources_by_content(tmp_path):
    make_registry(tmp_path / "fraud")
    exp, stats = make_experiment()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "out.json").write_text(json.dumps({"analysis": analyze_experiment(exp, stats)}))
    (tmp_path / "monitor.json").write_text(json.dumps(make_drift()))
    (tmp_path / "bench.json").write_text(json.dumps({"system": "search", "stages": {"rank": [1, 2, 3]}}))
    (tmp_path / "other.json").write_text("[1, 2]")
    from mlsd.fraud.review import SQLReviewQueue

    SQLReviewQueue.sqlite(tmp_path / "fraud" / "fraud.sqlite").enqueue(
        [{"tx_id": "t1", "probability": 0.9, "amount": 5.0}], now=0
    )
    sources = discover(tmp_path)
    sources.use_process_metrics = False
    snap = collect(sources)
    assert [m["name"] for m in snap["registry"]["models"]] == ["fraud-model"]
    assert snap["experiments"]["experiments"][0]["name"] == "ranker-test"
    assert snap["drift"]["reports"][0]["label"] == "monitor"
    assert snap["latency"]["systems"]["search"][0]["count"] == 3
    assert snap["review"]["counts"]["open"] == 1


def test_demo_data_fills_every_panel(tmp_path):
    from mlsd.platform.dashboard.demo import build_demo

    sources = build_demo(tmp_path, units=2000)
    snap = collect(sources)
    assert {
        k: snap[k]["status"] for k in ("registry", "experiments", "latency", "drift", "review")
    } == dict.fromkeys(("registry", "experiments", "latency", "drift", "review"), "ok")
    exps = {e["name"]: e for e in snap["experiments"]["experiments"]}
    assert exps["fraud-challenger-shadow"]["srm"]["flagged"] is True  # the planted logging bug
    assert len(exps["recsys-ranker-challenger"]["looks"]) == 8
    path = write_html(sources, tmp_path / "demo.html")
    assert 'data-chart="band"' in path.read_text()


def test_demo_data_is_marked_synthetic_next_to_every_made_up_figure(tmp_path):
    from mlsd.platform.dashboard.demo import build_demo

    snap = collect(build_demo(tmp_path, units=2000))
    json.dumps(snap, allow_nan=False)
    assert snap["synthetic"] is True
    models = snap["registry"]["models"]
    assert models and all(m["synthetic"] and all(v["synthetic"] for v in m["versions"]) for m in models)
    assert all(e["synthetic"] for e in snap["experiments"]["experiments"])
    assert all(r["synthetic"] for r in snap["drift"]["reports"]) and snap["review"]["synthetic"] is True

    html = render_page(snap)
    badge = "synthetic demo data</span>"
    # every version row of the registry ends with the badge, next to its metrics
    for model in models:
        card = html.split(f'data-model="{model["name"]}"', 1)[1].split('<div class="card model"', 1)[0]
        rows = re.findall(r"<tr class=\"[a-z]*\"><td>v\d+</td>.*?</tr>", card)
        assert len(rows) == len(model["versions"]) and all(badge in row for row in rows)
    assert html.count(badge) >= sum(len(m["versions"]) for m in models) + len(
        snap["experiments"]["experiments"]
    )
    # reopening the demo's workdir as a real one keeps the marks (they live in the data)
    assert collect(discover(tmp_path))["synthetic"] is True


def test_a_real_workdir_page_carries_no_synthetic_mark(tmp_path):
    exp, stats = make_experiment()
    snap = collect(
        Sources(
            registries=[make_registry(tmp_path)], experiments=[(exp, stats)], drift={"fraud": make_drift()},
            use_process_metrics=False,
        )
    )  # fmt: skip
    assert snap["synthetic"] is False and not snap["registry"]["models"][0]["synthetic"]
    assert "synthetic demo data" not in render_page(snap)


def test_looks_from_the_experiment_client_become_the_sequential_chart():
    from mlsd.platform.experiments import ExperimentConfig, Layer
    from mlsd.platform.experiments.client import ExperimentClient

    exp, _ = make_experiment()
    client = ExperimentClient(ExperimentConfig(layers=(Layer("l", (exp,)),)), registry=False)
    ids = np.array([f"u{i}" for i in range(3000)])
    arms = client.assign(exp.name, ids)
    client.expose(exp.name, ids, arms, ts=1_000 + np.arange(3000))
    rng = np.random.default_rng(1)
    outcomes = pd.DataFrame({"unit": ids, "watch": rng.normal(10, 2, 3000) + 0.8 * (arms == 1)})
    report = client.analyze(exp.name, outcomes, looks=4)
    summary = summarize_experiment(report)
    assert [lk["n"] for lk in summary["looks"]] == [750, 1500, 2250, 3000]
    widths = [lk["cs_high"] - lk["cs_low"] for lk in summary["looks"]]
    assert widths == sorted(widths, reverse=True)  # the sequence narrows as units arrive
    assert summary["looks"][-1]["cs_low"] > 0  # the planted +8% is found
    assert 'data-chart="band"' in render_page(
        collect(Sources(experiments=[report], use_process_metrics=False))
    )


def test_wired_into_the_mlsd_cli(capsys):
    """The contract with mlsd.cli: ``mlsd dashboard`` -> add_commands; InputError -> exit 2."""
    from mlsd import cli

    assert cli.main(["dashboard", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) >= {
        "registry",
        "experiments",
        "latency",
        "drift",
        "review",
    }
    assert cli.main(["dashboard", "--review-sqlite", "/nonexistent/x.sqlite", "--json"]) == 2
    assert "--review-sqlite" in capsys.readouterr().err


def test_a_shadow_report_shows_no_split_instead_of_an_srm_p_value():
    from mlsd.platform.experiments import ExperimentClient, make_experiment

    config = make_experiment(
        "fraud",
        [Arm("champion", alias="champion"), Arm("challenger", alias="challenger")],
        [MetricSpec("fraud_loss", higher_is_better=False)],
        mode="shadow",
    )
    name = next(iter(config.experiments))
    client = ExperimentClient(config, registry=False)
    units = np.arange(400)
    client.expose(name, units, client.assign(name, units))
    loss = np.random.default_rng(0).exponential(10.0, 400)
    outcomes = pd.DataFrame({"unit": units, "fraud_loss@champion": loss, "fraud_loss@challenger": loss * 0.5})
    report = client.analyze(name, outcomes)
    assert report["verdict"] == {"challenger": "better than the champion"}
    snap = collect(Sources(experiments=[report], use_process_metrics=False))
    html = render_page(snap)
    assert "SRM n/a" in html and "SRM ok" not in html
    assert "1 win" in html  # a shadow arm that beats the champion counts as a win in the header


def test_fraud_performance_on_maturing_labels_reaches_the_page():
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"amount": rng.gamma(2, 30, 2000)})
    report = DriftMonitor().fit(ref).report(ref.sample(500, random_state=1))
    report["current"] = "served sample: 500 payments"
    report["performance"] = {
        "by_label_age": [
            {"age_days": 1, "frauds_known": 4, "auc_roc": 0.82, "average_precision": 0.38},
            {"age_days": "final", "frauds_known": 11, "auc_roc": 0.79, "average_precision": 0.20},
        ]
    }
    snap = collect(Sources(drift={"fraud": report}, use_process_metrics=False))
    (rep,) = snap["drift"]["reports"]
    assert [r["frauds_known"] for r in rep["performance"]] == [4, 11]
    html = render_page(snap)
    assert "performance on labels as they mature" in html and "served sample: 500 payments" in html


# -- issue 11: a review DSN's password is never printed -----------------------------------------------


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` in its user info (trust auth ignores it; it only has to not leak)."""
    from urllib.parse import urlparse

    parsed = urlparse(dsn)
    user = parsed.username or "postgres"
    return parsed._replace(netloc=f"{user}:{password}@{parsed.hostname}:{parsed.port or 5432}").geturl()


def test_serving_with_a_postgres_review_queue_prints_the_dsn_masked(postgres_dsn, monkeypatch, capsys):
    import mlsd.platform.serving

    served = []
    monkeypatch.setattr(mlsd.platform.serving, "serve", lambda app, **kw: served.append(app))
    import uuid

    import psycopg

    dsn = with_password(postgres_dsn, "hunter2-secret")
    schema = f"mlsd_dash_{uuid.uuid4().hex[:8]}"
    try:
        assert mlsd_main(["dashboard", "--review-postgres", dsn, "--review-schema", schema]) == 0
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    err = capsys.readouterr().err
    assert served and "hunter2-secret" not in err and ":***@" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--review-postgres", "postgresql://mlsd:hunter2-secret@127.0.0.1:1/fraud"],  # nothing listens
        ["--review-postgres", "postgresql://mlsd:hunter2-secret@127.0.0.1:notaport/fraud"],
        ["--review-sqlite", "x.sqlite", "--review-postgres", "postgresql://mlsd:hunter2-secret@h/db"],
        ["--review-postgres", "host=127.0.0.1 port=1 user=mlsd password=hunter2-secret dbname=fraud"],
    ],
)
def test_a_review_dsn_that_fails_is_an_error_naming_it_masked(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlsd_main(["dashboard", *argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert "hunter2-secret" not in captured.err + captured.out
    assert "--review-postgres" in captured.err and "***" in captured.err and "Traceback" not in captured.err


def test_review_postgres_with_something_that_is_not_a_dsn_creates_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlsd_main(["dashboard", "--review-postgres", "reviews.sqlite", "--json"]) == 2
    assert "not a PostgreSQL DSN" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
