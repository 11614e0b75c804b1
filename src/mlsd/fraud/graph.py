"""Fraud-ring features: accounts linked through shared devices, IPs and emails.

Batch: a sparse account x attribute incidence matrix (attribute = a device, an IP or an email) gives
the account graph ``M = A A^T`` (two accounts are neighbours when they share an attribute). From it:
connected components (``scipy.sparse.csgraph``), how many accounts use each device / IP / email, and
how many accounts with a fraud label KNOWN at ``as_of`` lie within two hops. Attributes shared by more
than ``max_share`` accounts (a public hotspot, a corporate proxy) are left out of the graph: they link
strangers, and they would make ``M`` dense.

Online: :meth:`RingGraph.lookup` answers from the tables computed in batch (dictionary look-ups); an
account, device or IP the batch never saw gets the neutral value (a component of one, one account,
no fraud nearby). Absent columns (the handbook format has none of them) give no ring features.
"""

from __future__ import annotations

import json
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components

ATTRIBUTES: tuple[str, ...] = ("device_id", "ip", "email")
FEATURES: tuple[str, ...] = (
    "ring_component_size",
    "ring_device_accounts",
    "ring_ip_accounts",
    "ring_email_accounts",
    "ring_fraud_2hop",
)


class RingGraph:
    """Batch-computed ring features, served as look-up tables (scikit-learn style estimator)."""

    def __init__(self, max_share: int = 50) -> None:
        self.max_share = max_share

    def fit(self, frame: pd.DataFrame, as_of: int | None = None) -> RingGraph:
        """Build the graph from payments; frauds count only if ``label_ts <= as_of`` (all when None)."""
        attrs = [c for c in ATTRIBUTES if c in frame.columns]
        cards, card_idx = np.unique(frame["card_id"].to_numpy(), return_inverse=True)
        n = cards.size
        self.attributes_ = attrs
        self.accounts_per_: dict[str, dict] = {}
        rows, cols, offset = [], [], 0
        for column in attrs:
            present = frame[column].notna().to_numpy()
            pairs = pd.DataFrame(
                {"a": frame[column].to_numpy()[present], "c": card_idx[present]}
            ).drop_duplicates()
            counts = pairs.groupby("a")["c"].size()
            self.accounts_per_[column] = counts.to_dict()
            shared = counts[(counts > 1) & (counts <= self.max_share)]
            pairs = pairs[pairs["a"].isin(shared.index)]
            codes = pd.Index(shared.index).get_indexer(pairs["a"])
            rows.append(pairs["c"].to_numpy())
            cols.append(codes + offset)
            offset += len(shared)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        incidence = sparse.csr_matrix((np.ones(r.size), (r, c)), shape=(n, max(offset, 1)))
        adjacency = (incidence @ incidence.T).tocsr()
        adjacency.setdiag(0)
        adjacency.eliminate_zeros()
        adjacency.data[:] = 1.0
        n_comp, label = connected_components(adjacency, directed=False)
        size = np.bincount(label, minlength=n_comp)[label]
        fraud = np.zeros(n)
        if "fraud" in frame.columns:
            known = frame["fraud"].to_numpy() == 1
            if as_of is not None and "label_ts" in frame.columns:
                known &= frame["label_ts"].to_numpy(np.float64) <= as_of
            fraud[np.unique(card_idx[known])] = 1.0
        reach = adjacency + adjacency @ adjacency
        reach.setdiag(0)
        reach.eliminate_zeros()
        reach.data[:] = 1.0
        self.cards_ = {k: i for i, k in enumerate(cards.tolist())}
        self.component_size_ = size.astype(np.float64)
        self.fraud_2hop_ = np.asarray(reach @ fraud).ravel()
        return self

    def lookup(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Ring features for payments (rows in frame order); unseen ids get neutral values."""
        return pd.DataFrame(self.lookup_arrays(frame))

    def lookup_arrays(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """:meth:`lookup` as ``{feature: array}`` in ``FEATURES`` order (no DataFrame on the hot path)."""
        n = len(frame)
        idx = np.fromiter(
            map(self.cards_.get, frame["card_id"].tolist(), repeat(-1)), dtype=np.int64, count=n
        )
        seen = idx >= 0
        out = {
            "ring_component_size": np.where(seen, self.component_size_[np.maximum(idx, 0)], 1.0),
            "ring_fraud_2hop": np.where(seen, self.fraud_2hop_[np.maximum(idx, 0)], 0.0),
        }
        for column, name in (
            ("device_id", "ring_device_accounts"),
            ("ip", "ring_ip_accounts"),
            ("email", "ring_email_accounts"),
        ):
            if column in self.attributes_ and column not in frame.columns:
                # an optional field the request left out: unknown, like a null (the model was
                # trained with the feature, so it must be there, as NaN)
                out[name] = np.full(n, np.nan)
            elif column in self.attributes_:
                values = frame[column].to_numpy()
                missing = pd.isna(values)
                # dict look-ups through map() run at C speed; a missing id has no accounts to count
                col = (
                    np.fromiter(
                        map(self.accounts_per_[column].get, values.tolist(), repeat(1)),
                        dtype=np.float64,
                        count=n,
                    )
                    if not missing.all()
                    else np.full(n, np.nan)
                )
                col[missing] = np.nan
                out[name] = col
        return {k: out[k] for k in FEATURES if k in out}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cards = list(self.cards_)
        pd.DataFrame(
            {
                "card_id": [str(c) for c in cards],
                "component_size": self.component_size_,
                "fraud_2hop": self.fraud_2hop_,
            }
        ).to_parquet(path / "ring_cards.parquet")
        tables = {c: {str(k): int(v) for k, v in t.items()} for c, t in self.accounts_per_.items()}
        meta = {
            "max_share": self.max_share,
            "attributes": self.attributes_,
            "tables": tables,
            "card_id_int": all(isinstance(c, int | np.integer) for c in cards),
        }
        (path / "ring.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> RingGraph:
        path = Path(path)
        meta = json.loads((path / "ring.json").read_text())
        graph = cls(max_share=meta["max_share"])
        table = pd.read_parquet(path / "ring_cards.parquet")
        keys = table["card_id"].astype(np.int64) if meta["card_id_int"] else table["card_id"]
        graph.cards_ = {k: i for i, k in enumerate(keys.tolist())}
        graph.component_size_ = table["component_size"].to_numpy()
        graph.fraud_2hop_ = table["fraud_2hop"].to_numpy()
        graph.attributes_ = meta["attributes"]
        graph.accounts_per_ = meta["tables"]
        return graph
