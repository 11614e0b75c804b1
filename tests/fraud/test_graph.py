"""Ring features on a hand-made graph."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsd.fraud.graph import RingGraph


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
