"""Candidate sources and their union, on the two-taste toy dataset (known answers), and one contract over
all seven sources (:class:`CandidateSourceContract`)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates import (
    ALSCandidates,
    BlendCandidates,
    CandidateGenerator,
    ContentCandidates,
    EASECandidates,
    PopularityCandidates,
    RP3BetaCandidates,
    SequentialEASECandidates,
    top_n_dense,
)
from mlsd.recsys.data import IdMap, binary_matrix, make_interactions, toy_dataset


@pytest.fixture(scope="module")
def toy():
    return toy_dataset()


def same_group_share(items_idx: np.ndarray, user_ids: np.ndarray, source) -> float:
    raw = source.items_.raw(items_idx)
    ok = raw >= 0
    return float(((raw - 1) % 2 == (user_ids[:, None] - 1) % 2)[ok].mean())


def test_top_n_dense_orders_excludes_and_pads():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, -np.inf, 0.2]])
    idx, sc = top_n_dense(scores, 4, sp.csr_matrix([[0, 1, 0], [0, 0, 0]]))
    np.testing.assert_array_equal(idx, [[2, 0, -1, -1], [0, 2, -1, -1]])
    assert np.isneginf(sc[0, 2])


@pytest.mark.parametrize(
    "source",
    [
        EASECandidates(lam=10.0),
        SequentialEASECandidates(window=3, lam=10.0),
        ALSCandidates(factors=8, iterations=10, num_threads=1),
        BlendCandidates({"als": ALSCandidates(factors=8, iterations=10, num_threads=1)}),
    ],
)
def test_cf_sources_learn_the_two_tastes_and_exclude_seen(toy, source):
    source.fit(toy)
    users = np.array([1, 2, 3, 4])
    seen = binary_matrix(toy.interactions, source.users_, source.items_)[source.users_.index(users)]
    idx, scores = source.candidates(users, 5, exclude=seen)
    assert idx.shape == scores.shape == (4, 5)
    assert same_group_share(idx, users, source) >= 0.9
    assert not np.asarray(seen[np.repeat(np.arange(4), 5), np.clip(idx, 0, None).ravel()]).any()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    pair = source.score(users, idx)
    np.testing.assert_allclose(pair, scores, rtol=1e-4, atol=1e-4)


def test_unknown_user_gets_padding_from_cf(toy):
    als = ALSCandidates(factors=4, iterations=3, num_threads=1).fit(toy)
    idx, sc = als.candidates(np.array([999]), 3)
    assert (idx == -1).all() and np.isneginf(sc).all()


def test_blend_is_the_weighted_sum_of_per_user_z_scores(toy):
    members = {"ease": EASECandidates(lam=10.0), "rp3": RP3BetaCandidates()}
    blend = BlendCandidates(members, {"ease": 1.0, "rp3": 0.5}).fit(toy)
    users = np.array([1, 2, 999])
    ease = EASECandidates(lam=10.0).fit(toy).score_dense(users)
    rp3 = RP3BetaCandidates().fit(toy).score_dense(users)

    def z(s):
        return (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)

    dense = blend.score_dense(users)
    np.testing.assert_allclose(dense[:2], (z(ease) + 0.5 * z(rp3))[:2], rtol=1e-4, atol=1e-4)
    assert np.isnan(dense[2]).all()  # unknown user: no score
    idx, _ = blend.candidates(users, 3)
    assert (idx[2] == -1).all()
    assert members["ease"].__dict__.get("M_") is None  # the configured members are copied, not fitted


def _chain_world():
    """20 users watch titles 1, 2, 3, 4 in that order (one hour apart); user 99 watched only title 1."""
    users = np.r_[np.repeat(np.arange(1, 21), 4), 99]
    items = np.r_[np.tile([1, 2, 3, 4], 20), 1]
    times = np.r_[1_000_000 + 3600 * np.tile(np.arange(4), 20) + 10 * np.repeat(np.arange(20), 4), 5_000_000]
    return make_interactions(users, items, times)


def test_sequential_ease_counts_only_nearby_titles():
    inter = _chain_world()
    user = np.array([99])
    # Whole-history EASE: every title co-occurs with every other one, so 2, 3 and 4 tie for user 99.
    ease = EASECandidates(lam=10.0).fit(inter).score_dense(user)[0]
    ease_items = EASECandidates(lam=10.0).fit(inter).items_
    s2, s3, s4 = ease[ease_items.index(np.array([2, 3, 4]))]
    assert s2 == pytest.approx(s3, rel=1e-5) and s3 == pytest.approx(s4, rel=1e-5)
    # Window 1: only neighbours in time co-occur, so the title watched right after 1 scores highest.
    seq = SequentialEASECandidates(window=1, lam=10.0).fit(inter)
    q2, q3, q4 = seq.score_dense(user)[0][seq.items_.index(np.array([2, 3, 4]))]
    assert q2 > q3 and q2 > q4
    # A window as wide as the histories sees every pair again: the three tie, as under EASE.
    wide = SequentialEASECandidates(window=3, lam=10.0).fit(inter)
    w2, w3, w4 = wide.score_dense(user)[0][wide.items_.index(np.array([2, 3, 4]))]
    assert w2 == pytest.approx(w3, rel=1e-4) and w3 == pytest.approx(w4, rel=1e-4)


def test_sequential_ease_ignores_row_order_and_breaks_time_ties_by_item(toy):
    inter = toy.interactions.copy()
    inter["timestamp"] = inter["timestamp"] // 7200 * 7200  # many same-time events per user
    a = SequentialEASECandidates(window=2, lam=5.0).fit(inter)
    shuffled = inter.sample(frac=1.0, random_state=3).reset_index(drop=True)
    b = SequentialEASECandidates(window=2, lam=5.0).fit(shuffled)
    np.testing.assert_array_equal(
        a.items_.raw(np.arange(len(a.items_))), b.items_.raw(np.arange(len(b.items_)))
    )
    order = b.items_.index(a.items_.raw(np.arange(len(a.items_))))
    np.testing.assert_allclose(a.M_, b.M_[np.ix_(order, order)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": 2.5}, {"lam": 0.0}])
def test_sequential_ease_rejects_bad_settings(toy, kwargs):
    with pytest.raises(InputError):
        SequentialEASECandidates(**kwargs).fit(toy)


def test_ease_refuses_huge_catalogue(toy):
    with pytest.raises(InputError, match="EASE"):
        EASECandidates(max_items=10).fit(toy)


def test_content_profile_and_seeds(toy):
    content = ContentCandidates().fit(toy)
    users = np.array([1, 2])
    idx, _ = content.candidates(users, 5)
    assert same_group_share(idx, users, content) == 1.0
    idx, sc = content.from_seeds([[1, 3], [2]], 4)  # Alpha seeds, then a Beta seed
    raw = content.items_.raw(idx)
    assert ((raw[0] - 1) % 2 == 0).all() and ((raw[1] - 1) % 2 == 1).all()
    assert 1 not in raw[0] and 3 not in raw[0]  # the seeds themselves are not recommended


def test_popularity_kinds():
    inter = make_interactions([1, 2, 3, 1, 2], [10, 10, 10, 20, 30], [0, 1, 2, 10 * 86400, 10 * 86400 + 5])
    pop = PopularityCandidates("popular").fit(inter)
    idx, _ = pop.candidates(np.array([5]), 3)
    assert pop.items_.raw(idx)[0, 0] == 10
    trend = PopularityCandidates("trending", window_days=1).fit(inter)
    assert set(trend.items_.raw(trend.candidates(np.array([5]), 2)[0])[0]) == {20, 30}
    excl = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, 3))
    assert 10 not in pop.items_.raw(pop.candidates(np.array([5]), 3, excl)[0])[0]
    with pytest.raises(InputError):
        PopularityCandidates("weird").fit(inter)


def test_generator_union_flags_and_cold_start(toy):
    gen = CandidateGenerator(
        {"ease": 10, "content": 10, "popular": 5, "new": 3},
        {"ease": EASECandidates(lam=10.0)},
    ).fit(toy)
    frame = gen.candidates(np.array([1, 999]), seed_items=[[], [2, 4]])
    assert not frame.duplicated(["user_id", "item_id"]).any()
    warm, cold = frame[frame.user_id == 1], frame[frame.user_id == 999]
    assert warm["in_ease"].any() and not cold["in_ease"].any()
    assert cold["in_content"].any() and cold["in_popular"].sum() == 5
    # cold content candidates follow the Beta seeds
    assert ((cold.loc[cold.in_content, "item_id"] - 1) % 2 == 1).all()
    assert (frame["n_sources"] == frame[[c for c in frame if c.startswith("in_")]].sum(axis=1)).all()
    assert ((frame["rank_ease"] > 0) == frame["in_ease"]).all()
    with pytest.raises(InputError):
        gen.candidates(np.array([1.5]))
    with pytest.raises(InputError):
        gen.candidates(np.array([1]), exclude=sp.csr_matrix((2, 3)))


def test_is_excluded_matches_scipy_element_lookup():
    """The serving path's exclusion test (sorted keys) answers exactly what ``exclude[rows, cols]`` does."""
    import scipy.sparse as sp

    from mlsd.recsys.candidates.base import is_excluded

    rng = np.random.default_rng(0)
    for t in range(50):
        u, n = int(rng.integers(1, 6)), int(rng.integers(5, 40))
        ex = sp.random(u, n, density=rng.random() * 0.5, format="csr", random_state=t)
        ex.data[:] = 1.0
        cols = rng.integers(0, n, size=(u, int(rng.integers(1, 10))))
        rows = np.repeat(np.arange(u), cols.shape[1])
        expected = np.asarray(ex[rows, cols.ravel()]).reshape(cols.shape) != 0
        np.testing.assert_array_equal(is_excluded(ex, cols), expected)


# ---------------------------------------------------------------------------------------------------
# One contract over all seven sources: each source opts in with a few lines (like implicit's
# RecommenderBaseTestMixin), the mixin checks what the generator, the features and the engine rely on.


class CandidateSourceContract:
    """Fit on the toy dataset; candidates' shape and dtype; exclude honoured; ``score`` consistent with
    ``candidates``; a batch of one is a row of a batch; a pickled source answers the same (models are
    saved as pickles). A source sets :meth:`make` and, where it differs, the class attributes."""

    users = np.array([1, 2, 3, 4, 5, 999])  # 999: a user the source never saw
    personalised = True  # unknown users get an all-padding row

    def make(self):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def source(self, toy):
        return self.make().fit(toy)

    @pytest.fixture(scope="class")
    def seen(self, toy, source):
        rows = source.users_.index(self.users)
        full = binary_matrix(toy.interactions, source.users_, source.items_)
        out = sp.lil_matrix((len(self.users), len(source.items_)))
        for j, r in enumerate(rows):
            if r >= 0:
                out[j] = full[r]
        return out.tocsr()

    def test_fit_returns_the_source_with_its_id_maps(self, toy):
        fresh = self.make()
        assert fresh.fit(toy) is fresh  # scikit-learn style: fit returns the estimator
        assert isinstance(fresh.items_, IdMap) and 0 < len(fresh.items_) <= toy.items["item_id"].nunique()

    def test_candidates_shape_dtype_and_order(self, source):
        idx, scores = source.candidates(self.users, 7)
        assert idx.shape == scores.shape == (len(self.users), 7)
        assert idx.dtype == np.int64 and scores.dtype == np.float32
        assert ((idx >= -1) & (idx < len(source.items_))).all()
        for row, sc in zip(idx, scores, strict=True):
            real = row[row >= 0]
            assert len(np.unique(real)) == len(real)  # no title twice
            assert (row[len(real) :] == -1).all() and np.isneginf(sc[len(real) :]).all()  # padding at the end
            assert (np.diff(sc[: len(real)]) <= 1e-6).all()  # best first
        if self.personalised:
            assert (idx[-1] == -1).all()  # the unknown user
        else:
            assert (idx[-1] >= 0).any()

    def test_exclude_is_honoured(self, source, seen):
        idx, _ = source.candidates(self.users, 10, exclude=seen)
        rows = np.repeat(np.arange(len(self.users)), idx.shape[1])
        hit = np.asarray(seen[rows, np.clip(idx, 0, None).ravel()]).reshape(idx.shape) != 0
        assert not (hit & (idx >= 0)).any()

    def test_score_is_consistent_with_candidates(self, source):
        idx, scores = source.candidates(self.users, 7)
        pair = source.score(self.users, idx)
        assert pair.shape == idx.shape
        ok = idx >= 0
        np.testing.assert_allclose(pair[ok], scores[ok], rtol=1e-4, atol=1e-4)
        assert np.isnan(pair[~ok]).all()

    def test_a_batch_of_one_is_a_row_of_the_batch(self, source):
        idx, scores = source.candidates(self.users, 7)
        for j, user in enumerate(self.users):
            one_idx, one_sc = source.candidates(np.array([user]), 7)
            np.testing.assert_array_equal(one_idx[0], idx[j])
            np.testing.assert_allclose(one_sc[0], scores[j], rtol=1e-5, atol=1e-6)

    def test_a_pickled_source_answers_the_same(self, source):
        back = pickle.loads(pickle.dumps(source))
        a, b = source.candidates(self.users, 7), back.candidates(self.users, 7)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


class TestALSContract(CandidateSourceContract):
    def make(self):
        return ALSCandidates(factors=8, iterations=10, num_threads=1)


class TestEASEContract(CandidateSourceContract):
    def make(self):
        return EASECandidates(lam=10.0)


class TestRP3BetaContract(CandidateSourceContract):
    def make(self):
        return RP3BetaCandidates()


class TestSequentialEASEContract(CandidateSourceContract):
    def make(self):
        return SequentialEASECandidates(window=3, lam=10.0)


class TestBlendContract(CandidateSourceContract):
    def make(self):
        members = {"ease": EASECandidates(lam=10.0), "rp3": RP3BetaCandidates()}
        return BlendCandidates(members, {"ease": 1.0, "rp3": 0.5})


class TestContentContract(CandidateSourceContract):
    def make(self):
        return ContentCandidates()


class TestPopularityContract(CandidateSourceContract):
    personalised = False  # the same list for everyone, unknown users included

    def make(self):
        return PopularityCandidates("trending", window_days=30)


def test_every_source_opts_into_the_contract():
    covered = {type(cls().make()) for cls in CandidateSourceContract.__subclasses__()}
    assert covered == {ALSCandidates, EASECandidates, RP3BetaCandidates, SequentialEASECandidates, BlendCandidates,
                       ContentCandidates, PopularityCandidates}  # fmt: skip


def test_rp3beta_above_max_items_keeps_a_sparse_top_k_that_equals_the_dense_walk(toy):
    """Above ``max_items`` RP3beta does not refuse: its item-item weights are sparse, top_k per title,
    computed block by block. With top_k >= the catalogue it is the dense model exactly; with a small
    top_k each title keeps at most top_k neighbours and every kept weight is the dense one."""
    users = np.unique(toy.interactions["user_id"].to_numpy())[:10]
    dense = RP3BetaCandidates(alpha=0.8).fit(toy)
    n = len(dense.items_)
    full = RP3BetaCandidates(alpha=0.8, max_items=5, top_k=n, block=7).fit(toy)
    assert sp.issparse(full.M_) and full.M_.shape == (n, n)
    np.testing.assert_allclose(full.score_dense(users), dense.score_dense(users), rtol=1e-4, atol=1e-6)
    # candidates from the non-zero scores only: the dense form's positive head, best first
    _, sparse_top = full.candidates(users, 6)
    _, dense_top = dense.candidates(users, 6)
    positive = np.isfinite(sparse_top)
    np.testing.assert_allclose(sparse_top[positive], dense_top[positive], rtol=1e-4)
    assert (dense_top[~positive] <= 1e-9).all()  # where the sparse form pads, the dense one has zeros
    pruned = RP3BetaCandidates(alpha=0.8, max_items=5, top_k=3, block=7).fit(toy)
    assert np.diff(pruned.M_.indptr).max() <= 3 and pruned.M_.diagonal().sum() == 0
    assert pruned.X_.dtype == pruned.M_.dtype == np.float32  # no per-request upcast copy of M_
    rows, cols = pruned.M_.nonzero()
    np.testing.assert_allclose(np.asarray(pruned.M_[rows, cols]).ravel(), dense.M_[rows, cols], rtol=1e-5)
    for r in range(n):  # the kept ones are the row's strongest
        kept = pruned.M_[r].toarray().ravel()
        if kept.any():
            assert kept[kept > 0].min() >= np.sort(dense.M_[r])[-3] - 1e-6
    idx, _ = pruned.candidates(users, 5)
    assert (idx[:, 0] >= 0).all()
    with pytest.raises(InputError, match="top_k"):
        RP3BetaCandidates(max_items=5, top_k=0).fit(toy)


class TestSparseRP3BetaContract(CandidateSourceContract):
    def make(self):
        return RP3BetaCandidates(max_items=5, top_k=10, block=8)
