"""Implicit ALS trained by Spark MLlib: the distributed trainer behind the same candidate-source interface
as :class:`~mlsd.recsys.candidates.als.ALSCandidates` (``implicit``).

Only training moves to Spark. The factors come back to the driver and everything after that is
:class:`ALSCandidates`' own code: retrieval is a FAISS inner-product search over the item factors
(built once per serving process), and :meth:`~ALSCandidates.export_users` writes the user factors to
the online store, where N serving processes read them per request instead of each holding them.

Spark is an optional dependency (``pip install mlsd[spark]``, a JDK 17 on the PATH); it is imported
only when :meth:`SparkALSCandidates.fit` runs. With ``master=None`` the session is Spark's active one:
a caller that made one (a cluster's ``spark://host:7077``, a test's ``local[2]``) keeps it. Otherwise
one is started on ``master`` (``local[2]`` when None) and kept for the process (a JVM start costs
~10 s; stop it with ``spark_session().stop()``); a ``master`` other than the active session's is an
error rather than a job silently run elsewhere. With ``local[...]`` or a master on 127.0.0.1 /
localhost (``mlsd.platform.spark_cluster.LocalSparkCluster``) the driver binds 127.0.0.1 only; with a
remote master it listens where Spark's defaults say (``SPARK_LOCAL_IP``, ``spark.driver.host`` in
``spark-defaults.conf``): its executors must reach it.

The two trainers optimise the same objective (Hu, Koren & Volinsky 2008: confidence ``1 + alpha * r``)
but regularise differently: ``implicit`` adds ``regularization * I`` to each least-squares problem, Spark
scales ``regParam`` by the number of ratings of the user (or item) being solved. The same
``regularization`` value therefore means a stronger penalty on Spark for active users and popular
titles; similar quality, not identical factors (``tests/recsys/test_spark_als.py`` compares recall).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from mlsd.platform.errors import InputError
from mlsd.recsys.candidates.als import ALSCandidates
from mlsd.recsys.candidates.base import History
from mlsd.recsys.data import IdMap

INSTALL_HINT = "pip install mlsd[spark] (pyspark 4) and a JDK 17 on the PATH (or JAVA_HOME)"


def spark_session(master: str | None = None, app_name: str = "mlsd-als", shuffle_partitions: int = 4):
    """Spark's active session (when ``master`` is None or its own), or a new one on ``master``
    (``local[2]`` when None) bound to 127.0.0.1 (no UI, Arrow transfers), its Python workers this
    process's interpreter.

    A ``master`` other than the active session's raises :class:`InputError`: Spark keeps one
    SparkContext per process, and a job asked to run on a cluster must not run on ``local[2]``.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise InputError("pyspark", None, "is not installed: the Spark ALS trainer needs it",
                         INSTALL_HINT) from None  # fmt: skip
    active = SparkSession.getActiveSession()
    if active is not None:
        running = active.sparkContext.master
        if master is None or master == running:
            return active
        raise InputError("master", master, f"a Spark session on {running} is already active in this process",
                         "stop it first (spark_session().stop()) or pass master=None to train on it")  # fmt: skip
    # pyspark hands its executors the driver's PYSPARK_PYTHON (default: whatever `python3` is on the
    # workers' PATH, here not this venv, so no numpy/pandas of ours); one set by the caller is kept.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    master = master or "local[2]"
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if is_loopback(master):  # never the machine's interface address when nothing remote must reach us
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    return builder.getOrCreate()


def is_loopback(master: str) -> bool:
    """True for ``local[...]`` and a ``spark://`` master whose hosts are all 127.0.0.1 / localhost.

    Examples:
        >>> is_loopback("local[2]"), is_loopback("spark://127.0.0.1:7077"), is_loopback("spark://spark-m:7077")
        (True, True, False)
    """
    if master.startswith("local"):
        return True
    if not master.startswith("spark://"):
        return False
    hosts = [node.rsplit(":", 1)[0] for node in master[len("spark://") :].split(",")]
    return all(host in ("127.0.0.1", "localhost") for host in hosts)


class SparkALSCandidates(ALSCandidates):
    """Implicit-feedback ALS fitted by ``pyspark.ml.recommendation.ALS`` (``implicitPrefs=True``);
    candidates, scores, the FAISS index and the online-store export are :class:`ALSCandidates`'.

    ``master``: where the session runs (``local[2]``, ``spark://host:7077``); None: Spark's active session,
    else a new ``local[2]`` one. It is a setting, not state: a fitted model pickles without it mattering
    (serving never imports pyspark);
    ``num_blocks``: user and item blocks of Spark's block-partitioned solver (None: Spark's default, 10).
    Users and titles are mapped to dense indices on the driver (Spark's ALS ids are 32-bit integers).
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        random_state: int = 42,
        master: str | None = None,
        num_blocks: int | None = None,
    ) -> None:
        super().__init__(factors=factors, regularization=regularization, alpha=alpha,
                         iterations=iterations, random_state=random_state)  # fmt: skip
        self.master = master
        self.num_blocks = num_blocks

    def fit(self, data, users: IdMap | None = None, items: IdMap | None = None) -> SparkALSCandidates:
        import pandas as pd

        hist = History.build(data, users, items)
        spark = spark_session(self.master)
        from pyspark.ml.recommendation import ALS

        coo = hist.matrix.tocoo()
        ratings = spark.createDataFrame(pd.DataFrame({
            "user": coo.row.astype(np.int32), "item": coo.col.astype(np.int32),
            "rating": coo.data.astype(np.float32),
        }))  # fmt: skip
        als = ALS(
            rank=int(self.factors), maxIter=int(self.iterations), regParam=float(self.regularization),
            alpha=float(self.alpha), implicitPrefs=True, seed=int(self.random_state),
            userCol="user", itemCol="item", ratingCol="rating", coldStartStrategy="drop",
        )  # fmt: skip
        if self.num_blocks is not None:
            als = als.setNumUserBlocks(int(self.num_blocks)).setNumItemBlocks(int(self.num_blocks))
        model = als.fit(ratings)
        self._set_factors(
            hist.users,
            hist.items,
            _dense_factors(model.userFactors.toPandas(), len(hist.users), int(self.factors)),
            _dense_factors(model.itemFactors.toPandas(), len(hist.items), int(self.factors)),
        )
        return self


def _dense_factors(frame, n: int, rank: int) -> np.ndarray:
    """Spark's (id, features) rows as an (n, rank) float32 matrix; ids it never saw (a title with no
    event) stay zero, as ``implicit`` leaves them near zero: they never win an inner product."""
    out = np.zeros((n, rank), np.float32)
    if len(frame):
        ids = frame["id"].to_numpy(np.int64)
        out[ids] = np.asarray(frame["features"].tolist(), dtype=np.float32)
    return out
