"""A bounded, uniform sample of what a service served: the "current" side of a drift report.

``ServingSample(max_rows=20_000).add(frame)`` keeps a reservoir (Vitter's algorithm R) of the rows
added so far, vectorised per batch: row ``t`` of the stream is kept with probability ``max_rows / t``
and replaces a random slot. Within one batch, numpy's fancy assignment applies replacements in row
order (the last write to a slot wins), which is exactly what the row-by-row algorithm does. Memory is
``max_rows`` rows whatever the traffic, and the sample stays uniform over everything served since the
last :meth:`clear`, so a drift report over it compares like with like against a training reference.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError


class ServingSample:
    """Reservoir sample of served feature rows (any columns; the first batch fixes them).

    Examples:
        >>> import numpy as np
        >>> import pandas as pd
        >>> sample = ServingSample(max_rows=1000, seed=0)
        >>> for batch in range(10):   # 10,000 rows served, 1,000 kept
        ...     sample.add(pd.DataFrame({"batch": np.full(1000, batch), "amount": np.ones(1000)}))
        >>> sample
        ServingSample(max_rows=1000, rows=1000, seen=10000)
        >>> np.bincount(sample.frame()["batch"]).tolist()   # uniform: ~100 rows of every batch
        [110, 88, 105, 84, 93, 113, 118, 90, 101, 98]
    """

    def __init__(self, max_rows: int = 20_000, seed: int = 0) -> None:
        self.max_rows = max_rows
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._columns: dict[str, np.ndarray] | None = None
        self._filled = 0
        self.seen = 0

    def add(self, frame: pd.DataFrame) -> None:
        """Offer every row of ``frame`` to the sample (one vectorised step per batch)."""
        if self.max_rows < 1:
            raise InputError("max_rows", self.max_rows, "must be >= 1", "keep at least one row, e.g. 20000")
        m = len(frame)
        if m == 0:
            return
        with self._lock:
            if self._columns is None:
                self._columns = {c: np.empty(self.max_rows, dtype=frame[c].to_numpy().dtype) for c in frame}
            elif set(frame.columns) != set(self._columns):
                raise InputError(
                    "frame.columns", sorted(frame.columns), f"differ from the sample's {sorted(self._columns)}",
                    "add frames with the same columns (or clear() first)",
                )  # fmt: skip
            rows = np.arange(m)
            fill = min(self.max_rows - self._filled, m)  # free slots first, in order
            slots = np.full(m, -1, dtype=np.int64)
            slots[:fill] = np.arange(self._filled, self._filled + fill)
            rest = rows[fill:]
            if len(rest):
                t = self.seen + rest + 1  # 1-based position of each row in the stream
                keep = self._rng.random(len(rest)) < self.max_rows / t
                slots[rest[keep]] = self._rng.integers(0, self.max_rows, int(keep.sum()))
            take = slots >= 0
            for name, buf in self._columns.items():
                values = frame[name].to_numpy()
                if buf.dtype != values.dtype and buf.dtype != object:
                    values = values.astype(buf.dtype, copy=False)
                buf[slots[take]] = values[take]
            self._filled += fill
            self.seen += m

    def frame(self) -> pd.DataFrame:
        """The sample so far (a copy)."""
        with self._lock:
            if self._columns is None:
                return pd.DataFrame()
            return pd.DataFrame({c: v[: self._filled].copy() for c, v in self._columns.items()})

    def __len__(self) -> int:
        return self._filled

    def clear(self) -> None:
        with self._lock:
            self._columns, self._filled, self.seen = None, 0, 0

    def save(self, path: str | Path) -> Path:
        """Write the sample as Parquet (the ``--current`` of ``mlsd monitor report``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.frame().to_parquet(path, index=False)
        return path

    def __repr__(self) -> str:
        return f"ServingSample(max_rows={self.max_rows}, rows={self._filled}, seen={self.seen})"
