"""Schema helpers: each bad input names the file, the line and what was expected."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.data import require_columns, require_numeric, require_unique
from mlsd.platform.errors import DataFormatError

CSV = "item_id,rating\n1,4.5\n2,x\n3,\n"  # line 3 holds 'x', line 4 an empty rating


def frame() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(CSV), dtype=str)


def test_require_columns_lists_missing_and_found() -> None:
    require_columns(frame(), ["item_id"], "items.csv")
    with pytest.raises(
        DataFormatError, match=r"lacks column\(s\) \['title'\]; found \['item_id', 'rating'\]"
    ) as err:
        require_columns(frame(), ["item_id", "title"], "items.csv")
    assert err.value.path == "items.csv" and err.value.line == 1


def test_require_numeric_names_the_line() -> None:
    with pytest.raises(DataFormatError, match="expected a number, got 'x'") as err:
        require_numeric(frame(), "rating", "items.csv")
    assert err.value.line == 3 and err.value.value == "items.csv:3"
    with pytest.raises(DataFormatError) as err:
        require_numeric(frame().iloc[[0, 2]], "rating", "items.csv")  # the empty value on line 4
    assert err.value.line == 3  # row position 1 of the subset -> line 3 by position
    values = require_numeric(frame().iloc[[0, 2]], "rating", "items.csv", allow_missing=True)
    assert values[0] == 4.5 and np.isnan(values[1])


def test_require_numeric_integer() -> None:
    ids = require_numeric(frame(), "item_id", "items.csv", integer=True)
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 3]
    df = pd.DataFrame({"n": ["1", "2.5"]})
    with pytest.raises(DataFormatError, match="whole number") as err:
        require_numeric(df, "n", "n.csv", integer=True, line_offset=1)
    assert err.value.line == 2


def test_require_unique() -> None:
    require_unique(frame(), "item_id", "items.csv")
    df = pd.DataFrame({"item_id": [5, 6, 5]})
    with pytest.raises(DataFormatError, match="5 appears more than once") as err:
        require_unique(df, "item_id", "items.csv")
    assert err.value.line == 4
