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


def test_an_append_is_on_disk_before_it_returns(tmp_path) -> None:
    log = ClickLog(tmp_path, flush_every=1000)
    log.append(GOOD[:1])
    # Another process (a fresh reader) sees it at once: no buffer in the writer's memory.
    assert len(ClickLog(tmp_path).events()) == 1
    log.append(GOOD[1:])
    log.flush()  # compaction into Parquet changes nothing a reader sees
    assert len(ClickLog(tmp_path).events()) == 4 and not list((tmp_path / "events").glob("*.jsonl"))
    log.append(GOOD[:1])
    assert ClickLog(tmp_path).events()["product_id"].tolist() == [10, 11, 11, 11, 10]  # order written


def test_a_torn_last_line_and_a_half_compacted_segment_are_read_once(tmp_path) -> None:
    log = ClickLog(tmp_path, flush_every=1000)
    log.append(GOOD)
    segment = next((tmp_path / "events").glob("*.jsonl"))
    with open(segment, "ab") as fh:
        fh.write(b'{"type":"click","search_id":"s9"')  # a crash mid-write: never acknowledged
    assert len(ClickLog(tmp_path).events()) == 4
    # A crash after the Parquet part was written but before the segment was deleted: no duplicates.
    ClickLog(tmp_path).events().to_parquet(segment.with_suffix(".parquet"))
    assert len(ClickLog(tmp_path).events()) == 4


def test_segments_compact_after_flush_every_events(tmp_path) -> None:
    log = ClickLog(tmp_path, flush_every=3)
    log.append(GOOD)
    assert len(list((tmp_path / "events").glob("*.parquet"))) == 1
    assert not list((tmp_path / "events").glob("*.jsonl")) and len(log) == 4


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
        # Out of range or not an integer: refused, never wrapped to INT64_MIN / INT32_MIN.
        ({"type": "click", "search_id": "s", "product_id": "12"}, "events[0].product_id"),
        ({"type": "purchase", "search_id": "s", "product_id": 1, "value": 1e308}, "events[0].value"),
        ({"type": "click", "search_id": ["a"], "product_id": 1}, "events[0].search_id"),
        ({"type": "click", "search_id": {"a": 1}, "product_id": 1}, "events[0].search_id"),
        ({"type": "click", "search_id": "s", "product_id": 1, "user_id": {"x": 1}}, "events[0].user_id"),
        ({"type": "click", "search_id": "s", "product_id": 1, "query": [1]}, "events[0].query"),
        ({"type": "click", "search_id": True, "product_id": 1}, "events[0].search_id"),
        ({"type": "click", "search_id": 7, "product_id": 1}, "events[0].search_id"),
        ({"type": "click", "search_id": "s", "product_id": 1e30}, "events[0].product_id"),
        ({"type": "click", "search_id": "s", "product_id": 2.0**60}, "events[0].product_id"),  # not exact
        ({"type": "click", "search_id": "s", "product_id": 10**30}, "events[0].product_id"),
        ({"type": "click", "search_id": "s", "product_id": 2**63}, "events[0].product_id"),
        ({"type": "click", "search_id": "s", "product_id": 3.5}, "events[0].product_id"),
        ({"type": "click", "search_id": "s", "product_id": 1, "ts": 1e30}, "events[0].ts"),
        ({"type": "click", "search_id": "s", "product_id": 1, "ts": 10**20}, "events[0].ts"),
        ({"type": "click", "search_id": "s", "product_id": 1, "ts": 1_700_000_000_000}, "events[0].ts"),
        ({"type": "click", "search_id": "s", "product_id": 1, "ts": 1.7e9 + 0.5}, "events[0].ts"),
        ({"type": "click", "search_id": "s", "product_id": 1, "position": -2}, "events[0].position"),
        (
            {"type": "impression", "search_id": "s", "product_id": 1, "query": "q", "position": -1},
            "events[0].position",
        ),
        (
            {"type": "impression", "search_id": "s", "product_id": 1, "query": "q", "position": 2**31},
            "events[0].position",
        ),
        (
            {"type": "impression", "search_id": "s", "product_id": 1, "query": "q", "position": 1e30},
            "events[0].position",
        ),
        (
            {
                "type": "impression",
                "search_id": "s",
                "product_id": 1,
                "query": "q",
                "position": 1,
                "logged_position": 1e30,
            },
            "events[0].logged_position",
        ),
    ],
)
def test_malformed_events_name_the_field(event, field) -> None:
    with pytest.raises(InputError) as err:
        validate_events([event])
    assert err.value.field == field


def test_whole_floats_are_integers_as_json_schema_says(tmp_path) -> None:
    frame = validate_events([{"type": "click", "search_id": "s", "product_id": 5713752990.0, "ts": 1.7e9}])
    assert frame["product_id"].tolist() == [5713752990] and frame["ts"].tolist() == [1_700_000_000]


def test_largest_values_in_range_are_stored_exactly(tmp_path) -> None:
    log = ClickLog(tmp_path)
    log.append([{"type": "click", "search_id": "s", "product_id": 2**53 - 1, "ts": 32_503_679_999},
                {"type": "impression", "search_id": "s", "query": "q", "product_id": 0, "position": 2**31 - 1}])  # fmt: skip
    back = log.events()
    assert back["product_id"].tolist() == [2**53 - 1, 0] and back["ts"].iloc[0] == 32_503_679_999
    assert back["position"].tolist() == [-1, 2**31 - 1]


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


def test_a_reader_racing_a_compaction_counts_every_event_once(tmp_path, monkeypatch) -> None:
    import mlsd.search.clicklog as clicklog

    writer = ClickLog(tmp_path / "it's here", flush_every=1000)  # a quote in the path is data, not SQL
    writer.append(GOOD)
    real = clicklog._read_segment

    def compact_first(path):  # another process compacts between the reader's listing and its read
        if path.exists():
            real(path).to_parquet(path.with_suffix(".parquet"))
            path.unlink()
        return real(path)

    monkeypatch.setattr(clicklog, "_read_segment", compact_first)
    assert len(ClickLog(tmp_path / "it's here").events()) == 4
