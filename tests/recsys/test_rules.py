"""Business rules: hand-checked cases, and a property test: a title outside its window is NEVER returned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.recsys.config import RuleConfig
from mlsd.recsys.rules import RuleFilter, min_age, region_bits

DAY = 86_400
NOW = 1_772_323_200


def catalogue() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [10, 20, 30, 40, 50],
            "title": list("abcde"),
            "genres": ["Action"] * 5,
            "year": [2020] * 5,
            "region": ["US|EU", "EU", "US", "US|EU|IN", "APAC"],
            "age_rating": ["G", "R", "PG-13", "NC-17", "PG"],
            "license_start": [NOW - 10 * DAY, NOW - DAY, NOW + DAY, NOW - 5 * DAY, NOW - 5 * DAY],
            "license_end": [NOW + 10 * DAY, NOW + DAY, NOW + 9 * DAY, NOW, NOW + 5 * DAY],
            "release_ts": [NOW - 100 * DAY] * 4 + [NOW + 2 * DAY],
        }
    )


def test_hand_checked_cases():
    rules = RuleFilter().fit(catalogue())
    ids = np.array([10, 20, 30, 40, 50, 99, -1])
    adult_us = rules.allowed(ids, now=NOW, user_region=region_bits("US"), user_age=30)
    # 20: EU only; 30: license starts tomorrow; 40: window is [start, end) and ends now; 50: APAC,
    # unreleased; 99: unknown; -1: padding.
    assert adult_us.tolist() == [True, False, False, False, False, False, False]
    teen_eu = rules.allowed(ids, now=NOW, user_region=region_bits("EU"), user_age=14)
    assert teen_eu.tolist() == [True, False, False, False, False, False, False]  # 20 is R
    adult_eu = rules.allowed(ids, now=NOW, user_region=region_bits("EU"), user_age=40)
    assert adult_eu.tolist() == [True, True, False, False, False, False, False]
    # A day earlier, title 40 was still licensed.
    earlier = rules.allowed(ids, now=NOW - DAY, user_region=region_bits("US"), user_age=40)
    assert earlier.tolist() == [True, False, False, True, False, False, False]


def test_batch_of_requests_matches_one_by_one():
    rules = RuleFilter().fit(catalogue())
    ids = np.array([[10, 20, 30, 40], [40, 30, 20, 10], [50, -1, 10, 20]])
    regions = region_bits(np.array(["US", "EU", "APAC"]))
    ages = np.array([30, 15, 50])
    times = np.array([NOW, NOW - DAY, NOW + 3 * DAY])
    batch = rules.allowed(ids, now=times, user_region=regions, user_age=ages)
    for r in range(3):
        one = rules.allowed(ids[r], now=times[r], user_region=regions[r], user_age=ages[r])
        assert batch[r].tolist() == one.tolist()


def test_disabled_rules_and_missing_columns():
    cat = catalogue()
    no_license = RuleFilter(RuleConfig(license_window=False, released_only=False)).fit(cat)
    assert no_license.allowed(np.array([30]), now=NOW, user_region=region_bits("US"), user_age=30).all()
    # MovieLens-like catalogue without any rule columns: everything known is allowed.
    bare = RuleFilter().fit(cat[["item_id", "title", "genres", "year"]])
    assert bare.allowed(np.array([10, 50, 77]), now=NOW, user_region=1, user_age=5).tolist() == [
        True,
        True,
        False,
    ]


def test_filter_keeps_order_and_scores():
    rules = RuleFilter().fit(catalogue())
    ids, scores, keep = rules.filter(
        np.array([20, 10, 40]),
        np.array([0.9, 0.5, 0.1]),
        now=NOW - DAY,
        user_region=region_bits("EU"),
        user_age=40,
    )
    assert ids.tolist() == [20, 10, 40] and scores.tolist() == [0.9, 0.5, 0.1] and keep.tolist() == [0, 1, 2]
    with pytest.raises(InputError):
        rules.filter(np.zeros((2, 2), dtype=np.int64), now=NOW, user_region=1, user_age=1)


def test_encoders_fail_closed():
    assert region_bits("US|EU") == 0b11
    assert region_bits("MARS") == 0
    assert region_bits(np.array(["US", "MARS|IN", None], dtype=object)).tolist() == [1, 16, 0]
    assert min_age(np.array(["G", "R", "XXX"], dtype=object)).tolist() == [0, 17, 18]


def test_property_no_title_outside_its_window_is_ever_returned():
    """Random catalogues, random requests at random times: every allowed title is inside its window,
    released, shown in the user's region and allowed for her age; and nothing allowed is missed."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = 300
        start = NOW + rng.integers(-100, 100, n) * DAY
        items = pd.DataFrame(
            {
                "item_id": rng.permutation(10_000)[:n] + 1,
                "title": "t",
                "genres": "Drama",
                "year": 2020,
                "region": rng.choice(["US", "EU", "US|EU", "IN|APAC", "LATAM|US|EU|IN|APAC"], n),
                "age_rating": rng.choice(["G", "PG", "PG-13", "R", "NC-17"], n),
                "license_start": start,
                "license_end": start + rng.integers(1, 200, n) * DAY,
                "release_ts": NOW + rng.integers(-300, 50, n) * DAY,
            }
        )
        rules = RuleFilter().fit(items)
        n_req, n_cand = 50, 80
        cand = rng.choice(items["item_id"].to_numpy(), size=(n_req, n_cand))
        cand[rng.random(cand.shape) < 0.05] = -1
        now = NOW + rng.integers(-150, 150, n_req) * DAY + rng.integers(0, DAY, n_req)
        region = rng.choice(["US", "EU", "LATAM", "APAC", "IN"], n_req)
        age = rng.integers(5, 80, n_req)
        ok = rules.allowed(cand, now=now, user_region=region_bits(region), user_age=age)
        # Independent reference: a pandas join, row by row semantics spelled out.
        long = pd.DataFrame(
            {
                "item_id": cand.ravel(),
                "now": np.repeat(now, n_cand),
                "user_region": np.repeat(region, n_cand),
                "age": np.repeat(age, n_cand),
            }
        ).merge(items, on="item_id", how="left")
        ages = long["age_rating"].map({"G": 0, "PG": 8, "PG-13": 13, "R": 17, "NC-17": 18})
        expect = (
            long["license_start"].le(long["now"])
            & long["license_end"].gt(long["now"])
            & long["release_ts"].le(long["now"])
            & ages.le(long["age"])
            & pd.Series(
                [r in str(s).split("|") for r, s in zip(long["user_region"], long["region"], strict=True)]
            )
        ).to_numpy()
        assert np.array_equal(ok.ravel(), expect)
        shown = cand[ok]
        if len(shown):
            row = items.set_index("item_id").loc[shown]
            t = np.broadcast_to(now[:, None], cand.shape)[ok]
            assert (row["license_start"].to_numpy() <= t).all() and (t < row["license_end"].to_numpy()).all()
