#!/usr/bin/env bash
# Every figure of the README, rerun: each line is the command named above its table in the README.
#   benchmarks/readme_figures.sh [OUT_DIR] [GROUP...]     (default /tmp/mlsd-figures; all groups)
# Groups: quality (deterministic: evaluate, IPS, calibrate), experiments, bench (latency: run it on a
# quiet machine), demo (the monitoring figure and the dashboard screenshot). JSON results land in OUT_DIR,
# one file per command, and each command's wall time is printed. Needs ../shared/data for `quality`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/mlsd-figures}"; shift || true
GROUPS_WANTED="${*:-quality experiments bench demo}"
MLSD="${MLSD:-.venv/bin/mlsd}"
DATA="${MLSD_SHARED_DATA:-../shared/data}"
mkdir -p "$OUT"
run() {  # name, then the mlsd arguments; stdout (one JSON object) -> OUT/name.json
  local name=$1; shift
  local started=$SECONDS
  "$MLSD" "$@" > "$OUT/$name.json"
  echo "$name: $((SECONDS - started)) s -> $OUT/$name.json"
}
want() { [[ " $GROUPS_WANTED " == *" $1 "* ]]; }

if want quality; then
  run recsys-movielens          recsys evaluate --dataset movielens --path "$DATA/movielens-100k" --models popularity,als,blend,two_stage --json
  run recsys-movielens-temporal recsys evaluate --dataset movielens --path "$DATA/movielens-100k" --protocol temporal --json
  run fraud-handbook            fraud evaluate --dataset handbook --path "$DATA/fraud-sample" --json
  for seed in 0 1 2 3 4; do
    run "search-crowdflower-seed$seed" search evaluate --dataset crowdflower --path "$DATA/crowdflower-sample" --seed "$seed" --json
  done
  for seed in 0 1 2 3 4; do  # nested CV: the ranker chosen inside each training fold (docs/search.md)
    run "search-crowdflower-nested-seed$seed" search evaluate --dataset crowdflower --path "$DATA/crowdflower-sample" --nested --seed "$seed" --json
  done
  run search-homedepot-full     search evaluate --dataset homedepot --path "$DATA/home-depot-sample" --setting full --json
  for seed in 0 1 2 3; do
    W="$OUT/ips-seed$seed"; rm -rf "$W"
    "$MLSD" search simulate --workdir "$W" --products 2000 --sessions 20000 --queries 100 --users 500 --seed "$seed" --json > /dev/null
    run "search-ips-seed$seed" search train --workdir "$W" --no-dense --json
  done
  run experiment-calibrate      experiment calibrate --json
fi
if want experiments; then
  bash benchmarks/experiments.sh "$OUT/experiments"
fi
if want bench; then
  run recsys-bench  recsys bench --users 1000000 --items 50000 --requests 2000 --json
  run fraud-bench   fraud bench --tps 10000 --seconds 30 --json
  run search-bench  search bench --products 1000000 --queries 1000 --pipeline --json
  run search-bench-shards  search bench --products 1000000 --queries 1000 --shards 2,1 --json
  run fraud-bench-scale    fraud bench --scale --tps 10000 --seconds 30 --json
fi
if want demo; then
  rm -rf "$OUT/demo"
  bash benchmarks/dashboard_screenshot.sh docs/img/dashboard.png "$OUT/demo"
  run fraud-monitor monitor report --system fraud --workdir "$OUT/demo" --json
fi
