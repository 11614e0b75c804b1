"""LightGBM trained over a Dask LocalCluster (2 worker processes on loopback) reaches the metrics of
single-machine LightGBM on the same data; ``mlsd fraud train --engine dask`` registers a model that
serves like any other."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mlsd.platform.testing import require_extra

require_extra("distributed", "dask")
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def client():
    from mlsd.fraud.distributed_training import dask_client

    with dask_client(n_workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def frame():
    from mlsd.fraud.features import compute_features
    from mlsd.fraud.models import tabular_columns
    from mlsd.fraud.world import simulate

    tx = simulate(n_cards=1200, n_terminals=240, days=14, seed=5)
    feats = compute_features(tx)
    cols = tabular_columns(feats.columns)
    order = np.argsort(tx["ts"].to_numpy(), kind="stable")
    cut = int(len(order) * 0.6)
    train, test = order[:cut], order[cut:]
    y = tx["fraud"].to_numpy().astype(np.int8)
    return feats[cols].iloc[train], y[train], feats[cols].iloc[test], y[test]


# regularised for ~200 frauds: on so few positives a deep tree's AUC moves by several points with any
# change of the data's order, which would hide what the comparison is about
PARAMS = {
    "objective": "binary", "n_estimators": 80, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 100,
    "subsample": 1.0, "verbose": -1,
}  # fmt: skip


def test_dask_lightgbm_reaches_single_machine_metrics_on_the_same_data(client, frame):
    from mlsd.fraud.distributed_training import fit_lgbm_dask

    X, y, X_test, y_test = frame
    assert y.sum() > 50 and y_test.sum() > 50
    local = lgb.LGBMClassifier(**PARAMS, n_jobs=1).fit(X, y)
    distributed = fit_lgbm_dask(X, y, PARAMS, client)
    assert isinstance(distributed, lgb.LGBMClassifier)
    p_local = local.predict_proba(X_test)[:, 1]
    p_dist = distributed.predict_proba(X_test)[:, 1]
    auc_local, auc_dist = roc_auc_score(y_test, p_local), roc_auc_score(y_test, p_dist)
    assert auc_local > 0.85  # a model worth comparing
    assert abs(auc_dist - auc_local) < 0.01, (auc_local, auc_dist)
    ap_local = average_precision_score(y_test, p_local)
    assert abs(average_precision_score(y_test, p_dist) - ap_local) < 0.03
    # data-parallel over 2 workers: the same model class, different (not identical) trees
    assert distributed.booster_.num_trees() == local.booster_.num_trees()


def test_the_best_iteration_comes_from_the_validation_curve(client, frame):
    from mlsd.fraud.distributed_training import fit_lgbm_dask

    X, y, X_test, y_test = frame
    # AUC: LightGBM's and scikit-learn's agree (ties averaged in both), so the curve can be recomputed
    model = fit_lgbm_dask(X, y, PARAMS, client, valid=(X_test, y_test), metric="auc")
    curve = [
        roc_auc_score(y_test, model.predict_proba(X_test, num_iteration=k)[:, 1])
        for k in range(1, PARAMS["n_estimators"] + 1)
    ]
    assert curve[model.best_iteration_ - 1] == pytest.approx(max(curve), abs=1e-9)
    assert model.best_iteration_ == int(np.argmax(np.round(curve, 9))) + 1


def test_train_engine_dask_registers_a_model_that_serves(client, tmp_path):
    from mlsd.cli import main
    from mlsd.fraud.engine import load_engine
    from mlsd.platform.system import SystemDir

    argv = ["--workdir", str(tmp_path), "--json"]
    assert main(["fraud", "simulate", *argv, "--size", "tiny", "--cards", "200", "--terminals", "50"]) == 0
    scheduler = client.scheduler.address
    assert (
        main(["fraud", "train", *argv, "--trees", "30", "--engine", "dask", "--dask-scheduler", scheduler])
        == 0
    )
    [run] = list((tmp_path / "fraud" / "runs").glob("*.json"))
    report = json.loads(run.read_text())
    assert report["promoted"] and report["metrics"]["eval"]["n"] > 0
    engine = load_engine(SystemDir(tmp_path, "fraud"), review=False)
    [answer] = engine.handle(
        [{"tx_id": "t1", "ts": 1769900000, "card_id": 1, "terminal_id": 2, "amount": 12.5}]
    )
    assert answer["decision"] in {"approve", "review", "block"}


def test_a_missing_dask_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from mlsd.fraud.distributed_training import _require_dask
    from mlsd.platform.errors import InputError

    real = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    with pytest.raises(InputError, match=r"mlsd\[dask\]"):
        _require_dask()
