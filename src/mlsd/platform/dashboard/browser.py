"""Headless Chromium (Debian's ``chromium`` package) for screenshots and DOM dumps of the dashboard.

Plain command-line Chromium, no driver: ``--screenshot`` and ``--dump-dom`` are all the dashboard needs
(the page has no JavaScript to interact with). Every flag that would make Chromium reach the network
on its own (component updates, sync, QUIC, background networking) is off, and a throwaway profile
keeps runs independent. Install it with ``scripts/install-browser.sh``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = "install it with: scripts/install-browser.sh (apt-get install -y chromium chromium-driver)"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers/CI; the page is our own local file or 127.0.0.1 server
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """Path of a Chromium binary: ``$MLSD_CHROMIUM`` if set, else the first on PATH, else None."""
    override = os.environ.get("MLSD_CHROMIUM")
    if override:
        return override if Path(override).exists() or shutil.which(override) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no chromium found on PATH; {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="mlsd-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr.strip()[-800:]}")
    return result


def screenshot(
    url: str, png: str | Path, *, width: int = 1400, height: int = 2000, timeout_s: float = 90.0
) -> Path:
    """Render ``url`` (http://127.0.0.1:... or file://...) at ``width`` x ``height`` into ``png``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()  # so a stale file can never pass for a fresh screenshot
    _run([f"--screenshot={png}", f"--window-size={width},{height}", url], timeout_s)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot at {png}")
    return png


def dump_dom(url: str, *, timeout_s: float = 90.0) -> str:
    """The DOM of ``url`` after Chromium parsed and laid it out, serialised as HTML."""
    return _run(["--dump-dom", url], timeout_s).stdout


def screenshot_and_dom(
    url: str, png: str | Path, *, width: int = 1400, height: int = 2000, timeout_s: float = 90.0
) -> str:
    """One Chromium launch doing both: writes the screenshot to ``png`` and returns the DOM."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    dom = _run(
        [f"--screenshot={png}", f"--window-size={width},{height}", "--dump-dom", url], timeout_s
    ).stdout
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot at {png}")
    return dom
