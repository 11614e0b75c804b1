"""A GRU over the card's last N payments (PyTorch, CPU).

Input: the ``seq{i}_{log_amount,log_age,same_terminal,present}`` columns that
:mod:`mlsd.fraud.features` computes identically offline and online (``i = 0`` is the payment being
scored, ``i = 1`` the card's previous payment, ...). The GRU reads them oldest first, so its last
hidden state sits on the current payment and summarises how it differs from the card's recent
behaviour (sudden bursts, amounts far above the usual, new terminals); the head also sees the
current payment's ``terminal_risk_*`` (context no card history shows). Output: a fraud score in
(0, 1); the ensemble in :mod:`mlsd.fraud.models` calibrates it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlsd.fraud.features import SEQ_FEATURES, sequence_names


def sequence_tensor(frame: pd.DataFrame, seq_len: int) -> np.ndarray:
    """``(n, seq_len, 4)`` float32, oldest step first."""
    names = sequence_names(seq_len)
    x = frame[names].to_numpy(np.float32).reshape(len(frame), seq_len, len(SEQ_FEATURES))
    return x[:, ::-1, :].copy()


class _Net(nn.Module):
    def __init__(self, n_in: int, n_context: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hidden + n_in + n_context, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        # the last state, the current payment's own inputs and its context (the terminal's known risk)
        return self.head(torch.cat([out[:, -1], x[:, -1], context], dim=1)).squeeze(1)


class SequenceModel:
    """GRU fraud scorer over the last ``seq_len`` payments (scikit-learn style)."""

    def __init__(
        self,
        seq_len: int = 8,
        hidden: int = 32,
        epochs: int = 8,
        batch_size: int = 512,
        lr: float = 3e-3,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.seq_len = seq_len
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.threads = threads

    def _inputs(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        x = sequence_tensor(frame, self.seq_len)
        x = (x - self.mean_) / self.scale_
        c = (
            frame[self.context_].to_numpy(np.float32)
            if self.context_
            else np.zeros((len(frame), 0), np.float32)
        )
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(np.nan_to_num(c))

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> SequenceModel:
        torch.manual_seed(self.seed)
        torch.set_num_threads(self.threads)
        raw = sequence_tensor(frame, self.seq_len)
        present = raw[..., -1:] > 0
        cells = raw[np.broadcast_to(present, raw.shape)].reshape(-1, raw.shape[-1])
        self.mean_ = (
            cells.mean(axis=0).astype(np.float32) if len(cells) else np.zeros(raw.shape[-1], np.float32)
        )
        self.scale_ = (
            np.maximum(cells.std(axis=0), 1e-3).astype(np.float32)
            if len(cells)
            else np.ones(raw.shape[-1], np.float32)
        )
        self.mean_[-1], self.scale_[-1] = 0.0, 1.0  # keep the 'present' flag as 0/1
        # context of the current payment a card's own history cannot show: the terminal's known risk
        self.context_ = [c for c in frame.columns if c.startswith("terminal_risk_")]
        x, ctx = self._inputs(frame)
        y_t = torch.from_numpy(np.asarray(y, dtype=np.float32))
        self.net_ = _Net(x.shape[-1], len(self.context_), self.hidden)
        positives = float(y_t.sum())
        # rare positives: weight them up (sqrt of the imbalance), the ensemble re-calibrates anyway
        weight = float(np.sqrt(max(len(y_t) - positives, 1.0) / max(positives, 1.0)))
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight))
        optim = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        self.net_.train()
        for _ in range(self.epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), self.batch_size):
                b = perm[i : i + self.batch_size]
                optim.zero_grad()
                loss = loss_fn(self.net_(x[b], ctx[b]), y_t[b])
                loss.backward()
                optim.step()
        self.net_.eval()
        return self

    def decision_function(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw logits (n,)."""
        if len(frame) == 0:
            return np.zeros(0)
        with torch.no_grad():
            x, ctx = self._inputs(frame)
            parts = [self.net_(x[i : i + 8192], ctx[i : i + 8192]) for i in range(0, len(x), 8192)]
            return torch.cat(parts).numpy().astype(np.float64)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision_function(frame)))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.net_.state_dict(), path / "sequence.pt")
        params = {
            k: getattr(self, k)
            for k in ("seq_len", "hidden", "epochs", "batch_size", "lr", "seed", "threads")
        }
        (path / "sequence.json").write_text(
            json.dumps(
                {
                    "params": params,
                    "mean": self.mean_.tolist(),
                    "scale": self.scale_.tolist(),
                    "context": self.context_,
                }
            )
        )

    @classmethod
    def load(cls, path: str | Path) -> SequenceModel:
        path = Path(path)
        meta = json.loads((path / "sequence.json").read_text())
        model = cls(**meta["params"])
        model.mean_ = np.array(meta["mean"], dtype=np.float32)
        model.scale_ = np.array(meta["scale"], dtype=np.float32)
        model.context_ = meta["context"]
        model.net_ = _Net(len(model.mean_), len(model.context_), model.hidden)
        model.net_.load_state_dict(torch.load(path / "sequence.pt", weights_only=True))
        model.net_.eval()
        return model
