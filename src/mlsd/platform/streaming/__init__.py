"""Event-time streaming state shared by the systems: exact keyed sliding windows (memory | Redis)."""

from mlsd.platform.streaming.windows import (
    NOT_STORED,
    PAD_TS,
    UNKNOWN,
    MemoryWindowStore,
    WindowStore,
    WindowView,
    mean_std,
)

__all__ = ["NOT_STORED", "PAD_TS", "UNKNOWN", "MemoryWindowStore", "WindowStore", "WindowView", "mean_std"]
