"""The two-stage recommender: candidate union -> features -> LightGBM ranker -> top k.

``fit(dataset)`` learns the ranker on labels the candidate models never saw, then refits the
candidate models on everything:

1. split the events into a *history* and a *label* slice — ``label_split="stratified"`` re-splits
   the data the way the MovieLens benchmark splits it (per item, 75/25, seeded), for offline
   evaluation; ``"temporal"`` takes events before ``cutoff`` as history and the next
   ``label_days`` as labels (the production daily job, point-in-time by construction);
2. fit the candidate generator and the feature builder on the history only, label each candidate
   by whether it is in the user's label slice, train the ranker (early stopping on held-out users);
3. refit the generator and features on all events: serving and test scoring see the full history.

The service times the stages separately through :meth:`candidates` and :meth:`score`, and can skip
ranking under its deadline with :func:`fallback_scores` (candidate order).
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.jsonio import write_json
from mlsd.recsys.candidates import (
    DEFAULT_SOURCES,
    EVAL_SOURCE_SETTINGS,
    EVAL_SOURCES,
    ALSCandidates,
    BlendCandidates,
    CandidateGenerator,
    EASECandidates,
    History,
    RP3BetaCandidates,
    SequentialEASECandidates,
    as_user_array,
    check_n,
)
from mlsd.recsys.data import IdMap, RecsysDataset, binary_matrix, validate
from mlsd.recsys.features import DAY, FeatureBuilder, TrainingRows, label_rows
from mlsd.recsys.ranker import LightGBMRanker

MAX_K = 500
REFERENCE_ROWS = 20_000  # rows of the training reference kept for drift monitoring

__all__ = [
    "ALS_ENGINES",
    "DENSE_MAX_ITEMS",
    "DENSE_SOURCES",
    "FEATURE_SETTINGS",
    "ModelSpec",
    "TwoStageRecommender",
    "definition",
    "settings_of",
    "model_spec",
    "stratified_split",
    "temporal_split",
]


def stratified_split(
    interactions: pd.DataFrame, ratio: float = 0.75, seed: int = 42, by: str = "item_id"
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks, the Microsoft Recommenders way, stratified by ``by``.

    ``np.random.seed(seed)``; every row, in frame order, draws ``np.random.rand``; rows are sorted by
    ``by`` then that draw; the first ``round(ratio * n)`` rows of each group go to train.
    """
    if not 0.0 < ratio < 1.0:
        raise InputError("ratio", ratio, "must be strictly between 0 and 1", "use e.g. 0.75")
    # RandomState(seed).rand draws exactly what np.random.seed(seed); np.random.rand does, without
    # touching the global generator.
    draw = np.random.RandomState(seed).rand(len(interactions))
    key = interactions[by].to_numpy()
    order = np.lexsort((draw, key))
    sorted_key = key[order]
    starts = (
        np.r_[0, np.flatnonzero(sorted_key[1:] != sorted_key[:-1]) + 1] if len(key) else np.zeros(0, np.int64)
    )
    counts = np.diff(np.r_[starts, len(key)])
    rank = np.arange(len(key)) - np.repeat(starts, counts)
    n_train = np.round(ratio * counts).astype(np.int64)  # round-half-even, like Python's round()
    train = np.zeros(len(key), bool)
    train[order] = rank < np.repeat(n_train, counts)
    return train, ~train


def temporal_split(interactions: pd.DataFrame, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks: the last ``test_fraction`` of events by time are the test."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError("test_fraction", test_fraction, "must be strictly between 0 and 1", "use e.g. 0.2")
    order = np.argsort(interactions["timestamp"].to_numpy(), kind="stable")
    n_test = int(round(test_fraction * len(order)))
    test = np.zeros(len(order), bool)
    test[order[len(order) - n_test :]] = True
    return ~test, test


# How much the candidate order trusts each source when ranking is skipped (or the user is cold):
# personal sources and the all-time chart first; trending and new releases are thinner signals.
FALLBACK_WEIGHTS: dict[str, float] = {"trending": 0.5, "new": 0.25}


def fallback_scores(candidates: pd.DataFrame, weights: dict[str, float] | None = None) -> np.ndarray:
    """Candidate-order score for when ranking is skipped: best weighted reciprocal rank over the
    sources (weight 1 unless ``weights``/:data:`FALLBACK_WEIGHTS` says otherwise), with more
    sources breaking ties."""
    weights = FALLBACK_WEIGHTS if weights is None else weights
    names = [c[5:] for c in candidates.columns if c.startswith("rank_")]
    if not names:
        return np.zeros(len(candidates))
    r = candidates[[f"rank_{n}" for n in names]].to_numpy(np.float64)
    w = np.array([weights.get(n, 1.0) for n in names])
    rr = np.where(r > 0, w / np.where(r > 0, r, 1.0), 0.0)
    return rr.max(axis=1) + 1e-3 * rr.sum(axis=1)


def top_k(
    candidates: pd.DataFrame, scores: np.ndarray, k: int, n_users: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per batch row, the k best candidates: (item_ids (u,k), scores (u,k), candidate row (u,k)); -1 pads."""
    row = candidates["batch_row"].to_numpy(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((-scores, row))
    r_sorted = row[order]
    starts = np.searchsorted(r_sorted, np.arange(n_users))
    rank = np.arange(len(order)) - starts[r_sorted]
    keep = rank < k
    items = np.full((n_users, k), -1, np.int64)
    out_scores = np.full((n_users, k), -np.inf, np.float32)
    pos = np.full((n_users, k), -1, np.int64)
    sel = order[keep]
    items[r_sorted[keep], rank[keep]] = candidates["item_id"].to_numpy(np.int64)[sel]
    out_scores[r_sorted[keep], rank[keep]] = scores[sel]
    pos[r_sorted[keep], rank[keep]] = sel
    return items, out_scores, pos


def _runs(keys: np.ndarray) -> np.ndarray:
    """Lengths of the runs of equal consecutive keys: lambdarank groups (a user may recur per fold)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1]
    return np.diff(np.r_[starts, len(keys)])


class TwoStageRecommender:
    """Candidates from several sources, re-ordered by a LightGBM ranker on point-in-time features."""

    def __init__(
        self,
        sources: dict[str, int] | None = None,
        source_models: dict | None = None,
        ranker: LightGBMRanker | None = None,
        label_split: str = "stratified",
        label_ratio: float = 0.75,
        label_folds: int = 1,
        label_days: float = 1.0,
        threshold: float = 0.7,
        score_models: tuple[str, ...] = ("als", "ease", "rp3", "content"),
        seed: int = 42,
        valid_fraction: float = 0.1,
        verbose: bool = False,
        feature_settings: dict | None = None,
    ) -> None:
        self.sources = sources
        self.source_models = source_models
        self.ranker = ranker
        self.label_split = label_split
        self.label_ratio = label_ratio
        self.label_folds = label_folds
        self.label_days = label_days
        self.threshold = threshold
        self.score_models = score_models
        self.seed = seed
        self.valid_fraction = valid_fraction
        self.verbose = verbose
        self.feature_settings = feature_settings

    def _log(self, message: str) -> None:
        if self.verbose:
            print(f"[two_stage] {message}", file=sys.stderr, flush=True)

    def _feature_builder(self) -> FeatureBuilder:
        return FeatureBuilder(**(self.feature_settings or {}))

    def _generator(self) -> CandidateGenerator:
        import copy

        models = copy.deepcopy(self.source_models) if self.source_models else None
        return CandidateGenerator(dict(self.sources or DEFAULT_SOURCES), models)

    def _split(
        self, dataset: RecsysDataset, cutoff: int | None, fold: int = 0
    ) -> tuple[RecsysDataset, pd.DataFrame, int | None]:
        inter = dataset.interactions
        if self.label_split == "stratified":
            hist, lab = stratified_split(inter, self.label_ratio, self.seed + fold)
            return dataset.with_interactions(inter[hist].reset_index(drop=True)), inter[lab], None
        if self.label_split == "temporal":
            ts = inter["timestamp"].to_numpy()
            if cutoff is None:
                cutoff = int(ts.max() + 1 - self.label_days * DAY)
            past = inter[ts < cutoff].reset_index(drop=True)
            window = inter[(ts >= cutoff) & (ts < cutoff + self.label_days * DAY)]
            return dataset.with_interactions(past), window, int(cutoff)
        raise InputError("label_split", self.label_split, "must be 'stratified' or 'temporal'", "pick one")

    def training_rows(self, dataset: RecsysDataset, cutoff: int | None = None, fold: int = 0) -> TrainingRows:
        """The ranker's training rows (features from the history slice only, labels from the rest)."""
        history, labels, cutoff = self._split(validate(dataset), cutoff, fold)
        if history.interactions.empty or labels.empty:
            raise InputError(
                "dataset", dataset.name, "too few events to make a history and a label slice", "add data"
            )
        users = IdMap(history.interactions["user_id"].to_numpy())
        items = IdMap(dataset.items["item_id"].to_numpy())
        return label_rows(
            history,
            labels,
            self._generator(),
            self._feature_builder(),
            score_models=self.score_models,
            threshold=self.threshold,
            users=users,
            items=items,
            cutoff=cutoff,
        )

    def _all_rows(self, dataset: RecsysDataset, cutoff: int | None) -> TrainingRows:
        """Rows of every label fold (stratified: one re-split per seed), stacked."""
        folds = self.label_folds if self.label_split == "stratified" else 1
        parts = [self.training_rows(dataset, cutoff, fold) for fold in range(max(1, folds))]
        if len(parts) == 1:
            return parts[0]
        cand = pd.concat([p.candidates for p in parts], ignore_index=True)
        X = pd.concat([p.X for p in parts], ignore_index=True)
        meta = {
            "n_label_users": sum(p.meta["n_label_users"] for p in parts),
            "folds": len(parts),
            "recall": float(np.mean([p.meta["recall"] for p in parts])),
        }
        y = np.concatenate([p.y for p in parts])
        return TrainingRows(cand, X, y, np.concatenate([p.group for p in parts]), None, meta)

    def fit(self, dataset: RecsysDataset, cutoff: int | None = None) -> TwoStageRecommender:
        """Train the ranker on a history/label split of ``dataset``, then refit stage one on all of it."""
        dataset = validate(dataset)
        self._log("building training rows (candidates + features on the history slice)")
        rows = self._all_rows(dataset, cutoff)
        self.train_meta_ = {
            **rows.meta,
            "rows": len(rows.y),
            "positives": int(rows.y.sum()),
            "cutoff": rows.cutoff,
        }
        self._log(f"training rows: {self.train_meta_}")
        ranker = self.ranker if self.ranker is not None else LightGBMRanker()
        users = rows.candidates["user_id"].to_numpy()
        uniq = np.unique(users)
        rng = np.random.default_rng(self.seed)
        valid_users = (
            rng.choice(uniq, size=int(len(uniq) * self.valid_fraction), replace=False)
            if len(uniq) > 10
            else []
        )
        is_valid = np.isin(users, valid_users)
        eval_set = None
        if is_valid.any():
            eval_set = (rows.X[is_valid], rows.y[is_valid], _runs(users[is_valid]))
        gt = _runs(users[~is_valid])
        self._log("training the LightGBM ranker")
        self.ranker_ = ranker.fit(rows.X[~is_valid], rows.y[~is_valid], gt, eval_set=eval_set)
        self.train_meta_["best_iteration"] = self.ranker_.best_iteration_
        self.reference_ = self._reference(rows.X)
        self._log("refitting candidate models and features on all events")
        self._fit_stage_one(dataset)
        return self

    def _reference(self, X: pd.DataFrame, max_rows: int = REFERENCE_ROWS) -> pd.DataFrame:
        """A seeded sample of the ranker's training rows with the model's score as ``prediction``: the
        training reference drift monitoring compares served requests against (saved next to the model)."""
        rng = np.random.default_rng(self.seed)
        take = (
            np.sort(rng.choice(len(X), size=max_rows, replace=False))
            if len(X) > max_rows
            else np.arange(len(X))
        )
        sample = X.iloc[take].reset_index(drop=True)
        return sample.assign(prediction=np.asarray(self.ranker_.predict(sample), dtype=np.float64))

    def _fit_stage_one(self, dataset: RecsysDataset) -> None:
        hist = History.build(
            dataset,
            IdMap(dataset.interactions["user_id"].to_numpy()),
            IdMap(dataset.items["item_id"].to_numpy()),
        )
        self.generator_ = self._generator().fit(hist)
        self.features_ = self._feature_builder().fit(
            dataset.interactions, hist.users, hist.items, dataset.items, dataset.users
        )
        self.seen_ = binary_matrix(dataset.interactions, hist.users, hist.items)
        self.users_, self.items_ = hist.users, hist.items

    # --- serving path: candidates -> score -> top k ----------------------------------------------

    def _exclude(self, user_ids: np.ndarray) -> sp.csr_matrix:
        rows = self.users_.index(user_ids)
        take = sp.csr_matrix(
            (np.ones((rows >= 0).sum()), (np.flatnonzero(rows >= 0), rows[rows >= 0])),
            shape=(len(user_ids), len(self.users_)),
        )
        return (take @ self.seen_).tocsr()

    def candidates(self, user_ids, exclude_seen: bool = True, seed_items: list | None = None) -> pd.DataFrame:
        """Stage one: the candidate union for a batch of raw user ids (unknown ids = cold start)."""
        user_ids = as_user_array(user_ids)
        exclude = self._exclude(user_ids) if exclude_seen else None
        return self.generator_.candidates(user_ids, exclude=exclude, seed_items=seed_items)

    def rank_features(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """The ranker's features for candidate rows (the fitted candidate scorers feed some of them);
        what :meth:`score`, the serving engine and drift monitoring all compute."""
        gen = self.generator_.models_
        return self.features_.transform(candidates, {m: gen[m] for m in self.score_models if m in gen})

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """Stage two: ranker scores for the candidate frame's rows.

        Users the model has no history for keep the candidate order (:func:`fallback_scores`): the
        ranker only ever trained on users with a history, and on cold rows (every user feature
        missing) it pushed popular titles above the ones similar to the user's onboarding picks.
        Scores are compared within a user only, so the two scales never meet."""
        scores = np.asarray(self.ranker_.predict(self.rank_features(candidates)), dtype=np.float64)
        cold = self.users_.index(candidates["user_id"].to_numpy()) < 0
        if cold.any():
            scores[cold] = fallback_scores(candidates[cold])
        return scores

    def recommend(
        self, user_ids, k: int = 10, exclude_seen: bool = True, seed_items: list | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[list[str]]]]:
        """Top ``k`` per user: (item_ids (u,k) with -1 padding, scores (u,k), sources per item)."""
        user_ids = as_user_array(user_ids)
        k = check_n(k, MAX_K)
        frame = self.candidates(user_ids, exclude_seen, seed_items)
        scores = self.score(frame) if len(frame) else np.zeros(0)
        items, top_scores, pos = top_k(frame, scores, k, len(user_ids))
        return items, top_scores, self.sources_of(frame, pos)

    def sources_of(self, frame: pd.DataFrame, pos: np.ndarray) -> list[list[list[str]]]:
        """For each (user, slot) the names of the sources that proposed that candidate."""
        names = [c[3:] for c in frame.columns if c.startswith("in_")]
        flags = frame[[f"in_{n}" for n in names]].to_numpy(bool) if names else np.zeros((len(frame), 0), bool)
        return [
            [[n for n, f in zip(names, flags[p], strict=True) if f] if p >= 0 else [] for p in row]
            for row in pos
        ]

    # --- persistence -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Directory artifact: ``ranker/`` (LightGBM text) + ``stage_one.pkl`` + ``model.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.ranker_.save(path / "ranker")
        state = {
            "generator": self.generator_,
            "features": self.features_,
            "seen": self.seen_,
            "users": self.users_,
            "items": self.items_,
        }
        with open(path / "stage_one.pkl", "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        params = {
            k: v
            for k, v in self.__dict__.items()
            if not k.endswith("_") and k not in ("ranker", "source_models")
        }
        params["score_models"] = list(self.score_models)
        write_json(path / "model.json", {"params": params, "train_meta": getattr(self, "train_meta_", {})})
        return path

    @classmethod
    def load(cls, path: str | Path) -> TwoStageRecommender:
        path = Path(path)
        for f in ("model.json", "stage_one.pkl"):
            if not (path / f).exists():
                raise DataFormatError(
                    path / f, None, "model artifact file is missing", "save the model with .save(dir)"
                )
        meta = json.loads((path / "model.json").read_text())
        params = meta["params"]
        params["score_models"] = tuple(params["score_models"])
        self = cls(**params)
        self.train_meta_ = meta.get("train_meta", {})
        self.ranker_ = LightGBMRanker.load(path / "ranker")
        with open(path / "stage_one.pkl", "rb") as fh:
            state = pickle.load(fh)  # noqa: S301 - our own artifact; the registry verifies its checksum
        self.generator_, self.features_, self.seen_ = state["generator"], state["features"], state["seen"]
        self.users_, self.items_ = state["users"], state["items"]
        return self


# ---------------------------------------------------------------------------------------------------
# The model definition: what `mlsd recsys evaluate` measures and `mlsd recsys train` serves, built by one
# function so the two cannot drift apart.

# Sources that hold a dense items x items matrix (EASE, sequential EASE, and the blend of them): above
# this many titles their matrices (and the inverse EASE needs, which has no sparse form) do not fit a
# serving box. RP3beta is not among them: above the limit it keeps a sparse top-k neighbourhood per
# title (mlsd.recsys.candidates.item_item), so the model served at 50K titles still has it.
DENSE_MAX_ITEMS = 20_000
DENSE_SOURCES = ("ease", "seq", "blend")
# The candidate scorers whose scores become ranker features when they are among the sources.
SCORE_MODELS = ("als", "ease", "rp3", "content", "blend")
# With the blend among the sources the trees boost from its score (LightGBM init_score) and learn only
# corrections: on the inner validation split of MovieLens 100K the blend alone beat every ranker trained
# from scratch (0.2790 vs 0.2763), and since sequential EASE joined the blend the corrections no longer
# added anything (mean of five inner splits: blend 0.2813; 7 leaves x 120 trees 0.2801, 3 leaves x 60
# trees 0.2812), so the trees are kept small: they may nudge the blend's order, not overturn it. With
# the side-information and sequence features (FEATURE_SETTINGS) the small trees have something new to
# nudge with, given more rounds (five inner splits; without / with the features): 3 leaves x 60
# 0.2812 / 0.2811, 3 x 200 0.2817 / 0.2832 (every split up), 3 x 400 0.2824 / 0.2832, 7 x 120
# 0.2801 / 0.2818: 3 leaves x 200 trees.
RANKER_ON_BLEND: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.02,
    "num_leaves": 3,
    "min_child_samples": 300,
    "base_feature": "m_blend_rel",
}
# Without the blend (a catalogue over DENSE_MAX_ITEMS, or a job that names other sources) the trees
# learn the whole order, with the daily job's long-standing tree count.
RANKER_FROM_SCRATCH: dict[str, Any] = {"n_estimators": 300}
# The stratified label split (offline evaluation) takes 85% of train as the ranker's inner history:
# closer in size to the history it scores with than 75% (inner validation 0.2828 vs 0.2797, see
# docs/recsys.md), re-split twice. The temporal split (the daily job) ignores both.
LABEL_RATIO = 0.85
LABEL_FOLDS = 2
# The feature builder's settings (mlsd.recsys.features.FeatureBuilder): side information (genres and
# release years against the user's history) and the sequence profile of her last recent_k events.
FEATURE_SETTINGS: dict[str, Any] = {"side_info": True, "recent_k": 10}
# The ALS trainers: implicit in this process, Spark MLlib on a master (mlsd.recsys.candidates.spark_als).
ALS_ENGINES = ("implicit", "spark")
SPARK_MASTER = re.compile(r"^(local(\[(\d+|\*)(,\d+)?\])?|spark://[^\s/]+|yarn|k8s://\S+)$")


@dataclass(frozen=True)
class ModelSpec:
    """One two-stage model definition: candidate sources and their sizes, each source's settings, the
    ranker's settings and the scorers it reads, the feature builder's settings; ``dropped`` says which sources the catalogue ruled out
    and why. :meth:`build` makes the (unfitted) model; the split protocol is the caller's."""

    sources: dict[str, int]
    source_settings: dict[str, dict[str, Any]]
    ranker: dict[str, Any]
    score_models: tuple[str, ...]
    label_ratio: float = LABEL_RATIO
    label_folds: int = LABEL_FOLDS
    dropped: dict[str, str] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=lambda: dict(FEATURE_SETTINGS))
    # Which trainer fits the ALS factors (the "als" source and an ALS member of the blend): "implicit"
    # in this process, or "spark" (Spark MLlib on ``spark_master``; None: Spark's active session, else
    # local[2]). The fitted source is an ALSCandidates either way: serving never imports pyspark.
    als_engine: str = "implicit"
    spark_master: str | None = None

    def source_models(self) -> dict:
        """Fresh, configured (unfitted) instances of the sources that have settings."""
        settings = self.source_settings
        als: Any = ALSCandidates
        if self.als_engine == "spark":
            from functools import partial

            from mlsd.recsys.candidates.spark_als import SparkALSCandidates

            als = partial(SparkALSCandidates, master=self.spark_master)
        factories = {"als": als, "ease": EASECandidates, "rp3": RP3BetaCandidates,
                     "seq": SequentialEASECandidates}  # fmt: skip
        models = {name: make(**settings[name]) for name, make in factories.items() if name in self.sources}
        if "blend" in self.sources:
            weights = settings["blend"]
            members = {name: factories[name](**settings[name]) for name in weights}
            models["blend"] = BlendCandidates(members, dict(weights))
        return models

    def build(
        self,
        *,
        label_split: str = "stratified",
        label_days: float = 1.0,
        n_jobs: int = 1,
        verbose: bool = False,
    ) -> TwoStageRecommender:
        """The unfitted two-stage model of this definition under the caller's split protocol."""
        return TwoStageRecommender(
            sources=dict(self.sources),
            source_models=self.source_models(),
            ranker=LightGBMRanker(**self.ranker, n_jobs=n_jobs),
            score_models=self.score_models,
            label_split=label_split,
            label_ratio=self.label_ratio,
            label_folds=self.label_folds,
            label_days=label_days,
            verbose=verbose,
            feature_settings=dict(self.features),
        )

    def log_dropped(self, prefix: str, file=None) -> None:
        """Say on stderr which sources the catalogue ruled out (both paths call this alike)."""
        for name, why in self.dropped.items():
            print(f"{prefix}: source {name!r} left out: {why}", file=file or sys.stderr, flush=True)


def model_spec(
    n_items: int,
    sources: dict[str, int] | None = None,
    n_estimators: int | None = None,
    *,
    als_engine: str = "implicit",
    spark_master: str | None = None,
) -> ModelSpec:
    """THE model definition for a catalogue of ``n_items`` titles: ``mlsd recsys evaluate`` and the
    daily job (``mlsd recsys train``, hence the service) both build their model from it.

    ``sources`` (name -> candidates) and ``n_estimators`` are a job's explicit overrides (a simulated
    world's smaller job, an experiment's challenger); ``None`` keeps the definition's. Source settings
    are :data:`~mlsd.recsys.candidates.EVAL_SOURCE_SETTINGS` (chosen on inner validation, whichever
    path builds). Above :data:`DENSE_MAX_ITEMS` titles the dense sources (EASE, sequential EASE,
    the blend) are left out, with the reason in ``dropped``, and the trees learn from scratch.
    ``als_engine`` (:data:`ALS_ENGINES`) picks the ALS trainer, ``spark_master`` where Spark runs
    (``local[2]``, ``spark://host:7077``): the same definition otherwise.

    >>> spec = model_spec(1_682)
    >>> "blend" in spec.sources, spec.ranker["base_feature"], spec.dropped
    (True, 'm_blend_rel', {})
    >>> spec.features == FEATURE_SETTINGS
    True
    >>> big = model_spec(50_000)
    >>> sorted(big.dropped), "base_feature" in big.ranker
    (['blend', 'ease'], False)
    >>> type(model_spec(1_682, als_engine="spark", spark_master="local[2]").source_models()["als"]).__name__
    'SparkALSCandidates'
    >>> model_spec(1_682, als_engine="mllib")
    Traceback (most recent call last):
    ...
    mlsd.platform.errors.InputError: als_engine='mllib': is not an ALS trainer. Fix: use one of implicit, spark
    """
    if not isinstance(n_items, int | np.integer) or n_items < 0:
        raise InputError("n_items", n_items, "must be a non-negative integer", "pass len(dataset.items)")
    if als_engine not in ALS_ENGINES:
        raise InputError(
            "als_engine", als_engine, "is not an ALS trainer", f"use one of {', '.join(ALS_ENGINES)}"
        )
    if spark_master is not None:
        if als_engine != "spark":
            raise InputError("spark_master", spark_master, "is only used by the Spark ALS trainer",
                             "add als_engine='spark' (CLI: --als-engine spark) or leave the master out")  # fmt: skip
        if not isinstance(spark_master, str) or not SPARK_MASTER.match(spark_master):
            raise InputError("spark_master", spark_master, "is not a Spark master URL",
                             "pass local[2], local[*] or spark://host:7077")  # fmt: skip
    chosen = dict(EVAL_SOURCES if sources is None else sources)
    dropped = {}
    if n_items > DENSE_MAX_ITEMS:
        why = (f"{n_items} titles > {DENSE_MAX_ITEMS}: it needs a dense titles x titles matrix; "
               "ALS, RP3beta (sparse), content and popularity cover the catalogue")  # fmt: skip
        dropped = {name: why for name in DENSE_SOURCES if name in chosen}
        chosen = {name: n for name, n in chosen.items() if name not in dropped}
    ranker = dict(RANKER_ON_BLEND if "blend" in chosen else RANKER_FROM_SCRATCH)
    if n_estimators is not None:
        ranker["n_estimators"] = int(n_estimators)
    return ModelSpec(
        sources=chosen,
        source_settings={name: dict(v) for name, v in EVAL_SOURCE_SETTINGS.items()},
        ranker=ranker,
        score_models=tuple(m for m in SCORE_MODELS if m in chosen),
        dropped=dropped,
        als_engine=als_engine,
        spark_master=spark_master,
    )


def settings_of(obj) -> dict[str, Any]:
    """An estimator's settings: its public attributes (fitted state ends with ``_``)."""
    out = {}
    for key, value in vars(obj).items():
        if key.endswith("_") or key.startswith("_"):
            continue
        out[key] = {n: settings_of(m) for n, m in value.items()} if key == "models" and value else value
    return out


def definition(model: TwoStageRecommender) -> dict[str, Any]:
    """What a two-stage model *is*, apart from its split protocol and thread count: sources and their
    sizes, each configured source's settings, the ranker's settings, the scorers it reads. Two models
    with equal definitions fitted on the same data are the same model (the test that evaluate and
    train agree compares these)."""
    ranker = {k: v for k, v in settings_of(model.ranker or LightGBMRanker()).items() if k != "n_jobs"}
    return {
        "sources": dict(model.sources or DEFAULT_SOURCES),
        "source_models": {name: settings_of(m) for name, m in (model.source_models or {}).items()},
        "ranker": ranker,
        "score_models": tuple(model.score_models),
        "label_ratio": model.label_ratio,
        "label_folds": model.label_folds,
        "features": dict(model.feature_settings or {}),
    }
