"""The dashboard in a real browser: Debian's headless Chromium against a real uvicorn server on 127.0.0.1.

Sources are real objects (a ModelRegistry with two versions and aliases, an experiment analysed by
mlsd.platform.experiments with sequential looks, a DriftMonitor report, a SQLite review queue, stage
histograms in a Prometheus registry). Chromium dumps the DOM (the SVG charts must be there after
parsing) and takes a screenshot, whose pixels must show each chart's colours over the right area.

Without Chromium the test skips with the install command, except under MLSD_REQUIRE_SERVICES=1 (CI),
where it fails: CI must run it (scripts/install-browser.sh installs it).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Histogram

from mlsd.platform.dashboard import Sources
from mlsd.platform.dashboard.app import create_dashboard_app
from mlsd.platform.dashboard.browser import INSTALL_HINT, find_chromium, screenshot_and_dom
from mlsd.platform.dashboard.charts import heat_color
from mlsd.platform.experiments import Arm, Experiment, MetricSpec, MetricStats, analyze_experiment
from mlsd.platform.monitoring import DriftMonitor
from mlsd.platform.registry import ModelRegistry

pytestmark = pytest.mark.slow  # ~5-10 s: one Chromium launch, a uvicorn server


def _require_chromium() -> str:
    """Chromium's path; a FAILED test under MLSD_REQUIRE_SERVICES=1 when it is missing, else a skip."""
    path = find_chromium()
    if path is None:
        message = f"headless Chromium not found; {INSTALL_HINT}"
        if os.environ.get("MLSD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MLSD_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    return path


def _real_sources(root) -> Sources:
    from mlsd.fraud.review import SQLReviewQueue

    reg = ModelRegistry(root / "registry")
    for v in (1, 2):
        art = root / f"art{v}"
        art.mkdir()
        (art / "weights.bin").write_bytes(bytes([v]) * 64)
        reg.register(
            "recsys-ranker",
            art,
            params={"num_leaves": 31 * v},
            metrics={"ndcg@10": 0.30 + 0.02 * v, "recall@50": 0.22 + 0.01 * v},
            data_fingerprint=f"fp{v}",
            parent=v - 1 or None,
        )
    reg.promote("recsys-ranker", 1)
    reg.promote("recsys-ranker", 2, "challenger")

    rng = np.random.default_rng(3)
    exp = Experiment(
        "ranker-challenger",
        (Arm("champion", 1, alias="champion"), Arm("challenger", 1, alias="challenger")),
        system="recsys",
        metrics=(MetricSpec("watch_minutes"),),
    )
    n = 4000
    arm = np.arange(n) % 2
    y = rng.gamma(4.0, 10.0, n) * np.where(arm == 1, 1.06, 1.0)  # planted +6%
    looks = []
    for m in np.linspace(n / 4, n, 4).astype(int):
        stats = {
            "watch_minutes": MetricStats.from_arrays("watch_minutes", exp.arm_names, arm[:m], {"y": y[:m]})
        }
        looks.append(analyze_experiment(exp, stats, planned_n=n))
    report = {**looks[-1], "looks": looks}

    ref = pd.DataFrame({"amount": rng.lognormal(3, 1, 3000), "hour": rng.integers(0, 24, 3000).astype(float)})
    cur = pd.DataFrame(
        {"amount": rng.lognormal(3.8, 1, 3000), "hour": rng.integers(0, 24, 3000).astype(float)}
    )
    drift = DriftMonitor(bins=10).fit(ref).report(cur)

    prom = CollectorRegistry()
    hist = Histogram(
        "mlsd_stage_seconds",
        "stage time",
        ("system", "stage"),
        registry=prom,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
    )
    for stage, scale in (("candidates", 0.004), ("rank", 0.012), ("rerank", 0.001)):
        for v in rng.gamma(3.0, scale / 3.0, 200):
            hist.labels("recsys", stage).observe(float(v))

    queue = SQLReviewQueue.sqlite(root / "fraud.sqlite")
    queue.enqueue([{"tx_id": f"tx{i}", "probability": 0.5, "amount": 10.0 + i} for i in range(30)], now=0)
    for case in queue.claim("ann", limit=10, now=1)[:6]:
        queue.resolve(case.tx_id, "ann", "fraud" if case.amount > 30 else "legit", now=2)

    return Sources(
        registries=[reg],
        experiments=[report],
        drift={"fraud features": drift},
        prometheus=prom,
        review=queue,
        title="mlsd dashboard · browser test",
    )


@pytest.fixture
def server(tmp_path):
    """A real uvicorn server on a free 127.0.0.1 port, serving the dashboard over real sources."""
    import uvicorn

    sources = _real_sources(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_dashboard_app(sources), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", sources
    srv.should_exit = True
    thread.join(10)


def _count_near(pixels: np.ndarray, hex_color: str, tol: int = 8) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels[..., :3].astype(int) - rgb).max(axis=-1) <= tol).sum())


def test_dashboard_renders_charts_in_headless_chromium(server, tmp_path):
    from PIL import Image

    _require_chromium()
    url, sources = server
    png = tmp_path / "dashboard.png"
    dom = screenshot_and_dom(url, png, width=1400, height=2600)
    # The parsed DOM holds every chart as SVG (not text that failed to parse).
    kinds = re.findall(r'<svg[^>]*class="chart"[^>]*data-chart="(\w+)"', dom)
    assert kinds.count("interval") == 1 and kinds.count("band") == 1  # the experiment: lifts + looks
    assert kinds.count("histogram") == 2  # one per drift feature
    assert kinds.count("bar") >= 5  # latency, review status + outcomes, two registry metrics
    assert len(re.findall(r"<circle[^>]*class=\"point\"", dom)) == 1
    assert "ranker-challenger" in dom and "recsys-ranker" in dom and "SRM ok" in dom
    assert 'class="nodata"' not in dom  # every source produced data

    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (2600, 1400, 3)
    # Each chart's own colour covers a chart-sized area (the CSS uses none of these colours):
    p99_bars = _count_near(pixels, "#1e3a8a")  # latency p99 bars
    significant_ci = _count_near(pixels, "#16a34a")  # the winning lift's CI and the registry's metric bars
    sequence_band = _count_near(
        pixels, "#bcd9fd", tol=10
    )  # the confidence-sequence band (55% #93c5fd on white)
    review_bars = _count_near(pixels, "#2563eb")  # review-status bars, the estimate line
    psi_cell = _count_near(
        pixels, heat_color(sources.drift["fraud features"]["features"]["amount"]["psi"]), tol=3
    )
    assert p99_bars > 1500, p99_bars
    assert significant_ci > 1500, significant_ci
    assert sequence_band > 8000, sequence_band
    assert review_bars > 3000, review_bars
    assert psi_cell > 1500, psi_cell
    # And the page is not blank: a good share of the pixels is ink, not background.
    non_background = (np.abs(pixels.astype(int) - [241, 245, 249]).max(axis=-1) > 12) & (
        pixels.min(axis=-1) < 245
    )
    assert non_background.mean() > 0.03
