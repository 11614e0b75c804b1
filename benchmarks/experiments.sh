#!/usr/bin/env bash
# The README's online-experiment figures: each system's world simulator through its real service.
#   benchmarks/experiments.sh [OUT_DIR]     (default /tmp/mlsd-experiments; reports as JSON there)
# Each command is also runnable on its own; --workdir W keeps each system's world in W/<system>/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/mlsd-experiments}"
MLSD="${MLSD:-.venv/bin/mlsd}"
mkdir -p "$OUT"
run() {  # name, then mlsd experiment run arguments
  local name=$1; shift
  local started=$SECONDS
  "$MLSD" experiment run "$@" --json --out "$OUT/$name.json" > /dev/null
  echo "$name: $((SECONDS - started)) s -> $OUT/$name.json"
}
# the largest recsys run first: its world (sized for 2,500 units) serves the smaller runs too
run recsys-aa-srm      recsys --units 2500 --arms champion,champion --lose-exposures 0.3 --workdir "$OUT/world"
run recsys-challenger  recsys --units 2000 --arms champion,challenger --workdir "$OUT/world"
run recsys-no-ranker   recsys --units 2000 --arms champion,no_ranker --workdir "$OUT/world"
run search-ltr-vs-bm25 search --units 2000 --arms ltr,bm25 --workdir "$OUT/world"
run fraud-shadow       fraud  --units 2000 --arms champion,challenger,no_velocity,lenient --workdir "$OUT/world"
