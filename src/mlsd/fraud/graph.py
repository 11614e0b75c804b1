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

Training and evaluation rows must not get the batch graph: a graph fitted at the training cut-off
would hand a payment at day 0 a fraud label that arrived on day 20 and the cards that joined its
device since. :func:`ring_features_as_of` gives every row the features as of its own ``ts``, strictly
before it: a card-attribute link counts from the first payment that used it, a fraud label from its
``label_ts``, and neither at the row's own second. The attribute counts and the labels are exact
(``searchsorted`` over first-use / label times); the graph's shape (components, who is within two
hops) is rebuilt at ``step`` boundaries (one hour by default) from the links formed before the
boundary, so a row sees the graph as of the start of its hour - older, never newer, than its ts.
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
HOUR = 3_600
_BIG = np.int64(1) << np.int64(40)  # (attribute code, relative ts) packed in one sortable int64
_ACCOUNTS = (
    ("device_id", "ring_device_accounts"),
    ("ip", "ring_ip_accounts"),
    ("email", "ring_email_accounts"),
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


def ring_features_as_of(frame: pd.DataFrame, max_share: int = 50, step: int = HOUR) -> pd.DataFrame:
    """Ring features for every payment of ``frame`` as of its own ``ts`` (rows in frame order).

    What a row at ``t`` sees, all strictly before ``t``:

    - ``ring_{device,ip,email}_accounts``: the cards that used the attribute before ``t``, plus the
      row's own card (the payment names it; :meth:`RingGraph.lookup` counts it the same way for an
      id it never saw). Exact.
    - ``ring_fraud_2hop``: cards within two hops whose first fraud label has ``label_ts < t`` (a
      fraud without ``label_ts`` is never known). Labels exact; the hops as of the row's ``step``
      boundary ``(t // step) * step``.
    - ``ring_component_size``: the card's component in the graph of links formed before that boundary,
      attributes shared by more than ``max_share`` cards then left out (as in :meth:`RingGraph.fit`).

    Vectorised: one graph build per ``step`` bucket that holds rows and saw new links; every row of a
    bucket is answered with array indexing (no loop over rows).
    """
    if step < 1:
        raise ValueError(f"step must be >= 1 second, got {step}")
    if frame.empty:
        names = {"ring_component_size", "ring_fraud_2hop"} | {n for c, n in _ACCOUNTS if c in frame.columns}
        return pd.DataFrame({k: np.zeros(0) for k in FEATURES if k in names})
    n = len(frame)
    ts = frame["ts"].to_numpy(np.int64)
    attrs = [c for c in ATTRIBUTES if c in frame.columns]
    cards, card_idx = np.unique(frame["card_id"].to_numpy(), return_inverse=True)
    n_cards = cards.size
    t0 = ts.min()
    out: dict[str, np.ndarray] = {}

    # distinct (attribute value, card) links with the time of their first payment, one code space
    link_attr, link_card, link_ts, offset = [], [], [], 0
    for column, name in _ACCOUNTS:
        if column not in attrs:
            continue
        present = frame[column].notna().to_numpy()
        codes = np.full(n, -1, np.int64)
        codes[present] = pd.factorize(frame[column].to_numpy()[present])[0]
        links = (
            pd.DataFrame({"a": codes[present], "c": card_idx[present], "t": ts[present]})
            .groupby(["a", "c"], sort=False)["t"]
            .min()
            .reset_index()
        )
        # accounts before t: the attribute's first uses before t, plus the row's own card when this
        # is its first use (its link forms at t, not before); sorted by (attribute, first use)
        first = links.sort_values(["a", "t"], kind="stable")
        key = first["a"].to_numpy() * _BIG + (first["t"].to_numpy() - t0)
        rc = np.where(present, codes, 0) * _BIG
        before = np.searchsorted(key, rc + (ts - t0), side="left") - np.searchsorted(key, rc, side="left")
        own_first = (
            pd.DataFrame({"a": codes, "c": card_idx, "t": ts})
            .groupby(["a", "c"], sort=False)["t"]
            .transform("min")
        ).to_numpy()
        col = (before + (own_first >= ts)).astype(np.float64)
        col[~present] = np.nan
        out[name] = col
        link_attr.append(links["a"].to_numpy() + offset)
        link_card.append(links["c"].to_numpy())
        link_ts.append(links["t"].to_numpy())
        offset += int(codes.max()) + 1 if present.any() else 0
    la = np.concatenate(link_attr) if link_attr else np.zeros(0, np.int64)
    lc = np.concatenate(link_card) if link_card else np.zeros(0, np.int64)
    lt = np.concatenate(link_ts) if link_ts else np.zeros(0, np.int64)
    order = np.argsort(lt, kind="stable")
    la, lc, lt = la[order], lc[order], lt[order]

    # when each card's first fraud label became known (inf: never); cards with one are the targets
    label_time = np.full(n_cards, np.inf)
    if "fraud" in frame.columns and "label_ts" in frame.columns:
        lts = frame["label_ts"].to_numpy(np.float64)
        known = (frame["fraud"].to_numpy() == 1) & ~np.isnan(lts)
        np.minimum.at(label_time, card_idx[known], lts[known])
    targets = np.flatnonzero(np.isfinite(label_time))

    size = np.ones(n, np.float64)
    fraud = np.zeros(n, np.float64)
    bucket = ts // step
    row_order = np.argsort(bucket, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(bucket[row_order]) != 0])
    ends = np.r_[starts[1:], n]
    built_k, comp_size, incidence, near = -1, None, None, None
    for lo, hi in zip(starts, ends, strict=True):  # one iteration per bucket holding rows
        rows = row_order[lo:hi]
        boundary = bucket[rows[0]] * step
        k = int(np.searchsorted(lt, boundary, side="left"))  # links formed strictly before the boundary
        if k != built_k:
            comp_size, incidence, near = _graph_as_of(
                la[:k], lc[:k], n_cards, max(offset, 1), max_share, targets
            )
            built_k = k
        c = card_idx[rows]
        size[rows] = comp_size[c]
        if not targets.size:
            continue
        # cards within two hops of a target: a neighbour-or-self of the card that is a
        # neighbour-or-self of the target; the card itself is not its own ring
        cu, inv = np.unique(c, return_inverse=True)
        adj = incidence[cu] @ incidence.T
        adj.data[:] = 1.0
        reach = (adj @ near).tocoo()
        keep = targets[reach.col] != cu[reach.row]
        reach = sparse.csr_matrix(
            (np.ones(int(keep.sum())), (reach.row[keep], reach.col[keep])), shape=(cu.size, targets.size)
        )
        # frauds known before each row's ts: those known at the boundary (one product), plus the few
        # labels that arrived inside the bucket, before the row
        fraud[rows] = (reach @ (label_time[targets] < boundary).astype(np.float64))[inv]
        fresh = np.flatnonzero((label_time[targets] >= boundary) & (label_time[targets] < boundary + step))
        if fresh.size:
            hits = reach[:, fresh].toarray()[inv] > 0
            fraud[rows] += (hits & (label_time[targets[fresh]] < ts[rows][:, None])).sum(axis=1)
    out["ring_component_size"] = size
    out["ring_fraud_2hop"] = fraud
    return pd.DataFrame({k: out[k] for k in FEATURES if k in out})


def _graph_as_of(
    attr: np.ndarray, card: np.ndarray, n_cards: int, n_attrs: int, max_share: int, targets: np.ndarray
) -> tuple[np.ndarray, sparse.csr_matrix, sparse.csr_matrix]:
    """From the given links: component size per card, the card x attribute incidence (hotspots left
    out) and ``near``, cards x targets, 1 where the card is a target or shares an attribute with it."""
    shared = np.bincount(attr, minlength=n_attrs)
    keep = (shared[attr] > 1) & (shared[attr] <= max_share)  # hotspots link strangers: left out
    a, c = attr[keep], card[keep]
    # components of the bipartite card-attribute graph; a component's size counts its cards
    bip = sparse.csr_matrix((np.ones(a.size), (c, n_cards + a)), shape=(n_cards + n_attrs,) * 2)
    _, label = connected_components(bip, directed=False)
    comp_size = np.bincount(label[:n_cards], minlength=label.max() + 1)[label[:n_cards]].astype(np.float64)
    incidence = sparse.csr_matrix((np.ones(a.size), (c, a)), shape=(n_cards, n_attrs))
    near = (incidence @ incidence[targets].T).tocsr()
    near.data[:] = 1.0
    return comp_size, incidence, near
