"""API keys with roles for every service the app factory builds (``mlsd.platform.serving.create_app``).

Three roles: ``service`` (a system's callers: scoring, events, profile writes), ``reviewer`` (routes
tagged ``review``: claiming and resolving fraud cases) and ``admin`` (everything). The app factory
asks :meth:`ApiKeys.authorize` about every request after routing, so no service carries auth code:

* a state-changing method (anything but GET, HEAD, OPTIONS) on a route tagged ``review`` needs
  ``reviewer`` or ``admin``; on any other route ``service`` or ``admin``;
* reads are open unless ``auth_reads`` (``MLSD_AUTH_READS=1``), then any valid key may read; the
  platform's own routes (tag ``platform``: ``/health``, ``/ready``, ``/metrics``) always stay open
  for load balancers and scrapers.

Keys come from ``MLSD_API_KEYS="name:role:key,..."`` and/or ``MLSD_API_KEYS_FILE`` (YAML or JSON, a
list of ``{name, role, sha256}``: the file holds the key's SHA-256, never the key). A presented key
(``Authorization: Bearer <key>`` or ``X-API-Key: <key>``) is hashed and compared with every stored
digest by :func:`hmac.compare_digest`, so neither the comparison nor the loop ends early. Keys are
never logged, echoed in an error, or kept in memory after loading.

No keys configured: an :class:`ApiKeys` with none refuses every state-changing request with a 401
naming the variables to set (fail closed). ``MLSD_AUTH=off`` turns auth off for a local demo, with
a loud warning. Apps built in-process (tests, notebooks) get ``auth=None`` unless they pass keys:
open, with the :data:`ANONYMOUS` principal; ``serving.serve`` (the production path) applies
:meth:`ApiKeys.from_env` to an app built that way.

Examples:
    >>> keys = ApiKeys.parse("scorer:service:s3cret-key-0123456789,ann:reviewer:r3view-key-0123456789")
    >>> keys.authenticate("r3view-key-0123456789")
    Principal(name='ann', role='reviewer', authenticated=True)
    >>> keys.authenticate("guess") is None
    True
    >>> keys.needed_roles("POST", ["review"]), keys.needed_roles("PUT", ["recsys"]), keys.needed_roles("GET", [])
    (('reviewer', 'admin'), ('service', 'admin'), None)
    >>> len(hash_key("s3cret-key-0123456789"))   # what a keys file stores
    64
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsd.platform.errors import InputError

__all__ = [
    "ANONYMOUS",
    "AUDIT",
    "AUTH_ENV",
    "KEYS_ENV",
    "KEYS_FILE_ENV",
    "MIN_KEY_CHARS",
    "READS_ENV",
    "ROLES",
    "ApiKey",
    "ApiKeys",
    "Principal",
    "hash_key",
    "presented_key",
]

KEYS_ENV = "MLSD_API_KEYS"
KEYS_FILE_ENV = "MLSD_API_KEYS_FILE"
READS_ENV = "MLSD_AUTH_READS"
AUTH_ENV = "MLSD_AUTH"
ROLES = ("service", "reviewer", "admin")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_TAG = "platform"  # /health, /ready, /metrics: load balancers and scrapers carry no key
REVIEW_TAG = "review"
MIN_KEY_CHARS = 16  # a guessable key is no key: ask for a generated one
NEW_KEY_HINT = "generate one with: python -m mlsd.platform.auth new NAME ROLE"

# One line per state-changing request: who (name, role), what (method, path), the answer's status.
AUDIT = logging.getLogger("mlsd.audit")
logger = logging.getLogger("mlsd.auth")

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}\Z")


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the key's ``name`` and ``role``; ``authenticated`` is False for
    :data:`ANONYMOUS`, the principal of an app built without auth (in-process, or ``MLSD_AUTH=off``)."""

    name: str
    role: str
    authenticated: bool = True


ANONYMOUS = Principal("anonymous", "admin", authenticated=False)


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its owner's ``name``, its ``role`` and the SHA-256 ``digest`` (32 bytes)."""

    name: str
    role: str
    digest: bytes = b""

    def __repr__(self) -> str:  # the digest is not the key, but it has no business in logs either
        return f"ApiKey(name={self.name!r}, role={self.role!r})"


def hash_key(key: str) -> str:
    """The SHA-256 (hex) of ``key``: what ``MLSD_API_KEYS_FILE`` stores instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``, else None."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


class ApiKeys:
    """The configured keys and the policy (see the module docstring); ``source`` names where they came
    from, for error messages. An empty ``ApiKeys`` refuses every state-changing request."""

    def __init__(
        self, keys: Iterable[ApiKey] = (), *, auth_reads: bool = False, source: str = "code"
    ) -> None:
        self.keys = tuple(keys)
        self.auth_reads = bool(auth_reads)
        self.source = source
        _check_unique(self.keys, source)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self.keys)} keys from {self.source}, auth_reads={self.auth_reads})"

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, auth_reads: bool = False, source: str = KEYS_ENV) -> ApiKeys:
        """Keys from ``"name:role:key,name:role:key"`` (the key itself; it is hashed here)."""
        keys = [_key_from_entry(entry.strip(), source) for entry in text.split(",") if entry.strip()]
        return cls(keys, auth_reads=auth_reads, source=source)

    @classmethod
    def from_file(cls, path: str | Path, *, auth_reads: bool = False) -> ApiKeys:
        """Keys from a YAML or JSON file: a list of ``{name, role, sha256}`` (or ``{"keys": [...]}``)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise InputError(
                KEYS_FILE_ENV, str(path), f"cannot be read ({err.strerror})", "point it at the keys file"
            ) from None
        entries = _load_entries(text, path)
        keys = [_key_from_record(entry, f"{path}[{i}]") for i, entry in enumerate(entries)]
        return cls(keys, auth_reads=auth_reads, source=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiKeys | None:
        """The production policy: keys from ``MLSD_API_KEYS`` and ``MLSD_API_KEYS_FILE`` (both may be
        set), ``MLSD_AUTH_READS=1`` to close reads; None only for ``MLSD_AUTH=off`` (warned loudly).
        With neither variable set the result holds no keys, so every state change is refused."""
        env = os.environ if environ is None else environ
        mode = env.get(AUTH_ENV, "on").strip().lower()
        if mode not in {"on", "off", ""}:
            raise InputError(
                AUTH_ENV,
                env[AUTH_ENV],
                "must be on or off",
                f"unset {AUTH_ENV}, or {AUTH_ENV}=off for a demo",
            )
        if mode == "off":
            logger.warning(
                "!!! %s=off: authentication is OFF, anyone who reaches this port may change state. "
                "Only for a local demo; set %s or %s for anything else.", AUTH_ENV, KEYS_ENV, KEYS_FILE_ENV,
            )  # fmt: skip
            return None
        auth_reads = _flag(env, READS_ENV)
        keys: list[ApiKey] = []
        sources = []
        if env.get(KEYS_ENV, "").strip():
            keys += cls.parse(env[KEYS_ENV]).keys
            sources.append(KEYS_ENV)
        if env.get(KEYS_FILE_ENV, "").strip():
            keys += cls.from_file(env[KEYS_FILE_ENV]).keys
            sources.append(env[KEYS_FILE_ENV])
        return cls(keys, auth_reads=auth_reads, source=" + ".join(sources) or "the environment")

    # -- checking ----------------------------------------------------------------------------------

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal whose key this is, or None; every stored digest is compared, in constant time."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for stored in self.keys:  # no early exit: the time taken does not say which key (or none) matched
            if hmac.compare_digest(digest, stored.digest):
                found = stored
        return None if found is None else Principal(found.name, found.role)

    def needed_roles(self, method: str, tags: Sequence[str]) -> tuple[str, ...] | None:
        """The roles that may call a route (``()``: any valid key), or None when it is open."""
        if OPEN_TAG in tags:
            return None
        if method.upper() in SAFE_METHODS:
            return () if self.auth_reads else None
        return ("reviewer", "admin") if REVIEW_TAG in tags else ("service", "admin")

    def authorize(
        self, method: str, route_path: str, tags: Sequence[str], headers: Mapping[str, str]
    ) -> Principal:
        """The request's principal, or an :class:`InputError`: 401 (no, unknown key), 403 (wrong role)."""
        key = presented_key(headers)
        return self.permit(method, route_path, tags, self.authenticate(key), key)

    def permit(
        self, method: str, route_path: str, tags: Sequence[str], principal: Principal | None, key: str | None
    ) -> Principal:
        """:meth:`authorize` for a principal already authenticated (None: ``key`` matched none)."""
        needed = self.needed_roles(method, tags)
        if needed is None:
            return principal or ANONYMOUS
        if principal is None:
            raise self._unauthenticated(key, needed)
        if needed and principal.role not in needed:
            raise InputError(
                "role", principal.role,
                f"the key {principal.name!r} has role {principal.role!r}; {method} {route_path} needs "
                f"{' or '.join(needed)}",
                f"send a key with role {needed[0]} (or admin); roles are set where the keys are configured "
                f"({KEYS_ENV} / {KEYS_FILE_ENV})",
                status=403,
            )  # fmt: skip
        return principal

    def _unauthenticated(self, key: str | None, needed: tuple[str, ...]) -> InputError:
        role = f"a key of role {needed[0]} (or admin)" if needed else "a valid key"
        if not self.keys:
            return InputError(
                "Authorization", None,
                "this server has no API keys configured, so it refuses every request that needs one (fail closed)",
                f"the operator sets {KEYS_ENV}=name:role:key (or {KEYS_FILE_ENV}=keys.yaml) and restarts; "
                f"{AUTH_ENV}=off only for a local demo",
                status=401,
            )  # fmt: skip
        problem = "no API key sent" if key is None else "API key not recognised"
        return InputError(  # the value is never echoed: it may be a real key sent to the wrong server
            "Authorization", None, problem,
            f"send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' with {role}", status=401,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Parsing the configuration: every mistake names where it is and how to fix it, never the key itself.


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in {"", "0", "false", "no", "off"}:
        return False
    if raw in {"1", "true", "yes", "on"}:
        return True
    raise InputError(name, env[name], "is not a yes/no flag", f"set {name}=1 or unset it")


def _check_name_role(name: Any, role: Any, where: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(
            f"{where}.name", name, "must be 1-64 letters, digits, '_', '-', '.', '@'", "name the key's owner, e.g. scorer-1"
        )  # fmt: skip
    if role not in ROLES:
        raise InputError(
            f"{where}.role",
            role,
            f"unknown role (roles: {', '.join(ROLES)})",
            "use service, reviewer or admin",
        )


def _key_from_entry(entry: str, source: str) -> ApiKey:
    name, sep1, rest = entry.partition(":")
    role, sep2, key = rest.partition(":")
    where = f"{source}[{name or '?'}]"
    if not (sep1 and sep2 and key):
        raise InputError(
            source, f"{name}:{role}:<{len(key)} chars>" if sep1 else "<entry without ':'>",
            "an entry is not name:role:key", f"write {source}=name:role:key,name:role:key",
        )  # fmt: skip
    _check_name_role(name, role, where)
    if len(key) < MIN_KEY_CHARS:
        raise InputError(
            f"{where}.key", f"<{len(key)} chars>", f"is shorter than {MIN_KEY_CHARS} characters", NEW_KEY_HINT
        )
    return ApiKey(name, role, hashlib.sha256(key.encode("utf-8")).digest())


def _load_entries(text: str, path: Path) -> list[Any]:
    import yaml

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        problem = (
            f"is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({type(err).__name__})"
        )
        raise InputError(KEYS_FILE_ENV, str(path), problem, "fix the file") from None
    if isinstance(data, Mapping) and "keys" in data:
        data = data["keys"]
    if not isinstance(data, list):
        raise InputError(
            KEYS_FILE_ENV, str(path), "holds no list of keys",
            "write a list of {name, role, sha256} entries (or {keys: [...]})",
        )  # fmt: skip
    return data


def _key_from_record(record: Any, where: str) -> ApiKey:
    if not isinstance(record, Mapping):
        raise InputError(
            where, type(record).__name__, "is not a {name, role, sha256} mapping", "fix the file"
        )
    if "key" in record:
        raise InputError(
            f"{where}.key", "<redacted>", "a keys file holds the key's SHA-256, never the key",
            "replace key: with sha256: <python -m mlsd.platform.auth hash>, and rotate the key: it was on disk",
        )  # fmt: skip
    _check_name_role(record.get("name"), record.get("role"), where)
    digest = record.get("sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest.strip().lower()):
        raise InputError(
            f"{where}.sha256", digest, "is not a SHA-256 in hex (64 characters 0-9a-f)",
            "write the output of: python -m mlsd.platform.auth hash (it reads the key from stdin)",
        )  # fmt: skip
    return ApiKey(record["name"], record["role"], bytes.fromhex(digest.strip().lower()))


def _check_unique(keys: Sequence[ApiKey], source: str) -> None:
    names, digests = set(), set()
    for key in keys:
        if key.name in names:
            raise InputError(
                source,
                key.name,
                "two keys have this name",
                "give every key its own name: the audit log names it",
            )
        if key.digest in digests:
            raise InputError(
                source, key.name, "this key is configured twice", "give every caller its own key"
            )
        names.add(key.name)
        digests.add(key.digest)


# ---------------------------------------------------------------------------------------------------
# python -m mlsd.platform.auth new NAME ROLE | hash: make a key, or hash one read from stdin.


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "new":
        name, role = argv[1], argv[2]
        _check_name_role(name, role, "new")
        key = secrets.token_urlsafe(32)
        print(f"key (give it to the caller, store it nowhere else): {key}")
        print(f"{KEYS_ENV} entry: {name}:{role}:{key}")
        print(f"{KEYS_FILE_ENV} entry (YAML): - {{name: {name}, role: {role}, sha256: {hash_key(key)}}}")
        return 0
    if len(argv) == 1 and argv[0] == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print(
                "error: no key on stdin. Fix: echo -n KEY | python -m mlsd.platform.auth hash",
                file=sys.stderr,
            )
            return 2
        print(hash_key(key))
        return 0
    print(
        "usage: python -m mlsd.platform.auth new NAME ROLE | hash  (hash reads the key from stdin)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
