#!/usr/bin/env bash
# The README's dashboard screenshot: the demo (all three systems, one experiment each) -> the dashboard
# page over what it wrote -> headless Chromium -> PNG.
#   benchmarks/dashboard_screenshot.sh [OUT.png] [WORKDIR]     (default docs/img/dashboard.png, a temp dir)
# Needs Debian's chromium (scripts/install-browser.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/img/dashboard.png}"
WORKDIR="${2:-$(mktemp -d -t mlsd-screenshot-XXXX)}"
MLSD="${MLSD:-.venv/bin/mlsd}"
[ -f "$WORKDIR/dashboard.html" ] || "$MLSD" demo --workdir "$WORKDIR"
"$MLSD" dashboard --workdir "$WORKDIR" --screenshot "$OUT" --size 1400x3400
echo "screenshot of the dashboard over $WORKDIR -> $OUT"
