"""Manual review queue: payments the decision engine sent to review, worked by human reviewers.

Cases are ordered by priority = probability x amount (expected money at risk), so a reviewer always
takes the case where a minute of attention saves the most. ``claim`` hands each case to exactly one
reviewer, also under concurrent claims from many processes: PostgreSQL uses
``SELECT ... FOR UPDATE SKIP LOCKED`` (claimers skip rows another transaction is taking instead of
waiting), SQLite serialises writers with ``BEGIN IMMEDIATE``. ``resolve`` records the outcome and, in
the same transaction, writes it to the label store with ``label_ts`` = the resolution time: review
outcomes are the fastest labels the feedback loop gets.

One contract (:class:`ReviewQueue`), two implementations on the same SQL (:class:`SQLReviewQueue`
over SQLite or PostgreSQL); ``tests/fraud/test_review.py`` runs one suite over both.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from mlsd.fraud.labels import Database, SQLLabelStore
from mlsd.platform.errors import InputError

OUTCOMES = {"fraud": 1, "legit": 0}
MAX_REVIEWER_CHARS = 100
# A reviewer's name: no control character (C0, DEL, C1: NUL included), not only white space. One
# pattern, read the same by Python's re and by the JSON Schema (ECMA) regex of the OpenAPI document.
REVIEWER_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\ufeff\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
MAX_KEY_CHARS = 256  # tx_id / terminal_id as stored (the payment schema's limit, mlsd.fraud.data)
STATUSES = ("open", "claimed", "resolved")
_COLUMNS = (
    "tx_id, probability, amount, priority, decision, reasons, status, reviewer, created_ts, claimed_ts, "
    "resolved_ts, outcome, terminal_id"
)


@dataclass(frozen=True)
class Case:
    """One payment under review."""

    tx_id: str
    probability: float
    amount: float
    priority: float
    decision: str
    reasons: list[str]
    status: str
    reviewer: str | None
    created_ts: int
    claimed_ts: int | None
    resolved_ts: int | None
    outcome: str | None
    terminal_id: str | None = None  # so a fraud outcome can feed the terminal-risk feature at once

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Case:
        values = list(row)
        values[5] = json.loads(values[5]) if values[5] else []
        return cls(*values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReviewQueue(Protocol):
    """What the service, the CLI and the demo need from a review queue."""

    def enqueue(self, cases: Sequence[Mapping[str, Any]], now: int | None = None) -> int: ...

    def list(self, status: str = "open", limit: int = 50) -> list[Case]: ...

    def claim(self, reviewer: str, limit: int = 1, now: int | None = None) -> list[Case]: ...

    def resolve(self, tx_id: Any, reviewer: str, outcome: str, now: int | None = None) -> Case: ...

    def get(self, tx_id: Any) -> Case: ...

    def counts(self) -> dict[str, int]: ...


class SQLReviewQueue:
    """:class:`ReviewQueue` on SQLite or PostgreSQL; ``labels`` shares the connection (one transaction)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.t = db.table("review_cases")
        self.labels = SQLLabelStore(db)
        with db.transaction() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self.t} (tx_id TEXT PRIMARY KEY, probability DOUBLE PRECISION, "
                "amount DOUBLE PRECISION, priority DOUBLE PRECISION NOT NULL, decision TEXT, reasons TEXT, "
                "status TEXT NOT NULL, reviewer TEXT, created_ts BIGINT NOT NULL, claimed_ts BIGINT, "
                "resolved_ts BIGINT, outcome TEXT, terminal_id TEXT)"
            )
            cur.execute(f"CREATE INDEX IF NOT EXISTS review_open_idx ON {self.t} (status, priority)")

    @classmethod
    def sqlite(cls, path: str | Path, *, labels_path: str | Path | None = None) -> SQLReviewQueue:
        """Cases in the SQLite file ``path``; labels there too, or in ``labels_path`` (attached: the
        platform layout's ``features/labels.sqlite``), still one transaction per resolution."""
        attach = None if labels_path is None or Path(labels_path) == Path(path) else {"labels": labels_path}
        return cls(Database(sqlite_path=path, attach=attach))

    @classmethod
    def postgres(cls, dsn: str, schema: str = "mlsd_fraud") -> SQLReviewQueue:
        return cls(Database(postgres_dsn=dsn, schema=schema))

    def enqueue(self, cases: Sequence[Mapping[str, Any]], now: int | None = None) -> int:
        """Add cases (``tx_id, probability, amount`` required; ``decision, reasons, ts`` optional).

        Idempotent on ``tx_id``: a payment re-delivered by the stream does not open a second case.
        Returns how many new cases were opened.
        """
        now = int(time.time()) if now is None else int(now)
        rows = []
        # every case is checked before the transaction: a bad one (a NUL byte PostgreSQL refuses)
        # is named here instead of failing the INSERT of the whole batch
        for i, case in enumerate(cases):
            for key in ("tx_id", "probability", "amount"):
                if case.get(key) is None:
                    raise InputError(f"cases[{i}].{key}", None, "missing", "provide it")
            check_key(f"cases[{i}].tx_id", case["tx_id"])
            if case.get("terminal_id") is not None:
                check_key(f"cases[{i}].terminal_id", case["terminal_id"])
            prob, amount = float(case["probability"]), float(case["amount"])
            if not 0.0 <= prob <= 1.0:
                raise InputError(
                    f"cases[{i}].probability", prob, "must be in [0, 1]", "pass the model probability"
                )
            if amount < 0:
                raise InputError(f"cases[{i}].amount", amount, "must be >= 0", "pass the payment amount")
            rows.append(
                (
                    str(case["tx_id"]),
                    prob,
                    amount,
                    prob * amount,
                    str(case.get("decision", "review")),
                    json.dumps(list(case.get("reasons", []))),
                    "open",
                    int(case.get("ts", now)),
                    None if case.get("terminal_id") is None else str(case["terminal_id"]),
                )
            )
        if not rows:
            return 0
        with self.db.transaction() as cur:
            before = cur.execute(f"SELECT COUNT(*) FROM {self.t}")[0][0]
            cur.executemany(
                f"INSERT INTO {self.t} (tx_id, probability, amount, priority, decision, reasons, status, created_ts, "
                "terminal_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tx_id) DO NOTHING",
                rows,
            )
            after = cur.execute(f"SELECT COUNT(*) FROM {self.t}")[0][0]
        return int(after - before)

    def list(self, status: str = "open", limit: int = 50) -> list[Case]:
        """Cases with ``status``, highest priority first."""
        _check_status(status)
        _check_limit(limit)
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM {self.t} WHERE status = ? ORDER BY priority DESC, tx_id LIMIT ?",
            (status, limit),
        )
        return [Case.from_row(r) for r in rows]

    def claim(self, reviewer: str, limit: int = 1, now: int | None = None) -> list[Case]:
        """Atomically take the ``limit`` highest-priority open cases for ``reviewer``."""
        check_reviewer(reviewer)
        _check_limit(limit)
        now = int(time.time()) if now is None else int(now)
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgres" else ""
        with self.db.transaction() as cur:
            rows = cur.execute(
                f"UPDATE {self.t} SET status = 'claimed', reviewer = ?, claimed_ts = ? WHERE tx_id IN ("
                f"SELECT tx_id FROM {self.t} WHERE status = 'open' ORDER BY priority DESC, tx_id LIMIT ?{lock}) "
                f"RETURNING {_COLUMNS}",
                (str(reviewer), now, limit),
            )
        cases = [Case.from_row(r) for r in rows]
        return sorted(cases, key=lambda c: (-c.priority, c.tx_id))

    def resolve(self, tx_id: Any, reviewer: str, outcome: str, now: int | None = None) -> Case:
        """Close a case claimed by ``reviewer`` as ``fraud`` or ``legit``; the label is stored at once."""
        check_reviewer(reviewer)
        check_key("tx_id", tx_id)
        if outcome not in OUTCOMES:
            raise InputError("outcome", outcome, "unknown outcome", "use fraud or legit")
        now = int(time.time()) if now is None else int(now)
        with self.db.transaction() as cur:
            rows = cur.execute(f"SELECT {_COLUMNS} FROM {self.t} WHERE tx_id = ?", (str(tx_id),))
            if not rows:
                raise InputError(
                    "tx_id", tx_id, "no review case for this payment", "list the queue", status=404
                )
            case = Case.from_row(rows[0])
            if case.status != "claimed" or case.reviewer != reviewer:
                held = f"status {case.status}" + (f" by {case.reviewer}" if case.reviewer else "")
                raise InputError(
                    "tx_id",
                    tx_id,
                    f"case is not claimed by {reviewer!r} ({held})",
                    "claim it first",
                    status=409,
                )
            rows = cur.execute(
                f"UPDATE {self.t} SET status = 'resolved', outcome = ?, resolved_ts = ? WHERE tx_id = ? "
                f"RETURNING {_COLUMNS}",
                (outcome, now, str(tx_id)),
            )
            self.labels.add([str(tx_id)], [OUTCOMES[outcome]], [now], "review", cursor=cur)
        return Case.from_row(rows[0])

    def get(self, tx_id: Any) -> Case:
        check_key("tx_id", tx_id)
        rows = self.db.query(f"SELECT {_COLUMNS} FROM {self.t} WHERE tx_id = ?", (str(tx_id),))
        if not rows:
            raise InputError("tx_id", tx_id, "no review case for this payment", "list the queue", status=404)
        return Case.from_row(rows[0])

    def counts(self) -> dict[str, int]:
        rows = self.db.query(f"SELECT status, COUNT(*) FROM {self.t} GROUP BY status")
        out = dict.fromkeys(STATUSES, 0)
        out.update({str(s): int(n) for s, n in rows})
        return out

    def close(self) -> None:
        self.db.close()


def review_queue_at(location: str | Path, *, schema: str = "mlsd_fraud") -> SQLReviewQueue:
    """The review queue at ``location`` (``System.review_queue``): a ``postgresql://`` DSN (``schema``),
    or a SQLite file. The platform layout's ``W/fraud/review/review.sqlite`` gets its label store,
    ``W/fraud/features/labels.sqlite``, attached; any other file keeps its labels inside."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return SQLReviewQueue.postgres(text, schema)
    path = Path(location)
    layout_labels = path.parent.parent / "features" / "labels.sqlite"
    in_layout = path.parent.name == "review" and layout_labels.parent.is_dir()
    return SQLReviewQueue.sqlite(path, labels_path=layout_labels if in_layout else None)


def check_reviewer(reviewer: Any) -> str:
    """A reviewer's name as recorded on the cases: 1..100 characters, no control character, not
    only white space (:data:`REVIEWER_PATTERN`).

    Examples:
        >>> check_reviewer("ana")
        'ana'
        >>> check_reviewer("  ")
        Traceback (most recent call last):
        ...
        mlsd.platform.errors.InputError: reviewer='  ': must be 1..100 printable characters (no NUL, tab, line break or other control). Fix: name the reviewer, e.g. 'ana'
    """
    ok = isinstance(reviewer, str) and 0 < len(reviewer) <= MAX_REVIEWER_CHARS
    if not (ok and re.fullmatch(REVIEWER_PATTERN, reviewer)):
        raise InputError(
            "reviewer",
            reviewer,
            f"must be 1..{MAX_REVIEWER_CHARS} printable characters (no NUL, tab, line break or other control)",
            "name the reviewer, e.g. 'ana'",
        )
    return reviewer


def check_key(field: str, value: Any) -> str:
    """A case key as stored (TEXT): at most 256 characters and no NUL byte, which PostgreSQL refuses."""
    text = str(value)
    if not 0 < len(text) <= MAX_KEY_CHARS or "\x00" in text:
        raise InputError(
            field, value, f"must be 1..{MAX_KEY_CHARS} characters without NUL bytes", "send the payment's id"
        )
    return text


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise InputError("status", status, "unknown status", f"use one of {', '.join(STATUSES)}")


def _check_limit(limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InputError("limit", limit, "must be an integer in 1..1000", "e.g. 20")
