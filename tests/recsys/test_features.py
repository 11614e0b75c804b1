"""Ranking features: known values on a hand-made history, and point-in-time correctness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates import CandidateGenerator, EASECandidates
from mlsd.recsys.data import IdMap, RecsysDataset, make_interactions, toy_dataset
from mlsd.recsys.features import DAY, FeatureBuilder, build_training_rows


def hand_made():
    # user 1: item 10 (Action) and 20 (Action|Drama), ratings 4, 2; user 2: item 10; item 30 never seen
    inter = make_interactions([1, 1, 2], [10, 20, 10], [0, DAY, 2 * DAY], rating=[4.0, 2.0, 5.0])
    items = pd.DataFrame(
        {
            "item_id": [10, 20, 30],
            "title": ["a", "b", "c"],
            "genres": ["Action", "Action|Drama", "Drama"],
            "year": [1990, 2000, 2010],
        }
    )
    users = pd.DataFrame({"user_id": [1, 2], "gender": ["F", "M"]})
    return inter, items, users


def test_known_feature_values():
    inter, items, users = hand_made()
    fb = FeatureBuilder(scale_free=False).fit(
        inter, IdMap([1, 2]), IdMap([10, 20, 30]), items, users, cutoff=3 * DAY
    )
    cand = pd.DataFrame({"user_id": [1, 1, 2], "item_idx": [2, 0, 2]})
    X = fb.transform(cand)
    assert X["u_events"].tolist() == [2, 2, 1]
    assert X["u_rating_mean"].tolist() == [3.0, 3.0, 5.0]
    assert X["i_pop"].tolist() == [0, 2, 0]
    assert X["u_recency_days"].tolist() == [2.0, 2.0, 1.0]
    assert X["i_year"].tolist() == [2010, 1990, 2010]
    # user 1's events: Action twice, Drama once, over 2 events -> Action 1.0, Drama 0.5
    assert X["x_genre_affinity"].iloc[0] == pytest.approx(0.5)  # item 30 = Drama
    assert X["x_genre_affinity"].iloc[1] == pytest.approx(1.0)  # item 10 = Action
    assert X["u_gender"].tolist() == [0, 0, 1]


def test_unknown_user_gets_nan_user_features():
    inter, items, users = hand_made()
    fb = FeatureBuilder(scale_free=False).fit(inter, IdMap([1, 2]), IdMap([10, 20, 30]), items, users)
    X = fb.transform(pd.DataFrame({"user_id": [99], "item_idx": [0]}))
    assert np.isnan(X["u_events"].iloc[0]) and X["i_pop"].iloc[0] == 2


def test_history_must_precede_cutoff():
    inter, items, users = hand_made()
    with pytest.raises(InputError, match="cutoff"):
        FeatureBuilder().fit(inter, IdMap([1, 2]), IdMap([10, 20, 30]), items, users, cutoff=DAY)


def small_generator():
    return CandidateGenerator({"ease": 10, "content": 5, "popular": 5}, {"ease": EASECandidates(lam=10.0)})


def test_training_rows_are_point_in_time():
    """Events at or after the label window's end, or anything after the cutoff apart from labels,
    must not change a single feature value: the leakage test."""
    ds = toy_dataset(n_users=40, n_items=30, per_user=8)
    ts = ds.interactions["timestamp"].to_numpy()
    cutoff = int(np.quantile(ts, 0.8))
    base = build_training_rows(ds, cutoff, label_days=1.0, generator=small_generator())
    assert len(base.y) and base.y.sum() > 0
    # Add a flood of future events (after the label window) for every user and item
    future = make_interactions(
        np.repeat(ds.users["user_id"], 5),
        np.tile(ds.items["item_id"].to_numpy()[:5], 40),
        np.full(200, cutoff + 10 * DAY),
        rating=np.full(200, 5.0),
    )
    leaked = ds.with_interactions(pd.concat([ds.interactions, future], ignore_index=True))
    again = build_training_rows(leaked, cutoff, label_days=1.0, generator=small_generator())
    pd.testing.assert_frame_equal(base.X, again.X)
    np.testing.assert_array_equal(base.y, again.y)
    # labels come only from [cutoff, cutoff + 1 day): every positive is such an event
    window = ds.interactions[(ts >= cutoff) & (ts < cutoff + DAY)]
    pos = base.candidates.loc[base.y == 1, ["user_id", "item_id"]]
    keys = set(zip(window.user_id, window.item_id, strict=True))
    assert all((u, i) in keys for u, i in pos.itertuples(index=False))
    assert int(base.group.sum()) == len(base.y)


def test_training_rows_change_when_the_past_changes():
    """The control for the leakage test: an extra event BEFORE the cutoff does change features."""
    ds = toy_dataset(n_users=40, n_items=30, per_user=8)
    cutoff = int(np.quantile(ds.interactions["timestamp"], 0.8))
    base = build_training_rows(ds, cutoff, label_days=1.0, generator=small_generator())
    past = make_interactions(
        np.repeat(ds.users["user_id"], 3), np.tile([1, 3, 5], 40), np.full(120, cutoff - 10)
    )
    changed = ds.with_interactions(pd.concat([ds.interactions, past], ignore_index=True))
    again = build_training_rows(changed, cutoff, label_days=1.0, generator=small_generator())
    assert not again.X["i_pop"].equals(base.X["i_pop"]) or len(again.X) != len(base.X)


def test_bad_label_days_and_empty_past():
    ds = toy_dataset(n_users=10, n_items=10, per_user=3)
    with pytest.raises(InputError, match="label_days"):
        build_training_rows(ds, 2_000_000_000, label_days=0)
    with pytest.raises(InputError, match="cutoff"):
        build_training_rows(ds, 0, label_days=1)
    assert isinstance(ds, RecsysDataset)


def test_scale_free_counts_and_no_raw_scores():
    """Counts are per 100K history events and CF scores appear only as rank / relative-to-best, so a
    ranker trained on a shorter history sees the same scale when it scores with the full one."""
    inter, items, users = hand_made()
    cand = pd.DataFrame(
        {"user_id": [1, 1], "item_idx": [2, 0], "score_popular": [0.0, 2.0], "rank_popular": [2, 1]}
    )
    fb = FeatureBuilder().fit(inter, IdMap([1, 2]), IdMap([10, 20, 30]), items, users)
    X = fb.transform(cand)
    assert X["i_pop"].tolist() == pytest.approx([0.0, 2 * 1e5 / 3])
    assert "c_score_popular" not in X and X["c_rank_popular"].tolist() == [2, 1]
    # doubling the history (every event twice) leaves the scaled popularity unchanged
    twice = pd.concat([inter, inter], ignore_index=True)
    X2 = FeatureBuilder().fit(twice, IdMap([1, 2]), IdMap([10, 20, 30]), items, users).transform(cand)
    assert X2["i_pop"].tolist() == pytest.approx(X["i_pop"].tolist())


def test_one_user_path_gives_the_batch_feature_matrix(tiny):
    """Serving transforms one user at a time (numpy per-user max/rank, cached content rows); the
    training batch goes through pandas group-bys: the feature matrices must be identical."""
    from mlsd.recsys.model import TwoStageRecommender
    from mlsd.recsys.training import MODEL_NAME

    model = TwoStageRecommender.load(tiny.require_champion(MODEL_NAME).path)
    models = {m: model.generator_.models_[m] for m in model.score_models if m in model.generator_.models_}
    assert "content" in models  # the cached one-row content scores are exercised
    users = model.users_.ids[:6]
    batch = model.candidates(users)
    X_batch = model.features_.transform(batch, models)
    # ALS scores are BLAS dot products whose last bit depends on how many users share the call
    # (gemm for a batch, gemv for one), in the batch code as much as here: m_als_rel is compared
    # to float32 precision, every other column bit for bit.
    blas = [c for c in X_batch.columns if c.startswith("m_als") and c.endswith("_rel")]
    exact = [c for c in X_batch.columns if c not in blas]
    for _ in range(2):  # the second pass reads the content rows from the cache
        one = pd.concat(
            [model.features_.transform(model.candidates(np.array([u])), models) for u in users],
            ignore_index=True,
        )
        assert list(one.columns) == list(X_batch.columns)
        np.testing.assert_array_equal(one[exact].to_numpy(), X_batch[exact].to_numpy())
        np.testing.assert_allclose(one[blas].to_numpy(), X_batch[blas].to_numpy(), rtol=1e-5, atol=1e-6)
    assert list(X_batch.columns) == model.ranker_.feature_names_
    assert (X_batch.dtypes == np.float32).all()


def test_per_user_best_and_rank_match_pandas_group_bys():
    from mlsd.recsys.features import _per_user_best_and_rank

    values = np.array([0.5, np.nan, 0.9, 0.5, 0.9, -1.0], np.float32)  # ties, a NaN, a negative
    for users in (np.zeros(6, np.int64), np.array([3, 3, 1, 1, 3, 1])):
        s = pd.Series(values)
        best, rank = _per_user_best_and_rank(values, users)
        np.testing.assert_array_equal(best, s.groupby(users).transform("max").to_numpy())
        expected = s.groupby(users).rank(ascending=False, method="first").to_numpy(np.float32)
        np.testing.assert_array_equal(rank, expected)
    _, rank = _per_user_best_and_rank(values, np.zeros(6, np.int64))
    np.testing.assert_array_equal(rank, [3, np.nan, 1, 4, 2, 5])
    best, rank = _per_user_best_and_rank(np.full(2, np.nan, np.float32), np.zeros(2, np.int64))
    assert np.isnan(best).all() and np.isnan(rank).all()


def test_serving_caches_are_not_pickled_and_a_refit_drops_them(tiny):
    import pickle

    from mlsd.recsys.model import TwoStageRecommender
    from mlsd.recsys.training import MODEL_NAME

    model = TwoStageRecommender.load(tiny.require_champion(MODEL_NAME).path)
    content = model.generator_.models_["content"]
    uid = np.array([model.users_.ids[0]])
    frame = model.candidates(uid)
    X = model.features_.transform(frame, {"content": content})
    caches = {"_item_table_values_cache", "_user_table_values_cache"}
    assert caches <= set(model.features_.__dict__) and content.__dict__.get("_row_cache")
    fb, cc = pickle.loads(pickle.dumps(model.features_)), pickle.loads(pickle.dumps(content))
    assert not caches & set(fb.__dict__) and "_row_cache" not in cc.__dict__
    np.testing.assert_array_equal(fb.transform(frame, {"content": cc}).to_numpy(), X.to_numpy())
    fb.item_table_ = fb.item_table_ * 2  # what a refit does: a new table object
    np.testing.assert_array_equal(fb._item_values(), fb.item_table_.to_numpy())
    fb.user_table_ = fb.user_table_.iloc[::-1]  # a request's own table (the online store's rows)
    np.testing.assert_array_equal(fb._user_values(), fb.user_table_.to_numpy())


# --- side information and sequence features -------------------------------------------------------


def test_side_information_known_values():
    """Hand-computed: user 1 watched 10 (Action, 1990) then 20 (Action|Drama, 2000); user 2 watched 10.
    The catalogue's genre shares over the 3 events: Action 1, Drama 1/3."""
    from mlsd.recsys.features import LIFT_PRIOR, SIDE_FEATURES

    inter, items, users = hand_made()
    fb = FeatureBuilder(scale_free=False, recent_k=1).fit(
        inter, IdMap([1, 2]), IdMap([10, 20, 30]), items, users, cutoff=3 * DAY
    )
    X = fb.transform(pd.DataFrame({"user_id": [1, 1, 2], "item_idx": [2, 0, 2]}))
    assert set(SIDE_FEATURES) <= set(X.columns)
    # lift of Drama for user 1: her share 1/2 over 2 events, shrunk towards 1/3 with LIFT_PRIOR events
    drama = (0.5 * 2 + LIFT_PRIOR / 3) / (2 + LIFT_PRIOR) / (1 / 3)
    assert X["x_genre_lift"].iloc[0] == pytest.approx(np.log(drama), rel=1e-5)
    assert X["x_genre_lift"].iloc[2] == pytest.approx(np.log((LIFT_PRIOR / 3) / (1 + LIFT_PRIOR) * 3), rel=1e-5)
    # cosine of her genre shares (Action 1, Drama 0.5) with item 30's (Drama)
    assert X["x_genre_cosine"].iloc[0] == pytest.approx(0.5 / np.sqrt(1.25), rel=1e-5)
    assert X["u_year_std"].iloc[0] == pytest.approx(5.0)
    assert X["x_year_z"].tolist()[:2] == pytest.approx([(2010 - 1995) / 5, (1990 - 1995) / 5])
    # item 30 (2010) is newer than both her titles; item 10 (1990) ties her oldest: half of it counts
    assert X["x_year_pct"].tolist()[:2] == pytest.approx([1.0, 0.25])
    # the last event (recent_k=1) is item 20: Action|Drama, 2000
    assert X["x_recent_genre_share"].tolist()[:2] == pytest.approx([1.0, 1.0])
    assert X["x_recent_year_gap"].tolist() == pytest.approx([10.0, -10.0, 20.0])


def test_side_information_degrades_to_missing_without_genres_or_year():
    """An imported catalogue may carry no genres and no years (docs/data.md: '' and -1): the side
    features are still columns (one schema for the ranker) and hold NaN, LightGBM's missing value;
    a title without genres among titles with genres is missing only on its own row."""
    from mlsd.recsys.features import SIDE_FEATURES

    inter, items, users = hand_made()
    bare = items.assign(genres="", year=-1)
    fb = FeatureBuilder(scale_free=False).fit(inter, IdMap([1, 2]), IdMap([10, 20, 30]), bare, users)
    X = fb.transform(pd.DataFrame({"user_id": [1, 1, 2], "item_idx": [2, 0, 1]}))
    cross = [c for c in SIDE_FEATURES if c.startswith("x_")]
    assert X[cross].isna().all().all()
    partial = items.assign(genres=["Action", "", "Drama"])
    fb = FeatureBuilder(scale_free=False).fit(inter, IdMap([1, 2]), IdMap([10, 20, 30]), partial, users)
    X = fb.transform(pd.DataFrame({"user_id": [1, 1], "item_idx": [1, 2]}))
    assert np.isnan(X["x_genre_lift"].iloc[0]) and np.isfinite(X["x_genre_lift"].iloc[1])
    assert np.isfinite(X["x_year_z"]).all()
    # no items frame at all (build_training_rows on bare interactions)
    fb = FeatureBuilder().fit(inter, IdMap([1, 2]), IdMap([10, 20, 30]))
    assert fb.transform(pd.DataFrame({"user_id": [1], "item_idx": [2]}))[cross].isna().all().all()


def test_last_k_mask_takes_each_users_latest_events():
    from mlsd.recsys.features import _last_k_mask

    u = np.array([0, 1, 0, 0, 1, 0])
    ts = np.array([5, 1, 3, 9, 2, 9])  # user 0 has a tie at 9: the later row counts as later
    np.testing.assert_array_equal(_last_k_mask(u, ts, 2), [False, True, False, True, True, True])
    np.testing.assert_array_equal(_last_k_mask(u, ts, 1), [False, False, False, False, True, True])
    assert _last_k_mask(np.zeros(0, np.int64), np.zeros(0, np.int64), 3).shape == (0,)


def planted_taste_change(n_users=120, n_items=400, old=80, recent=10, seed=0):
    """Half the titles are genre A, half B. Each user watched ``old`` titles of each genre in all, but
    her last ``recent`` events are all in one genre R (drawn per user), and what she watches next is
    R. Her whole-history genre shares are equal and the genre flags are balanced across users, so only
    the recent profile says which genre comes next."""
    rng = np.random.default_rng(seed)
    genre = np.where(np.arange(n_items) < n_items // 2, "A", "B")
    users, items, ts, taste = [], [], [], []
    for u in range(n_users):
        r = int(rng.integers(2))
        mine = rng.choice(np.flatnonzero(genre == "AB"[r]), size=old, replace=False)
        other = rng.choice(np.flatnonzero(genre != "AB"[r]), size=old, replace=False)
        past = rng.permutation(np.r_[mine[recent:], other])
        seq = np.r_[past, rng.permutation(mine[:recent])]
        users += [u + 1] * len(seq)
        items += (seq + 1).tolist()
        ts += (1_000_000_000 + 3600 * np.arange(len(seq))).tolist()
        taste.append(r)
    inter = make_interactions(users, items, ts, rating=np.full(len(users), 4.0))
    frame = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": "", "genres": genre, "year": 1995})
    return inter, frame, np.array(taste), genre


@pytest.mark.parametrize("side_info", [True, False])
def test_ranker_recovers_a_planted_recent_genre_taste(side_info):
    """Known answer: with the sequence features the ranker puts the user's recent genre on top for
    held-out users (precision@10 of the right genre > 0.9); without them it is a coin flip."""
    from mlsd.recsys.ranker import LightGBMRanker

    inter, frame, taste, genre = planted_taste_change()
    users, items = IdMap(np.unique(inter["user_id"])), IdMap(frame["item_id"].to_numpy())
    fb = FeatureBuilder(side_info=side_info).fit(inter, users, items, frame)
    seen = set(zip(inter["user_id"], inter["item_id"] - 1, strict=True))
    pairs = [(u, i) for u in users.ids for i in range(len(frame)) if (u, i) not in seen]
    cand = pd.DataFrame(pairs, columns=["user_id", "item_idx"])
    y = (genre[cand["item_idx"]] == np.array(list("AB"))[taste[cand["user_id"] - 1]]).astype(np.float32)
    X = fb.transform(cand)
    train = cand["user_id"].to_numpy() <= 80
    ranker = LightGBMRanker(n_estimators=60, num_leaves=7, min_child_samples=50).fit(X[train], y[train])
    scores = ranker.predict(X[~train])
    test = cand[~train].assign(score=scores, y=y[~train])
    top = test.sort_values(["user_id", "score"], ascending=[True, False]).groupby("user_id").head(10)
    precision = float(top["y"].mean())
    if side_info:
        assert precision > 0.9
    else:
        assert precision < 0.7  # 0.48-0.64 over seeds 0-2: user x item-flag splits on the small sample
