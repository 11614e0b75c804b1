"""Online feature store: the low-latency key -> row lookup a service does per request.

A row is a flat mapping ``field -> value`` stored under ``(namespace, key)``; ``namespace`` is the feature
view ("user_features", "card_velocity"), ``key`` the entity id as a string. Two implementations share
one contract (``tests/platform/test_online_store.py`` runs against both and expects identical answers):

* :class:`MemoryStore` - a dict in the process; the embedded default and the fastest.
* :class:`RedisStore` - one Redis hash per row, one pipeline round trip per batch call, on a single Redis
  (``redis://``) or a Redis Cluster (``redis+cluster://``, see :mod:`mlsd.platform.redis_cluster`).

Semantics both follow exactly:

* ``put_many`` **replaces** each row (fields not given are gone) and sets its TTL; ``ttl_s=None`` means
  the row never expires.
* TTL is enforced **on read** against the injectable ``clock`` (seconds since the epoch): an expired row
  reads as ``None`` even if the backend still holds it. Tests advance a fake clock instead of sleeping.
  Redis also gets ``PEXPIRE`` so expired rows are eventually deleted, but correctness never depends on it.
* ``get_many`` answers one entry per key, ``None`` for a missing or expired key; ``fields`` selects a
  subset, and a field the row does not have is simply absent from the answer.
* Values round-trip with their type: ``int``, ``float``, ``bool``, ``str``, ``bytes``, ``None``, lists
  and dicts of those (JSON), and numpy arrays (dtype and shape kept; float32 vectors come back as
  ``np.ndarray`` float32). numpy scalars are stored as the matching Python ``int``/``float``/``bool``;
  tuples come back as lists. Arrays come back read-only (they may share memory with the store).

On a serving path, pass ``timeout_s`` to :meth:`RedisStore.get_many`: the call then uses a client
with socket connect/read timeouts (``serving_timeout_s``, 50 ms by default) and no retries, refuses to
start when less than that is left, and raises :class:`StoreUnavailable` on an outage (refused, reset,
blackholed); after one, such calls fail at once for ``retry_after_s`` (a circuit breaker: 60 requests
in flight do not each wait for a dead server). :meth:`RedisStore.ping` is the readiness check.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mlsd.platform.errors import InputError

__all__ = ["MemoryStore", "OnlineStore", "RedisStore", "StoreUnavailable"]

Value = int | float | bool | str | bytes | None | list | dict | np.ndarray
Row = dict[str, Value]
Clock = Callable[[], float]


@runtime_checkable
class OnlineStore(Protocol):
    """The seam services code against; see the module docstring for the exact semantics.

    Examples:
        >>> isinstance(MemoryStore(), OnlineStore), isinstance({}, OnlineStore)
        (True, False)
    """

    def put_many(
        self, namespace: str, rows: Mapping[str, Mapping[str, Value]], ttl_s: float | None = None
    ) -> None: ...

    def get_many(
        self, namespace: str, keys: Sequence[str], fields: Sequence[str] | None = None
    ) -> list[Row | None]: ...

    def delete_many(self, namespace: str, keys: Sequence[str]) -> None: ...


class StoreUnavailable(RuntimeError):
    """The online store did not answer in time (or refused): serve without it, flagged degraded."""


def _unavailable_errors(redis: Any) -> tuple[type[BaseException], ...]:
    """What an outage raises: refused / reset / timed out, and on a cluster a node or slot that is down."""
    from redis import exceptions as e

    return (
        redis.ConnectionError, redis.TimeoutError, OSError,
        e.ClusterError, e.RedisClusterUnreachableError, e.SlotNotCoveredError,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Value normalisation (both stores) and encoding (Redis): a one-byte type tag, then the payload.

_NEVER = math.inf
_PLAIN = (bool, int, float, str, bytes)  # exact types: np.float64 (a float subclass) is normalised below


def _normalise(value: Any, where: str) -> Value:
    """Turn a value into the canonical form both stores keep, so they answer identically."""
    if value is None or type(value) in _PLAIN:
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise InputError(
                where, str(value.dtype), "unsupported array dtype", "store bool/int/uint/float arrays"
            )
        array = np.array(value, copy=True, order="C")  # the caller may mutate theirs later
        array.flags.writeable = False
        return array
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, str):  # str subclasses such as np.str_
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, list | tuple | dict):
        try:
            # The JSON round trip is what Redis will store, so memory keeps exactly the same thing.
            return json.loads(json.dumps(value))
        except (TypeError, ValueError) as err:
            raise InputError(
                where, value, f"not JSON-serialisable ({err})", "use str/int/float/bool lists"
            ) from None
    raise InputError(
        where,
        type(value).__name__,
        "unsupported feature value type",
        "use int, float, bool, str, bytes, list, ndarray",
    )


def _encode(value: Value) -> bytes:
    if value is None:
        return b"n"
    if value is True or value is False:  # before int: bool is an int subclass
        return b"?1" if value else b"?0"
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, float):
        return b"f" + struct.pack("<d", value)  # exact, including nan/inf and -0.0
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, bytes):
        return b"b" + value
    if isinstance(value, np.ndarray):
        header = f"{value.dtype.str};{','.join(map(str, value.shape))};".encode()
        return b"a" + header + value.tobytes()
    return b"j" + json.dumps(value).encode()


def _decode(data: bytes) -> Value:
    tag, payload = data[:1], data[1:]
    if tag == b"f":
        return struct.unpack("<d", payload)[0]
    if tag == b"i":
        return int(payload)
    if tag == b"s":
        return payload.decode("utf-8")
    if tag == b"a":
        dtype, shape, raw = payload.split(b";", 2)
        dims = tuple(int(d) for d in shape.split(b",")) if shape else ()
        return np.frombuffer(raw, dtype=np.dtype(dtype.decode())).reshape(dims)  # read-only view, no copy
    if tag == b"b":
        return payload
    if tag == b"?":
        return payload == b"1"
    if tag == b"n":
        return None
    if tag == b"j":
        return json.loads(payload)
    raise ValueError(f"unknown online-store value tag {tag!r}")


def _check_rows(namespace: str, rows: Mapping[str, Mapping[str, Value]]) -> dict[str, dict[str, Value]]:
    clean: dict[str, dict[str, Value]] = {}
    for key, row in rows.items():
        if not isinstance(key, str):
            raise InputError("key", key, "online-store keys must be strings", "pass str(entity_id)")
        out: dict[str, Value] = {}
        for field, value in row.items():
            if not isinstance(field, str) or field.startswith("\x00"):
                raise InputError(
                    "field", field, "field names must be strings not starting with NUL", "rename it"
                )
            out[field] = _normalise(value, f"{namespace}[{key!r}].{field}")
        clean[key] = out
    return clean


def _check_ttl(ttl_s: float | None) -> float:
    if ttl_s is None:
        return _NEVER
    if not ttl_s > 0:
        raise InputError("ttl_s", ttl_s, "a TTL must be positive (or None for no expiry)", "pass seconds > 0")
    return float(ttl_s)


def _fresh(value: Value) -> Value:
    # Lists and dicts are mutable: hand out a copy so a caller cannot edit the stored row.
    if isinstance(value, list | dict):
        return json.loads(json.dumps(value))
    return value


# ---------------------------------------------------------------------------------------------------
# In-process implementation.


class MemoryStore:
    """An in-process online store: ``{namespace: {key: (expires_at, row)}}``, TTL checked on read.

    Examples:
        >>> import numpy as np
        >>> now = [1000.0]   # a fake clock: tests advance it instead of sleeping
        >>> store = MemoryStore(clock=lambda: now[0])
        >>> emb = np.array([0.5, 1.0], dtype=np.float32)
        >>> store.put_many("user_features", {"42": {"clicks": 3, "emb": emb}}, ttl_s=60)
        >>> store.get_many("user_features", ["42", "7"])   # None: no such key
        [{'clicks': 3, 'emb': array([0.5, 1. ], dtype=float32)}, None]
        >>> store.get_many("user_features", ["42"], fields=["clicks", "country"])   # absent, not None
        [{'clicks': 3}]
        >>> now[0] += 60   # the TTL has run out: the row reads as missing
        >>> store.get_many("user_features", ["42"])
        [None]
        >>> store.put_many("user_features", {"42": {"clicks": 4}})
        >>> store.put_many("user_features", {"42": {"country": "FR"}})   # replaces the row, no merge
        >>> store.get_many("user_features", ["42"])
        [{'country': 'FR'}]
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._data: dict[str, dict[str, tuple[float, dict[str, Value]]]] = {}

    def put_many(
        self, namespace: str, rows: Mapping[str, Mapping[str, Value]], ttl_s: float | None = None
    ) -> None:
        expires_at = self.clock() + _check_ttl(ttl_s)
        table = self._data.setdefault(namespace, {})
        for key, row in _check_rows(namespace, rows).items():
            table[key] = (expires_at, row)

    def get_many(
        self, namespace: str, keys: Sequence[str], fields: Sequence[str] | None = None
    ) -> list[Row | None]:
        table = self._data.get(namespace, {})
        now = self.clock()
        out: list[Row | None] = []
        for key in keys:
            entry = table.get(key)
            if entry is None:
                out.append(None)
            elif entry[0] <= now:
                del table[key]  # lazily reclaim the memory of expired rows
                out.append(None)
            else:
                row = entry[1]
                selected = row if fields is None else {f: row[f] for f in fields if f in row}
                out.append({f: _fresh(v) for f, v in selected.items()})
        return out

    def delete_many(self, namespace: str, keys: Sequence[str]) -> None:
        table = self._data.get(namespace)
        if table:
            for key in keys:
                table.pop(key, None)

    def __len__(self) -> int:
        return sum(len(t) for t in self._data.values())


# ---------------------------------------------------------------------------------------------------
# Redis implementation.

_EXPIRES = "\x00exp"  # reserved hash field: the expiry time, always present so HMGET can tell "missing"
_EXPIRES_B = _EXPIRES.encode()

# A row replaced atomically on its own (the cluster's put: no transaction may span slots). KEYS[1] the
# row's hash; ARGV[1] the TTL in ms ('' = none), then field, value pairs. HSET in chunks: Lua's unpack
# has a stack limit of a few thousand values.
_REPLACE = """
redis.call('DEL', KEYS[1])
for s = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, s, math.min(s + 999, #ARGV)))
end
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""


class RedisStore:
    """Online store on Redis: one hash per row, one pipeline per call.

    Every hash carries a reserved field with its expiry time (``inf`` when none) that reads compare with
    ``clock()``; ``PEXPIRE`` is set as well so Redis reclaims expired rows by itself.

    ``url`` is ``redis://host:port/db`` (one server) or ``redis+cluster://host:port`` (a Redis Cluster,
    any node). Key layout: ``<prefix><namespace>:<key>`` on a single Redis; ``<prefix><namespace>:{<key>}``
    on a cluster (``hash_tags=None`` decides by the client; ``True`` / ``False`` force it): the entity is
    the hash tag, so one entity's rows of every namespace share a slot. Atomicity: a reader never sees
    a row half replaced. On a single Redis a put batch is one MULTI/EXEC (the whole batch at once); on a
    cluster, where a transaction may not span slots, each row is replaced by one Lua call (DEL + HSET +
    PEXPIRE of that one key, atomic per row; the batch's rows land one by one), pipelined per node.

    Examples:
        >>> # The client connects lazily: nothing below reaches a server (an empty batch is no round trip).
        >>> store = RedisStore("redis://127.0.0.1:6379/0", prefix="mlsd:")
        >>> isinstance(store, OnlineStore), store.get_many("user_features", [])
        (True, [])
        >>> store.put_many("user_features", {})
        >>> store.close()
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "mlsd:",
        clock: Clock = time.time,
        *,
        client: Any = None,
        serving_timeout_s: float = 0.05,
        retry_after_s: float = 1.0,
        hash_tags: bool | None = None,
    ) -> None:
        from mlsd.platform.redis_cluster import check_untagged, connect, is_cluster

        self.url = url
        self.clock = clock
        self.serving_timeout_s = serving_timeout_s
        self.retry_after_s = retry_after_s
        self.client = client if client is not None else connect(url, decode_responses=False)
        self.cluster = is_cluster(self.client)
        self.hash_tags = self.cluster if hash_tags is None else bool(hash_tags)
        # braces in the prefix would become every key's hash tag: all rows on one slot
        self.prefix = check_untagged("prefix", prefix) if self.hash_tags else prefix
        # The serving path's client: bounded waits, no retries (a retry would outlive any deadline).
        self.serving_client = (
            client
            if client is not None
            else connect(
                url,
                decode_responses=False,
                socket_timeout=serving_timeout_s,
                socket_connect_timeout=serving_timeout_s,
                retry=None,
            )  # fmt: skip
        )
        self._failed_at = -math.inf  # monotonic time of the last serving-path outage

    def _key(self, namespace: str, key: str) -> str:
        if self.hash_tags:
            return f"{self.prefix}{namespace}:{{{key}}}"
        return f"{self.prefix}{namespace}:{key}"

    def put_many(
        self,
        namespace: str,
        rows: Mapping[str, Mapping[str, Value]],
        ttl_s: float | None = None,
        *,
        timeout_s: float | None = None,
    ) -> None:
        """Replace ``rows`` (see the module docstring); ``timeout_s``: a write on the serving path (an
        HTTP request), bounded as :meth:`get_many` bounds reads, :class:`StoreUnavailable` on an outage."""
        ttl = _check_ttl(ttl_s)
        clean = _check_rows(namespace, rows)
        if not clean:
            return
        if timeout_s is None:
            self._write(self.client, namespace, clean, ttl)
        else:
            self._serving(timeout_s, lambda client: self._write(client, namespace, clean, ttl))

    def _write(self, client: Any, namespace: str, clean: dict[str, dict[str, Value]], ttl: float) -> None:
        expires = struct.pack("<d", self.clock() + ttl)
        ttl_ms = None if ttl == _NEVER else max(1, int(math.ceil(ttl * 1000)))
        if self.cluster:
            self._write_per_row(client, namespace, clean, expires, ttl_ms)
            return
        pipe = client.pipeline(transaction=True)
        for key, row in clean.items():
            name = self._key(namespace, key)
            mapping = {field: _encode(value) for field, value in row.items()}
            mapping[_EXPIRES] = expires
            pipe.delete(name)  # replace, never merge: stale fields must not survive a rewrite
            pipe.hset(name, mapping=mapping)
            if ttl_ms is not None:
                pipe.pexpire(name, ttl_ms)
        pipe.execute()

    def _write_per_row(
        self,
        client: Any,
        namespace: str,
        clean: dict[str, dict[str, Value]],
        expires: bytes,
        ttl_ms: int | None,
    ) -> None:
        """The cluster's write: one ``_REPLACE`` call per row (atomic per row, no cross-slot transaction),
        all of them in one pipeline that the cluster client splits by node."""
        from mlsd.platform.redis_cluster import check_untagged, run_script

        check_untagged("namespace", namespace)  # braces in it would become every row's hash tag
        ttl_arg = b"" if ttl_ms is None else str(ttl_ms).encode()
        calls = []
        for key, row in clean.items():
            args = [ttl_arg, _EXPIRES, expires]
            for field, value in row.items():
                args += [field, _encode(value)]
            calls.append(([self._key(namespace, key)], args))
        run_script(client, _REPLACE, calls)

    def get_many(
        self,
        namespace: str,
        keys: Sequence[str],
        fields: Sequence[str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[Row | None]:
        """Rows of ``keys`` (see the module docstring); ``timeout_s``: the time the caller can give
        (its deadline's remaining budget): the serving path, which raises :class:`StoreUnavailable`
        rather than wait longer than ``min(timeout_s, serving_timeout_s)``."""
        if not keys:
            return []
        if timeout_s is None:
            replies = self._read(self.client, namespace, keys, fields)
        else:
            replies = self._serving(timeout_s, lambda client: self._read(client, namespace, keys, fields))
        return self._rows(replies, fields)

    def _serving(self, timeout_s: float, call: Callable[[Any], Any]) -> Any:
        """``call(serving_client)`` under the serving path's rules: breaker, budget, StoreUnavailable."""
        import redis

        if time.monotonic() - self._failed_at < self.retry_after_s:
            raise StoreUnavailable(
                f"online store {self._where()} failed less than {self.retry_after_s:g} s ago"
            )
        if timeout_s < self.serving_timeout_s:
            raise StoreUnavailable(f"{timeout_s * 1000:.0f} ms left, a call may take "
                                   f"{self.serving_timeout_s * 1000:.0f} ms")  # fmt: skip
        try:
            result = call(self.serving_client)
        except _unavailable_errors(redis) as err:
            self._failed_at = time.monotonic()
            raise StoreUnavailable(
                f"online store {self._where()} unreachable ({type(err).__name__}: {err})"
            ) from None
        self._failed_at = -math.inf
        return result

    def ping(self, timeout_s: float | None = None) -> bool:
        """True when the server answers a PING within ``timeout_s`` (default ``serving_timeout_s``):
        the readiness check of a service that reads this store."""
        import redis

        client = self.serving_client
        if timeout_s is not None and timeout_s != self.serving_timeout_s:
            from mlsd.platform.redis_cluster import connect

            try:
                client = connect(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            except _unavailable_errors(redis):  # a cluster client reads the slot map as it starts
                return False
        try:
            return bool(client.ping())
        except _unavailable_errors(redis):
            return False
        finally:
            if client is not self.serving_client:
                client.close()

    def _where(self) -> str:
        parts = self.url.split("@")[-1]  # never print a password
        return parts

    def _read(
        self, client: Any, namespace: str, keys: Sequence[str], fields: Sequence[str] | None
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        if fields is None:
            for key in keys:
                pipe.hgetall(self._key(namespace, key))
        else:
            wanted = [_EXPIRES, *fields]
            for key in keys:
                pipe.hmget(self._key(namespace, key), wanted)
        return pipe.execute()

    def _rows(self, replies: list[Any], fields: Sequence[str] | None) -> list[Row | None]:
        now = self.clock()
        out: list[Row | None] = []
        if fields is None:
            for reply in replies:
                expires = reply.pop(_EXPIRES_B, None)
                if expires is None or struct.unpack("<d", expires)[0] <= now:
                    out.append(None)
                else:
                    out.append({f.decode("utf-8"): _decode(v) for f, v in reply.items()})
        else:
            for reply in replies:
                expires = reply[0]
                if expires is None or struct.unpack("<d", expires)[0] <= now:
                    out.append(None)
                else:
                    out.append(
                        {f: _decode(v) for f, v in zip(fields, reply[1:], strict=True) if v is not None}
                    )
        return out

    def delete_many(self, namespace: str, keys: Sequence[str]) -> None:
        if keys:
            self.client.delete(*[self._key(namespace, k) for k in keys])

    def close(self) -> None:
        self.client.close()
        if self.serving_client is not self.client:
            self.serving_client.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
