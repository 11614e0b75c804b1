"""The ONE internal schema every recommender module reads: interactions, items, users.

Loaders (MovieLens, the simulator) produce a :class:`RecsysDataset`; candidate sources, features,
the ranker and the evaluation only ever see these frames, so a new data source is one loader away.

``Interactions``: ``user_id`` int64, ``item_id`` int64, ``timestamp`` int64 (epoch seconds, UTC),
``rating`` float (NaN when the event carries none), ``weight`` float (implicit strength: watched
fraction, or 1.0 for an explicit rating).

``Items``: ``item_id``, ``title``, ``genres`` ('|'-separated), ``year`` (int, -1 when unknown) plus
optional ``release_ts``, ``region``, ``age_rating``, ``license_start``, ``license_end``, ``cast``.

``Users``: ``user_id`` plus optional ``age``, ``gender``, ``occupation``, ``region``.

:class:`IdMap` turns raw ids into dense 0..n-1 indices (and back) for the matrix code. :func:`save`
and :func:`load` keep a dataset as one Parquet file per table plus ``meta.json`` (``W/recsys/data``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.jsonio import write_json

INTERACTION_COLUMNS: dict[str, str] = {
    "user_id": "int64",
    "item_id": "int64",
    "timestamp": "int64",
    "rating": "float64",
    "weight": "float64",
}
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "genres", "year")
ITEM_OPTIONAL: tuple[str, ...] = (
    "release_ts",
    "region",
    "age_rating",
    "license_start",
    "license_end",
    "cast",
)
USER_COLUMNS: tuple[str, ...] = ("user_id",)
# A watch past this fraction of the runtime is a positive: the label of training and evaluation.
LABEL_THRESHOLD = 0.7
USER_OPTIONAL: tuple[str, ...] = ("age", "gender", "occupation", "region")


def make_interactions(user_id, item_id, timestamp, rating=None, weight=None) -> pd.DataFrame:
    """Build an ``Interactions`` frame with the canonical dtypes from array-likes."""
    user_id = np.asarray(user_id, dtype=np.int64)
    n = len(user_id)
    rating_arr = np.full(n, np.nan) if rating is None else np.asarray(rating, dtype=np.float64)
    weight_arr = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    return pd.DataFrame(
        {
            "user_id": user_id,
            "item_id": np.asarray(item_id, dtype=np.int64),
            "timestamp": np.asarray(timestamp, dtype=np.int64),
            "rating": rating_arr,
            "weight": weight_arr,
        }
    )


@dataclass
class RecsysDataset:
    """Interactions plus the item and user side tables, under one name (e.g. ``movielens-100k``)."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    name: str = "dataset"
    meta: dict = field(default_factory=dict)

    @property
    def n_interactions(self) -> int:
        return len(self.interactions)

    def with_interactions(self, interactions: pd.DataFrame, name: str | None = None) -> RecsysDataset:
        """Same catalogue and users, other events (a train split, a history before a cutoff)."""
        return RecsysDataset(interactions, self.items, self.users, name or self.name, dict(self.meta))


def _check_columns(frame: pd.DataFrame, required, what: str, source: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(
            what, type(frame).__name__, "is not a pandas DataFrame", f"pass a DataFrame with {list(required)}"
        )
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(
            source,
            None,
            f"{what} frame lacks column(s) {missing} (has {list(frame.columns)})",
            f"provide columns {list(required)}",
        )


def validate(dataset: RecsysDataset) -> RecsysDataset:
    """Check the schema (columns, dtypes, ids, no NaN keys); coerce safe dtypes; return the dataset.

    Raises :class:`DataFormatError` for a frame that does not follow the schema and
    :class:`InputError` when ``dataset`` is not a :class:`RecsysDataset` at all.
    """
    if not isinstance(dataset, RecsysDataset):
        raise InputError(
            "dataset", type(dataset).__name__, "is not a RecsysDataset", "build one with a loader"
        )
    src = dataset.name
    inter = dataset.interactions
    _check_columns(inter, INTERACTION_COLUMNS, "interactions", src)
    _check_columns(dataset.items, ITEM_COLUMNS, "items", src)
    _check_columns(dataset.users, USER_COLUMNS, "users", src)
    for col, dtype in INTERACTION_COLUMNS.items():
        values = inter[col]
        if dtype == "int64":
            if values.isna().any():
                row = int(np.flatnonzero(values.isna().to_numpy())[0])
                raise DataFormatError(
                    src, row, f"interactions.{col} is missing", "every event needs ids and a timestamp"
                )
            if not pd.api.types.is_integer_dtype(values):
                raise DataFormatError(
                    src, None, f"interactions.{col} has dtype {values.dtype}, expected int64", "cast to int64"
                )
        elif not pd.api.types.is_numeric_dtype(values):
            raise DataFormatError(
                src, None, f"interactions.{col} has dtype {values.dtype}, expected float", "cast to float"
            )
    if (
        inter["user_id"].dtype != np.int64
        or inter["item_id"].dtype != np.int64
        or inter["timestamp"].dtype != np.int64
    ):
        dataset.interactions = inter = inter.astype(
            {"user_id": "int64", "item_id": "int64", "timestamp": "int64"}
        )
    for key, frame, what in (("item_id", dataset.items, "items"), ("user_id", dataset.users, "users")):
        if frame[key].isna().any() or not pd.api.types.is_integer_dtype(frame[key]):
            raise DataFormatError(
                src, None, f"{what}.{key} must be integer ids without gaps of NaN", "cast to int64"
            )
        if frame[key].duplicated().any():
            dup = frame[key][frame[key].duplicated()].iloc[0]
            raise DataFormatError(
                src, None, f"{what}.{key} {dup} appears more than once", "de-duplicate the table"
            )
    unknown = ~inter["item_id"].isin(dataset.items["item_id"])
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataFormatError(
            src,
            row,
            f"interaction refers to item_id {int(inter['item_id'].iloc[row])} absent from items",
            "add the item",
        )
    return dataset


class IdMap:
    """Raw ids <-> dense indices 0..n-1, vectorised both ways (unknown ids map to -1)."""

    def __init__(self, ids) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, raw) -> np.ndarray:
        """Dense index of each raw id; -1 where the id is unknown."""
        raw = np.asarray(raw, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(raw.shape, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, raw), 0, len(self.ids) - 1)
        return np.where(self.ids[pos] == raw, pos, -1).astype(np.int64)

    def raw(self, idx) -> np.ndarray:
        """Raw id of each dense index (index -1 stays -1, the padding value)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.full(idx.shape, -1, dtype=np.int64)
        ok = idx >= 0
        out[ok] = self.ids[idx[ok]]
        return out


def interaction_matrix(
    interactions: pd.DataFrame, users: IdMap, items: IdMap, value: str | None = None
) -> sp.csr_matrix:
    """Sparse users x items matrix (duplicates summed; ``value`` column or 1.0 per event)."""
    u = users.index(interactions["user_id"].to_numpy())
    i = items.index(interactions["item_id"].to_numpy())
    keep = (u >= 0) & (i >= 0)
    data = np.ones(keep.sum()) if value is None else interactions[value].to_numpy(dtype=np.float64)[keep]
    mat = sp.csr_matrix((data, (u[keep], i[keep])), shape=(len(users), len(items)), dtype=np.float64)
    mat.sum_duplicates()
    return mat


def binary_matrix(interactions: pd.DataFrame, users: IdMap, items: IdMap) -> sp.csr_matrix:
    """0/1 users x items matrix: which user touched which item (for 'seen' exclusion and CF)."""
    mat = interaction_matrix(interactions, users, items)
    mat.data[:] = 1.0
    return mat


def toy_dataset(n_users: int = 60, n_items: int = 40, per_user: int = 8, seed: int = 0) -> RecsysDataset:
    """A tiny known-answer dataset for tests and examples: two taste groups.

    Even users watch only even items (genre ``A``), odd users only odd items (genre ``B``); within
    a group, lower item ids are more popular. Events are one hour apart, users interleaved in a
    random order, so any time cutoff leaves most users with both a past and a future.
    """
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    t = 1_000_000_000
    half = np.arange(n_items // 2)
    prob = 1.0 / (1.0 + half)
    prob /= prob.sum()
    for u in range(n_users):
        picks = rng.choice(half, size=min(per_user, len(half)), replace=False, p=prob)
        for p in picks:
            users.append(u + 1)
            items.append(int(2 * p + (u % 2)) + 1)
            ts.append(t)
            t += 3600
    ts = np.asarray(ts)[rng.permutation(len(ts))]
    inter = make_interactions(users, items, ts, rating=rng.integers(1, 6, len(users)).astype(float))
    item_ids = np.arange(1, n_items + 1)
    frame = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [
                f"{'Alpha' if (i - 1) % 2 == 0 else 'Beta'} film {i} ({1990 + i % 20})" for i in item_ids
            ],
            "genres": np.where((item_ids - 1) % 2 == 0, "A", "B"),
            "year": 1990 + item_ids % 20,
        }
    )
    user_frame = pd.DataFrame({"user_id": np.arange(1, n_users + 1), "age": 20 + np.arange(n_users) % 40})
    return RecsysDataset(inter, frame, user_frame, name="toy")


# ------------------------------------------------------------------------------------------------
# Files: one Parquet per table plus meta.json (what ``W/recsys/data`` holds)

TABLES = ("interactions", "items", "users")


def save(dataset: RecsysDataset, out: str | Path) -> Path:
    """Write ``interactions/items/users.parquet`` and ``meta.json`` (name + ``dataset.meta``) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        getattr(dataset, name).to_parquet(out / f"{name}.parquet", index=False)
    write_json(out / "meta.json", {"name": dataset.name, **dataset.meta})
    return out


def load(path: str | Path) -> RecsysDataset:
    """Read a folder written by :func:`save` (``mlsd recsys simulate``) back into a RecsysDataset."""
    path = Path(path)
    missing = [f"{n}.parquet" for n in TABLES if not (path / f"{n}.parquet").exists()]
    if missing:
        raise InputError(
            "data", str(path), f"is not a recsys dataset folder (missing {', '.join(missing)})",
            "create one with: mlsd recsys simulate --workdir W (it writes W/recsys/data)",
        )  # fmt: skip
    meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
    frames = {n: pd.read_parquet(path / f"{n}.parquet") for n in TABLES}
    return validate(RecsysDataset(**frames, name=meta.pop("name", path.name), meta=meta))
