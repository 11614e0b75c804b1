"""The GRU learns a sequence pattern the current payment alone does not show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.features import SEQ_FEATURES, sequence_names
from mlsd.fraud.sequence import SequenceModel, sequence_tensor
from mlsd.platform.metrics import roc_auc


def _data(n=1200, seed=0):
    """Fraud = a burst: the previous payments came seconds apart. Amounts are pure noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    cols = {}
    for i in range(4):
        age = np.where(y == 1, rng.uniform(10, 300, n) * i, rng.uniform(3600, 86400, n) * i)
        cols.update(
            {
                f"seq{i}_log_amount": rng.normal(3, 1, n),
                f"seq{i}_log_age": np.log1p(age),
                f"seq{i}_same_terminal": rng.integers(0, 2, n).astype(float),
                f"seq{i}_present": np.ones(n),
            }
        )
    return pd.DataFrame(cols)[sequence_names(4)], y


def test_tensor_is_oldest_first():
    frame, _ = _data(5)
    x = sequence_tensor(frame, 4)
    assert x.shape == (5, 4, len(SEQ_FEATURES))
    assert (x[:, -1, 0] == frame["seq0_log_amount"].to_numpy(np.float32)).all()


@pytest.mark.slow
def test_learns_bursts_and_round_trips(tmp_path):
    frame, y = _data()
    model = SequenceModel(seq_len=4, epochs=3, hidden=16, batch_size=64, lr=1e-2).fit(frame, y)
    test, y_test = _data(600, seed=1)
    p = model.predict_proba(test)
    assert roc_auc(y_test, p) > 0.95
    model.save(tmp_path / "seq")
    np.testing.assert_allclose(SequenceModel.load(tmp_path / "seq").predict_proba(test), p, rtol=1e-6)
