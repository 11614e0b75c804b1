"""The dashboard service: ``/`` (the page), ``/api/snapshot`` (the same data as JSON), plus the platform's
``/health`` and ``/metrics`` from :func:`mlsd.platform.serving.create_app`.

Each request collects a fresh snapshot, so the page is live (reload to refresh): the registry and the
review queue are a few SQLite/PostgreSQL reads, the Prometheus registry is in memory. Experiment and
drift reports handed in as dicts are not recomputed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from mlsd.platform.dashboard.collect import Sources, collect
from mlsd.platform.dashboard.render import render_page
from mlsd.platform.serving import StageTimer, create_app


def create_dashboard_app(sources: Sources) -> FastAPI:
    """A FastAPI app serving the dashboard for ``sources`` (nothing it serves leaves this machine)."""

    def health() -> dict[str, Any]:
        return {"sources": _configured(sources)}

    app = create_app("dashboard", title="mlsd dashboard", health=health)
    app.state.sources = sources

    @app.get("/", response_class=HTMLResponse, tags=["dashboard"])
    def page() -> HTMLResponse:
        # The dashboard times itself like every service, so its own cost shows on its latency panel.
        timer = StageTimer("dashboard")
        with timer.stage("collect"):
            snap = collect(app.state.sources)
        with timer.stage("render"):
            html = render_page(snap)
        return HTMLResponse(html)

    @app.get("/api/snapshot", tags=["dashboard"])
    def snapshot() -> JSONResponse:
        return JSONResponse(collect(app.state.sources))

    return app


def _configured(sources: Sources) -> list[str]:
    out = []
    if sources.registries:
        out.append("registry")
    if sources.experiments:
        out.append("experiments")
    if sources.drift:
        out.append("drift")
    if (
        sources.timings
        or sources.metrics_urls
        or sources.use_process_metrics
        or sources.prometheus is not None
    ):
        out.append("latency")
    if sources.review is not None:
        out.append("review")
    return out
