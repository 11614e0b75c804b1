"""The internal schema: validation, id maps, interaction matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.recsys.data import (
    IdMap,
    RecsysDataset,
    binary_matrix,
    interaction_matrix,
    make_interactions,
    validate,
)


def tiny() -> RecsysDataset:
    inter = make_interactions([1, 1, 2, 3], [10, 20, 10, 30], [100, 200, 300, 400], rating=[5, 3, np.nan, 4])
    items = pd.DataFrame(
        {
            "item_id": [10, 20, 30],
            "title": ["a", "b", "c"],
            "genres": ["X", "X|Y", ""],
            "year": [1990, 2000, -1],
        }
    )
    users = pd.DataFrame({"user_id": [1, 2, 3]})
    return RecsysDataset(inter, items, users, "tiny")


def test_make_interactions_dtypes_and_defaults():
    inter = tiny().interactions
    assert list(inter.dtypes.astype(str)) == ["int64", "int64", "int64", "float64", "float64"]
    assert np.isnan(inter["rating"].iloc[2])
    assert (inter["weight"] == 1.0).all()


def test_validate_accepts_good_and_names_missing_column():
    assert validate(tiny()).name == "tiny"
    bad = tiny()
    bad.interactions = bad.interactions.drop(columns="timestamp")
    with pytest.raises(DataFormatError, match="timestamp"):
        validate(bad)


def test_validate_rejects_unknown_item_duplicate_ids_and_non_dataset():
    bad = tiny()
    bad.interactions.loc[0, "item_id"] = 99
    with pytest.raises(DataFormatError, match="99"):
        validate(bad)
    dup = tiny()
    dup.items = pd.concat([dup.items, dup.items.iloc[:1]])
    with pytest.raises(DataFormatError, match="more than once"):
        validate(dup)
    with pytest.raises(InputError):
        validate("not a dataset")


def test_validate_rejects_float_ids():
    bad = tiny()
    bad.interactions["user_id"] = bad.interactions["user_id"].astype(float) + 0.5
    with pytest.raises(DataFormatError, match="user_id"):
        validate(bad)


def test_idmap_round_trip_and_unknown():
    m = IdMap([30, 10, 20, 10])
    assert len(m) == 3
    np.testing.assert_array_equal(m.index([10, 30, 99]), [0, 2, -1])
    np.testing.assert_array_equal(m.raw([2, -1, 0]), [30, -1, 10])
    np.testing.assert_array_equal(IdMap([]).index([1]), [-1])


def test_matrices_sum_duplicates_and_binarise():
    inter = make_interactions([1, 1, 2], [10, 10, 20], [1, 2, 3], weight=[0.5, 0.25, 1.0])
    users, items = IdMap([1, 2]), IdMap([10, 20, 30])
    m = interaction_matrix(inter, users, items, value="weight").toarray()
    np.testing.assert_allclose(m, [[0.75, 0, 0], [0, 1.0, 0]])
    np.testing.assert_array_equal(binary_matrix(inter, users, items).toarray(), [[1, 0, 0], [0, 1, 0]])
