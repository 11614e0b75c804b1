"""Model registry: immutable versions, movable aliases (champion, challenger), lineage and checksums.

Layout under ``root``::

    registry.sqlite                 the index: versions, aliases, alias history (the source of truth)
    <name>/v<version>/...           a copy of the artifact directory, never modified after registration
    <name>/v<version>.json          the version's metadata, for humans and exports

* ``register`` copies the artifact into a temp dir, hashes every file (sha256), then, inside one SQLite
  ``BEGIN IMMEDIATE`` transaction, takes the next version number and ``os.replace``-s the dir into place;
  concurrent registrations (threads or processes) serialise on the transaction and never clobber.
* ``promote`` moves an alias in a transaction and records it in the alias history; ``rollback`` returns
  the alias to the version that held it before the last promotion (repeatable: a stack).
* ``artifact_path`` verifies every file against the recorded checksums before handing out the path and
  raises :class:`ArtifactCorrupted` otherwise, so a service never loads a tampered or half-copied model.
* ``current_version(name, alias)`` is one indexed SQLite read: services poll it (or use :meth:`watch`)
  to hot-reload when the champion changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.jsonio import plain

# \Z, not $: "$" also matches before a trailing newline, and "ranker\n" would pass.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_CHUNK = 1 << 20


class ArtifactCorrupted(RuntimeError):
    """A registered artifact's files no longer match the checksums recorded when it was registered.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "model").mkdir(); _ = (root / "model" / "weights.txt").write_text("w=1")
        >>> registry = ModelRegistry(root / "registry")
        >>> mv = registry.register("ranker", root / "model", params={}, metrics={}, data_fingerprint="d")
        >>> _ = (mv.path / "weights.txt").write_text("w=2")   # someone edits the registered copy
        >>> registry.artifact_path("ranker", 1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        mlsd.platform.registry.ArtifactCorrupted: model 'ranker' version 1 at ... does not match its registered checksums: file 'weights.txt' has sha256 ..., expected .... Fix: ...
    """


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its lineage and the sha256 of every artifact file (``files``: rel -> hex).

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "model").mkdir(); _ = (root / "model" / "weights.txt").write_text("w=1")
        >>> registry = ModelRegistry(root / "registry")
        >>> mv = registry.register("ranker", root / "model", params={"lr": 0.1}, metrics={"ndcg@10": 0.31},
        ...                        data_fingerprint="abc")
        >>> mv.name, mv.version, mv.params, mv.parent, list(mv.files)
        ('ranker', 1, {'lr': 0.1}, None, ['weights.txt'])
        >>> mv.files["weights.txt"] == hashlib.sha256(b"w=1").hexdigest()
        True
    """

    name: str
    version: int
    created_at: float
    params: dict[str, Any]
    metrics: dict[str, Any]
    data_fingerprint: str
    parent: int | None
    files: dict[str, str] = field(repr=False)
    path: Path = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


# ---------------------------------------------------------------------------------------------------
# Checksums and data fingerprints.


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> path of every regular file under ``root``."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, pd.DataFrame):
        digest.update(b"frame")
        digest.update(json.dumps([[str(c), str(t)] for c, t in obj.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(obj, index=False).to_numpy().tobytes())
    elif isinstance(obj, pd.Series):
        _feed(digest, obj.to_frame(name=str(obj.name)))
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            _feed(digest, pd.Series(obj.ravel(), name="array"))
            digest.update(repr(obj.shape).encode())
        else:
            digest.update(f"array;{obj.dtype.str};{obj.shape}".encode())
            digest.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, Mapping):
        digest.update(b"map")
        for key in sorted(obj, key=str):
            digest.update(str(key).encode() + b"\x00")
            _feed(digest, obj[key])
    elif isinstance(obj, Path):
        if obj.is_dir():
            digest.update(b"dir")
            for rel, path in _tree_files(obj).items():
                digest.update(rel.encode() + b"\x00" + bytes.fromhex(sha256_file(path)))
        else:
            digest.update(b"file" + bytes.fromhex(sha256_file(obj)))
    elif isinstance(obj, list | tuple):
        digest.update(f"seq{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    elif isinstance(obj, str | bytes | int | float | bool) or obj is None:
        digest.update(repr(obj).encode())
    else:
        raise InputError(
            "data", type(obj).__name__, "cannot fingerprint this type", "pass DataFrames, arrays or paths"
        )


def fingerprint(data: Any) -> str:
    """A stable sha256 (hex) of the *contents* of ``data``, for lineage.

    ``data`` is a DataFrame/Series (values, column names and dtypes; the index is ignored), a numpy array
    (dtype, shape, bytes), a ``Path`` (file bytes, or every file of a directory), or a dict/list/tuple of
    those. Same contents -> same fingerprint, across processes and machines.

    Examples:
        >>> df = pd.DataFrame({"user_id": [1, 2], "rating": [4.0, 5.0]})
        >>> fingerprint(df) == fingerprint(df.set_index(pd.Index([10, 20])))   # the index is ignored
        True
        >>> fingerprint(df) == fingerprint(df.assign(rating=[4.0, 4.5]))      # the values are not
        False
        >>> len(fingerprint({"train": df, "seed": 0}))   # sha256 hex
        64
    """
    digest = hashlib.sha256()
    _feed(digest, data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# The registry.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL,
    params TEXT NOT NULL, metrics TEXT NOT NULL, data_fingerprint TEXT NOT NULL,
    parent INTEGER, files TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER, previous INTEGER, action TEXT NOT NULL, at REAL NOT NULL
);
"""


def _check_name(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        hidden = isinstance(value, str) and any(not ch.isprintable() for ch in value)
        problem = "must be letters, digits, '_', '-', '.'" + (
            " (it holds a control character such as a newline)" if hidden else ""
        )
        fix = "use a name like recsys-ranker" + (" (strip the trailing newline)" if hidden else "")
        raise InputError(kind, value, problem, fix)
    return value


def _json(kind: str, value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(plain(dict(value), strict=True), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(
            kind, value, f"must be JSON-serialisable ({err})", "pass plain numbers and strings"
        ) from None


class ModelRegistry:
    """Versions, aliases and lineage of models under ``root`` (see the module docstring).

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> registry, model = ModelRegistry(root / "registry"), root / "model"
        >>> model.mkdir()
        >>> for w in (1, 2, 3):   # three trainings, each promoted to champion
        ...     _ = (model / "weights.txt").write_text(f"w={w}")
        ...     mv = registry.register("ranker", model, params={"w": w}, metrics={}, data_fingerprint="d")
        ...     _ = registry.promote("ranker", mv.version)
        >>> registry.current_version("ranker"), registry.alias("ranker").params
        (3, {'w': 3})
        >>> registry.rollback("ranker").version, registry.rollback("ranker").version   # a stack
        (2, 1)
        >>> (registry.artifact_path("ranker") / "weights.txt").read_text()   # checksums verified
        'w=1'
        >>> [(h["action"], h["version"]) for h in registry.history("ranker")][-2:]
        [('rollback', 2), ('rollback', 1)]
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "registry.sqlite"
        with self._connect() as con:
            # WAL: readers (services polling the champion) never block the writer (the training job).
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    # -- connections -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: safe across threads and processes, and cheap for SQLite.
        con = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now: no two writers pick the same version
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- register ----------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        artifact_dir: Path | str,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, Any],
        data_fingerprint: str,
        parent: int | None = None,
    ) -> ModelVersion:
        """Copy ``artifact_dir`` in as the next version of ``name`` and record its lineage."""
        _check_name("name", name)
        source = Path(artifact_dir)
        if not source.is_dir():
            raise InputError(
                "artifact_dir",
                str(source),
                "is not a directory",
                "save the model into a folder and pass that",
            )
        params_json, metrics_json = _json("params", params), _json("metrics", metrics)
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source, tmp)
            # Hash the copies, not the source: the checksum must describe what the registry holds.
            files = {rel: sha256_file(path) for rel, path in _tree_files(tmp).items()}
            if not files:
                raise InputError(
                    "artifact_dir", str(source), "holds no files", "save the model before registering"
                )
            created_at = time.time()
            with self._transaction() as con:
                if parent is not None and not self._exists(con, name, parent):
                    raise InputError(
                        "parent",
                        parent,
                        f"no version {parent} of model {name!r}",
                        "pass an existing version or None",
                    )
                (latest,) = con.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (name,)
                ).fetchone()
                version = latest + 1
                final = model_dir / f"v{version}"
                if final.exists():  # left by a crash between replace and commit: not in the index, so garbage
                    shutil.rmtree(final)
                os.replace(tmp, final)
                try:
                    con.execute(
                        "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (name, version, created_at, params_json, metrics_json, str(data_fingerprint), parent,
                         json.dumps(files, sort_keys=True)),
                    )  # fmt: skip
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        model_version = self.get(name, version)
        meta = model_dir / f"v{version}.json"
        meta.write_text(json.dumps(plain(model_version.to_dict()), indent=2, sort_keys=True) + "\n")
        return model_version

    # -- read ----------------------------------------------------------------------------------------

    def _row_to_version(self, row: Sequence[Any]) -> ModelVersion:
        name, version, created_at, params, metrics, fp, parent, files = row
        return ModelVersion(
            name=name,
            version=int(version),
            created_at=float(created_at),
            params=json.loads(params),
            metrics=json.loads(metrics),
            data_fingerprint=fp,
            parent=parent,
            files=json.loads(files),
            path=self.root / name / f"v{version}",
        )

    @staticmethod
    def _exists(con: sqlite3.Connection, name: str, version: int) -> bool:
        row = con.execute(
            "SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, int(version))
        ).fetchone()
        return row is not None

    def names(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (empty for a name never registered)."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        return [self._row_to_version(r) for r in rows]

    def _require_name(self, con: sqlite3.Connection, name: str) -> None:
        if con.execute("SELECT 1 FROM versions WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
            known = [r[0] for r in con.execute("SELECT DISTINCT name FROM versions ORDER BY name")]
            raise InputError(
                "name", name, f"no model named {name!r} in {self.root}", f"register it first; known models: {known}",
                status=404,
            )  # fmt: skip

    def get(self, name: str, version: int) -> ModelVersion:
        with self._connect() as con:
            self._require_name(con, name)
            row = con.execute(
                "SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(version))
            ).fetchone()
            if row is None:
                (latest,) = con.execute(
                    "SELECT MAX(version) FROM versions WHERE name = ?", (name,)
                ).fetchone()
                raise InputError(
                    "version", version, f"model {name!r} has no version {version}", f"versions run 1..{latest}",
                    status=404,
                )  # fmt: skip
        return self._row_to_version(row)

    def current_version(self, name: str, alias: str = "champion") -> int | None:
        """The version ``alias`` points at, or None: one indexed read, cheap enough to poll per request."""
        with self._connect() as con:
            row = con.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
        return None if row is None else int(row[0])

    def alias(self, name: str, alias: str = "champion") -> ModelVersion | None:
        """The version holding ``alias``, or None when the alias is not set (unknown model: InputError)."""
        with self._connect() as con:
            self._require_name(con, name)
        version = self.current_version(name, alias)
        return None if version is None else self.get(name, version)

    def aliases(self, name: str) -> dict[str, int]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,)
            ).fetchall()
        return {alias: int(version) for alias, version in rows}

    def history(self, name: str, alias: str = "champion") -> list[dict[str, Any]]:
        """Every promotion and rollback of ``alias``, oldest first."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT action, version, previous, at FROM alias_history WHERE name = ? AND alias = ? ORDER BY id",
                (name, alias),
            ).fetchall()
        return [{"action": a, "version": v, "previous": p, "at": t} for a, v, p, t in rows]

    # -- aliases -------------------------------------------------------------------------------------

    @staticmethod
    def _stack(con: sqlite3.Connection, name: str, alias: str) -> list[int]:
        """The alias's holders as a stack, replayed from its history: promote pushes, rollback pops."""
        stack: list[int] = []
        for action, version in con.execute(
            "SELECT action, version FROM alias_history WHERE name = ? AND alias = ? ORDER BY id",
            (name, alias),
        ):
            if action == "promote":
                stack.append(int(version))
            elif action == "rollback" and stack:
                stack.pop()
        return stack

    def promote(self, name: str, version: int, alias: str = "champion") -> ModelVersion:
        """Point ``alias`` at ``version`` (atomically), remembering the previous holder for rollback.

        The version's files are verified first: a corrupted version is refused (:class:`InputError`,
        status 409) and the alias keeps its holder, so no service is told to load what it cannot.
        """
        _check_name("alias", alias)
        self._require_intact(name, version, f"promote it to {alias}")
        with self._transaction() as con:
            self._require_name(con, name)
            if not self._exists(con, name, version):
                (latest,) = con.execute(
                    "SELECT MAX(version) FROM versions WHERE name = ?", (name,)
                ).fetchone()
                raise InputError(
                    "version", version, f"model {name!r} has no version {version}", f"versions run 1..{latest}",
                    status=404,
                )  # fmt: skip
            stack = self._stack(con, name, alias)
            current = stack[-1] if stack else None
            if current != int(version):  # promoting the holder again changes nothing
                now = time.time()
                con.execute(
                    "INSERT INTO aliases VALUES (?, ?, ?, ?) ON CONFLICT(name, alias) DO UPDATE "
                    "SET version = excluded.version, updated_at = excluded.updated_at",
                    (name, alias, int(version), now),
                )
                con.execute(
                    "INSERT INTO alias_history (name, alias, version, previous, action, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, alias, int(version), current, "promote", now),
                )
        return self.get(name, version)

    def rollback(self, name: str, alias: str = "champion") -> ModelVersion:
        """Give ``alias`` back to the version that held it before the current one (verified first, like
        :meth:`promote`: a corrupted previous holder is refused)."""
        with self._transaction() as con:
            self._require_name(con, name)
            stack = self._stack(con, name, alias)
            if len(stack) < 2:
                raise InputError(
                    "alias", alias,
                    f"{name!r} {alias} has no previous holder to roll back to (holders so far: {stack})",
                    "promote the version you want instead",
                )  # fmt: skip
            current, previous = stack[-1], stack[-2]
            self._require_intact(name, previous, f"roll {alias} back to it")
            now = time.time()
            con.execute(
                "UPDATE aliases SET version = ?, updated_at = ? WHERE name = ? AND alias = ?",
                (previous, now, name, alias),
            )
            con.execute(
                "INSERT INTO alias_history (name, alias, version, previous, action, at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, alias, previous, current, "rollback", now),
            )
        return self.get(name, previous)

    def _require_intact(self, name: str, version: int, action: str) -> None:
        mv = self.get(name, version)  # unknown name or version: its own 404
        try:
            verify(mv)
        except ArtifactCorrupted as err:
            raise InputError(
                "version", int(version), f"refusing to {action}: {str(err).split('. Fix: ')[0]}",
                "restore the files, or retrain and promote the fresh version it registers",
                status=409,
            ) from err  # fmt: skip

    # -- artifacts -------------------------------------------------------------------------------------

    def resolve(self, name: str, version_or_alias: int | str) -> ModelVersion:
        """A version number (int or digits) or an alias name -> its ModelVersion, or a clear InputError."""
        if isinstance(version_or_alias, int | np.integer) or str(version_or_alias).isdigit():
            return self.get(name, int(version_or_alias))
        found = self.alias(name, str(version_or_alias))
        if found is None:
            raise InputError(
                "alias", version_or_alias, f"model {name!r} has no alias {version_or_alias!r}",
                f"promote a version first; aliases set: {self.aliases(name)}", status=404,
            )  # fmt: skip
        return found

    def artifact_path(self, name: str, version_or_alias: int | str = "champion") -> Path:
        """The artifact directory of a version, after checking every file against its recorded sha256."""
        mv = self.resolve(name, version_or_alias)
        verify(mv)
        return mv.path

    # -- hot reload ----------------------------------------------------------------------------------

    def watch(
        self,
        name: str,
        alias: str = "champion",
        on_change: Callable[[ModelVersion | None], None] | None = None,
        *,
        interval_s: float = 2.0,
        start: bool = True,
    ) -> AliasWatcher:
        """Call ``on_change(new_version)`` whenever ``alias`` moves; polls ``current_version`` in a daemon
        thread every ``interval_s`` (``start=False``: no thread, call ``watcher.poll()`` yourself)."""
        watcher = AliasWatcher(self, name, alias, on_change, interval_s=interval_s)
        if start:
            watcher.start()
        return watcher


def verify(mv: ModelVersion) -> None:
    """Raise :class:`ArtifactCorrupted` unless ``mv.path`` holds exactly the registered files, unchanged."""
    problems: list[str] = []
    if not mv.path.is_dir():
        problems.append(f"the directory {mv.path} is missing")
    else:
        present = _tree_files(mv.path)
        for rel, expected in sorted(mv.files.items()):
            path = present.pop(rel, None)
            if path is None:
                problems.append(f"file {rel!r} is missing")
            else:
                actual = sha256_file(path)
                if actual != expected:
                    problems.append(f"file {rel!r} has sha256 {actual[:12]}..., expected {expected[:12]}...")
        problems.extend(f"file {rel!r} was added after registration" for rel in sorted(present))
    if problems:
        raise ArtifactCorrupted(
            f"model {mv.name!r} version {mv.version} at {mv.path} does not match its registered checksums: "
            + "; ".join(problems)
            + ". Fix: do not edit registered artifacts; restore the files, or register a fresh version "
            "(rerun training) and promote it, or roll the alias back to another version."
        )


class ReloadFailed(RuntimeError):
    """Raised by :meth:`AliasWatcher.check` while the alias points at a version that could not be loaded."""


class AliasWatcher:
    """Polls a registry alias and calls ``on_change`` when it points somewhere new (see ``watch``).

    A failed reload (say, the new version's files are corrupted) is retried at every poll while the
    old model keeps serving; it is logged with its traceback once per version and error, and
    :meth:`check` raises :class:`ReloadFailed` until a reload succeeds: a service appends ``check`` to
    its app's ``ready_checks``, so ``/ready`` answers 503 naming the version instead of a log flood.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "model").mkdir(); _ = (root / "model" / "weights.txt").write_text("w=1")
        >>> registry = ModelRegistry(root / "registry")
        >>> for _ in range(2):
        ...     _ = registry.register("ranker", root / "model", params={}, metrics={}, data_fingerprint="d")
        >>> _ = registry.promote("ranker", 1)
        >>> loaded = []
        >>> watcher = registry.watch("ranker", "champion", lambda mv: loaded.append(mv.version), start=False)
        >>> watcher.poll()   # nothing moved since the watcher started
        False
        >>> _ = registry.promote("ranker", 2)
        >>> watcher.poll(), loaded
        (True, [2])
    """

    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        alias: str,
        on_change: Callable[[ModelVersion | None], None] | None,
        *,
        interval_s: float = 2.0,
    ) -> None:
        self.registry = registry
        self.name = name
        self.alias = alias
        self.on_change = on_change
        self.interval_s = interval_s
        self.version = registry.current_version(name, alias)
        self.error: str | None = None  # why the last reload failed; None once one succeeds
        self._logged: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """Check once; True (and ``on_change`` called) when the alias moved since the last check.
        A failing ``on_change`` raises (after recording :attr:`error`), and is retried next time."""
        version = self.registry.current_version(self.name, self.alias)
        if version == self.version:
            return False
        if self.on_change is not None:
            try:
                self.on_change(None if version is None else self.registry.get(self.name, version))
            except Exception as err:  # recorded for check(); the caller (or poll_and_log) reports it
                self.error = (
                    f"reloading {self.name} v{version} ({self.alias}) failed: {type(err).__name__}: {err}; "
                    f"still serving v{self.version}"
                )
                raise
        # Only after a successful reload: a failed one is retried at the next poll.
        self.version = version
        self.error = None
        self._logged = None
        return True

    def check(self) -> dict[str, Any]:
        """A readiness check: ``{"<name>@<alias>": version}``, or :class:`ReloadFailed` with the reason."""
        if self.error is not None:
            raise ReloadFailed(self.error)
        return {f"{self.name}@{self.alias}": self.version}

    def poll_and_log(self) -> None:
        """One poll of the background loop: a failure is logged with its traceback once, not every poll."""
        import logging

        try:
            self.poll()
        except Exception:  # a failed reload must not kill the watcher; the old model keeps serving
            if self.error != self._logged:
                logging.getLogger("mlsd.registry").exception(
                    "%s (retrying every %gs; /ready reports it)", self.error, self.interval_s
                )
                self._logged = self.error

    def start(self) -> AliasWatcher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"watch-{self.name}-{self.alias}", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_and_log()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
