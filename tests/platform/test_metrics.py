"""Metrics against values computed by hand (the arithmetic is in the comments), edge cases, and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mlsd.platform.errors import InputError
from mlsd.platform.metrics import (
    average_precision,
    coverage_at_k,
    graded_ndcg_at_k,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    precision_at_top_k,
    ranking_metrics,
    recall_at_fpr,
    recall_at_k,
    roc_auc,
)

LOG2_3 = np.log2(3)  # 1.58496...  discount at rank 2 = 1/log2(3) = 0.63093
LOG2_5 = np.log2(5)  # 2.32193...  discount at rank 4 = 1/log2(5) = 0.43068

# Four users. User 2 has nothing relevant (excluded from every mean); user 3 has no hit.
RECOMMENDED = np.array(
    [
        [1, 2, 3, 4, 5],  # user 0: relevant {2, 4, 9} -> hits at ranks 2 and 4
        [6, 7, 8, -1, -1],  # user 1: relevant {6}       -> hit at rank 1; two padding slots
        [1, 9, 10, 11, 12],  # user 2: relevant {}        -> excluded
        [20, 21, 22, 23, 24],  # user 3: relevant {1}     -> no hit
    ]
)
RELEVANT = [np.array([2, 4, 9]), np.array([6]), np.array([], dtype=int), np.array([1])]


def test_precision_at_5() -> None:
    # user0 2/5 = 0.4; user1 1/5 = 0.2 (padding is a miss, the denominator stays k); user3 0
    # mean over users 0, 1, 3: (0.4 + 0.2 + 0) / 3 = 0.2
    assert precision_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx(0.2)


def test_recall_at_5() -> None:
    # user0 2/3; user1 1/1; user3 0/1 -> (2/3 + 1 + 0) / 3 = 5/9
    assert recall_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx(5 / 9)


def test_ndcg_at_5() -> None:
    # user0: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    #        IDCG (3 relevant) = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.63093 + 0.5 = 2.13093 -> 0.49819
    # user1: hit at rank 1 -> DCG = IDCG = 1 -> 1.0;  user3: 0
    user0 = (1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3 + 0.5)
    assert user0 == pytest.approx(0.49819, abs=1e-5)
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx((user0 + 1 + 0) / 3)  # 0.49940


def test_map_at_5() -> None:
    # user0: precision@2 = 1/2, precision@4 = 2/4 -> (0.5 + 0.5) / 3 relevant = 1/3
    # user1: precision@1 = 1 -> 1/1 = 1;  user3: 0  -> (1/3 + 1 + 0) / 3 = 4/9
    assert map_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx(4 / 9)


def test_at_k_2_truncates() -> None:
    # user0 top2 = [1, 2]: one hit at rank 2. precision 1/2, recall 1/3,
    #   nDCG = (1/log2(3)) / (1 + 1/log2(3)) = 0.38685 (ideal uses min(k=2, 3 relevant) = 2 slots),
    #   AP = (1/2) / 3 = 1/6
    # user1 top2 = [6, 7]: precision 1/2, recall 1, nDCG 1, AP 1.   user3: all 0.
    assert precision_at_k(RECOMMENDED, RELEVANT, 2) == pytest.approx((0.5 + 0.5) / 3)
    assert recall_at_k(RECOMMENDED, RELEVANT, 2) == pytest.approx((1 / 3 + 1) / 3)
    user0 = (1 / LOG2_3) / (1 + 1 / LOG2_3)
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 2) == pytest.approx((user0 + 1) / 3)  # 0.46228
    assert map_at_k(RECOMMENDED, RELEVANT, 2) == pytest.approx((1 / 6 + 1) / 3)  # 7/18


def test_k_larger_than_the_list_counts_misses() -> None:
    # k = 7 > width 5: precision divides by 7 -> user0 2/7, user1 1/7 -> (3/7) / 3 = 1/7;
    # recall, nDCG (ideal still 3 slots for user0) and MAP are unchanged from k = 5.
    assert precision_at_k(RECOMMENDED, RELEVANT, 7) == pytest.approx(1 / 7)
    assert recall_at_k(RECOMMENDED, RELEVANT, 7) == pytest.approx(5 / 9)
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 7) == pytest.approx(ndcg_at_k(RECOMMENDED, RELEVANT, 5))
    assert map_at_k(RECOMMENDED, RELEVANT, 7) == pytest.approx(4 / 9)


def test_k_defaults_to_the_width() -> None:
    assert precision_at_k(RECOMMENDED, RELEVANT) == precision_at_k(RECOMMENDED, RELEVANT, 5)


def test_per_user_values_mark_excluded_users_nan() -> None:
    values = precision_at_k(RECOMMENDED, RELEVANT, 5, per_user=True)
    np.testing.assert_allclose(values, [0.4, 0.2, np.nan, 0.0])


def test_no_relevant_items_anywhere_is_zero() -> None:
    empty = [np.array([], dtype=int)] * 4
    for fn in (precision_at_k, recall_at_k, ndcg_at_k, map_at_k):
        assert fn(RECOMMENDED, empty, 5) == 0.0


def test_relevant_as_padded_2d_array_and_duplicates_ignored() -> None:
    padded = np.array([[2, 4, 9, 9], [6, -1, -1, -1], [-1, -1, -1, -1], [1, -1, -1, -1]])
    assert map_at_k(RECOMMENDED, padded, 5) == pytest.approx(4 / 9)  # duplicate 9 counted once
    assert recall_at_k(RECOMMENDED, padded, 5) == pytest.approx(5 / 9)


def test_coverage() -> None:
    # top-5 items shown: {1..5} + {6,7,8} + {1,9,10,11,12} + {20..24} = 5 + 3 + 4 + 5 = 17 distinct of 30
    assert coverage_at_k(RECOMMENDED, 30, 5) == pytest.approx(17 / 30)
    # top-1: {1, 6, 20} -> 3 / 30
    assert coverage_at_k(RECOMMENDED, 30, 1) == pytest.approx(3 / 30)
    # with a catalogue array only its members count: {1, 2, 6, 99} has 1, 2, 6 shown -> 3/4
    assert coverage_at_k(RECOMMENDED, np.array([1, 2, 6, 99]), 5) == pytest.approx(3 / 4)


def test_ranking_metrics_dict() -> None:
    report = ranking_metrics(RECOMMENDED, RELEVANT, 5, 30)
    assert set(report) == {"ndcg@5", "precision@5", "recall@5", "map@5", "coverage@5"}
    assert report["map@5"] == pytest.approx(4 / 9)


def test_graded_ndcg_by_hand() -> None:
    # recommended [1, 2, 3] with judgements {1: 1, 3: 3, 5: 2}; item 2 unjudged (gain 0)
    # DCG   = (2^1-1)/log2(2) + 0 + (2^3-1)/log2(4) = 1 + 7/2 = 4.5
    # ideal = gains 3, 2, 1 -> 7/1 + 3/log2(3) + 1/log2(4) = 7 + 1.89279 + 0.5 = 9.39279
    # nDCG  = 4.5 / 9.39279 = 0.47909
    value = graded_ndcg_at_k(np.array([[1, 2, 3]]), [{1: 1, 3: 3, 5: 2}], 3)
    assert value == pytest.approx(4.5 / (7 + 3 / LOG2_3 + 0.5))
    assert value == pytest.approx(0.47909, abs=1e-5)


def test_graded_ndcg_with_unit_gains_equals_binary() -> None:
    graded = [{int(i): 1 for i in r} for r in RELEVANT]
    for k in (1, 2, 5, 7):
        assert graded_ndcg_at_k(RECOMMENDED, graded, k) == pytest.approx(ndcg_at_k(RECOMMENDED, RELEVANT, k))


def test_graded_ndcg_excludes_users_with_only_zero_gains() -> None:
    # user 1 judged item 6 with grade 0: no ideal DCG -> excluded; user 0 is perfect -> 1.0
    value = graded_ndcg_at_k(np.array([[1, 2], [6, 7]]), [{1: 2, 2: 1}, {6: 0}], 2)
    assert value == pytest.approx(1.0)


def test_bad_inputs_raise_input_error() -> None:
    with pytest.raises(InputError, match="k"):
        precision_at_k(RECOMMENDED, RELEVANT, 0)
    with pytest.raises(InputError, match="2-D"):
        precision_at_k(np.array([1, 2, 3]), RELEVANT, 3)
    with pytest.raises(InputError, match="one entry per row"):
        recall_at_k(RECOMMENDED, RELEVANT[:2], 5)
    with pytest.raises(InputError, match="repeats an item"):
        ndcg_at_k(np.array([[1, 2, 1]]), [np.array([1])], 3)
    with pytest.raises(InputError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(InputError, match="NaN"):
        average_precision([1, 0], [np.nan, 0.3])


def test_auc_and_ap_by_hand() -> None:
    # scores 0.9(+) 0.8(-) 0.4(+) 0.1(-): pos>neg pairs: (0.9,0.8) (0.9,0.1) (0.4,0.1), not (0.4,0.8) -> 3/4
    y, s = [1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1]
    assert roc_auc(y, s) == pytest.approx(0.75)
    # AP: hits at ranks 1 and 3 -> precision 1/1 and 2/3 -> (1 + 2/3) / 2 = 5/6
    assert average_precision(y, s) == pytest.approx(5 / 6)
    # a tie between a positive and a negative counts one half
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # top-2 = 0.9(+), 0.8(-) -> 1/2;  FPR <= 0 allows only threshold 0.9 -> recall 1/2
    assert precision_at_top_k(y, s, 2) == pytest.approx(0.5)
    assert recall_at_fpr(y, s, 0.0) == pytest.approx(0.5)
    assert recall_at_fpr(y, s, 0.5) == pytest.approx(1.0)  # threshold 0.4: FPR 1/2, recall 2/2


def test_auc_and_ap_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.1
    scores = np.round(rng.random(2000) + 0.3 * y, 2)  # rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert average_precision(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_vectorised_on_a_large_batch() -> None:
    # 5k users x 50 items runs as a few array operations; cross-check one user by hand-rolled loop.
    rng = np.random.default_rng(1)
    rec = np.argsort(rng.random((5_000, 200)), axis=1)[:, :50]
    rel = [rng.choice(200, size=rng.integers(0, 20), replace=False) for _ in range(5_000)]
    per_user = map_at_k(rec, rel, 50, per_user=True)
    u = int(np.flatnonzero([len(r) > 0 for r in rel])[0])
    hits = np.isin(rec[u], rel[u])
    expected = sum(hits[: i + 1].sum() / (i + 1) for i in range(50) if hits[i]) / len(rel[u])
    assert per_user[u] == pytest.approx(expected)
