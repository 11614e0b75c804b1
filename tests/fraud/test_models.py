"""FraudModel: fit / calibrated predict_proba / explain / save-load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.features import sequence_names
from mlsd.fraud.models import FraudModel
from mlsd.platform.errors import InputError
from mlsd.platform.metrics import roc_auc


def _data(n=3000, seed=0):
    """Fraud when the amount is high AND the terminal is risky; noise columns carry nothing."""
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 30.0, n)
    risk = rng.random(n)
    noise = rng.normal(size=n)
    logit = 0.04 * (amount - 150) + 4 * (risk - 0.8)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"amount": amount, "terminal_risk_1d": risk, "noise": noise})
    for name in sequence_names(3):
        frame[name] = (
            np.log1p(amount) if name.endswith("log_amount") else (1.0 if name.endswith("present") else 0.0)
        )
    return frame, y


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    return FraudModel(seq_len=3, seq_epochs=3, lgbm_params={"n_estimators": 100}).fit(
        X, y, time=np.arange(len(y))
    )


def test_ranks_and_is_calibrated(fitted):
    X, y = _data(4000, seed=1)
    parts = fitted.predict_components(X)
    assert set(parts) == {"lightgbm", "sequence", "ensemble"}
    p = fitted.predict_proba(X)
    assert ((p >= 0) & (p <= 1)).all() and roc_auc(y, p) > 0.85
    # calibrated: in each probability band, the observed fraud rate is close to the mean prediction
    bands = np.digitize(p, [0.1, 0.3, 0.6])
    for b in np.unique(bands):
        rows = bands == b
        if rows.sum() > 200:
            assert abs(y[rows].mean() - p[rows].mean()) < 0.1


def test_explain_gives_positive_top_contributions(fitted):
    X, _ = _data(50, seed=2)
    i = int(np.argmax(fitted.predict_proba(X)))
    reasons = fitted.explain(X.iloc[[i]], top=3)[0]
    assert reasons and all(v > 0 for _, v in reasons)
    assert reasons[0][0] in {"amount", "terminal_risk_1d"}
    assert "seq0_log_amount" not in fitted.feature_names_  # the GRU's inputs, not LightGBM's
    assert fitted.contributions(X).shape == (50, len(fitted.feature_names_) + 1)


def test_save_load_same_predictions(fitted, tmp_path):
    X, _ = _data(200, seed=3)
    fitted.save(tmp_path / "m")
    back = FraudModel.load(tmp_path / "m")
    np.testing.assert_allclose(back.predict_proba(X), fitted.predict_proba(X), rtol=1e-6)
    np.testing.assert_allclose(back.contributions(X), fitted.contributions(X), rtol=1e-6)


def test_isotonic_and_lightgbm_only():
    X, y = _data(1500)
    model = FraudModel(sequence=False, calibration="isotonic", lgbm_params={"n_estimators": 50}).fit(X, y)
    assert set(model.predict_components(X)) == {"lightgbm", "ensemble"}


def test_bad_labels():
    X, y = _data(100)
    with pytest.raises(InputError):
        FraudModel().fit(X, np.zeros(100))
    with pytest.raises(InputError):
        FraudModel().fit(X, y[:50])
