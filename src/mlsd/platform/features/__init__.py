"""Feature store: offline (Parquet + DuckDB point-in-time joins) and online (memory | Redis) stores.

``from mlsd.platform.features import MemoryStore, RedisStore, OfflineStore, FeatureView``. The offline
names load lazily so a service that only reads the online store does not import DuckDB.
"""

from __future__ import annotations

from typing import Any

from mlsd.platform.features.online import MemoryStore, OnlineStore, RedisStore, Value

__all__ = ["FeatureView", "MemoryStore", "OfflineStore", "OnlineStore", "RedisStore", "Value"]


def __getattr__(name: str) -> Any:
    if name in {"OfflineStore", "FeatureView"}:
        from mlsd.platform.features import offline

        return getattr(offline, name)
    raise AttributeError(f"module 'mlsd.platform.features' has no attribute {name!r}")
