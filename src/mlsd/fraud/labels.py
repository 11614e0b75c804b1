"""Label store: every fraud/legit label with the time it became *known* (``label_ts``).

Labels arrive late: a manual review resolves the same day, a chargeback 30-90 days after the payment.
Training at a cut-off must see only what was known then, or offline metrics lie (the model learns
from chargebacks that production would not have had yet). So the store keeps one row per label
event ``(tx_id, label, label_ts, source)`` and answers :meth:`LabelStore.labels_known_at` ``(t)``:
the latest label per payment among those with ``label_ts <= t``. A later label may overturn an
earlier one (a review said legit, a chargeback says fraud); history is kept, never overwritten.

Two backends with one contract (``tests/fraud/test_labels.py`` runs on both): SQLite (default, a
file) and PostgreSQL (a real server; one schema per deployment). :class:`Database` hides the
dialect differences and is shared with the review queue so that resolving a case and recording its
label happen in one transaction. On SQLite the two may live in two files (the platform layout keeps
labels in ``features/labels.sqlite`` and cases in ``review/review.sqlite``): the review database
*attaches* the label file (``Database(..., attach={"labels": path})``), and one transaction spans both.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlsd.platform.errors import DependencyUnavailable, InputError

LABEL_COLUMNS = ["tx_id", "label", "label_ts", "source"]
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Database:
    """One connection (SQLite file or PostgreSQL DSN) behind a lock, with ``?`` placeholders.

    Each instance is one connection: separate instances on the same database behave as separate
    clients (that is how the review queue's concurrent-claim tests exercise real locking).
    ``attach`` (SQLite only) maps a table name to another SQLite file that holds it: the file is
    attached to this connection and :meth:`table` names the table there.
    """

    def __init__(
        self,
        *,
        sqlite_path: str | Path | None = None,
        postgres_dsn: str | None = None,
        schema: str = "mlsd_fraud",
        attach: dict[str, str | Path] | None = None,
    ) -> None:
        if (sqlite_path is None) == (postgres_dsn is None):
            raise ValueError("give exactly one of sqlite_path, postgres_dsn")
        self._lock = threading.RLock()
        self._attached: dict[str, str] = {}
        if sqlite_path is not None:
            self.dialect = "sqlite"
            self.prefix = ""
            Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front)
            self.conn: Any = sqlite3.connect(
                str(sqlite_path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            for table, path in (attach or {}).items():
                alias = f"{table}_db"
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.conn.execute(f"ATTACH DATABASE ? AS {alias}", (str(path),))
                self.conn.execute(f"PRAGMA {alias}.journal_mode=WAL")
                self._attached[table] = alias
        else:
            if attach:
                raise ValueError("attach is for SQLite files; PostgreSQL keeps every table in one schema")
            import psycopg

            if not _SCHEMA_RE.match(schema):
                raise InputError(
                    "postgres_schema", schema, "not a plain lower-case identifier", "use e.g. mlsd_fraud"
                )
            self.dialect = "postgres"
            self.prefix = f"{schema}."
            self._dsn = postgres_dsn
            self.conn = psycopg.connect(postgres_dsn, autocommit=True)
            self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        self.schema = schema

    def table(self, name: str) -> str:
        attached = self._attached.get(name)
        return f"{attached}.{name}" if attached else self.prefix + name

    def index_sql(self, index: str, table: str, columns: str) -> str:
        """``CREATE INDEX IF NOT EXISTS`` for ``table`` (an attached SQLite file names the index's
        database, not the table's: that is SQLite's syntax)."""
        attached = self._attached.get(table)
        if attached:
            return f"CREATE INDEX IF NOT EXISTS {attached}.{index} ON {table} ({columns})"
        return f"CREATE INDEX IF NOT EXISTS {index} ON {self.table(table)} ({columns})"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction; yields a cursor-like object with ``execute`` / ``executemany``."""
        with self._lock:
            if self.dialect == "sqlite":
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _Cursor(self, self.conn)
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
            else:
                with self._postgres_up(), self._connection().transaction(), self.conn.cursor() as cur:
                    yield _Cursor(self, cur)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock, self._postgres_up():
            cur = self._connection().execute(self._sql(sql), tuple(params))
            return list(cur.fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock, self._postgres_up():
            self._connection().execute(self._sql(sql), tuple(params))

    def _connection(self) -> Any:
        """The connection, reopened when PostgreSQL dropped it: one outage must not break every later
        call (a closed psycopg connection stays closed)."""
        if self.dialect == "postgres" and self.conn.closed:
            import psycopg

            self.conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=3)
        return self.conn

    @contextmanager
    def _postgres_up(self) -> Iterator[None]:
        """PostgreSQL unreachable (refused, cut, restarting) -> :class:`DependencyUnavailable` (HTTP 503,
        a stream batch retried): the transaction rolled back, nothing was acknowledged. SQL errors
        (a bug, a constraint) are not outages and pass through."""
        if self.dialect != "postgres":
            yield
            return
        import psycopg

        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            if not self.conn.closed:
                self.conn.close()  # reopened by the next call
            raise DependencyUnavailable("postgres", f"PostgreSQL did not answer ({type(err).__name__})") from err

    def close(self) -> None:
        with self._lock:
            self.conn.close()


class _Cursor:
    def __init__(self, db: Database, cur: Any) -> None:
        self.db, self.cur = db, cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        result = self.cur.execute(self.db._sql(sql), tuple(params))
        try:
            return list(result.fetchall())
        except Exception:  # statements without a result set
            return []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cur.executemany(self.db._sql(sql), rows)


class LabelStore(Protocol):
    """Where labels live, with the time each became known."""

    def add(
        self, tx_id: Sequence[Any], label: Sequence[int], label_ts: Sequence[int], source: str | Sequence[str]
    ) -> int: ...

    def labels_known_at(self, t: int) -> pd.DataFrame: ...

    def count(self) -> int: ...


class SQLLabelStore:
    """The :class:`LabelStore` on a :class:`Database` (SQLite or PostgreSQL, same SQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.t = db.table("labels")
        with db.transaction() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self.t} (tx_id TEXT NOT NULL, label SMALLINT NOT NULL, "
                "label_ts BIGINT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (tx_id, label_ts, source))"
            )
            cur.execute(db.index_sql("labels_ts_idx", "labels", "label_ts"))

    @classmethod
    def sqlite(cls, path: str | Path) -> SQLLabelStore:
        return cls(Database(sqlite_path=path))

    @classmethod
    def postgres(cls, dsn: str, schema: str = "mlsd_fraud") -> SQLLabelStore:
        return cls(Database(postgres_dsn=dsn, schema=schema))

    def add(
        self,
        tx_id: Sequence[Any],
        label: Sequence[int],
        label_ts: Sequence[int],
        source: str | Sequence[str] = "chargeback",
        *,
        cursor: Any = None,
    ) -> int:
        """Record label events (idempotent: the same event twice is stored once). Returns rows given."""
        rows = _label_rows(tx_id, label, label_ts, source)
        if not rows:
            return 0
        sql = f"INSERT INTO {self.t} (tx_id, label, label_ts, source) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
        if cursor is not None:
            cursor.executemany(sql, rows)
        else:
            with self.db.transaction() as cur:
                cur.executemany(sql, rows)
        return len(rows)

    def labels_known_at(self, t: int) -> pd.DataFrame:
        """The latest label per payment among label events with ``label_ts <= t``."""
        rows = self.db.query(
            f"SELECT tx_id, label, label_ts, source FROM (SELECT tx_id, label, label_ts, source, "
            "ROW_NUMBER() OVER (PARTITION BY tx_id ORDER BY label_ts DESC, source DESC) AS rn "
            f"FROM {self.t} WHERE label_ts <= ?) AS known WHERE rn = 1 ORDER BY tx_id",
            (int(t),),
        )
        frame = pd.DataFrame(rows, columns=LABEL_COLUMNS)
        return frame.astype({"tx_id": str, "label": np.int8, "label_ts": np.int64, "source": str})

    def history(self, tx_id: Any) -> pd.DataFrame:
        """Every label event of one payment, oldest first."""
        rows = self.db.query(
            f"SELECT tx_id, label, label_ts, source FROM {self.t} WHERE tx_id = ? ORDER BY label_ts",
            (str(tx_id),),
        )
        return pd.DataFrame(rows, columns=LABEL_COLUMNS)

    def count(self) -> int:
        return int(self.db.query(f"SELECT COUNT(*) FROM {self.t}")[0][0])

    def close(self) -> None:
        self.db.close()


def _label_rows(
    tx_id: Sequence[Any], label: Sequence[int], label_ts: Sequence[int], source: str | Sequence[str]
) -> list[tuple[str, int, int, str]]:
    tx = [str(x) for x in np.asarray(tx_id, dtype=object).tolist()]
    lab = np.asarray(label)
    ts = np.asarray(label_ts)
    if not (len(tx) == len(lab) == len(ts)):
        raise InputError(
            "label", len(lab), "tx_id, label and label_ts differ in length", "pass aligned arrays"
        )
    if len(lab) and not np.isin(lab, (0, 1)).all():
        raise InputError(
            "label", lab[~np.isin(lab, (0, 1))][0], "labels must be 0 (legit) or 1 (fraud)", "use 0/1"
        )
    src = [source] * len(tx) if isinstance(source, str) else [str(s) for s in source]
    return list(zip(tx, lab.astype(int).tolist(), ts.astype(np.int64).tolist(), src, strict=True))


def training_labels(
    tx_id: Sequence[Any], tx_ts: np.ndarray, known: pd.DataFrame, cutoff: int, delay_s: int = 0
) -> np.ndarray:
    """Label of each payment as known at ``cutoff``: 1 fraud, 0 legit, NaN = not usable for training.

    ``known`` is ``labels_known_at(cutoff)``. A payment after ``cutoff - delay_s`` is NaN (too fresh:
    its label may still be on its way); an older payment with no label event is taken as legitimate,
    which is what the business knows at that time. A label known only after ``cutoff`` is invisible
    here by construction: ``known`` cannot contain it, and :func:`check_no_leakage` verifies that.
    """
    check_no_leakage(known, cutoff)
    tx = pd.Index(np.asarray(tx_id, dtype=object).astype(str))
    labels = pd.Series(known["label"].to_numpy(dtype=np.float64), index=known["tx_id"].astype(str))
    y = labels.reindex(tx).fillna(0.0).to_numpy().copy()
    y[np.asarray(tx_ts) > cutoff - delay_s] = np.nan
    return y


def check_no_leakage(known: pd.DataFrame, cutoff: int) -> None:
    """Raise if a label event from after ``cutoff`` reached a training set built at ``cutoff``."""
    if len(known) and int(known["label_ts"].max()) > int(cutoff):
        late = known.loc[known["label_ts"] > cutoff].iloc[0]
        raise AssertionError(
            f"label leakage: tx {late['tx_id']} label known at {late['label_ts']} > training cut-off {cutoff}"
        )
