#!/usr/bin/env bash
# The README's dashboard screenshot: demo data -> the dashboard page -> headless Chromium -> PNG.
#   benchmarks/dashboard_screenshot.sh [OUT.png]      (default docs/img/dashboard.png)
# Needs Debian's chromium (scripts/install-browser.sh). Same as: mlsd dashboard --demo-data --screenshot OUT.png
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/img/dashboard.png}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m mlsd.platform.dashboard.cli --demo-data --screenshot "$OUT" --size 1400x3000
