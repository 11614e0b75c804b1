"""The fraud GBDT trained on a Dask cluster when the training frame outgrows one machine.

``lightgbm.dask.DaskLGBMClassifier`` trains one LightGBM model over the partitions of a Dask
dataframe held by the workers (LightGBM's own data-parallel learner: each worker builds histograms
of its rows, they are reduced over sockets between the workers). The result is an ordinary
``LGBMClassifier`` (``to_local()``): saved, loaded and served exactly as a single-machine model.

Why Dask and not Spark for this: LightGBM ships the Dask integration itself (no JVM, no
SynapseML jar), Dask is already fraud's batch engine candidate in Python, and a
``distributed.LocalCluster`` on loopback is the same code path as a multi-machine cluster
(``--dask-scheduler tcp://host:8786``). Dask is an optional extra: ``pip install mlsd[dask]``.

Early stopping is not available in ``lightgbm.dask`` (and its eval sets are scored on each
worker's part only); :class:`DaskFraudModel` trains the full ``n_estimators`` and picks the best
iteration on the whole held-out slice here (:func:`best_iteration`: what ``lgb.early_stopping``
keeps, without stopping early), then refits with that many trees as
:class:`~mlsd.fraud.models.FraudModel` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from mlsd.fraud.models import DEFAULT_LGBM, FraudModel
from mlsd.platform.errors import InputError

__all__ = ["DaskFraudModel", "dask_client", "fit_lgbm_dask"]


def _require_dask() -> Any:
    try:
        import dask.dataframe as dd
        import distributed  # noqa: F401
        import lightgbm.dask  # noqa: F401
    except ImportError as err:
        raise InputError(
            "--engine", "dask", f"needs Dask distributed ({err})",
            "pip install mlsd[dask] (dask[dataframe], distributed, pyarrow)",
        ) from err  # fmt: skip
    return dd


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int = 2) -> Iterator[Any]:
    """A Dask client: to ``scheduler`` (``tcp://host:8786``) if given, else to a ``LocalCluster`` of
    ``n_workers`` processes (one thread each) on loopback, closed afterwards."""
    _require_dask()
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if int(n_workers) < 1:
        raise InputError("--dask-workers", n_workers, "must be >= 1", "e.g. --dask-workers 2")
    with (
        LocalCluster(
            n_workers=int(n_workers), threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


def _partitioned(frame: pd.DataFrame | pd.Series, client: Any) -> Any:
    """``frame`` as a Dask collection with one partition per worker (LightGBM trains on each
    worker's partitions). The index is reset: ``from_pandas`` splits by index value, and features
    and labels must be split at the same rows (a feature frame's index is rarely the labels')."""
    dd = _require_dask()
    workers = max(1, len(client.scheduler_info()["workers"]))
    frame = frame.reset_index(drop=True)
    return dd.from_pandas(frame, npartitions=min(workers, max(1, len(frame))), sort=True).persist()


def fit_lgbm_dask(
    X: pd.DataFrame,
    y: np.ndarray,
    params: dict[str, Any],
    client: Any,
    *,
    valid: tuple[pd.DataFrame, np.ndarray] | None = None,
    metric: str = "average_precision",
) -> Any:
    """One LightGBM classifier trained over the Dask workers; returns the local ``LGBMClassifier``
    (``best_iteration_`` set from ``valid``'s ``metric`` when a validation slice is given:
    :func:`best_iteration`)."""
    _require_dask()
    from lightgbm.dask import DaskLGBMClassifier

    # one thread per worker process (lightgbm.dask ignores n_jobs: a worker's threads are Dask's)
    settings = {k: v for k, v in params.items() if k != "n_jobs"}
    model = DaskLGBMClassifier(client=client, **settings)
    # rows spread over the workers at random, not in time order: distributed LightGBM finds each
    # feature's bin boundaries on one worker's rows, and a worker holding only the first days (cold
    # windows, zero terminal risk) bins the features badly (measured: test AUC 0.69 instead of 0.92)
    spread = np.random.default_rng(int(params.get("random_state") or 0)).permutation(len(X))
    model.fit(_partitioned(X.iloc[spread], client), _partitioned(pd.Series(np.asarray(y)[spread]), client))
    local = model.to_local()
    if valid is not None:
        local._best_iteration = best_iteration(local, valid[0], valid[1], metric)
    return local


def best_iteration(model: Any, X: pd.DataFrame, y: np.ndarray, metric: str = "average_precision") -> int:
    """The first iteration with the best ``metric`` on ``(X, y)``: what ``lgb.early_stopping`` keeps.

    Computed here, over the whole validation slice: ``lightgbm.dask`` evaluates an eval set on each
    worker's part of it only. One tree's raw scores at a time, summed: linear in the trees.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    score = {"average_precision": average_precision_score, "auc": roc_auc_score}.get(metric)
    if score is None:
        raise InputError("metric", metric, "unknown early-stopping metric", "use average_precision or auc")
    booster = model.booster_
    matrix = X.to_numpy(dtype=np.float64)
    raw = np.zeros(len(matrix))
    curve = []
    for k in range(booster.num_trees()):
        raw += booster.predict(matrix, raw_score=True, start_iteration=k, num_iteration=1)
        curve.append(score(y, raw))
    return int(np.argmax(curve)) + 1


class DaskFraudModel(FraudModel):
    """:class:`~mlsd.fraud.models.FraudModel` whose LightGBM is trained on a Dask cluster (the GRU,
    if enabled, and the calibration stay in this process: they see the held-out slice only)."""

    def __init__(self, *args: Any, client: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client

    def _fit_bases(self, X: pd.DataFrame, y: np.ndarray, valid=None, rounds: int | None = None):
        from mlsd.fraud.sequence import SequenceModel

        params = {**DEFAULT_LGBM, **(self.lgbm_params or {}), "random_state": self.seed}
        if rounds is not None:
            params["n_estimators"] = rounds
        use_valid = valid is not None and 0 < valid[1].sum() < len(valid[1]) and self.early_stopping
        lgbm = fit_lgbm_dask(
            X[self.feature_names_], y, params, self.client,
            valid=(valid[0][self.feature_names_], valid[1]) if use_valid else None,
        )  # fmt: skip
        seq = None
        if self.sequence:
            seq = SequenceModel(seq_len=self.seq_len, epochs=self.seq_epochs, seed=self.seed).fit(X, y)
        return lgbm, seq
