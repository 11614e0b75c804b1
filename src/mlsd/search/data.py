"""The one internal schema every search component reads: products, queries and graded judgements.

Loaders (CrowdFlower, Home Depot, WANDS) and the click-log simulator all produce a
:class:`SearchDataset`; retrieval, query understanding and evaluation only ever see these frames.

- ``products``: ``product_id`` (int64, unique), ``title``, ``brand``, ``category`` (path joined by
  ``" / "``, most general first), ``attributes`` (free text such as ``"color: black; material: oak"``),
  ``description`` (str, may be empty), ``price`` (float, NaN when unknown). Extra columns are kept.
- ``queries``: ``query_id`` (int64, unique), ``text`` (str, raw as typed).
- ``judgements``: ``query_id``, ``product_id``, ``grade`` (float >= 0; 0 = irrelevant). The gain used
  by nDCG is ``2**grade - 1`` (:func:`gains`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError

TEXT_FIELDS: tuple[str, ...] = ("title", "brand", "category", "attributes", "description")
PRODUCT_COLUMNS: tuple[str, ...] = ("product_id", *TEXT_FIELDS, "price")
QUERY_COLUMNS: tuple[str, ...] = ("query_id", "text")
JUDGEMENT_COLUMNS: tuple[str, ...] = ("query_id", "product_id", "grade")
CATEGORY_SEPARATOR = " / "
# A judged product counts as "relevant" for MAP and recall when its grade is at least this:
# CrowdFlower median >= 2, Home Depot mean >= 2, WANDS Partial or Exact ("somewhat relevant" or better).
RELEVANT_GRADE = 1.0


def gains(grades: np.ndarray | pd.Series) -> np.ndarray:
    """Graded gain ``2**g - 1`` (g = 0 irrelevant ... 3 perfect), as float64."""
    return np.exp2(np.asarray(grades, dtype=np.float64)) - 1.0


def normalize_products(products: pd.DataFrame) -> pd.DataFrame:
    """Return ``products`` with every schema column present and typed; optional text fields default to ''.

    Raises :class:`InputError` when ``product_id`` or ``title`` is missing or ids repeat.
    """
    for required in ("product_id", "title"):
        if required not in products.columns:
            raise InputError(
                "products",
                list(products.columns),
                f"missing column {required!r}",
                "add it (see mlsd.search.data)",
            )
    out = products.copy()
    out["product_id"] = out["product_id"].astype(np.int64)
    if out["product_id"].duplicated().any():
        dup = int(out.loc[out["product_id"].duplicated(), "product_id"].iloc[0])
        raise InputError("product_id", dup, "product ids must be unique", "deduplicate the catalog first")
    for field in TEXT_FIELDS:
        out[field] = out[field].fillna("").astype(str) if field in out.columns else ""
    out["price"] = pd.to_numeric(out["price"], errors="coerce") if "price" in out.columns else np.nan
    return out.reset_index(drop=True)


def catalog_fingerprint(
    products: pd.DataFrame, fields: tuple[str, ...] = ("product_id", *TEXT_FIELDS)
) -> str:
    """A content hash of the catalog's ids and text, used to key caches (embeddings) on disk."""
    present = [f for f in fields if f in products.columns]
    hashed = pd.util.hash_pandas_object(products[present], index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(present).encode()).hexdigest()[:16]


@dataclass
class SearchDataset:
    """Products, queries and graded judgements of one relevance dataset (or simulated log)."""

    name: str
    products: pd.DataFrame
    queries: pd.DataFrame
    judgements: pd.DataFrame
    max_grade: float

    def __post_init__(self) -> None:
        self.products = normalize_products(self.products)
        self.queries = self.queries.reset_index(drop=True)
        self.queries["query_id"] = self.queries["query_id"].astype(np.int64)
        self.queries["text"] = self.queries["text"].fillna("").astype(str)
        self.judgements = self.judgements.reset_index(drop=True)
        self.judgements["query_id"] = self.judgements["query_id"].astype(np.int64)
        self.judgements["product_id"] = self.judgements["product_id"].astype(np.int64)
        self.judgements["grade"] = self.judgements["grade"].astype(np.float64)

    def judged_lists(self) -> dict[int, dict[int, float]]:
        """``{query_id: {product_id: grade}}`` for every judged query."""
        out: dict[int, dict[int, float]] = {}
        j = self.judgements
        for qid, group in j.groupby("query_id", sort=False):
            out[int(qid)] = dict(zip(group["product_id"].tolist(), group["grade"].tolist(), strict=True))
        return out

    def summary(self) -> dict[str, float | int | str]:
        """Row counts and label statistics, for reports."""
        per_query = self.judgements.groupby("query_id").size()
        return {
            "name": self.name,
            "products": len(self.products),
            "queries": len(self.queries),
            "judgements": len(self.judgements),
            "judged_per_query_mean": float(per_query.mean()) if len(per_query) else 0.0,
            "relevant_share": float((self.judgements["grade"] >= RELEVANT_GRADE).mean())
            if len(self.judgements)
            else 0.0,
        }
