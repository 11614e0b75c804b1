"""The Spark MLlib ALS trainer behind the ALS candidate-source interface: same planted data as
``implicit``, similar recall (not identical factors), and the same serving code (FAISS, online-store
export). The jobs run on a real standalone cluster (``spark_master_url``: a master and 2 workers, each
worker's executor its own JVM), one session for the module (a JVM start costs ~10 s), stopped at its
end so no other test inherits it."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.features.online import MemoryStore
from mlsd.platform.testing import require_extra
from mlsd.recsys.candidates import ALSCandidates
from mlsd.recsys.candidates.spark_als import SparkALSCandidates, spark_session
from mlsd.recsys.data import make_interactions

require_extra("pyspark", "spark")


@pytest.fixture(scope="module")
def spark(spark_master_url):
    session = spark_session(spark_master_url)
    yield session
    session.stop()


@pytest.mark.slow
def test_the_jobs_run_on_the_clusters_two_executors_with_this_python(spark, spark_master_url):
    sc = spark.sparkContext
    assert sc.master == spark_master_url and spark_master_url.startswith("spark://")
    assert spark_session() is spark  # the trainer's session is this one: no second, local context

    def where(_rows):
        import os
        import sys

        yield os.getpid(), sys.prefix

    ran = set(sc.parallelize(range(8), 8).mapPartitions(where).collect())
    # Executors register with the driver as the job starts; block managers: 2 executors + the driver.
    assert sc._jsc.sc().getExecutorMemoryStatus().size() == 3
    assert len(sc._jsc.sc().statusTracker().getExecutorInfos()) == 3
    assert {prefix for _pid, prefix in ran} == {sys.prefix}  # the executors' python is this venv's
    assert os.getpid() not in {pid for pid, _prefix in ran}  # the tasks ran outside the driver


@pytest.mark.slow
def test_a_master_other_than_the_active_sessions_is_refused(spark):
    with pytest.raises(InputError) as err:
        spark_session("local[2]")
    assert err.value.field == "master" and err.value.value == "local[2]"
    assert spark.sparkContext.master in err.value.problem and "stop" in err.value.fix


def planted(n_users: int = 400, n_items: int = 120, n_groups: int = 4, per_user: int = 12, seed: int = 0):
    """Users of a taste group watch mostly titles of that group: (train events, one held-out title per
    user). Low-rank structure that any working ALS recovers; the held-out title is never seen."""
    rng = np.random.default_rng(seed)
    group_of_item = np.arange(n_items) % n_groups
    users, items = [], []
    held = np.zeros(n_users, np.int64)
    for u in range(n_users):  # test data set-up, not a hot path
        own = np.flatnonzero(group_of_item == u % n_groups)
        other = np.flatnonzero(group_of_item != u % n_groups)
        picks = np.r_[rng.choice(own, per_user, replace=False), rng.choice(other, 2, replace=False)]
        held[u] = picks[0]
        users += [u] * (len(picks) - 1)
        items += picks[1:].tolist()
    events = make_interactions(np.array(users), np.array(items), np.arange(len(users)))
    return events, held


def recall_at(source, events: pd.DataFrame, held: np.ndarray, k: int = 10) -> float:
    from mlsd.recsys.data import binary_matrix

    users = np.arange(len(held))
    seen = binary_matrix(events, source.users_, source.items_)[source.users_.index(users)]
    idx, _ = source.candidates(users, k, exclude=seen)
    return float(np.mean((source.items_.raw(idx) == held[:, None]).any(axis=1)))


@pytest.mark.slow
def test_spark_als_matches_implicit_quality_on_planted_data(spark):
    events, held = planted()
    settings = {"factors": 8, "regularization": 0.05, "alpha": 2.0, "iterations": 10}
    local = ALSCandidates(**settings).fit(events)
    distributed = SparkALSCandidates(**settings, num_blocks=2).fit(events)
    r_local, r_spark = recall_at(local, events, held), recall_at(distributed, events, held)
    chance = 10 / (120 - 13)
    # Both recover the planted groups (far above chance), to within a few points of each other;
    # the factors themselves differ (different solvers, regularisation scaled differently).
    assert r_local > 3 * chance and r_spark > 3 * chance, (r_local, r_spark)
    assert abs(r_spark - r_local) < 0.1, (r_local, r_spark)
    assert not np.allclose(local.user_factors_, distributed.user_factors_)
    # The same interface: ids, factor shapes, scores of given pairs agree with the dense scores.
    assert np.array_equal(distributed.users_.ids, local.users_.ids)
    assert distributed.item_factors_.shape == local.item_factors_.shape == (120, 8)
    pairs = np.array([[0, 5, 7]])
    assert np.allclose(distributed.score([0], pairs), distributed.score_dense([0])[:, [0, 5, 7]], atol=1e-5)


@pytest.mark.slow
def test_spark_factors_go_to_the_online_store_and_serve_like_the_process_copy(spark):
    events, _held = planted(n_users=60, n_items=40, per_user=6, seed=1)
    source = SparkALSCandidates(factors=4, iterations=5, num_blocks=2).fit(events)
    store = MemoryStore()
    written = source.export_users(store, "recsys:test-als", batch=25)
    assert written == 60
    users = np.array([3, 17, 59, 10**9])  # the last one is unknown: no row, a zero vector
    vectors, known = source.user_vectors(users)
    rows = store.get_many("recsys:test-als", [str(u) for u in users])
    assert rows[-1] is None and known.tolist() == [True, True, True, False]
    assert np.array_equal(np.vstack([r["als"] for r in rows[:3]]), vectors[:3])


@pytest.mark.slow
def test_a_fitted_spark_model_pickles_and_serves_without_a_session(spark, spark_master_url):
    events, _held = planted(n_users=60, n_items=40, per_user=6, seed=2)
    source = SparkALSCandidates(factors=4, iterations=3, num_blocks=2, master=spark_master_url).fit(events)
    blob = pickle.dumps(source)
    # A fresh interpreter unpickles and serves it: pyspark is never imported and no session starts.
    code = (
        "import pickle, sys; import numpy as np; "
        "m = pickle.loads(sys.stdin.buffer.read()); idx, _ = m.candidates(np.array([0, 1]), 5); "
        "assert idx.shape == (2, 5), idx.shape; "
        "assert not any(n.startswith('pyspark') for n in sys.modules), 'pyspark imported'; print('ok')"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == b"ok", done.stderr.decode()[-2000:]


def test_spark_import_error_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyspark(name, *args, **kwargs):
        if name.startswith("pyspark"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyspark)
    with pytest.raises(InputError) as err:
        spark_session()
    assert "mlsd[spark]" in err.value.fix
