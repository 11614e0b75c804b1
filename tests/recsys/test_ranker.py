"""LightGBM ranker: learns a known signal, saves/loads identically, refuses bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.recsys.ranker import LightGBMRanker


def signal(n_groups=40, per=20, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"good": rng.normal(size=n_groups * per), "noise": rng.normal(size=n_groups * per)})
    y = (X["good"] + 0.1 * rng.normal(size=len(X)) > 1.0).astype(float).to_numpy()
    return X, y, np.full(n_groups, per)


@pytest.mark.parametrize("objective", ["binary", "lambdarank"])
def test_learns_the_signal_and_ranks_it_first(objective):
    X, y, g = signal()
    r = LightGBMRanker(objective=objective, n_estimators=30, min_child_samples=5, n_jobs=1).fit(X, y, g)
    s = r.predict(X)
    assert np.corrcoef(s, X["good"])[0, 1] > 0.5
    assert r.feature_importances().index[0] == "good"


def test_save_load_round_trip(tmp_path):
    X, y, g = signal()
    r = LightGBMRanker(n_estimators=20, min_child_samples=5, n_jobs=1).fit(X, y, g, eval_set=(X, y, g))
    r.save(tmp_path / "r")
    back = LightGBMRanker.load(tmp_path / "r")
    np.testing.assert_allclose(back.predict(X), r.predict(X))
    assert back.feature_names_ == ["good", "noise"]
    # columns are matched by name, not position
    np.testing.assert_allclose(back.predict(X[["noise", "good"]]), r.predict(X))


def test_boosts_from_a_base_feature(tmp_path):
    X, y, g = signal()
    # One tiny tree: the score is still (almost exactly) the logistic fit on the base feature, so
    # the ranking is the base feature's; the corrections are the trees' job.
    r = LightGBMRanker(n_estimators=1, learning_rate=1e-6, min_child_samples=5, base_feature="good").fit(
        X, y, g
    )
    a, b = r.base_coef_
    assert a > 0
    np.testing.assert_allclose(r.predict(X), 1 / (1 + np.exp(-(a * X["good"] + b))), rtol=1e-4)
    full = LightGBMRanker(n_estimators=20, min_child_samples=5, base_feature="good").fit(X, y, g)
    full.save(tmp_path / "r")
    back = LightGBMRanker.load(tmp_path / "r")
    assert back.base_feature == "good" and back.base_coef_ == full.base_coef_
    np.testing.assert_allclose(back.predict(X), full.predict(X))
    with pytest.raises(InputError, match="base_feature"):
        LightGBMRanker(base_feature="missing").fit(X, y, g)


def test_bad_inputs(tmp_path):
    X, y, g = signal()
    with pytest.raises(InputError, match="group"):
        LightGBMRanker(objective="lambdarank").fit(X, y, None)
    with pytest.raises(InputError, match="group"):
        LightGBMRanker(objective="lambdarank").fit(X, y, g[:-1])
    with pytest.raises(InputError, match="objective"):
        LightGBMRanker(objective="poisson").fit(X, y, g)
    with pytest.raises(InputError, match="label"):
        LightGBMRanker().fit(X, y[:-1], g)
    r = LightGBMRanker(n_estimators=5, n_jobs=1).fit(X, y, g)
    with pytest.raises(InputError, match="feature"):
        r.predict(X[["good"]])
    with pytest.raises(DataFormatError, match="missing"):
        LightGBMRanker.load(tmp_path / "nothing")
    r.save(tmp_path / "bad")
    (tmp_path / "bad" / "model.txt").write_text("not a model")
    with pytest.raises(DataFormatError):
        LightGBMRanker.load(tmp_path / "bad")
