"""Point-in-time correctness of the ranker's training frame (:func:`mlsd.search.training.training_pairs`).

Every history feature of a training pair (debiased CTR / conversion per product and per query-product,
impressions, the users' brand and department affinity) comes from the impressions strictly before the
cutoff; the labels come from the impressions at or after it. A click, a purchase or a new impression
planted at or after the cutoff must leave every feature of every pair unchanged (only the labels move);
the same planted behaviour one second *before* the cutoff must move the history features (so the test
can fail).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from mlsd.search.engine import FEATURE_NAMES, load_data
from mlsd.search.training import training_pairs

HISTORY_FEATURES = ("ctr_product", "cvr_product", "ctr_query_product", "log_impressions", "aff_brand",
                    "aff_category")  # fmt: skip


@pytest.fixture(scope="module")
def log(search_world):
    dirs, world = search_world
    impressions = load_data(dirs.data)["clicklog"].impressions()
    cutoff = int(np.quantile(impressions["ts"].to_numpy(), 0.5))
    return world.engine, impressions, cutoff


def _pairs(engine, impressions, cutoff, propensity):
    # a copy of the engine: training_pairs refits its history features in place
    return training_pairs(copy.deepcopy(engine), impressions, propensity=propensity, cutoff=cutoff)


def _by_pair(pairs) -> pd.DataFrame:
    frame = pd.DataFrame(pairs.X, columns=list(FEATURE_NAMES))
    frame["query"], frame["product_id"] = (
        pairs.labels["query"].to_numpy(),
        pairs.labels["product_id"].to_numpy(),
    )
    return frame.iloc[: pairs.n_logged].set_index(["query", "product_id"]).sort_index()


def _plant(impressions: pd.DataFrame, at: np.ndarray) -> pd.DataFrame:
    """Every impression of the rows ``at`` becomes a click and a purchase."""
    out = impressions.copy()
    for column in ("clicked", "purchased"):
        out.loc[at, column] = np.ones(1, dtype=out[column].dtype)[0]
    return out


def test_labels_after_the_cutoff_never_reach_a_feature(log) -> None:
    engine, impressions, cutoff = log
    propensity = _pairs(engine, impressions, cutoff, propensity=None).propensity  # a setting, held fixed
    base = _pairs(engine, impressions, cutoff, propensity)
    later = np.flatnonzero(impressions["ts"].to_numpy() >= cutoff)[::3]
    planted = _pairs(engine, _plant(impressions, later), cutoff, propensity)
    before, after = _by_pair(base), _by_pair(planted)
    common = before.index.intersection(after.index)
    assert len(common) > 100
    pd.testing.assert_frame_equal(before.loc[common], after.loc[common])  # every feature, every pair
    gain_before = pd.Series(base.gain[: base.n_logged], index=pd.MultiIndex.from_frame(
        base.labels.iloc[: base.n_logged][["query", "product_id"]]))  # fmt: skip
    gain_after = pd.Series(planted.gain[: planted.n_logged], index=pd.MultiIndex.from_frame(
        planted.labels.iloc[: planted.n_logged][["query", "product_id"]]))  # fmt: skip
    assert (gain_after.reindex(common) > gain_before.reindex(common)).any()  # while the labels moved


def test_impressions_after_the_log_change_no_history_feature(log) -> None:
    """New impressions after the log's end join the label window (the pairs' user-affinity features
    average over the users who produced each label) but no history feature can see them."""
    engine, impressions, cutoff = log
    propensity = _pairs(engine, impressions, cutoff, propensity=None).propensity
    before = _by_pair(_pairs(engine, impressions, cutoff, propensity))
    extra = impressions.sample(500, random_state=0).assign(ts=impressions["ts"].max() + 10)
    after = _by_pair(_pairs(engine, pd.concat([impressions, extra], ignore_index=True), cutoff, propensity))
    common = before.index.intersection(after.index)
    history = ["ctr_product", "cvr_product", "ctr_query_product", "log_impressions"]
    pd.testing.assert_frame_equal(before.loc[common, history], after.loc[common, history])


def test_the_same_behaviour_before_the_cutoff_does_move_the_history_features(log) -> None:
    engine, impressions, cutoff = log
    propensity = _pairs(engine, impressions, cutoff, propensity=None).propensity
    before = _by_pair(_pairs(engine, impressions, cutoff, propensity))
    earlier = np.flatnonzero(impressions["ts"].to_numpy() < cutoff)[::3]
    after = _by_pair(_pairs(engine, _plant(impressions, earlier), cutoff, propensity))
    common = before.index.intersection(after.index)
    moved = ~np.isclose(before.loc[common, list(HISTORY_FEATURES)], after.loc[common, list(HISTORY_FEATURES)])
    assert moved.any(axis=0)[:3].all()  # the CTR / conversion features see history
