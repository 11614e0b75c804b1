"""``mlsd fraud evaluate``: offline evaluation on the handbook's data or on the simulator.

Handbook protocol (``--protocol baseline``, Le Borgne et al., chapter 3/4): train on ``train_days``
days from ``train_start``, skip ``delay_days`` (labels of the most recent payments are not known yet),
test on the next ``test_days`` days. Cards known to be compromised - a fraud in the training period or
in the delay-shifted day before each test day - are removed from that test day. Metrics per model:
ROC AUC and average precision over the test payments, and card precision@100: per test day, the
share of frauded cards among the 100 cards with the highest score (a card's score = its max), cards
detected on earlier days removed, averaged over days. ``--protocol prequential`` (chapter 5) repeats
that on ``folds`` splits shifted back by ``test_days`` each and reports the mean (and ``std``).

The full handbook dates are train 2018-07-25..07-31, delay 7 days, test 2018-08-08..08-14; they are
used when the data covers them. The shared sample holds only 2018-07-25..07-31, so there the same
protocol runs scaled down inside that week (train 3 days, delay 1 day, test 3 days; prequential:
train 2, delay 1, test 1, 4 folds) and the ``protocol`` field states the dates used. The terminal
risk features follow the handbook's convention that labels are known ``delay_days`` after a payment.

``--dataset simulated`` evaluates on the simulator: train on the first days with only the labels
known at the training cut-off, test on the rest (every row's features, ring ones included, as of
its own time: only links and labels from before it); adds false-positive rate and recall at the decision
thresholds, recall per fraud scenario and money caught vs lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mlsd.fraud.data import SCENARIOS, validate_transactions
from mlsd.fraud.features import DAY, FeatureConfig, compute_features
from mlsd.fraud.models import FraudModel
from mlsd.platform.errors import InputError
from mlsd.platform.metrics import average_precision, roc_auc

FULL_PROTOCOL = ("2018-07-25", 7, 7, 7)
MODELS = ("rules", "lightgbm", "sequence", "ensemble")


# ------------------------------------------------------------------------------------------------
# protocol
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One train / delay / test split in whole days since the epoch."""

    train_start: int
    train_days: int
    delay_days: int
    test_days: int

    @property
    def test_start(self) -> int:
        return self.train_start + self.train_days + self.delay_days

    def describe(self) -> dict:
        def d(day: int) -> str:
            return str(np.datetime64(int(day), "D"))

        return {
            "train": [d(self.train_start), d(self.train_start + self.train_days - 1)],
            "delay_days": self.delay_days,
            "test": [d(self.test_start), d(self.test_start + self.test_days - 1)],
        }


def _day(date: str) -> int:
    try:
        return int(np.datetime64(date, "D").astype(np.int64))
    except ValueError as err:
        raise InputError("--train-start", date, "is not a date", "use YYYY-MM-DD") from err


def choose_splits(
    days: np.ndarray,
    protocol: str,
    train_start: str | None = None,
    train_days: int | None = None,
    delay_days: int | None = None,
    test_days: int | None = None,
    folds: int = 4,
) -> list[Split]:
    """The handbook split(s) if the data covers them, else the same protocol scaled into the data."""
    first, last = int(days.min()), int(days.max())
    span = last - first + 1
    start, tr, de, te = _day(FULL_PROTOCOL[0]), *FULL_PROTOCOL[1:]
    n_folds = folds if protocol == "prequential" else 1
    covers = first <= start - (n_folds - 1) * te and last >= start + tr + de + te - 1
    if not covers:  # scale the 7/7/7 protocol into the available days (the shared sample week)
        if protocol == "prequential":
            tr, de, te = max(1, span - n_folds - 1), 1, 1  # the last fold tests on the last day
        else:
            tr, de, te = max(1, (span - 1) // 2), 1, max(1, (span - 1) // 2)
        start = first + (n_folds - 1) * te
    start = _day(train_start) if train_start else start
    tr, de, te = train_days or tr, delay_days if delay_days is not None else de, test_days or te
    splits = [Split(start - f * te, tr, de, te) for f in range(n_folds)]
    for s in splits:
        if s.train_start < first or s.test_start + s.test_days - 1 > last:
            raise InputError(
                "--path",
                f"days {np.datetime64(first, 'D')}..{np.datetime64(last, 'D')}",
                f"does not cover the split {s.describe()}",
                "give more data or other dates",
            )
    return splits


def split_rows(
    day: np.ndarray, card: np.ndarray, fraud: np.ndarray, split: Split
) -> tuple[np.ndarray, np.ndarray]:
    """Train rows, and test rows without the cards known compromised (the handbook's rule)."""
    train = (day >= split.train_start) & (day < split.train_start + split.train_days)
    known = set(card[train & (fraud == 1)].tolist())
    test_parts = []
    for i in range(split.test_days):
        delay_day = split.train_start + split.train_days + i - 1  # the delay-shifted day for test day i
        known |= set(card[(day == delay_day) & (fraud == 1)].tolist())
        rows = np.flatnonzero(day == split.test_start + i)
        test_parts.append(rows[~np.isin(card[rows], list(known))])
    return np.flatnonzero(train), np.concatenate(test_parts)


def card_precision_at_k(
    day: np.ndarray, card: np.ndarray, fraud: np.ndarray, score: np.ndarray, k: int = 100
) -> float:
    """Handbook CP@k: per day, precision of the top-k cards by max score; detected cards leave later days."""
    frame = pd.DataFrame({"day": day, "card": card, "fraud": fraud, "score": score})
    detected: set = set()
    per_day = []
    for _, group in frame.groupby("day", sort=True):
        group = group[~group["card"].isin(list(detected))]
        cards = group.groupby("card").agg(score=("score", "max"), fraud=("fraud", "max"))
        top = cards.sort_values("score", ascending=False, kind="stable").head(k)
        hits = top.index[top["fraud"] == 1]
        per_day.append(len(hits) / k)
        detected |= set(hits.tolist())
    return float(np.mean(per_day)) if per_day else float("nan")


def rules_score(features: pd.DataFrame) -> np.ndarray:
    """A simple rules baseline: amount limit, terminal with known frauds, amount far above the card's usual.

    Graded (not 0/1) so that it ranks: the strongest fired rule sets the band, the amount breaks ties.
    """
    amount = features["amount"].to_numpy(np.float64)
    risk_cols = [c for c in features.columns if c.startswith("terminal_risk_")]
    risk = features[risk_cols].max(axis=1).fillna(0).to_numpy() if risk_cols else np.zeros(len(features))
    z = (
        features["card_amount_z"].fillna(0).to_numpy()
        if "card_amount_z" in features
        else np.zeros(len(features))
    )
    score = np.maximum.reduce(
        [
            np.where(amount > 220, 0.9, 0.0),  # amount limit
            np.where(risk > 0, 0.5 + 0.4 * np.minimum(risk * 5, 1.0), 0.0),  # terminal with known frauds
            np.where(z > 3, 0.4 + 0.1 * np.minimum(z / 10, 1.0), 0.0),  # amount far above the card's usual
        ]
    )
    return score + np.minimum(amount, 1e5) / 1e7


def _metrics(y, score, day, card, k) -> dict[str, float]:
    return {
        "auc_roc": round(float(roc_auc(y, score)), 4),
        "average_precision": round(float(average_precision(y, score)), 4),
        f"card_precision@{k}": round(card_precision_at_k(day, card, y, score, k), 4),
    }


def _model(args: argparse.Namespace) -> FraudModel:
    return FraudModel(seq_epochs=args.seq_epochs, seed=args.seed, lgbm_params={"n_estimators": args.trees})


def _fit_and_score(features, y, ts, train, test, args) -> dict[str, np.ndarray]:
    model = _model(args).fit(features.iloc[train], y[train], time=ts[train])
    scores = model.predict_components(features.iloc[test])
    scores["rules"] = rules_score(features.iloc[test])
    return scores


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------
def evaluate_handbook(frame: pd.DataFrame, args: argparse.Namespace, progress: tqdm) -> dict:
    days = frame["ts"].to_numpy(np.int64) // DAY
    splits = choose_splits(
        days, args.protocol, args.train_start, args.train_days, args.delay_days, args.test_days, args.folds
    )
    delay = splits[0].delay_days
    frame = frame.assign(label_ts=frame["ts"] + delay * DAY)  # the handbook convention, at this delay
    progress.set_description("features")
    features = compute_features(frame, FeatureConfig.handbook(delay=delay * DAY))
    progress.update(1)
    y = frame["fraud"].to_numpy()
    card = frame["card_id"].to_numpy()
    ts = frame["ts"].to_numpy(np.int64)
    per_fold = []
    for split in splits:
        progress.set_description(f"train+score {split.describe()['test'][0]}")
        train, test = split_rows(days, card, y, split)
        scores = _fit_and_score(features, y, ts, train, test, args)
        per_fold.append({m: _metrics(y[test], scores[m], days[test], card[test], args.top_k) for m in MODELS})
        progress.update(1)
    models = {
        m: {k: round(float(np.mean([f[m][k] for f in per_fold])), 4) for k in per_fold[0][m]} for m in MODELS
    }
    result = {
        "protocol": {
            "name": args.protocol,
            "dataset": "handbook",
            "splits": [s.describe() for s in splits],
            "full_handbook_dates": len(splits)
            and splits[0].train_start == _day(FULL_PROTOCOL[0])
            and splits[0].train_days == 7,
            "label_delay_days": delay,
            "n_train": int(len(split_rows(days, card, y, splits[0])[0])),
            "n_test": int(len(split_rows(days, card, y, splits[0])[1])),
        },
        "models": models,
    }
    if len(per_fold) > 1:
        result["std"] = {
            m: {k: round(float(np.std([f[m][k] for f in per_fold])), 4) for k in per_fold[0][m]}
            for m in MODELS
        }
    return result


def simulated_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row's features, training and test alike, as of its own ts: windows and terminal risk
    from :func:`compute_features`, ring features from the links and labels known before the row."""
    from mlsd.fraud.graph import ring_features_as_of

    return pd.concat([compute_features(frame, FeatureConfig()), ring_features_as_of(frame)], axis=1)


def evaluate_simulated(frame: pd.DataFrame, args: argparse.Namespace, progress: tqdm) -> dict:
    ts = frame["ts"].to_numpy(np.int64)
    days = ts // DAY
    first, last = int(days.min()), int(days.max())
    test_days = args.test_days or max(1, (last - first + 1) // 3)
    test_start_day = last - test_days + 1
    cutoff = test_start_day * DAY
    progress.set_description("features")
    features = simulated_features(frame)
    progress.update(1)
    y = frame["fraud"].to_numpy()
    # train only on what a system deployed at the cut-off would know: frauds whose label arrived
    known = (y == 1) & (frame["label_ts"].to_numpy(np.float64) <= cutoff)
    train = np.flatnonzero(ts < cutoff)
    test = np.flatnonzero(ts >= cutoff)
    progress.set_description("train+score")
    model = _model(args).fit(features.iloc[train], known[train].astype(int), time=ts[train])
    scores = model.predict_components(features.iloc[test])
    scores["rules"] = rules_score(features.iloc[test])
    progress.update(1)
    card = frame["card_id"].to_numpy()
    yt = y[test]
    models = {m: _metrics(yt, scores[m], days[test], card[test], args.top_k) for m in MODELS}
    p = scores["ensemble"]
    amount = frame["amount"].to_numpy()[test]
    scenario = frame["scenario"].to_numpy()[test]
    thresholds = {}
    for name, th in (("review", 0.5), ("block", 0.9)):
        flagged = p >= th
        thresholds[name] = {
            "threshold": th,
            "false_positive_rate": round(float(flagged[yt == 0].mean()), 5),
            "recall": round(float(flagged[yt == 1].mean()), 4) if yt.sum() else None,
            "precision": round(float(yt[flagged].mean()), 4) if flagged.any() else None,
        }
    # the threshold a 1% false-positive budget allows, and what it catches
    th1 = float(np.quantile(p[yt == 0], 0.99)) if (yt == 0).any() else 1.0
    flagged = p > th1
    thresholds["fpr_1pct"] = {
        "threshold": round(th1, 5),
        "false_positive_rate": round(float(flagged[yt == 0].mean()), 5),
        "recall": round(float(flagged[yt == 1].mean()), 4) if yt.sum() else None,
    }
    per_scenario = {}
    for code, name in SCENARIOS.items():
        rows = scenario == code
        if code and rows.any():
            per_scenario[name] = {
                "n": int(rows.sum()),
                "recall_review": round(float((p[rows] >= 0.5).mean()), 4),
                "recall_fpr_1pct": round(float((p[rows] > th1).mean()), 4),
            }
    stopped = p >= 0.5
    money = {
        "fraud_amount": round(float(amount[yt == 1].sum()), 2),
        "fraud_amount_stopped": round(float(amount[(yt == 1) & stopped].sum()), 2),
        "fraud_amount_missed": round(float(amount[(yt == 1) & ~stopped].sum()), 2),
        "genuine_amount_stopped": round(float(amount[(yt == 0) & stopped].sum()), 2),
    }
    return {
        "protocol": {
            "name": "simulated-holdout",
            "dataset": "simulated",
            "train": [str(np.datetime64(first, "D")), str(np.datetime64(test_start_day - 1, "D"))],
            "test": [str(np.datetime64(test_start_day, "D")), str(np.datetime64(last, "D"))],
            "train_labels": "only labels known at the cut-off (label_ts <= test start)",
            "n_train": int(train.size),
            "n_test": int(test.size),
            "test_fraud_rate": round(float(yt.mean()), 5),
        },
        "models": models,
        "thresholds": thresholds,
        "recall_per_scenario": per_scenario,
        "money": money,
    }


def _load(args: argparse.Namespace) -> pd.DataFrame:
    if args.dataset == "handbook":
        if not args.path:
            raise InputError(
                "--path",
                None,
                "is required for the handbook dataset",
                "point it at the handbook CSV file or directory (e.g. ../shared/data/fraud-sample)",
            )
        from mlsd.fraud.handbook import load_handbook

        return load_handbook(args.path)
    if args.path:
        path = Path(args.path)
        if not path.exists():
            raise FileNotFoundError(2, "No such file", str(path))
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        return validate_transactions(frame, require_labels=True)
    from mlsd.fraud.world import simulate

    return simulate(args.cards, args.terminals, args.days, args.seed)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=("handbook", "simulated"), default="handbook")
    parser.add_argument(
        "--path", default=None, help="handbook CSV(.gz) file or directory; simulated: .parquet/.csv"
    )
    parser.add_argument("--protocol", choices=("baseline", "prequential"), default="baseline")
    parser.add_argument(
        "--train-start", default=None, help="first training day YYYY-MM-DD (default: see docs)"
    )
    parser.add_argument("--train-days", type=int, default=None)
    parser.add_argument("--delay-days", type=int, default=None)
    parser.add_argument("--test-days", type=int, default=None)
    parser.add_argument("--folds", type=int, default=4, help="prequential folds")
    parser.add_argument("--top-k", type=int, default=100, help="k of card precision@k")
    parser.add_argument("--seq-epochs", type=int, default=8, help="GRU training epochs")
    parser.add_argument("--trees", type=int, default=400, help="LightGBM boosting rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cards", type=int, default=2000, help="simulated: cards (without --path)")
    parser.add_argument("--terminals", type=int, default=500, help="simulated: terminals (without --path)")
    parser.add_argument("--days", type=int, default=45, help="simulated: days (without --path)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    for name in ("train_days", "test_days", "folds", "top_k", "seq_epochs", "trees"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError("--" + name.replace("_", "-"), value, "must be >= 1", "pass a positive number")
    started = time.perf_counter()
    with tqdm(
        total=2 + (args.folds if args.protocol == "prequential" else 1),
        file=sys.stderr,
        disable=None,
        leave=False,
    ) as progress:
        progress.set_description("load")
        frame = _load(args)
        progress.update(1)
        evaluate = evaluate_handbook if args.dataset == "handbook" else evaluate_simulated
        result = evaluate(frame, args, progress)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result["protocol"], indent=1))
        print(f"{'model':<10} " + " ".join(f"{k:>20}" for k in next(iter(result["models"].values()))))
        for name, m in result["models"].items():
            print(f"{name:<10} " + " ".join(f"{v:>20.4f}" for v in m.values()))
        for key in ("thresholds", "recall_per_scenario", "money"):
            if key in result:
                print(key, json.dumps(result[key], indent=1))
    return 0
