"""Fixtures shared by the search tests."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def tiny_catalog() -> pd.DataFrame:
    """240 products: 6 brands x 4 categories x 5 modifiers, model numbers X0..X6 (copy before mutating)."""
    brands = ["Sonix", "Auralis", "Casara", "Nordhem", "Stridex", "Peakline"]
    leaves = [
        ("Electronics / Audio / Headphones", "Headphones"),
        ("Home / Furniture / Sofas", "Sofa"),
        ("Home / Kitchen / Knives", "Knife Set"),
        ("Fashion / Shoes / Boots", "Boots"),
    ]
    mods = ["Pro", "Classic", "Modern", "Ultra", "Compact"]
    rows = []
    for i in range(240):
        cat, noun = leaves[i % len(leaves)]
        rows.append(
            {
                "product_id": i,
                "title": f"{brands[i % 6]} {mods[i % 5]} {noun} X{i % 7}",
                "brand": brands[i % 6],
                "category": cat,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def search_world(tmp_path_factory):
    """The demo-sized simulated search world (1,500 products, 20k logged searches, 500 users), trained
    without the dense index (~5 s): ``(SystemDir, SearchWorld)``. Tests that change its folders copy
    them first."""
    from mlsd.platform.system import SystemDir
    from mlsd.search.world import load_world

    dirs = SystemDir(tmp_path_factory.mktemp("search-world"), "search")
    return dirs, load_world(dirs, dense=False, progress=False)
