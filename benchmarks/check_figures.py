"""Check the README's deterministic figures against a fresh run of the commands behind them.

    python benchmarks/check_figures.py OUT_DIR [README.md]

``OUT_DIR`` is what ``benchmarks/readme_figures.sh OUT_DIR quality`` wrote (one JSON per command).
Every quality figure of the README (MovieLens, the handbook, CrowdFlower, Home Depot, the IPS seeds,
the calibration) is formatted the way the README prints it and looked up in the README's text; a
figure the README does not show is listed and the exit status is 1. Latency and experiment figures
depend on the machine: ``readme_figures.sh`` prints them, this script does not judge them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

RECSYS = ("popularity", "als", "blend", "two_stage"), ("ndcg@10", "precision@10", "recall@10", "map@10", "coverage@10")
FRAUD = ("rules", "lightgbm", "sequence", "ensemble"), ("auc_roc", "average_precision", "card_precision@100")
CROWDFLOWER = ("bm25", "dense", "hybrid", "ltr"), ("ndcg@10", "ndcg@48", "map@10")
HOMEDEPOT = ("bm25", "dense", "hybrid", "ltr"), ("ndcg@10", "ndcg@48", "map@10", "recall@100")


def _row(values: Sequence[float], digits: int = 4) -> str:
    """A table row's cells as the README prints them: ``0.2524 | 0.2287 | ...``."""
    return " | ".join(f"{v:.{digits}f}" for v in values)


def expected(out: Path) -> Iterator[tuple[str, str]]:
    """(what, text the README must contain) for every deterministic figure."""

    def load(name: str) -> dict:
        return json.loads((out / f"{name}.json").read_text())

    def table(name: str, spec: tuple[tuple[str, ...], tuple[str, ...]]) -> Iterator[tuple[str, str]]:
        models, metrics = spec
        found = load(name)["models"]
        for m in models:
            yield f"{name} {m}", _row([found[m][k] for k in metrics])

    yield from table("recsys-movielens", RECSYS)
    temporal = load("recsys-movielens-temporal")["models"]
    yield "recsys temporal", (
        f"two-stage nDCG@10\n{temporal['two_stage']['ndcg@10']:.4f}, ALS {temporal['als']['ndcg@10']:.4f}, "
        f"popularity {temporal['popularity']['ndcg@10']:.4f}"
    )
    yield from table("fraud-handbook", FRAUD)
    yield from table("search-crowdflower-seed0", CROWDFLOWER)
    seeds = [load(f"search-crowdflower-seed{s}")["models"]["ltr"]["ndcg@10"] for s in range(5)]
    yield "crowdflower LTR seeds 0-4", ", ".join(f"{v:.4f}" for v in seeds)
    nested = [load(f"search-crowdflower-nested-seed{s}")["models"]["ltr-nested"]["ndcg@10"] for s in range(5)]
    yield "crowdflower nested LTR seeds 0-4", ", ".join(f"{v:.4f}" for v in nested)
    yield from table("search-homedepot-full", HOMEDEPOT)
    ips = [load(f"search-ips-seed{s}")["metrics"] for s in range(4)]
    yield "IPS seeds 0-3", "IPS " + " / ".join(f"{m['truth_ndcg@10']:.3f}" for m in ips)
    yield "raw clicks seeds 0-3", "raw clicks " + " / ".join(f"{m['raw_clicks_truth_ndcg@10']:.3f}" for m in ips)
    cal = load("experiment-calibrate")
    yield "A/A at one look", f"A/A false positives {cal['fixed_horizon_fpr']:.4f} at one look"
    yield "naive peeking", f"{cal['naive_peeking_fpr']:.3f} with naive peeking"
    yield "confidence sequence", f"{cal['sequential_fpr']:.3f} with the always-valid confidence sequence"
    yield "CUPED", f"CUPED variance reduction {cal['cuped_variance_reduction']:.3f}"


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    readme = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1] / "README.md")
    # the README bolds the best row and wraps lines: compare without the bold, with single spaces
    text = re.sub(r"[ \t]+", " ", readme.read_text().replace("**", ""))
    checked, missing = 0, []
    for what, figure in expected(out):
        checked += 1
        if figure not in text and figure.replace("\n", " ") not in text.replace("\n", " "):
            missing.append(f"{what}: the run gives '{figure}', which README.md does not show")
    for line in missing:
        print(f"MISMATCH {line}")
    print(f"{checked - len(missing)} of {checked} README figures match the run in {out}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
