"""Label store contract on SQLite and PostgreSQL, and the training cut-off that must not leak."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from mlsd.fraud.labels import SQLLabelStore, check_no_leakage, training_labels
from mlsd.platform.errors import InputError

DAY = 86_400


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLLabelStore.sqlite(tmp_path / "labels.sqlite")
        yield s
        s.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    s = SQLLabelStore.postgres(dsn, schema=schema)
    yield s
    s.db.execute(f"DROP SCHEMA {schema} CASCADE")
    s.close()


def test_labels_known_at_is_point_in_time(store):
    store.add(["t1", "t2"], [1, 0], [10 * DAY, 12 * DAY], "review")
    store.add(["t2"], [1], [50 * DAY], "chargeback")  # review said legit, the chargeback overturns it
    store.add(["t3"], [1], [40 * DAY], "chargeback")
    at11 = store.labels_known_at(11 * DAY)
    assert at11["tx_id"].tolist() == ["t1"]
    at45 = store.labels_known_at(45 * DAY).set_index("tx_id")
    assert at45.loc["t2", "label"] == 0 and at45.loc["t3", "label"] == 1
    at60 = store.labels_known_at(60 * DAY).set_index("tx_id")
    assert at60.loc["t2", "label"] == 1 and at60.loc["t2", "source"] == "chargeback"
    assert store.count() == 4


def test_add_is_idempotent(store):
    store.add([1, 2], [1, 1], [5, 6], "chargeback")
    store.add([1, 2], [1, 1], [5, 6], "chargeback")
    assert store.count() == 2
    assert store.labels_known_at(10)["tx_id"].tolist() == ["1", "2"]


def test_bad_labels_rejected(store):
    with pytest.raises(InputError) as err:
        store.add(["a"], [2], [1], "review")
    assert err.value.field == "label"


def test_training_uses_only_labels_known_at_cutoff(store):
    # t_early: fraud charged back before the cut-off; t_late: fraud charged back after it.
    tx = np.array(["t_early", "t_late", "t_legit", "t_fresh"])
    tx_ts = np.array([1 * DAY, 2 * DAY, 3 * DAY, 29 * DAY])
    store.add(["t_early", "t_late"], [1, 1], [20 * DAY, 45 * DAY], "chargeback")
    cutoff = 30 * DAY
    y = training_labels(tx, tx_ts, store.labels_known_at(cutoff), cutoff, delay_s=7 * DAY)
    # t_late is a fraud, but nobody knew at the cut-off: a leak-free training set calls it legit.
    np.testing.assert_array_equal(y[:3], [1.0, 0.0, 0.0])
    assert np.isnan(y[3])  # inside the delay window: not trusted for training
    y_later = training_labels(tx, tx_ts, store.labels_known_at(60 * DAY), 60 * DAY, delay_s=7 * DAY)
    np.testing.assert_array_equal(y_later, [1.0, 1.0, 0.0, 0.0])


def test_leakage_check_fails_on_future_labels(store):
    store.add(["x"], [1], [100], "chargeback")
    everything = store.labels_known_at(10**12)
    with pytest.raises(AssertionError, match="leakage"):
        check_no_leakage(everything, cutoff=50)
    with pytest.raises(AssertionError, match="leakage"):
        training_labels(["x"], np.array([0]), everything, cutoff=50)
