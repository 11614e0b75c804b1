"""The fraud models: LightGBM on the tabular features, the GRU sequence model, a calibrated ensemble.

:class:`FraudModel` is the facade the product code uses::

    model = FraudModel().fit(features, labels, time=ts)
    p = model.predict_proba(features)            # calibrated P(fraud), the ensemble
    parts = model.predict_components(features)   # {"lightgbm", "sequence", "ensemble"}
    reasons = model.explain(features, top=3)     # [[(feature, contribution), ...], ...]
    model.save(directory); FraudModel.load(directory)

Fitting holds out the latest ``valid_fraction`` of the training rows (by ``time``): both base models
are fit on the earlier rows (LightGBM stops early on the held-out slice's average precision), a
logistic regression on their logits (Platt scaling of a stack) is fit
on the held-out slice - that is the calibration - and the base models are then refit on every row
(``refit``). Reason codes are LightGBM's per-feature contributions (``pred_contrib``, log-odds).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from mlsd.fraud.sequence import SequenceModel
from mlsd.platform.errors import InputError

DEFAULT_LGBM = {
    "objective": "binary",
    "learning_rate": 0.05,
    "n_estimators": 500,  # an upper bound: early stopping on the held-out slice picks the count
    "num_leaves": 31,
    "min_child_samples": 20,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "n_jobs": 1,  # a shared 2-core box; LightGBM is fast enough single-threaded at these sizes
    "verbose": -1,
    "deterministic": True,
}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def tabular_columns(columns) -> list[str]:
    """Feature columns LightGBM uses: everything but the sequence model's ``seq*`` inputs."""
    return [c for c in columns if not c.startswith("seq")]


class FraudModel:
    """LightGBM + GRU + calibrated stack (see the module docstring)."""

    def __init__(
        self,
        lgbm_params: dict | None = None,
        sequence: bool = True,
        seq_len: int = 8,
        seq_epochs: int = 8,
        valid_fraction: float = 0.25,
        calibration: str = "platt",
        refit: bool = True,
        early_stopping: int | None = 50,
        min_trees: int = 100,
        seed: int = 0,
    ) -> None:
        self.lgbm_params = lgbm_params
        self.sequence = sequence
        self.seq_len = seq_len
        self.seq_epochs = seq_epochs
        self.valid_fraction = valid_fraction
        self.calibration = calibration
        self.refit = refit
        self.early_stopping = early_stopping
        self.min_trees = min_trees
        self.seed = seed

    # -- fitting -----------------------------------------------------------------------------------
    def _fit_bases(self, X: pd.DataFrame, y: np.ndarray, valid=None, rounds: int | None = None):
        params = {**DEFAULT_LGBM, **(self.lgbm_params or {}), "random_state": self.seed}
        if rounds is not None:
            params["n_estimators"] = rounds
        lgbm = lgb.LGBMClassifier(**params)
        if valid is not None and 0 < valid[1].sum() < len(valid[1]):
            # early stopping on the held-out slice: fewer trees, cheaper scoring on the hot path
            lgbm.fit(
                X[self.feature_names_],
                y,
                eval_X=(valid[0][self.feature_names_],),
                eval_y=(valid[1],),
                eval_metric="average_precision",
                callbacks=[lgb.early_stopping(self.early_stopping, first_metric_only=True, verbose=False)],
            )
        else:
            lgbm.fit(X[self.feature_names_], y)
        seq = None
        if self.sequence:
            seq = SequenceModel(seq_len=self.seq_len, epochs=self.seq_epochs, seed=self.seed).fit(X, y)
        return lgbm, seq

    def _lgbm_matrix(self, X) -> np.ndarray:
        """LightGBM's input as one C-contiguous float64 matrix in ``feature_names_`` order.

        Selecting columns of a DataFrame and LightGBM's own DataFrame checks cost milliseconds per
        call - more than predicting a small micro-batch - so the hot path hands it a plain matrix.
        """
        if isinstance(X, np.ndarray):  # already in feature_names_ order
            return np.ascontiguousarray(X, dtype=np.float64)
        key = tuple(X.columns)
        cache = self.__dict__.setdefault("_column_index", {})
        idx = cache.get(key)
        if idx is None:
            idx = X.columns.get_indexer(self.feature_names_)
            if (idx < 0).any():
                missing = self.feature_names_[int(np.flatnonzero(idx < 0)[0])]
                raise InputError(
                    "features", missing, "is missing", "compute features with mlsd.fraud.features"
                )
            cache[key] = idx
        values = X.to_numpy(dtype=np.float64, copy=False)
        return np.ascontiguousarray(values[:, idx])

    def _lgbm_proba(self, lgbm, X) -> np.ndarray:
        # one thread: on a shared 2-core box OpenMP's spin-waiting costs more than it gains on the
        # micro-batches of the online path (and offline scoring already runs n_jobs=1)
        return np.asarray(lgbm.booster_.predict(self._lgbm_matrix(X), num_threads=1), dtype=np.float64)

    def _stack_inputs(self, lgbm, seq, X: pd.DataFrame) -> np.ndarray:
        cols = [_logit(self._lgbm_proba(lgbm, X))]
        if seq is not None:
            cols.append(seq.decision_function(X))
        return np.column_stack(cols)

    def fit(self, X: pd.DataFrame, y, time=None) -> FraudModel:
        """Fit on features ``X`` (from :mod:`mlsd.fraud.features`) and 0/1 labels ``y``."""
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise InputError(
                "labels",
                len(y),
                f"has a different length than the features ({len(X)})",
                "pass one label per feature row",
            )
        if not np.isin(y, [0, 1]).all() or y.sum() == 0 or y.sum() == len(y):
            raise InputError(
                "labels",
                float(y.mean()) if len(y) else None,
                "need both classes, as 0/1",
                "train on a period with frauds and genuine payments",
            )
        self.feature_names_ = tabular_columns(X.columns)
        if self.sequence:
            missing = [c for c in (f"seq{i}_present" for i in range(self.seq_len)) if c not in X.columns]
            if missing:
                raise InputError(
                    "features",
                    missing[0],
                    "sequence inputs are missing",
                    "compute features with mlsd.fraud.features (seq_len >= model seq_len)",
                )
        order = np.argsort(np.asarray(time), kind="stable") if time is not None else np.arange(len(y))
        cut = int(len(order) * (1 - self.valid_fraction))
        train, valid = order[:cut], order[cut:]
        y_valid = y[valid]
        lgbm, seq = self._fit_bases(X.iloc[train], y[train], valid=(X.iloc[valid], y_valid))
        # a floor: on a held-out slice with few (or shifted) positives, early stopping can fire after a
        # handful of trees; it may shorten training, not gut it
        best = int(lgbm.best_iteration_ or lgbm.n_estimators)
        self.n_trees_ = max(best, min(self.min_trees, lgbm.n_estimators)) if self.early_stopping else None
        z = self._stack_inputs(lgbm, seq, X.iloc[valid])
        if 0 < y_valid.sum() < len(y_valid):
            self.stacker_ = LogisticRegression(C=1.0).fit(z, y_valid)
            self.isotonic_ = None
            if self.calibration == "isotonic":
                raw = self.stacker_.decision_function(z)
                self.isotonic_ = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(raw, y_valid)
        else:  # no fraud in the held-out slice: fall back to the LightGBM probability, uncalibrated
            self.stacker_ = None
            self.isotonic_ = None
        if self.refit:
            lgbm, seq = self._fit_bases(X, y, rounds=self.n_trees_)
        self.lgbm_, self.seq_ = lgbm, seq
        return self

    # -- scoring -----------------------------------------------------------------------------------
    def predict_components(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Scores of each part: ``lightgbm``, ``sequence`` (if enabled) and the calibrated ``ensemble``."""
        z = self._stack_inputs(self.lgbm_, self.seq_, X)
        out = {"lightgbm": 1 / (1 + np.exp(-z[:, 0]))}
        if self.seq_ is not None:
            out["sequence"] = 1 / (1 + np.exp(-z[:, 1]))
        if self.stacker_ is None:
            out["ensemble"] = out["lightgbm"]
        elif self.isotonic_ is not None:
            out["ensemble"] = self.isotonic_.predict(self.stacker_.decision_function(z))
        else:
            out["ensemble"] = expit(self._stack_logit(z))
        return out

    def _stack_logit(self, z: np.ndarray) -> np.ndarray:
        # LogisticRegression.decision_function without sklearn's per-call input validation (which
        # costs more than the arithmetic on a micro-batch); the same operations, the same numbers
        return z @ self.stacker_.coef_.ravel() + self.stacker_.intercept_[0]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated fraud probability per row (the ensemble)."""
        return self.predict_components(X)["ensemble"]

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """LightGBM contributions ``(n, n_features + 1)`` in log-odds; the last column is the bias."""
        return np.asarray(self.lgbm_.booster_.predict(self._lgbm_matrix(X), pred_contrib=True, num_threads=1))

    def explain(self, X: pd.DataFrame, top: int = 3) -> list[list[tuple[str, float]]]:
        """Reason codes: per row the ``top`` features pushing the score up most (positive contributions)."""
        contrib = self.contributions(X)[:, :-1]
        idx = np.argsort(-contrib, axis=1)[:, :top]
        names = self.feature_names_
        return [
            [(names[j], float(contrib[i, j])) for j in row if contrib[i, j] > 0] for i, row in enumerate(idx)
        ]

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model into directory ``path`` (LightGBM text, torch state, JSON)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.lgbm_.booster_.save_model(str(path / "lightgbm.txt"))
        if self.seq_ is not None:
            self.seq_.save(path / "sequence")
        meta = {
            "params": {
                k: getattr(self, k)
                for k in (
                    "lgbm_params",
                    "sequence",
                    "seq_len",
                    "seq_epochs",
                    "valid_fraction",
                    "calibration",
                    "refit",
                    "early_stopping",
                    "min_trees",
                    "seed",
                )
            },
            "feature_names": self.feature_names_,
            "n_trees": self.n_trees_,
            "stacker": None
            if self.stacker_ is None
            else {"coef": self.stacker_.coef_.tolist(), "intercept": self.stacker_.intercept_.tolist()},
            "isotonic": None
            if self.isotonic_ is None
            else {"x": self.isotonic_.X_thresholds_.tolist(), "y": self.isotonic_.y_thresholds_.tolist()},
        }
        (path / "fraud_model.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FraudModel:
        path = Path(path)
        meta = json.loads((path / "fraud_model.json").read_text())
        model = cls(**meta["params"])
        model.n_trees_ = meta.get("n_trees")
        model.feature_names_ = meta["feature_names"]
        model.lgbm_ = _Booster(lgb.Booster(model_file=str(path / "lightgbm.txt")))
        model.seq_ = SequenceModel.load(path / "sequence") if model.sequence else None
        model.stacker_ = None
        if meta["stacker"] is not None:
            model.stacker_ = LogisticRegression()
            model.stacker_.coef_ = np.array(meta["stacker"]["coef"])
            model.stacker_.intercept_ = np.array(meta["stacker"]["intercept"])
            model.stacker_.classes_ = np.array([0.0, 1.0])
        model.isotonic_ = None
        if meta["isotonic"] is not None:
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
            model.isotonic_ = iso.fit(meta["isotonic"]["x"], meta["isotonic"]["y"])
        return model


class _Booster:
    """A loaded LightGBM booster behind the classifier methods FraudModel calls."""

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster_ = booster

    def predict_proba(self, X, pred_contrib: bool = False):
        if pred_contrib:
            return self.booster_.predict(X, pred_contrib=True)
        p = self.booster_.predict(X)
        return np.column_stack([1 - p, p])
