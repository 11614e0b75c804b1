"""Check the README's deterministic figures against a fresh run of the commands behind them.

    python benchmarks/check_figures.py OUT_DIR [README.md]

``OUT_DIR`` is what ``benchmarks/readme_figures.sh OUT_DIR quality`` wrote (one JSON per command).
Every quality figure of the README (MovieLens, the handbook, CrowdFlower, Home Depot, the IPS seeds,
the calibration) is formatted the way the README prints it and looked up in the README's text; a
figure the README does not show is listed and the exit status is 1. Latency and experiment figures
depend on the machine: ``readme_figures.sh`` prints them, this script does not judge them.

Every figure must appear exactly, except the search rankers' (the LTR rows and seed lists): their
bases (BM25, dense, hybrid) are exact on every machine, but the ranker's ridge and LightGBM sum floats
in an order the CPU's BLAS kernels choose, so two machines print the 3rd-4th decimal differently (two
AMD EPYC machines: LTR rows up to 0.005 apart, nested seeds up to 0.013, since an inner pick can flip).
Those are accepted within :data:`TOLERANCE` of a README text of the same shape, and listed as DRIFT.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

RECSYS = (
    ("popularity", "als", "blend", "two_stage"),
    ("ndcg@10", "precision@10", "recall@10", "map@10", "coverage@10"),
)
FRAUD = ("rules", "lightgbm", "sequence", "ensemble"), ("auc_roc", "average_precision", "card_precision@100")
CROWDFLOWER = ("bm25", "dense", "hybrid", "ltr"), ("ndcg@10", "ndcg@48", "map@10")
HOMEDEPOT = ("bm25", "dense", "hybrid", "ltr"), ("ndcg@10", "ndcg@48", "map@10", "recall@100")
# How far a machine-dependent figure may be from the README's (module docstring); 0: exact.
TOLERANCE = {"ltr": 0.01, "nested": 0.02}
NUMBER = re.compile(r"\d+\.\d+")


def _row(values: Sequence[float], digits: int = 4) -> str:
    """A table row's cells as the README prints them: ``0.2524 | 0.2287 | ...``."""
    return " | ".join(f"{v:.{digits}f}" for v in values)


def expected(out: Path) -> Iterator[tuple[str, str, float]]:
    """(what, text the README must contain, tolerance) for every deterministic figure."""

    def load(name: str) -> dict:
        return json.loads((out / f"{name}.json").read_text())

    def table(
        name: str, spec: tuple[tuple[str, ...], tuple[str, ...]], tolerant: tuple[str, ...] = ()
    ) -> Iterator[tuple[str, str, float]]:
        models, metrics = spec
        found = load(name)["models"]
        for m in models:
            yield (
                f"{name} {m}",
                _row([found[m][k] for k in metrics]),
                TOLERANCE["ltr"] if m in tolerant else 0.0,
            )

    yield from table("recsys-movielens", RECSYS)
    temporal = load("recsys-movielens-temporal")["models"]
    yield (
        "recsys temporal",
        (
            f"two-stage nDCG@10\n{temporal['two_stage']['ndcg@10']:.4f}, ALS {temporal['als']['ndcg@10']:.4f}, "
            f"popularity {temporal['popularity']['ndcg@10']:.4f}"
        ),
        0.0,
    )
    yield from table("fraud-handbook", FRAUD)
    yield from table("search-crowdflower-seed0", CROWDFLOWER, tolerant=("ltr",))
    seeds = [load(f"search-crowdflower-seed{s}")["models"]["ltr"]["ndcg@10"] for s in range(5)]
    yield "crowdflower LTR seeds 0-4", ", ".join(f"{v:.4f}" for v in seeds), TOLERANCE["ltr"]
    nested = [load(f"search-crowdflower-nested-seed{s}")["models"]["ltr-nested"]["ndcg@10"] for s in range(5)]
    yield "crowdflower nested LTR seeds 0-4", ", ".join(f"{v:.4f}" for v in nested), TOLERANCE["nested"]
    yield from table("search-homedepot-full", HOMEDEPOT, tolerant=("ltr",))
    ips = [load(f"search-ips-seed{s}")["metrics"] for s in range(4)]
    yield "IPS seeds 0-3", "IPS " + " / ".join(f"{m['truth_ndcg@10']:.3f}" for m in ips), 0.0
    yield (
        "raw clicks seeds 0-3",
        "raw clicks " + " / ".join(f"{m['raw_clicks_truth_ndcg@10']:.3f}" for m in ips),
        0.0,
    )
    cal = load("experiment-calibrate")
    yield "A/A at one look", f"A/A false positives {cal['fixed_horizon_fpr']:.4f} at one look", 0.0
    yield "naive peeking", f"{cal['naive_peeking_fpr']:.3f} with naive peeking", 0.0
    yield "confidence sequence", f"{cal['sequential_fpr']:.3f} with the always-valid confidence sequence", 0.0
    yield "CUPED", f"CUPED variance reduction {cal['cuped_variance_reduction']:.3f}", 0.0


def near(figure: str, text: str, tolerance: float) -> str | None:
    """The README text of the same shape as ``figure`` (its words, the numbers' places) whose every
    number is within ``tolerance`` of the figure's; None if there is none.

    >>> near("0.8890, 0.8832", "seeds 0.8882, 0.8867 and 0.5, 0.6", 0.01)
    '0.8882, 0.8867'
    >>> near("0.8890, 0.8832", "seeds 0.8882, 0.8967", 0.01) is None
    True
    """
    values = [float(v) for v in NUMBER.findall(figure)]
    pattern = r"(\d+\.\d+)".join(re.escape(part) for part in NUMBER.split(figure))
    for match in re.finditer(pattern, text):
        if all(abs(float(v) - w) <= tolerance + 1e-9 for v, w in zip(match.groups(), values, strict=True)):
            return match.group(0)
    return None


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    readme = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1] / "README.md")
    # the README bolds the best row and wraps lines: compare without the bold, with single spaces
    text = re.sub(r"[ \t]+", " ", readme.read_text().replace("**", ""))
    flat = text.replace("\n", " ")
    checked, missing, drifted = 0, [], []
    for what, figure, tolerance in expected(out):
        checked += 1
        if figure in text or figure.replace("\n", " ") in flat:
            continue
        shown = near(figure.replace("\n", " "), flat, tolerance) if tolerance else None
        if shown is not None:
            drifted.append(
                f"{what}: the run gives '{figure}', README.md shows '{shown}' (within {tolerance})"
            )
        else:
            missing.append(f"{what}: the run gives '{figure}', which README.md does not show")
    for line in drifted:
        print(f"DRIFT {line}")
    for line in missing:
        print(f"MISMATCH {line}")
    within = f" ({len(drifted)} of them within their tolerance)" if drifted else ""
    print(f"{checked - len(missing)} of {checked} README figures match the run in {out}{within}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
