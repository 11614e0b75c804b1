"""Offline feature store: feature tables as Parquet files, point-in-time joins with DuckDB.

Training rows must only see features computed from data that existed *before* the label's moment,
otherwise offline metrics are inflated by leakage and the model disappoints online. The join does that
for every spine row at once: DuckDB's ``ASOF LEFT JOIN`` picks, per entity, the latest feature row whose
``feature_time`` is **strictly before** ``spine_time`` (a feature stamped at the same second as the label
may already contain the label's event, so equality is excluded). Entities without an earlier row get
nulls; ``max_age_s`` turns features older than a view's TTL into nulls as well.

Tables live at ``{root}/{name}.parquet``, written atomically (temp file, then ``os.replace``).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from mlsd.platform.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class FeatureView:
    """What a feature table holds: its ``name``, the ``entity`` key column, the ``features`` columns, and
    ``ttl_s``, how long a value stays valid (used as ``max_age_s`` in joins and as the online-store TTL).
    ``time_column`` is the event-time column (int64 seconds since the epoch by project convention).

    Examples:
        >>> view = FeatureView("user_clicks", entity="user_id", features=("clicks",), ttl_s=86_400)
        >>> view.time_column, view.ttl_s
        ('feature_time', 86400)
        >>> view == FeatureView("user_clicks", "user_id", ("clicks",), 86_400, description="daily")
        True
    """

    name: str
    entity: str
    features: tuple[str, ...]
    ttl_s: float | None = None
    time_column: str = "feature_time"
    description: str = field(default="", compare=False)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class OfflineStore:
    """Parquet feature tables under ``root`` with point-in-time correct joins.

    Examples:
        >>> import tempfile
        >>> import pandas as pd
        >>> store = OfflineStore(tempfile.mkdtemp())
        >>> clicks = pd.DataFrame({"user_id": [1, 1], "feature_time": [100, 200], "clicks": [1, 5]})
        >>> store.write("user_clicks", clicks).name, store.tables()
        ('user_clicks.parquet', ['user_clicks'])
        >>> store.read("user_clicks", columns=["clicks"])["clicks"].tolist()
        [1, 5]
        >>> try:
        ...     store.read("user_views")
        ... except InputError as err:
        ...     print(err.status, err.problem.split(" under ")[0])
        404 no feature table 'user_views'
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- storage -------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(
                "name",
                name,
                "feature table names are letters, digits, '_', '-', '.'",
                "pick a name like user_daily",
            )
        return self.root / f"{name}.parquet"

    def write(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``df`` as table ``name`` (replacing any previous version atomically)."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            df.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def read(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        path = self._existing(name)
        try:
            return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
        except (KeyError, ValueError) as err:
            # pyarrow raises these for an unknown column: say which columns exist instead.
            available = list(pd.read_parquet(path).columns) if path.exists() else []
            raise InputError(
                "columns",
                list(columns or []),
                f"not all in table {name!r} ({err})",
                f"choose from {available}",
            ) from None

    def tables(self) -> list[str]:
        return sorted(p.name[: -len(".parquet")] for p in self.root.glob("*.parquet"))

    def _existing(self, name: str) -> Path:
        path = self.path(name)
        if not path.exists():
            raise InputError(
                "name",
                name,
                f"no feature table {name!r} under {self.root}",
                f"write it first; tables: {self.tables()}",
                status=404,
            )
        return path

    # -- the point-in-time join -------------------------------------------------------------------------

    def point_in_time_join(
        self,
        spine: pd.DataFrame,
        name: str,
        *,
        on: str | Sequence[str],
        spine_time: str,
        feature_time: str,
        columns: Sequence[str] | None = None,
        max_age_s: float | None = None,
    ) -> pd.DataFrame:
        """For each spine row, the features of the latest row of ``name`` with the same ``on`` key(s)
        and ``feature_time`` strictly before the row's ``spine_time``; nulls when there is none (or when
        it is older than ``max_age_s``). Returns the spine's columns, in the spine's row order, plus
        ``columns`` (default: every feature column of the table).

        Examples:
            >>> import tempfile
            >>> import pandas as pd
            >>> store = OfflineStore(tempfile.mkdtemp())
            >>> feats = pd.DataFrame({"user_id": 1, "feature_time": [100, 200, 300], "clicks": [1, 5, 9]})
            >>> _ = store.write("user_clicks", feats)
            >>> spine = pd.DataFrame({"user_id": [1, 1, 1, 2], "ts": [150, 200, 301, 300]})
            >>> join = dict(on="user_id", spine_time="ts", feature_time="feature_time")
            >>> # ts=200 sees clicks=1 (stamped 100), not clicks=5: that row is stamped at its own second
            >>> store.point_in_time_join(spine, "user_clicks", **join)["clicks"].tolist()
            [1, 1, 9, <NA>]
            >>> store.point_in_time_join(spine, "user_clicks", **join, max_age_s=50)["clicks"].tolist()
            [1, <NA>, 9, <NA>]
        """
        path = self._existing(name)
        keys = [on] if isinstance(on, str) else list(on)
        con = duckdb.connect()
        try:
            table_columns = [
                row[0]
                for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
            ]
            for column in [*keys, feature_time]:
                if column not in table_columns:
                    raise InputError(
                        "on" if column in keys else "feature_time", column,
                        f"not a column of feature table {name!r}", f"choose from {table_columns}",
                    )  # fmt: skip
            for column in [*keys, spine_time]:
                if column not in spine.columns:
                    raise InputError(
                        "on" if column in keys else "spine_time", column,
                        "not a column of the spine", f"choose from {list(spine.columns)}",
                    )  # fmt: skip
            if columns is None:
                columns = [c for c in table_columns if c not in keys and c != feature_time]
            columns = list(columns)
            unknown = [c for c in columns if c not in table_columns]
            if unknown:
                raise InputError(
                    "columns", unknown, f"not in feature table {name!r}", f"choose from {table_columns}"
                )
            clash = [c for c in columns if c in spine.columns]
            if clash:
                raise InputError(
                    "columns",
                    clash,
                    "already in the spine",
                    "rename the spine column or select other features",
                )

            row_id = "__mlsd_row"
            con.register("spine_df", spine.assign(**{row_id: range(len(spine))}))
            condition = " AND ".join(f"s.{_quote(k)} = f.{_quote(k)}" for k in keys)
            # Strictly before: '>' not '>='. A feature row stamped at the label time is the future.
            condition += f" AND s.{_quote(spine_time)} > f.{_quote(feature_time)}"
            if max_age_s is None:
                selected = ", ".join(f"f.{_quote(c)}" for c in columns)
            else:
                fresh = f"s.{_quote(spine_time)} - f.{_quote(feature_time)} <= {float(max_age_s)!r}"
                selected = ", ".join(
                    f"CASE WHEN {fresh} THEN f.{_quote(c)} END AS {_quote(c)}" for c in columns
                )
            spine_cols = ", ".join(f"s.{_quote(c)}" for c in spine.columns)
            sql = (
                f"SELECT {spine_cols}{', ' if columns else ''}{selected} "
                f"FROM spine_df s ASOF LEFT JOIN read_parquet(?) f ON {condition} "
                f"ORDER BY s.{row_id}"
            )
            out = con.execute(sql, [str(path)]).df()
        finally:
            con.close()
        out.index = spine.index
        return out
