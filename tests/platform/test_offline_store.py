"""OfflineStore: Parquet round trip and the point-in-time join against a known answer (and a leak trap)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.features import FeatureView, OfflineStore

# Feature rows: (user, feature_time, n_watched). Times are int64 seconds.
FEATURES = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 2, 2],
        "feature_time": np.array([100, 200, 300, 150, 400], dtype=np.int64),
        "n_watched": [1, 2, 3, 10, 20],
        "genre": ["drama", "comedy", "horror", "action", "war"],
    }
)

# Spine rows and the answer worked out by hand.
SPINE = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 2, 2, 3, 1],
        "ts": np.array([250, 300, 301, 150, 1000, 500, 50], dtype=np.int64),
        "label": [1, 0, 1, 0, 1, 1, 0],
    },
    index=[10, 11, 12, 13, 14, 15, 16],  # the spine's own index is kept
)
EXPECTED_N = [
    2,  # user 1 @250: latest before 250 is t=200 -> 2
    2,  # user 1 @300: the t=300 row is NOT strictly before -> still t=200 -> 2   <- the leak trap
    3,  # user 1 @301: t=300 -> 3
    None,  # user 2 @150: its only earlier-or-equal row is t=150 itself -> nothing -> null  <- leak trap
    20,  # user 2 @1000: t=400 -> 20
    None,  # user 3: no feature rows at all -> null
    None,  # user 1 @50: before its first row -> null
]
EXPECTED_GENRE = ["comedy", "comedy", "horror", None, "war", None, None]


@pytest.fixture
def store(tmp_path) -> OfflineStore:
    store = OfflineStore(tmp_path / "offline")
    store.write("user_daily", FEATURES)
    return store


def as_list(series: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in series]


def test_write_read_round_trip(store: OfflineStore) -> None:
    pd.testing.assert_frame_equal(store.read("user_daily"), FEATURES)
    assert list(store.read("user_daily", columns=["n_watched"]).columns) == ["n_watched"]
    assert store.tables() == ["user_daily"]
    assert not list(store.root.glob("*.tmp"))  # the atomic write leaves no temp file


def test_point_in_time_join_known_answer(store: OfflineStore) -> None:
    out = store.point_in_time_join(
        SPINE, "user_daily", on="user_id", spine_time="ts", feature_time="feature_time"
    )
    assert list(out.columns) == ["user_id", "ts", "label", "n_watched", "genre"]
    assert list(out.index) == list(SPINE.index)  # spine order and index preserved
    pd.testing.assert_frame_equal(out[["user_id", "ts", "label"]], SPINE)
    assert as_list(out["n_watched"]) == EXPECTED_N
    assert as_list(out["genre"]) == EXPECTED_GENRE


def test_join_would_leak_with_less_or_equal(store: OfflineStore) -> None:
    """The same join done with '<=' (what a naive merge_asof does by default) picks up the future rows."""
    naive = pd.merge_asof(
        SPINE.reset_index().sort_values("ts"),
        FEATURES.sort_values("feature_time"),
        left_on="ts",
        right_on="feature_time",
        by="user_id",
        allow_exact_matches=True,
    ).set_index("index")
    naive = naive.loc[SPINE.index]
    assert (
        as_list(naive["n_watched"]) != EXPECTED_N
    )  # the trap rows differ: 3 instead of 2, 10 instead of null
    assert naive.loc[11, "n_watched"] == 3 and naive.loc[13, "n_watched"] == 10
    ours = store.point_in_time_join(
        SPINE, "user_daily", on="user_id", spine_time="ts", feature_time="feature_time"
    )
    assert ours.loc[11, "n_watched"] == 2 and pd.isna(ours.loc[13, "n_watched"])


def test_column_subset_and_max_age(store: OfflineStore) -> None:
    out = store.point_in_time_join(
        SPINE, "user_daily", on="user_id", spine_time="ts", feature_time="feature_time", columns=["n_watched"],
        max_age_s=100,
    )  # fmt: skip
    assert list(out.columns) == ["user_id", "ts", "label", "n_watched"]
    # ages: 250-200=50 ok; 300-200=100 ok (<=); 301-300=1 ok; 1000-400=600 too old -> null
    assert as_list(out["n_watched"]) == [2, 2, 3, None, None, None, None]


def test_multi_key_join(tmp_path) -> None:
    store = OfflineStore(tmp_path)
    store.write(
        "user_genre",
        pd.DataFrame({"u": [1, 1, 1], "g": ["a", "b", "a"], "t": [10, 10, 20], "aff": [0.1, 0.9, 0.2]}),
    )
    spine = pd.DataFrame({"u": [1, 1, 1], "g": ["a", "b", "a"], "ts": [15, 15, 25]})
    out = store.point_in_time_join(spine, "user_genre", on=["u", "g"], spine_time="ts", feature_time="t")
    assert out["aff"].tolist() == [0.1, 0.9, 0.2]


def test_feature_view_is_a_plain_description() -> None:
    view = FeatureView("user_daily", entity="user_id", features=("n_watched", "genre"), ttl_s=86400)
    assert view.time_column == "feature_time" and view.ttl_s == 86400


def test_clear_errors(store: OfflineStore) -> None:
    with pytest.raises(InputError, match="no feature table") as err:
        store.read("nope")
    assert err.value.status == 404
    with pytest.raises(InputError, match="names are"):
        store.write("../escape", FEATURES)
    kwargs = {"on": "user_id", "spine_time": "ts", "feature_time": "feature_time"}
    with pytest.raises(InputError, match="not in feature table"):
        store.point_in_time_join(SPINE, "user_daily", columns=["nope"], **kwargs)
    with pytest.raises(InputError, match="not a column of the spine"):
        store.point_in_time_join(SPINE, "user_daily", **{**kwargs, "spine_time": "when"})
    with pytest.raises(InputError, match="already in the spine"):
        store.point_in_time_join(SPINE.assign(genre="x"), "user_daily", **kwargs)
    with pytest.raises(InputError, match="columns"):
        store.read("user_daily", columns=["nope"])
