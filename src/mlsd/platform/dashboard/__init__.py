"""The mlsd dashboard: one local page over the registry, experiments, latency, drift and review queue.

Data flows through four small modules:

* :mod:`~mlsd.platform.dashboard.collect` -- :class:`Sources` -> :func:`collect` -> a plain JSON-ready
  *snapshot* dict (each section ``ok`` / ``empty`` / ``error``, so a missing source is a "no data" panel);
* :mod:`~mlsd.platform.dashboard.charts` -- inline SVG charts drawn in Python (no JavaScript, no CDN);
* :mod:`~mlsd.platform.dashboard.render` -- snapshot -> one self-contained HTML page;
* :mod:`~mlsd.platform.dashboard.app` -- FastAPI (``/``, ``/api/snapshot``, ``/health``, ``/metrics``).

``cli`` adds ``mlsd dashboard``, ``demo`` generates demo sources, ``discover`` finds sources in a work
directory, ``browser`` drives headless Chromium for screenshots.
"""

from __future__ import annotations

from pathlib import Path

from mlsd.platform.dashboard.collect import Sources, collect
from mlsd.platform.dashboard.render import render_page


def write_html(sources: Sources, path: str | Path) -> Path:
    """Write the dashboard for ``sources`` as one static HTML file (what ``mlsd demo`` ends with)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(collect(sources)), encoding="utf-8")
    return path.resolve()


__all__ = ["Sources", "collect", "render_page", "write_html"]
