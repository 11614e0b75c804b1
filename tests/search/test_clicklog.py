"""Click log: validation naming the field, append/read, the impression pivot."""

from __future__ import annotations

import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.search.clicklog import ClickLog, impressions_to_events, validate_events

GOOD = [
    {
        "type": "impression",
        "search_id": "s1",
        "query": "earbuds",
        "user_id": "u1",
        "product_id": 10,
        "position": 1,
    },
    {
        "type": "impression",
        "search_id": "s1",
        "query": "earbuds",
        "user_id": "u1",
        "product_id": 11,
        "position": 2,
    },
    {"type": "click", "search_id": "s1", "product_id": 11},
    {"type": "purchase", "search_id": "s1", "product_id": 11, "value": 42.5},
]


def test_append_and_pivot_to_impressions(tmp_path) -> None:
    log = ClickLog(tmp_path)
    assert log.append(GOOD) == 4
    imp = log.impressions()
    assert len(imp) == 2 and len(log) == 4
    row = imp.set_index("product_id").loc[11]
    assert row["clicked"] and row["added_to_cart"] and row["purchased"] and row["order_value"] == 42.5
    assert row["position"] == 2 and row["logged_position"] == 2
    assert not imp.set_index("product_id").loc[10, "clicked"]
    # A purchase alone implies the click and the cart.
    log.append(
        [
            {"type": "impression", "search_id": "s2", "query": "q", "product_id": 5, "position": 3},
            {"type": "purchase", "search_id": "s2", "product_id": 5, "value": 3},
        ]
    )
    r = log.impressions().set_index("search_id").loc["s2"]
    assert r["clicked"] and r["added_to_cart"]


def test_outcome_without_impression_is_dropped(tmp_path) -> None:
    log = ClickLog(tmp_path)
    log.append([{"type": "click", "search_id": "x", "product_id": 1}])
    assert len(log.impressions()) == 0 and len(log.events()) == 1


def test_buffer_is_visible_to_readers_and_persisted(tmp_path) -> None:
    log = ClickLog(tmp_path, flush_every=1000)
    log.append(GOOD[:1])
    assert len(ClickLog(tmp_path).events()) == 0  # still buffered in the writer
    assert len(log.events()) == 1  # a read flushes
    assert len(ClickLog(tmp_path).events()) == 1


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "view", "search_id": "s", "product_id": 1}, "events[0].type"),
        ({"search_id": "s", "product_id": 1}, "events[0].type"),
        ({"type": "click", "product_id": 1}, "events[0].search_id"),
        ({"type": "click", "search_id": "s", "product_id": -3}, "events[0].product_id"),
        ({"type": "click", "search_id": "s", "product_id": "abc"}, "events[0].product_id"),
        ({"type": "impression", "search_id": "s", "product_id": 1, "query": "q"}, "events[0].position"),
        (
            {"type": "impression", "search_id": "s", "product_id": 1, "query": "q", "position": 0},
            "events[0].position",
        ),
        ({"type": "impression", "search_id": "s", "product_id": 1, "position": 2}, "events[0].query"),
        ({"type": "purchase", "search_id": "s", "product_id": 1, "value": -5}, "events[0].value"),
        ({"type": "purchase", "search_id": "s", "product_id": 1, "value": "lots"}, "events[0].value"),
        ({"type": "click", "search_id": "s", "product_id": 1, "ts": "yesterday"}, "events[0].ts"),
    ],
)
def test_malformed_events_name_the_field(event, field) -> None:
    with pytest.raises(InputError) as err:
        validate_events([event])
    assert err.value.field == field


def test_second_bad_event_is_located() -> None:
    with pytest.raises(InputError) as err:
        validate_events([GOOD[0], {"type": "click", "search_id": "s"}])
    assert err.value.field == "events[1].product_id"


def test_not_a_list_or_empty() -> None:
    with pytest.raises(InputError):
        validate_events([])
    with pytest.raises(InputError) as err:
        validate_events(["click"])
    assert err.value.field == "events[0]"


def test_simulator_frame_roundtrip(tmp_path) -> None:
    wide = pd.DataFrame(
        {
            "search_id": [1, 1, 2],
            "ts": [100, 100, 200],
            "user_id": [7, 7, 8],
            "query": ["a", "a", "b"],
            "product_id": [1, 2, 1],
            "position": [1, 2, 1],
            "logged_position": [2, 1, 1],
            "clicked": [True, False, True],
            "added_to_cart": [True, False, False],
            "purchased": [True, False, False],
            "order_value": [9.5, 0.0, 0.0],
        }
    )
    events = impressions_to_events(wide)
    assert (events["type"] == "impression").sum() == 3 and (events["type"] == "click").sum() == 2
    log = ClickLog(tmp_path)
    log.append_impressions(wide)
    back = log.impressions().sort_values(["search_id", "position"]).reset_index(drop=True)
    assert back["clicked"].tolist() == [True, False, True]
    assert back["logged_position"].tolist() == [2, 1, 1] and back["order_value"].tolist() == [9.5, 0.0, 0.0]
