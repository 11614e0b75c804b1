"""The two-stage recommender on the toy dataset: tastes learned, seen excluded, cold start, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates import EASECandidates
from mlsd.recsys.data import toy_dataset
from mlsd.recsys.model import (
    TwoStageRecommender,
    fallback_scores,
    stratified_split,
    temporal_split,
    top_k,
)
from mlsd.recsys.ranker import LightGBMRanker

SOURCES = {"ease": 12, "content": 8, "popular": 6, "new": 2}


def small(label_split="stratified"):
    return TwoStageRecommender(
        sources=SOURCES,
        source_models={"ease": EASECandidates(lam=10.0)},
        ranker=LightGBMRanker(n_estimators=20, min_child_samples=5, n_jobs=1),
        label_split=label_split,
        score_models=("ease", "content"),
    )


@pytest.fixture(scope="module")
def fitted():
    return small().fit(toy_dataset(n_users=60, n_items=40, per_user=10))


def test_stratified_split_known_answer():
    inter = pd.DataFrame({"item_id": [1, 1, 1, 1, 2, 2, 3], "user_id": range(7)})
    train, test = stratified_split(inter, 0.75, 42)
    # item 1: round(3.0)=3 train; item 2: round(1.5)=2 train (half to even); item 3: round(0.75)=1
    assert train.sum() == 6 and test.sum() == 1
    draws = np.random.RandomState(42).rand(7)
    assert test[
        int(np.argmax(np.where(inter.item_id == 1, draws, -1)))
    ]  # item 1's largest draw is the test row


def test_temporal_split_takes_latest():
    inter = pd.DataFrame({"timestamp": [5, 1, 4, 2, 3]})
    train, test = temporal_split(inter, 0.4)
    assert inter.timestamp[test].tolist() == [5, 4]


def test_recommend_learns_tastes_and_excludes_seen(fitted):
    ds = toy_dataset(n_users=60, n_items=40, per_user=10)
    users = np.array([1, 2, 3, 4])
    items, scores, sources = fitted.recommend(users, k=5)
    assert items.shape == scores.shape == (4, 5)
    assert ((items - 1) % 2 == (users[:, None] - 1) % 2).mean() >= 0.9
    seen = set(zip(ds.interactions.user_id, ds.interactions.item_id, strict=True))
    assert not any((u, i) in seen for u, row in zip(users, items, strict=True) for i in row)
    assert (np.diff(scores, axis=1) <= 1e-9).all()
    assert all(len(s) >= 1 for row in sources for s in row)
    assert {"ease", "content", "popular", "new"} >= {n for row in sources for s in row for n in s}


def test_cold_start_users_get_content_and_popularity(fitted):
    items, _, sources = fitted.recommend(np.array([10_000, 10_001]), k=4, seed_items=[[2, 4], []])
    assert (items[0] >= 0).all() and (items[1] >= 0).all()
    names = {n for s in sources[0] for n in s}
    assert "ease" not in names and names & {"content", "popular"}
    # Beta seeds: every title the content source proposed is a Beta title, and some made the top 4
    from_content = [i for i, s in zip(items[0], sources[0], strict=True) if "content" in s]
    assert from_content and all((i - 1) % 2 == 1 for i in from_content)


def test_stages_separately_and_fallback(fitted):
    frame = fitted.candidates(np.array([1, 2]))
    ranked = fitted.score(frame)
    assert len(ranked) == len(frame)
    items, _, pos = top_k(frame, fallback_scores(frame), 3, 2)
    assert (items >= 0).all() and (pos >= 0).all()


def test_bad_k_and_user_ids(fitted):
    for k in (0, -1, 501):
        with pytest.raises(InputError, match="n"):
            fitted.recommend(np.array([1]), k=k)
    with pytest.raises(InputError, match="user_ids"):
        fitted.recommend(np.array(["x"]), k=3)


def test_save_load_same_answers(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    back = TwoStageRecommender.load(tmp_path / "m")
    a, sa, _ = fitted.recommend(np.array([1, 2, 999]), k=5)
    b, sb, _ = back.recommend(np.array([1, 2, 999]), k=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb, rtol=1e-6)


def test_temporal_label_split_fits():
    ds = toy_dataset(n_users=60, n_items=40, per_user=10)
    model = small("temporal")
    model.label_days = 3.0
    model.fit(ds)
    assert model.train_meta_["cutoff"] is not None and model.train_meta_["positives"] > 0
    items, _, _ = model.recommend(np.array([1]), k=3)
    assert (items >= 0).all()


def test_the_definitions_model_on_a_catalogue_without_genres_or_years(tmp_path):
    """Imported data may carry no genres and no years (docs/data.md: '' and -1): the model definition's
    side-information features are then missing (NaN) on every row, the model still fits, ranks, saves
    and loads, and tastes are still learned from the history."""
    from mlsd.recsys.features import SIDE_FEATURES
    from mlsd.recsys.model import model_spec

    ds = toy_dataset(n_users=60, n_items=40, per_user=10)
    ds = type(ds)(ds.interactions, ds.items.assign(genres="", year=-1), ds.users, name="bare")
    spec = model_spec(len(ds.items), sources={"ease": 12, "content": 8, "popular": 6}, n_estimators=20)
    model = spec.build(label_split="stratified").fit(ds)
    assert model.features_.side_info
    frame = model.candidates([2, 3])
    X = model.rank_features(frame)
    assert X[[c for c in SIDE_FEATURES if c.startswith("x_")]].isna().all().all()
    items, _, _ = model.recommend([2, 3], k=5)
    assert (items[0] % 2 == 0).mean() >= 0.8 and (items[1] % 2 == 1).mean() >= 0.8  # even/odd tastes
    again = TwoStageRecommender.load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(again.recommend([2, 3], k=5)[0], items)
