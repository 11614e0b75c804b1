"""Nested selection (judged_ltr.NestedSelection): the pick of an outer fold depends on its training
queries only; a planted winner is found; the inner CV's query budget holds."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.search.judged_ltr import (
    JudgedLTR,
    NestedSelection,
    RankerCandidate,
    _shuffled_folds,
    core_columns,
    query_ndcg,
)

NAMES = ["bm25", "cos", "cos_centroid", "bm25_gap", "cos_z"]


def _ranking_data(n_queries: int = 30, per_query: int = 12, seed: int = 0):
    """Grades follow a noisy linear signal of the first two features; ``weak`` is an unlearned score
    that half-agrees with the grades, so learned and fixed candidates land close to each other."""
    rng = np.random.default_rng(seed)
    qi = np.repeat(np.arange(n_queries), per_query)
    X = rng.normal(size=(len(qi), len(NAMES))).astype(np.float32)
    signal = X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=1.0, size=len(qi))
    grades = np.clip(np.rint(1.5 + signal), 0.0, 3.0)
    weak = grades + rng.normal(scale=1.5, size=len(qi))
    return X, grades, qi, weak


def _selector(**kw) -> NestedSelection:
    grid = (
        RankerCandidate("weak", source="weak"),
        RankerCandidate("ridge-core", features="core"),
        RankerCandidate("ridge"),
        RankerCandidate("blend-0.5", weight=0.5),
    )
    ltr = JudgedLTR(n_estimators=30, min_child_samples=5, n_bags=3)
    return NestedSelection(grid, ltr=ltr, **kw)


def test_core_columns_drop_list_relative_and_prf_features():
    assert [NAMES[i] for i in core_columns(NAMES)] == ["bm25", "cos"]


def test_a_planted_winner_is_picked_in_every_outer_fold():
    X, grades, qi, weak = _ranking_data()
    planted = grades + np.random.default_rng(5).normal(scale=0.01, size=len(grades))  # near-perfect
    sel = _selector()
    sel.candidates = (*sel.candidates, RankerCandidate("planted", source="planted"))
    oof = sel.cross_val_predict(X, grades, qi, feature_names=NAMES, fixed={"weak": weak, "planted": planted})
    assert sel.fold_picks_ == ["planted"] * 5
    assert all(s["planted"] == max(s.values()) for s in sel.inner_scores_)
    assert query_ndcg(oof, grades, qi) > 0.99


def test_a_test_folds_labels_cannot_change_its_pick_or_scores():
    """Reverse every label of one outer fold's test queries: that fold's pick, inner scores and
    out-of-fold scores stay bit for bit the same; the other folds, which train on those queries, see
    the change (so the comparison can fail)."""
    X, grades, qi, weak = _ranking_data()
    base = _selector()
    oof = base.cross_val_predict(X, grades, qi, feature_names=NAMES, fixed={"weak": weak})
    folds = list(_shuffled_folds(qi, 5, 0))
    for k in (0, 3):
        test = folds[k][1]
        flipped = grades.copy()
        flipped[test] = 3.0 - flipped[test]
        weak_flipped = weak.copy()  # an unlearned score is a function of the pair, not of its label
        sel = _selector()
        oof_flipped = sel.cross_val_predict(X, flipped, qi, feature_names=NAMES, fixed={"weak": weak_flipped})
        assert sel.fold_picks_[k] == base.fold_picks_[k]
        assert sel.inner_scores_[k] == base.inner_scores_[k]
        np.testing.assert_array_equal(oof_flipped[test], oof[test])
        others = [j for j in range(5) if j != k]
        assert any(sel.inner_scores_[j] != base.inner_scores_[j] for j in others)


def test_a_candidate_perfect_only_on_the_test_fold_is_not_picked_for_it():
    """A fixed score that equals the grades on fold k's test queries and is noise elsewhere would win
    if test labels leaked into the inner CV; fold k sees only the noise."""
    X, grades, qi, weak = _ranking_data()
    k = 2
    test = list(_shuffled_folds(qi, 5, 0))[k][1]
    oracle = np.random.default_rng(9).normal(size=len(grades))
    oracle[test] = grades[test]
    sel = _selector()
    sel.candidates = (*sel.candidates, RankerCandidate("oracle", source="oracle"))
    sel.cross_val_predict(X, grades, qi, feature_names=NAMES, fixed={"weak": weak, "oracle": oracle})
    assert sel.fold_picks_[k] != "oracle"
    assert sel.inner_scores_[k]["oracle"] < sel.inner_scores_[k]["ridge"]


def test_inner_query_budget_and_missing_fixed_sources():
    X, grades, qi, _ = _ranking_data(n_queries=40)
    sel = _selector(inner_queries=9, seed=1)
    sel.cross_val_predict(X, grades, qi, feature_names=NAMES, fixed={})  # no "weak": dropped from the grid
    assert sel.inner_query_counts_ == [9] * 5
    assert all(set(s) == {"ridge-core", "ridge", "blend-0.5"} for s in sel.inner_scores_)
    with pytest.raises(ValueError, match="no usable candidate"):
        NestedSelection((RankerCandidate("weak", source="weak"),)).cross_val_predict(
            X, grades, qi, feature_names=NAMES
        )
