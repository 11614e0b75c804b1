"""Point-in-time correctness: training rows built at a cutoff must not see events after the cutoff.

Altering or adding events after the cutoff must leave every feature of every (user, title) pair
unchanged; this test FAILS if any feature (or candidate source) read a future event.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.recsys.candidates import CandidateGenerator
from mlsd.recsys.features import build_training_rows
from mlsd.recsys.world import DAY_S, simulate

SOURCES = {"als": 60, "content": 40, "popular": 30, "trending": 20, "new": 10}


@pytest.fixture(scope="module")
def world():
    ds, _ = simulate(n_users=300, n_items=150, days=20, seed=11, events_per_user=20)
    cutoff = ds.meta["end_ts"] - 3 * DAY_S
    return ds, cutoff


def rows(ds, interactions, cutoff, label_days=1.0):
    generator = CandidateGenerator(sources=dict(SOURCES))
    data = ds.with_interactions(interactions.reset_index(drop=True))
    out = build_training_rows(data, cutoff, label_days, generator=generator)
    frame = out.X.copy()
    frame["user_id"] = out.candidates["user_id"].to_numpy()
    frame["item_id"] = out.candidates["item_id"].to_numpy()
    frame["label"] = out.y
    return frame.set_index(["user_id", "item_id"]).sort_index()


def tamper_future(inter: pd.DataFrame, after: int, seed: int) -> pd.DataFrame:
    """Alter every event at or after ``after`` and add a burst of new ones there."""
    rng = np.random.default_rng(seed)
    out = inter.copy()
    late = out["timestamp"].to_numpy() >= after
    out.loc[late, "item_id"] = rng.choice(out["item_id"].unique(), late.sum())
    out.loc[late, "weight"] = rng.random(late.sum())
    out.loc[late, "rating"] = 5.0
    extra = out.sample(400, replace=True, random_state=seed).copy()
    extra["timestamp"] = after + rng.integers(0, 2 * DAY_S, len(extra))
    extra["weight"] = 1.0
    return pd.concat([out, extra], ignore_index=True).sort_values("timestamp", kind="stable")


def test_events_after_the_label_window_change_nothing(world):
    ds, cutoff = world
    base = rows(ds, ds.interactions, cutoff)
    assert len(base) > 100 and base["label"].sum() > 0
    changed = rows(ds, tamper_future(ds.interactions, cutoff + DAY_S, seed=1), cutoff)
    pd.testing.assert_frame_equal(base, changed)


def test_features_ignore_label_window_events(world):
    """Events inside the label window may change labels and which users get rows, never a feature."""
    ds, cutoff = world
    base = rows(ds, ds.interactions, cutoff)
    changed = rows(ds, tamper_future(ds.interactions, cutoff, seed=2), cutoff)
    common = base.index.intersection(changed.index)
    assert len(common) > 50
    features = [c for c in base.columns if c != "label"]
    # Float tolerance only: BLAS sums over a different batch of users round differently in the 7th digit.
    pd.testing.assert_frame_equal(
        base.loc[common, features], changed.loc[common, features], check_exact=False, rtol=1e-4, atol=1e-6
    )


def test_the_check_has_teeth(world):
    """A feature leaking one future event must be caught by the same comparison."""
    ds, cutoff = world
    base = rows(ds, ds.interactions, cutoff)
    leaky = ds.interactions.copy()
    # Move one future event to just before the cutoff: now it *is* history, and features move.
    future = np.flatnonzero(leaky["timestamp"].to_numpy() >= cutoff + DAY_S)[:200]
    leaky.loc[future, "timestamp"] = cutoff - 1
    moved = rows(ds, leaky.sort_values("timestamp", kind="stable"), cutoff)
    common = base.index.intersection(moved.index)
    features = [c for c in base.columns if c != "label"]
    with pytest.raises(AssertionError):
        pd.testing.assert_frame_equal(
            base.loc[common, features], moved.loc[common, features], check_exact=False, rtol=1e-4, atol=1e-6
        )
