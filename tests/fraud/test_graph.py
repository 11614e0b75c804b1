"""Ring features on a hand-made graph."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.graph import FEATURES, RingGraph, ring_features_as_of


def _tx():
    # cards 1-2 share device d1; 2-3 share ip i1; 4 alone; 5 on a hub IP shared by 60 accounts
    rows = [
        (1, "d1", "i0", "e1", 0, 10),
        (2, "d1", "i1", "e2", 0, 10),
        (3, "d3", "i1", "e3", 1, 10),  # fraud, label known at 10
        (4, "d4", "i4", "e4", 1, 99),  # fraud, label known only at 99
        (1, "d1", "i0", "e1", 0, 10),
    ] + [(100 + k, f"h{k}", "hub", f"x{k}", 0, 10) for k in range(60)]
    return pd.DataFrame(rows, columns=["card_id", "device_id", "ip", "email", "fraud", "label_ts"])


def test_components_counts_and_two_hop_fraud():
    graph = RingGraph(max_share=50).fit(_tx(), as_of=50)
    f = graph.lookup(
        pd.DataFrame(
            {
                "card_id": [1, 2, 3, 4, 100, 999],
                "device_id": ["d1", "d1", "d3", "d4", "h0", "new"],
                "ip": ["i0", "i1", "i1", "i4", "hub", None],
                "email": ["e1"] * 6,
            }
        )
    )
    assert f["ring_component_size"].tolist() == [3, 3, 3, 1, 1, 1]  # the hub IP links nobody
    assert f["ring_device_accounts"].tolist() == [2, 2, 1, 1, 1, 1]
    assert f["ring_ip_accounts"].iloc[:5].tolist() == [1, 2, 2, 1, 60] and np.isnan(
        f["ring_ip_accounts"].iloc[5]
    )
    # card 3's fraud is two hops from card 1 (1-d1-2-i1-3), one from card 2; card 4's is not known yet
    assert f["ring_fraud_2hop"].tolist() == [1, 1, 0, 0, 0, 0]


def test_save_load_round_trip(tmp_path):
    graph = RingGraph().fit(_tx(), as_of=100)
    graph.save(tmp_path / "ring")
    back = RingGraph.load(tmp_path / "ring")
    probe = _tx().head(4)
    pd.testing.assert_frame_equal(graph.lookup(probe), back.lookup(probe))


def test_without_ring_columns_only_neutral_card_features():
    f = RingGraph().fit(pd.DataFrame({"card_id": [1, 2]})).lookup(pd.DataFrame({"card_id": [1, 3]}))
    assert list(f.columns) == ["ring_component_size", "ring_fraud_2hop"]
    assert f["ring_component_size"].tolist() == [1, 1]


def test_a_payment_without_the_optional_fields_gets_unknown_ring_features():
    # a graph fitted with devices/IPs/emails must still score a payment that sends none of them
    graph = RingGraph(max_share=50).fit(_tx(), as_of=50)
    f = graph.lookup(pd.DataFrame({"card_id": [1, 999]}))
    assert set(f.columns) == {
        "ring_component_size", "ring_fraud_2hop", "ring_device_accounts", "ring_ip_accounts", "ring_email_accounts"
    }  # fmt: skip
    assert f["ring_component_size"].tolist() == [3, 1]
    assert f[["ring_device_accounts", "ring_ip_accounts", "ring_email_accounts"]].isna().all().all()


# ----------------------------------------------------------------------------------------------
# point in time: every row sees the links and labels from strictly before it


def _brute_force(frame, max_share, step):
    """The definition, one row at a time, with Python sets (no shortcut shared with the code)."""
    rows = frame.to_dict("records")
    out = []
    for r in rows:
        t, boundary = r["ts"], (r["ts"] // step) * step
        accounts = {}
        for col in ("device_id", "ip", "email"):
            users = {x["card_id"] for x in rows if x["ts"] < t and x[col] == r[col]} | {r["card_id"]}
            accounts[col] = len(users)
        # the graph of links formed before the row's boundary, hotspots left out
        links = {
            (col, x[col], x["card_id"])
            for x in rows
            if x["ts"] < boundary
            for col in ("device_id", "ip", "email")
        }
        members = {}
        for col, value, card in links:
            members.setdefault((col, value), set()).add(card)
        groups = [m for m in members.values() if 1 < len(m) <= max_share]

        def neighbours(card, groups=groups):
            return set().union(*[g for g in groups if card in g]) - {card}

        seen, todo = {r["card_id"]}, [r["card_id"]]
        while todo:
            new = neighbours(todo.pop()) - seen
            seen |= new
            todo += list(new)
        one = neighbours(r["card_id"])
        two = (one | set().union(*[neighbours(c) for c in one])) - {r["card_id"]}
        known = {x["card_id"] for x in rows if x["fraud"] == 1 and x["label_ts"] < t}
        out.append(
            {
                "ring_component_size": float(len(seen)),
                "ring_device_accounts": float(accounts["device_id"]),
                "ring_ip_accounts": float(accounts["ip"]),
                "ring_email_accounts": float(accounts["email"]),
                "ring_fraud_2hop": float(len(two & known)),
            }
        )
    return pd.DataFrame(out)[list(FEATURES)]


def _random_payments(seed, n=400):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 40 * 3_600, n))
    fraud = (rng.random(n) < 0.15).astype(int)
    return (
        pd.DataFrame(
            {
                "card_id": rng.integers(0, 60, n),
                "ts": ts,
                "device_id": "d" + pd.Series(rng.integers(0, 50, n)).astype(str),
                "ip": "i" + pd.Series(rng.integers(0, 25, n)).astype(str),
                "email": "e" + pd.Series(rng.integers(0, 70, n)).astype(str),
                "fraud": fraud,
                # labels arrive 0..10 hours after the payment: many land inside the same hour bucket
                "label_ts": ts + rng.integers(0, 10 * 3_600, n),
            }
        )
        .sample(frac=1.0, random_state=seed)
        .reset_index(drop=True)
    )  # rows need not come sorted


@pytest.mark.parametrize(("step", "max_share"), [(1, 50), (3_600, 50), (3_600, 6)])
def test_point_in_time_matches_the_definition(step, max_share):
    frame = _random_payments(seed=step + max_share)
    got = ring_features_as_of(frame, max_share=max_share, step=step)
    pd.testing.assert_frame_equal(got, _brute_force(frame, max_share, step), check_dtype=False)
    assert got["ring_fraud_2hop"].gt(0).any() and got["ring_component_size"].gt(1).any()  # not trivial


def test_point_in_time_without_ring_columns_and_empty():
    f = ring_features_as_of(pd.DataFrame({"card_id": [1, 2], "ts": [0, 5]}))
    assert list(f.columns) == ["ring_component_size", "ring_fraud_2hop"]
    assert f["ring_component_size"].tolist() == [1, 1] and f["ring_fraud_2hop"].tolist() == [0, 0]
    empty = ring_features_as_of(_tx().assign(ts=0).iloc[:0])
    assert list(empty.columns) == list(FEATURES) and empty.empty
