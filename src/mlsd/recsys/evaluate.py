"""``mlsd recsys evaluate``: offline evaluation of popularity, ALS and the two-stage model.

Default protocol = the Microsoft Recommenders benchmark's, so the numbers compare with its table:
every rating is an interaction; a 75/25 split stratified by item with seed 42 (see
:func:`~mlsd.recsys.model.stratified_split`); every test interaction is relevant; items a user saw
in train are never recommended to them; metrics from :mod:`mlsd.platform.metrics` (MAP normalised
by the number of relevant items). ``--protocol temporal`` holds out the last 20% of events by time;
most of its test users never appear in train, so each model's nDCG is also reported for the test users
with a history (``ndcg@10_seen_users``) and without one (``ndcg@10_unseen_users``).

All model choices (hyperparameters, features, ranker settings) were made on an inner split of the
TRAIN part only (train re-split the same stratified way); the test split is used once, here.

The two-stage model, the blend and ALS are built from :func:`~mlsd.recsys.model.model_spec`, the one
model definition the daily job (``mlsd recsys train``, hence the service) builds too: what is measured
here is what is served, catalogue-size rule included (over 20K titles the dense sources are left out
in both, with the reason on stderr).

Prints ONE JSON object on stdout with ``--json``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.jsonio import dumps
from mlsd.platform.metrics import ranking_metrics
from mlsd.recsys.candidates import BlendCandidates, PopularityCandidates
from mlsd.recsys.data import IdMap, RecsysDataset, binary_matrix
from mlsd.recsys.model import TwoStageRecommender, model_spec, stratified_split, temporal_split

PROTOCOLS = ("stratified", "temporal")
MODELS = ("popularity", "als", "two_stage")
# Not in the default report (the contract is the three above), selectable with --models:
# the z-score blend of EASE, RP3beta and ALS alone, the linear baseline the two-stage ranker boosts from.
EXTRA_MODELS = ("blend",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluate verb's options (the recsys CLI calls this, then :func:`run`)."""
    parser.add_argument("--dataset", default="movielens", choices=["movielens"], help="dataset family")
    parser.add_argument("--path", required=True, help="folder of a MovieLens release (100K, 1M or CSV)")
    parser.add_argument(
        "--protocol",
        default="stratified",
        choices=PROTOCOLS,
        help="stratified: Microsoft Recommenders 75/25 split by item, seed 42 (default); "
        "temporal: last 20%% of events by time as test",
    )
    parser.add_argument("--k", type=int, default=10, help="cut-off of the metrics (default 10)")
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated subset of: " + ", ".join(MODELS + EXTRA_MODELS),
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="model selection: evaluate on the inner split of TRAIN (train re-split by the same protocol); "
        "the test split is never read",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def split(dataset: RecsysDataset, protocol: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = dataset.interactions
    if protocol == "stratified":
        train, test = stratified_split(inter, 0.75, 42, by="item_id")
    elif protocol == "temporal":
        train, test = temporal_split(inter, 0.2)
    else:
        raise InputError("protocol", protocol, f"must be one of {PROTOCOLS}", "use --protocol stratified")
    return inter[train].reset_index(drop=True), inter[test].reset_index(drop=True)


def _relevant(test: pd.DataFrame, user_ids: np.ndarray) -> list[np.ndarray]:
    groups = test.groupby("user_id")["item_id"].apply(lambda s: s.to_numpy(np.int64))
    return [groups.get(u, np.zeros(0, np.int64)) for u in user_ids]


def blend_for_evaluation(n_items: int = 0) -> BlendCandidates:
    """EASE + RP3beta + ALS + sequential EASE, z-scored per user and weighted (weights picked on inner
    validation): the model definition's blend, unfitted."""
    spec = model_spec(n_items, sources={"blend": 1})
    if "blend" in spec.dropped:
        raise InputError("models", "blend", f"cannot run here: {spec.dropped['blend']}",
                         "evaluate popularity, als or two_stage on this catalogue")  # fmt: skip
    return spec.source_models()["blend"]


def two_stage_for_evaluation(progress: bool = False, n_items: int = 0) -> TwoStageRecommender:
    """The two-stage model as evaluated: :func:`~mlsd.recsys.model.model_spec` for a catalogue of
    ``n_items`` titles (the daily job builds the same), under the stratified label split."""
    spec = model_spec(n_items)
    if progress:
        spec.log_dropped("[evaluate] two_stage")
    return spec.build(label_split="stratified", verbose=progress)


def evaluate_models(
    dataset: RecsysDataset, protocol: str = "stratified", k: int = 10, models=MODELS, progress: bool = True
) -> dict:
    """Split, fit each model on train, recommend ``k`` unseen items to every test user, score."""
    if not isinstance(k, int) or k <= 0:
        raise InputError("k", k, "must be a positive integer", "use e.g. --k 10")
    unknown = [m for m in models if m not in MODELS + EXTRA_MODELS]
    if unknown:
        raise InputError("models", unknown, f"are not among {MODELS + EXTRA_MODELS}", "pick from those")

    def log(msg: str) -> None:
        if progress:
            print(f"[evaluate] {msg}", file=sys.stderr, flush=True)

    train_inter, test = split(dataset, protocol)
    train = dataset.with_interactions(train_inter, name=f"{dataset.name}:train")
    test_users = np.unique(test["user_id"].to_numpy())
    relevant = _relevant(test, test_users)
    users = IdMap(train_inter["user_id"].to_numpy())
    items = IdMap(dataset.items["item_id"].to_numpy())
    seen = binary_matrix(train_inter, users, items)
    rows = users.index(test_users)
    # Test users absent from train (possible under the temporal protocol) have nothing to exclude.
    exclude = seen[np.where(rows >= 0, rows, 0)].tolil()
    exclude[np.flatnonzero(rows < 0)] = 0
    exclude = exclude.tocsr()
    catalog = len(items)
    log(f"{dataset.name}: {len(train_inter)} train / {len(test)} test events, {len(test_users)} test users "
        f"({int((rows < 0).sum())} of them not in train)")
    result: dict = {}
    for name in models:
        start = time.perf_counter()
        if name == "popularity":
            model = PopularityCandidates("popular").fit(train, users, items)
            idx, _ = model.candidates(test_users, k, exclude)
            recommended = items.raw(idx)
        elif name in ("als", "blend"):
            if name == "als":
                model = model_spec(catalog).source_models()["als"].fit(train, users, items)
            else:
                model = blend_for_evaluation(catalog).fit(train, users, items)
            idx, _ = model.candidates(test_users, k, exclude)
            # ALS has no vector for a user unseen in train (many, under --protocol temporal): those
            # get the popularity list, as a deployed ALS would, instead of an empty row.
            cold = rows < 0
            if cold.any():
                pop = PopularityCandidates("popular").fit(train, users, items)
                idx[cold] = pop.candidates(test_users[cold], k)[0]
            recommended = items.raw(idx)
        else:
            model = two_stage_for_evaluation(progress, catalog).fit(train)
            recommended, _, _ = model.recommend(test_users, k, exclude_seen=True)
        metrics = ranking_metrics(recommended, relevant, k, catalog)
        if 0 < int((rows < 0).sum()) < len(rows):
            # Under --protocol temporal most test users never appear in train: say apart how the model
            # does for users with a history (where personal signals can work) and without one.
            for label, mask in (("seen_users", rows >= 0), ("unseen_users", rows < 0)):
                part = ranking_metrics(recommended[mask], [relevant[j] for j in np.flatnonzero(mask)], k, catalog)
                metrics[f"ndcg@{k}_{label}"] = part[f"ndcg@{k}"]
        result[name] = {key: round(float(v), 6) for key, v in metrics.items()}
        log(f"{name}: ndcg@{k}={metrics[f'ndcg@{k}']:.4f} ({time.perf_counter() - start:.1f}s)")
    return result


def run(args: argparse.Namespace) -> int:
    from mlsd.recsys.movielens import load_movielens

    models = [m.strip() for m in str(getattr(args, "models", ",".join(MODELS))).split(",") if m.strip()]
    dataset = load_movielens(args.path)
    if getattr(args, "validation", False):
        train, _ = split(dataset, args.protocol)
        dataset = dataset.with_interactions(train, name=f"{dataset.name}:train")
    metrics = evaluate_models(dataset, args.protocol, args.k, models)
    out = {"dataset": args.dataset, "protocol": args.protocol, "k": args.k, "models": metrics}
    if getattr(args, "validation", False):
        out["validation"] = True
    if args.json:
        print(dumps(out))
    else:
        header = f"{'model':<12}" + "".join(f"{m:>15}" for m in next(iter(metrics.values())))
        print(f"{args.dataset} ({dataset.name}), protocol {args.protocol}, k={args.k}")
        print(header)
        for name, m in metrics.items():
            print(f"{name:<12}" + "".join(f"{v:>15.4f}" for v in m.values()))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mlsd recsys evaluate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
