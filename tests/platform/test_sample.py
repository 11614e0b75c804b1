"""ServingSample: a bounded reservoir that stays uniform over everything added."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.monitoring import ServingSample


def test_the_reservoir_is_bounded_and_uniform_over_the_stream() -> None:
    sample = ServingSample(max_rows=2000, seed=4)
    for start in range(0, 100_000, 1000):  # 100 batches, values = stream position
        sample.add(pd.DataFrame({"pos": np.arange(start, start + 1000), "kind": "a"}))
    frame = sample.frame()
    assert len(frame) == len(sample) == 2000 and sample.seen == 100_000
    assert frame["pos"].is_unique
    # uniform over positions: each decile of the stream holds ~10% of the sample (se ~0.7 points)
    shares = np.bincount(frame["pos"].to_numpy() // 10_000, minlength=10) / 2000
    assert np.all(np.abs(shares - 0.1) < 0.03), shares
    # a stream shorter than the reservoir is kept whole, in order
    small = ServingSample(max_rows=50)
    small.add(pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
    assert small.frame()["x"].tolist() == [1.0, 2.0, 3.0]


def test_frames_with_other_columns_are_refused_and_saved_samples_read_back(tmp_path) -> None:
    sample = ServingSample(max_rows=10)
    sample.add(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    with pytest.raises(InputError) as err:
        sample.add(pd.DataFrame({"x": [1.0]}))
    assert err.value.field == "frame.columns"
    path = sample.save(tmp_path / "current.parquet")
    assert pd.read_parquet(path).to_dict("records") == [{"x": 1.0, "y": 2.0}]
    sample.clear()
    assert len(sample) == 0 and sample.frame().empty
