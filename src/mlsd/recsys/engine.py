"""The recommender's serving engine: champion model from the registry -> candidates -> rules -> features ->
ranking -> re-ranking, under a deadline, in-process. The HTTP service (:mod:`mlsd.recsys.service`), the
simulated world, the bench and the demo all serve through it.

``RecsysEngine.handle(requests)`` is the ONE serving path, batch-first: a request body is
``{"user_id": "42", "k": 10}`` (optionally ``region``, ``age``, ``seed_items``, ``deadline_ms``,
``request_id``), and a single request is a batch of one. Per batch and arm, candidates, rules,
features and ranking run once over the whole batch (one candidate frame, one LightGBM call);
re-ranking and the answer are per request. ``preview(requests, alias=, params=)`` answers for a given
arm on the same path, without assignment, exposure or metrics (counterfactuals).

Stages and what the deadline may skip (each answer lists ``skipped`` stages with the reason):

==============  ========================================================================  ==============
stage           work                                                                      under deadline
==============  ========================================================================  ==============
candidates      union of ALS/FAISS, EASE, content, popularity, trending, new (cold start:  always runs
                content from seed titles + popularity)
rules           region, age rating, licensing window, release: vectorised hard filters    never skipped
features        point-in-time feature tables (fitted at train time) joined to candidates  skippable
ranking         LightGBM scores                                                           skippable
rerank          freshness, genre caps, epsilon-greedy exploration (+ exposure log)        skippable
==============  ========================================================================  ==============

A batch shares one deadline (the largest ``deadline_ms`` its requests ask for, else the configured
one). Rules run right after candidate generation, not after ranking: a title that may not be shown
is never worth scoring, and a deadline can never skip them. When features + ranking would not fit in
the time left (their expected cost is a :class:`~mlsd.platform.serving.StageCost` learned from the
measured cost per candidate), the candidate order stands in (best reciprocal rank over the sources);
when re-ranking would not fit, the ranked order is cut at k and every shown title is logged with
propensity 1. A user the model has no history for is scored the way
:meth:`TwoStageRecommender.score` scores them (``fallback_scores``, no features), so serving matches
offline evaluation; ``scored_by`` in the answer says which path ran. ``timings_ms`` are the batch's
stage times shared evenly among its requests plus the request's own re-ranking (exact for a batch of
one); ``total_ms`` the request's share of the batch's wall time.

The model, catalogue and user attributes form one immutable :class:`_Loaded` snapshot; the registry
watcher swaps in a new snapshot when the champion alias moves (hot reload), so a request never sees
half a model.

**Experiments.** With ``experiments=ExperimentClient(...)``, every experiment of the client's config
with ``system == "recsys"`` is applied to each request: the user is assigned (one ~1 µs hash), the
arm's ``alias`` picks a registry snapshot loaded at startup next to the champion (and hot-reloaded
like it), the arm's ``params`` turn the documented knobs (:data:`ARM_KNOBS`), the exposure is logged
once the answers are built, and each answer names ``"experiment": {name: arm}``. Users outside
every experiment (arm -1) get the champion path. Ranker scores of every scored candidate go to the
score histogram of the arm's alias (``mlsd_score{system="recsys", model=<alias>}``: the binary ranker's
scores are probabilities).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.router import ArmRouter
from mlsd.platform.serving import Deadline, StageCost, StageTimer
from mlsd.platform.system import SystemDir
from mlsd.recsys.config import RecsysConfig, RerankConfig
from mlsd.recsys.rerank import DAY_S, ExposureLog, Reranker
from mlsd.recsys.rules import RuleFilter, region_bits

logger = logging.getLogger("mlsd.recsys.engine")

USER_ID = re.compile(r"^[0-9]{1,18}$")
# Readable text for every candidate source a model can emit (tests/recsys/test_engine.py checks the
# list against the generator's sources).
REASONS = {
    "als": "viewers with similar taste watched it",
    "ease": "often watched together with your titles",
    "rp3": "viewers of your titles went on to watch it",
    "seq": "often watched next after your latest titles",
    "blend": "matches your viewing history",
    "content": "similar to titles you watched",
    "popular": "popular on the platform",
    "trending": "trending this week",
    "new": "new on the platform",
}
# What a viewer of unknown age may see (issue 10): the strictest choice. Their age is taken to be
# ``config.rules.unknown_age`` (0 by default), so only titles rated for all ages (G, and any rating whose
# minimum age is at most that) pass the age rule; an unknown rating counts as adults-only. A request
# or a stored profile that gives the age widens it. Each answer says which applied (``policy``) and
# how many candidates each rule removed (``filtered``).
UNKNOWN_AGE_POLICY = (
    "unknown age: treated as age {age}, so only titles rated for all ages are shown; "
    "pass age= or store a profile to widen it"
)
SKIPPABLE = ("features", "ranking", "rerank")
USER_NAMESPACE = "recsys:user"
# A profile write (PUT /v1/users/{id}/profile) may wait this long for the online store.
PROFILE_WRITE_TIMEOUT_S = 0.5
SYSTEM = "recsys"
# The keys of a request body (the same JSON as the HTTP API's query): user_id is required.
REQUEST_KEYS = ("user_id", "k", "region", "age", "seed_items", "deadline_ms", "request_id")
MAX_DEADLINE_MS = 10_000  # the most a request may ask for (deadline_ms)
# What an experiment arm's ``params`` may turn. ``ranker``: "lightgbm" (default) or "none" (candidate
# order, no features, no LightGBM: the model's own fallback order); the rest override the engine's
# RerankConfig for that arm (see mlsd.recsys.rerank).
RERANK_KNOBS = ("epsilon", "diversity", "max_genre_share", "mmr_lambda", "freshness_weight", "explore_pool")
ARM_KNOBS = ("ranker", *RERANK_KNOBS)
RANKERS = ("lightgbm", "none")


@dataclass(frozen=True)
class Variant:
    """What one request runs: the registry ``alias`` of its model, the ranker, and the re-ranking policy
    (``None``: the engine's own :class:`RerankConfig`)."""

    alias: str = "champion"
    ranker: str = "lightgbm"
    rerank: RerankConfig | None = None


def variant_from_params(
    alias: str | None, params: dict[str, Any] | None, config: RecsysConfig, where: str = "params"
) -> Variant:
    """Validate an arm's alias + params into a :class:`Variant`; a bad knob is an InputError naming it."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(ARM_KNOBS))
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", params[unknown[0]], "unknown recsys knob",
                         f"use one of {list(ARM_KNOBS)}")  # fmt: skip
    ranker = params.pop("ranker", "lightgbm")
    if ranker not in RANKERS:
        raise InputError(f"{where}.ranker", ranker, "unknown ranker", f"use one of {list(RANKERS)}")
    rerank = None
    if params:
        for key, value in params.items():
            numeric = key != "diversity"
            if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InputError(f"{where}.{key}", value, "must be a number", "write e.g. 0.1")
        if "explore_pool" in params:
            if int(params["explore_pool"]) != params["explore_pool"] or params["explore_pool"] < 1:
                raise InputError(f"{where}.explore_pool", params["explore_pool"], "must be a whole number >= 1",
                                 "use e.g. 200")  # fmt: skip
            params["explore_pool"] = int(params["explore_pool"])
        rerank = replace(config.rerank, **params)
        try:
            replace(config, rerank=rerank).validate()
        except InputError as err:  # re-point the message at the arm's knob
            key = str(err.field).rsplit(".", 1)[-1]
            raise InputError(f"{where}.{key}", err.value, err.problem, err.fix) from None
    return Variant(alias=alias or config.service.alias, ranker=ranker, rerank=rerank)


def parse_user_id(raw: str) -> int:
    """A user id is 1-18 decimal digits; anything else is a 422 naming ``user_id``."""
    if not isinstance(raw, str) or not USER_ID.match(raw):
        raise InputError(
            "user_id", raw, "must be a positive integer id (1-18 digits)", "use e.g. /v1/recommendations/42"
        )
    return int(raw)


@dataclass
class _Loaded:
    """One immutable serving snapshot: model + catalogue + user attributes."""

    version: int | None
    model: Any
    rules: RuleFilter
    reranker: Reranker
    titles: np.ndarray  # title per item, in sorted item_id order (as the re-ranker's ids_)
    user_ids: np.ndarray  # sorted
    user_region: np.ndarray  # region bits, aligned with user_ids
    user_age: np.ndarray
    seed_users: np.ndarray  # sorted users the model never saw but who have earlier titles (cold-start seeds)
    seed_starts: np.ndarray  # their slices of seed_items
    seed_items: np.ndarray
    now_ts: int | None
    # Re-rankers of experiment arms that change the policy, fitted state shared with ``reranker``.
    rerankers: dict = field(default_factory=dict)
    # Serving user state from the online store: the model's per-user tables (stripped from ``model``)
    # and the namespace of this version's rows; None when the model holds every user in process.
    user_tables: tuple | None = None
    state_namespace: str | None = None

    def reranker_for(self, config: RerankConfig | None) -> Reranker:
        if config is None:
            return self.reranker
        found = self.rerankers.get(config)
        if found is None:
            # The fitted attributes (ids, genres, release dates) do not depend on the policy: share them.
            found = self.rerankers.setdefault(config, _with_config(self.reranker, config))
        return found


def _with_config(reranker: Reranker, config: RerankConfig) -> Reranker:
    import copy

    clone = copy.copy(reranker)
    clone.config = config
    return clone


def load_snapshot(
    model_dir: Path,
    version: int | None,
    config: RecsysConfig,
    *,
    user_state_in_store: bool = False,
    state_store=None,
) -> _Loaded:
    """Load a registered artifact directory (model + ``catalog/``) into a serving snapshot;
    ``user_state_in_store``: drop the model's per-user tables (:func:`strip_user_state`), requests read
    their users' rows from the online store; ``state_store``: that store, where the version's rows are
    written first if no one wrote them yet (:func:`ensure_user_state`: a promoted version's users are
    never served as cold starts for want of an export)."""
    import json

    from mlsd.recsys.model import TwoStageRecommender

    model = TwoStageRecommender.load(model_dir)
    cat = model_dir / "catalog"
    items = pd.read_parquet(cat / "items.parquet")
    users = pd.read_parquet(cat / "users.parquet")
    seeds = pd.read_parquet(cat / "seeds.parquet") if (cat / "seeds.parquet").exists() else None
    meta = json.loads((cat / "meta.json").read_text()) if (cat / "meta.json").exists() else {}
    users = users.sort_values("user_id")
    unknown_age = config.rules.unknown_age
    if seeds is None or seeds.empty:
        seeds = pd.DataFrame(
            {"user_id": np.zeros(0, np.int64), "item_id": np.zeros(0, np.int64), "timestamp": 0}
        )
    seeds = seeds.sort_values(["user_id", "timestamp"], kind="stable")
    seed_users, seed_starts = np.unique(seeds["user_id"].to_numpy(np.int64), return_index=True)
    if user_state_in_store and state_store is not None:
        ping = getattr(state_store, "ping", None)
        if ping is None or ping():
            ensure_user_state(model, state_store, version)
        else:  # start anyway: requests are served as cold starts, flagged degraded, until it is back
            logger.warning("user state of v%s not checked or written: the store does not answer", version)
    tables = strip_user_state(model) if user_state_in_store else None
    return _Loaded(
        user_tables=tables,
        state_namespace=user_state_namespace(version) if user_state_in_store else None,
        version=version,
        model=model,
        rules=RuleFilter(config.rules).fit(items),
        reranker=Reranker(config.rerank).fit(items),
        # Titles aligned with the re-ranker's sorted item ids: one array lookup per response.
        titles=items.set_index("item_id")["title"].astype(str).sort_index().to_numpy(object),
        user_ids=users["user_id"].to_numpy(np.int64),
        user_region=(
            region_bits(users["region"].to_numpy())
            if "region" in users
            else np.full(len(users), region_bits(config.service.default_region))
        ),
        user_age=(
            pd.to_numeric(users["age"], errors="coerce").fillna(unknown_age).to_numpy(np.int64)
            if "age" in users
            else np.full(len(users), unknown_age)
        ),
        seed_users=seed_users,
        seed_starts=np.r_[seed_starts, len(seeds)].astype(np.int64),
        seed_items=seeds["item_id"].to_numpy(np.int64),
        now_ts=meta.get("now_ts"),
    )


# --- user state in the online store -----------------------------------------------------------------
# Every fitted per-user table of a model (ALS user factors, content profiles, seen titles, the feature
# builder's user tables, ...) is "user state": N serving processes share one copy of it in the online
# store instead of each holding all of it, and each process keeps only the item side (catalogue, FAISS
# index over the item factors, item tables, the ranker). One hash per user at
# ``{prefix}recsys:state:<version>:<user_id>`` with one field, ``state``: the user's rows of every table
# packed into one value (a layout check, then each table's raw row bytes, length-prefixed where a row's
# size varies: sparse rows, keyed values). One packed value instead of a field per table: Redis keeps a
# few hundred bytes of bookkeeping per hash field above 64-byte values.

USER_STATE_NAMESPACE = "recsys:state"
# Per-user state kept as one sorted key array ``user_row * base + value`` rather than one row per user
# (attribute name -> base): stored per user as its values, re-keyed by the batch's rows when bound.
USER_KEYED = {"user_year_key_": 4096}


def user_state_namespace(version: int | None) -> str:
    """The namespace of a model version's user rows: a new champion never reads an older model's rows."""
    return f"{USER_STATE_NAMESPACE}:{'dir' if version is None else f'v{version}'}"


def _n_rows(value: Any) -> int | None:
    shape = getattr(value, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) >= 1 else None


@dataclass(frozen=True)
class _Table:
    """One per-user table of a model: where it lives (``path``: attributes from the model down) and what
    a row looks like (dtype, trailing shape, DataFrame columns, sparse width)."""

    path: tuple[str, ...]
    kind: str  # "dense" | "frame" | "sparse" | "keyed"
    dtype: str
    tail: tuple[int, ...] = ()
    columns: tuple = ()
    width: int = 0
    index_dtype: str = "int32"


def _owners(model) -> list[tuple[tuple[str, ...], Any]]:
    """(path, object) of every fitted object of the model that is indexed by user (has ``users_``):
    the model, its candidate sources (blend members too) and its feature builder."""
    out: list[tuple[tuple[str, ...], Any]] = [((), model)]
    stack = [(("generator_",), model.generator_), (("features_",), model.features_)]
    while stack:
        path, obj = stack.pop()
        out.append((path, obj))
        for name in ("models_", "members_"):
            for key, child in (getattr(obj, name, None) or {}).items():
                if hasattr(child, "users_"):
                    stack.append(((*path, name, key), child))
    return out


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for step in path:
        obj = obj[step] if isinstance(obj, dict) else getattr(obj, step)
    return obj


def user_tables(model) -> tuple[_Table, ...]:
    """The model's per-user tables: every fitted array, sparse matrix or frame of a user-indexed object
    whose first axis is the user axis (``len(users_)`` rows). The model itself contributes only
    ``seen_`` (its other fitted attributes, the ranker and the training reference, are not per user)."""
    import scipy.sparse as sp

    tables = []
    for path, obj in _owners(model):
        n_users = len(obj.users_)
        items = getattr(obj, "items_", None)
        names = ["seen_"] if not path else [k for k in vars(obj) if k.endswith("_") and not k.startswith("_")]
        for name in names:
            value = getattr(obj, name)
            if name in USER_KEYED:
                tables.append(_Table((*path, name), "keyed", value.dtype.str, width=USER_KEYED[name]))
                continue
            if name in ("users_", "items_") or _n_rows(value) != n_users:
                continue
            if items is not None and len(items) == n_users:
                raise InputError("model", n_users, "has as many users as titles: its user tables cannot be "
                                 "told from its title tables", "serve this model from process memory")  # fmt: skip
            where = (*path, name)
            if sp.issparse(value):
                value = value.tocsr()
                tables.append(_Table(where, "sparse", value.dtype.str, width=value.shape[1],
                                     index_dtype=value.indices.dtype.str))  # fmt: skip
            elif isinstance(value, pd.DataFrame):
                tables.append(
                    _Table(where, "frame", str(value.to_numpy().dtype), columns=tuple(value.columns))
                )
            elif isinstance(value, np.ndarray):
                tables.append(_Table(where, "dense", value.dtype.str, tail=tuple(value.shape[1:])))
    return tuple(tables)


def _field(table: _Table) -> str:
    return ".".join(table.path)


STATE_FIELD = "state"


@functools.lru_cache(maxsize=16)  # per model layout: computed once, not per request
def _parts(tables: tuple[_Table, ...]) -> list[tuple[str, int | None]]:
    """The packed value's parts in order: (name, fixed size in bytes, or None: length-prefixed)."""
    out: list[tuple[str, int | None]] = []
    for t in tables:
        name = _field(t)
        if t.kind == "sparse":
            out += [(name + ":i", None), (name + ":v", None)]
        elif t.kind == "keyed":
            out.append((name, None))
        else:
            width = len(t.columns) if t.kind == "frame" else int(np.prod(t.tail, dtype=np.int64))
            out.append((name, np.dtype(t.dtype).itemsize * width))
    return out


@functools.lru_cache(maxsize=16)
def _layout(tables: tuple[_Table, ...]) -> bytes:
    """4 bytes naming the tables' layout: a reader whose model differs refuses the row, never misreads it."""
    import zlib

    return zlib.crc32(repr([tuple(vars(t).values()) for t in tables]).encode()).to_bytes(4, "little")


def _pack(parts: list[tuple[str, int | None]], layout: bytes, row: dict[str, bytes]) -> bytes:
    chunks = [layout]
    for name, size in parts:
        if size is None:
            chunks.append(len(row[name]).to_bytes(4, "little"))
        chunks.append(row[name])
    return b"".join(chunks)


def _unpack(parts: list[tuple[str, int | None]], layout: bytes, blob: bytes) -> dict[str, bytes]:
    if blob[:4] != layout:
        raise InputError("user_state", blob[:4].hex(), "the stored user rows were written for another model "
                         "layout", "export the served version's user state (export_user_state)")  # fmt: skip
    row, pos = {}, 4
    for name, size in parts:
        if size is None:
            size, pos = int.from_bytes(blob[pos : pos + 4], "little"), pos + 4
        row[name], pos = blob[pos : pos + size], pos + size
    return row


def export_user_state(model, store, namespace: str, *, batch: int = 10_000, progress: bool = False) -> dict:
    """Write every user's rows of every per-user table to ``store`` (one row per user holding one packed
    value; ``batch`` users per call). Returns ``{"users", "tables", "bytes_per_user"}`` (payload bytes:
    the packed values, before the store's own per-key overhead)."""
    from tqdm import tqdm

    tables = user_tables(model)
    parts, layout = _parts(tables), _layout(tables)
    ids = model.users_.ids
    values = {}
    for t in tables:
        value = _get(model, t.path)
        values[_field(t)] = value.tocsr() if t.kind == "sparse" else (
            np.ascontiguousarray(value.to_numpy()) if t.kind == "frame" else value)  # fmt: skip
    payload = 0
    bar = tqdm(total=len(ids), desc="user state -> online store", unit="user", file=__import__("sys").stderr,
               disable=not progress)  # fmt: skip
    for start in range(0, len(ids), batch):
        stop = min(start + batch, len(ids))
        rows: dict[str, dict[str, Any]] = {str(u): {} for u in ids[start:stop].tolist()}
        keys = list(rows)
        for t in tables:
            name, value = _field(t), values[_field(t)]
            if t.kind == "sparse":
                block = value[start:stop]
                cuts = block.indptr
                idx, data = block.indices.tobytes(), block.data.tobytes()
                si, sd = block.indices.itemsize, block.data.itemsize
                for j, key in enumerate(keys):
                    rows[key][name + ":i"] = idx[cuts[j] * si : cuts[j + 1] * si]
                    rows[key][name + ":v"] = data[cuts[j] * sd : cuts[j + 1] * sd]
            elif t.kind == "keyed":
                cuts = np.searchsorted(value, np.arange(start, stop + 1, dtype=np.int64) * t.width)
                low = (value[cuts[0] : cuts[-1]] % t.width).astype(np.int32).tobytes()
                cuts = (cuts - cuts[0]) * 4
                for j, key in enumerate(keys):
                    rows[key][name] = low[cuts[j] : cuts[j + 1]]
            else:
                block = np.ascontiguousarray(value[start:stop])
                raw, size = block.tobytes(), block[:1].nbytes
                for j, key in enumerate(keys):
                    rows[key][name] = raw[j * size : (j + 1) * size]
        packed = {key: {STATE_FIELD: _pack(parts, layout, row)} for key, row in rows.items()}
        payload += sum(len(row[STATE_FIELD]) for row in packed.values())
        store.put_many(namespace, packed)
        bar.update(stop - start)
    bar.close()
    return {"users": len(ids), "tables": [_field(t) for t in tables],
            "bytes_per_user": round(payload / max(len(ids), 1), 1)}  # fmt: skip


def prune_user_state(store, keep: set[int]) -> list[int]:
    """Delete the user rows of every exported version not in ``keep`` (found by their ``meta`` markers on
    a Redis store; a store without a client, e.g. memory, has nothing shared to prune): the versions
    deleted, ascending. The daily job keeps the new champion and every version an alias still holds."""
    client = getattr(store, "client", None)
    if client is None:
        return []
    from mlsd.platform.redis_cluster import delete_prefix

    pattern = f"{store.prefix}{USER_STATE_NAMESPACE}:v*:meta*"
    found = set()
    for key in client.scan_iter(match=pattern, count=1000):
        match = re.search(r":v(\d+):meta", key.decode() if isinstance(key, bytes) else key)
        if match:
            found.add(int(match.group(1)))
    pruned = sorted(found - set(keep))
    for version in pruned:  # the marker first: a half-deleted version is never taken for a whole one
        store.delete_many(f"{user_state_namespace(version)}:meta", ["exported"])
        delete_prefix(client, f"{store.prefix}{user_state_namespace(version)}:")
    return pruned


def ensure_user_state(model, store, version: int | None, *, progress: bool = False) -> dict | None:
    """Export ``model``'s per-user tables under ``version``'s namespace unless a marker says it was
    done (``<namespace>:meta`` / ``exported``, written after the last row): the figures of the export,
    or None when it was already there. Two processes racing write the same rows (idempotent)."""
    namespace = user_state_namespace(version)
    meta = f"{namespace}:meta"
    if store.get_many(meta, ["exported"])[0] is not None:
        return None
    done = export_user_state(model, store, namespace, progress=progress)
    store.put_many(meta, {"exported": {"users": int(done["users"])}})
    return done


def user_state_nbytes(model) -> int:
    """Bytes the model's per-user tables take in a process that holds them (arrays, sparse parts, frames)."""
    import scipy.sparse as sp

    total = 0
    for table in user_tables(model):
        value = _get(model, table.path)
        if sp.issparse(value):
            value = value.tocsr()
            total += value.data.nbytes + value.indices.nbytes + value.indptr.nbytes
        elif isinstance(value, pd.DataFrame):
            total += int(value.memory_usage(index=False).sum())
        else:
            total += value.nbytes
    return int(total)


def strip_user_state(model) -> tuple[_Table, ...]:
    """Drop the model's per-user tables from process memory (each becomes an empty table of the same
    kind, every ``users_`` an empty id map): what a process serving from the online store keeps is the
    item side. Returns the tables' descriptions, which :func:`bind_user_state` rebuilds rows with."""
    from mlsd.recsys.data import IdMap

    tables = user_tables(model)
    empty_users = IdMap(np.zeros(0, np.int64))
    for t in tables:
        owner, name = _get(model, t.path[:-1]), t.path[-1]
        setattr(owner, name, _stack(t, []))
    for _path, obj in _owners(model):
        obj.users_ = empty_users
    return tables


@functools.lru_cache(maxsize=64)
def _column_index(columns: tuple) -> pd.Index:
    return pd.Index(list(columns))


def _stack(table: _Table, rows: list[dict[str, Any]]):
    """The table's rows of ``rows`` (one per user, in order) as the table's own type."""
    import scipy.sparse as sp

    name = _field(table)
    if table.kind == "sparse":
        idx = [np.frombuffer(r[name + ":i"], dtype=table.index_dtype) for r in rows]
        data = [np.frombuffer(r[name + ":v"], dtype=table.dtype) for r in rows]
        indptr = np.r_[0, np.cumsum([len(i) for i in idx])].astype(np.int64)
        return sp.csr_matrix(
            (np.concatenate(data) if data else np.zeros(0, table.dtype),
             np.concatenate(idx) if idx else np.zeros(0, table.index_dtype), indptr),
            shape=(len(rows), table.width),
        )  # fmt: skip
    if table.kind == "keyed":
        low = [np.frombuffer(r[name], dtype=np.int32) for r in rows]
        row_of = np.repeat(np.arange(len(rows), dtype=np.int64), [len(v) for v in low])
        values = np.concatenate(low).astype(np.int64) if low else np.zeros(0, np.int64)
        return (row_of * table.width + values).astype(table.dtype)
    dense = np.frombuffer(b"".join(r[name] for r in rows), dtype=table.dtype)
    if table.kind == "frame":
        return pd.DataFrame(
            dense.reshape(len(rows), len(table.columns)), columns=_column_index(table.columns)
        )
    return dense.reshape((len(rows), *table.tail))


def bind_user_state(
    model, tables: tuple[_Table, ...], user_ids: np.ndarray, rows: list[dict[str, Any] | None]
):
    """A shallow copy of a stripped model whose user side is exactly the users of ``user_ids`` that have
    a row (``rows[j]`` is ``user_ids[j]``'s row, None for a user the store does not hold: cold start).
    Item-side state is shared with ``model``, never copied."""
    import copy

    from mlsd.recsys.data import IdMap

    parts, layout = _parts(tables), _layout(tables)
    held = {int(u): _unpack(parts, layout, r[STATE_FIELD]) for u, r in zip(user_ids, rows, strict=True) if r}
    users = IdMap(np.fromiter(held, np.int64, len(held)))
    ordered = [held[int(u)] for u in users.ids]
    clones: dict[tuple[str, ...], Any] = {}

    def clone(obj: Any, path: tuple[str, ...]) -> Any:
        twin = clones[path] = copy.copy(obj)
        twin.users_ = users
        for name in ("models_", "members_"):
            children = getattr(obj, name, None)
            if children:
                setattr(twin, name, {key: clone(child, (*path, name, key)) if hasattr(child, "users_") else child
                                     for key, child in children.items()})  # fmt: skip
        return twin

    bound = clones[()] = copy.copy(model)
    bound.users_ = users
    bound.generator_ = clone(model.generator_, ("generator_",))
    bound.features_ = clone(model.features_, ("features_",))
    for t in tables:
        setattr(clones[t.path[:-1]], t.path[-1], _stack(t, ordered))
    return bound


def _complete(frame: pd.DataFrame, model) -> pd.DataFrame:
    """Give a cold-start frame the columns of the sources that had nothing for it (ALS, EASE): the
    ranker was trained with every source's in_/rank_/score_ columns and needs them, as "absent"."""
    missing = {}
    for name in model.generator_.source_names:
        if f"in_{name}" not in frame.columns:
            missing[f"in_{name}"] = np.zeros(len(frame), dtype=bool)
            missing[f"rank_{name}"] = np.zeros(len(frame), dtype=np.int64)
            missing[f"score_{name}"] = np.full(len(frame), np.nan, dtype=np.float32)
    return frame.assign(**missing) if missing else frame


def _predict(ranker, X: pd.DataFrame) -> np.ndarray:
    """LightGBM scores for one request. One thread on a float32 array: for a few hundred rows,
    OpenMP start-up and the DataFrame conversion cost several times the trees themselves."""
    if list(X.columns) == ranker.feature_names_:  # the usual case: no column-selection copy
        values = X.to_numpy(np.float32)
    else:
        missing = [c for c in ranker.feature_names_ if c not in X.columns]
        if missing:
            raise InputError(
                "features", missing[:5], "the model needs features the request lacks", "retrain it"
            )
        values = X[ranker.feature_names_].to_numpy(np.float32)
    return np.asarray(
        ranker.booster_.predict(values, num_iteration=ranker.best_iteration_, num_threads=1), dtype=np.float64
    )


def limit_threads(n: int) -> None:
    """Cap BLAS, OpenMP and FAISS threads for the process (measured: FAISS flat search over 50K titles
    took ~47 ms with its default threads on a busy 2-core machine; one thread is several times faster)."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(int(n))
    threadpool_limits(int(n))


def _user_id(raw: Any) -> int:
    """A request's user id: 1-18 decimal digits as a string (the HTTP path), or a non-negative int."""
    if isinstance(raw, int | np.integer) and not isinstance(raw, bool) and 0 <= raw < 10**18:
        return int(raw)
    return parse_user_id(raw)


def _is_age(age: Any) -> bool:
    """A usable age (a stored profile may hold anything a client once sent: NaN, a string)."""
    return isinstance(age, int | np.integer) and not isinstance(age, bool) and 0 < age < 130


def _region_bits(region: Any) -> int:
    bits = region_bits(region) if isinstance(region, str) else 0
    if bits == 0:
        raise InputError("region", region, "unknown region", "use one of US, EU, LATAM, APAC, IN")
    return bits


def _pairs_in(
    rows: np.ndarray, items: np.ndarray, pick_rows: np.ndarray, pick_items: np.ndarray
) -> np.ndarray:
    """Which (row, item) pairs are among the picked pairs (one sorted search over 64-bit keys)."""
    keys = np.unique(pick_rows.astype(np.int64) << 32 | pick_items.astype(np.int64))
    return np.isin(rows.astype(np.int64) << 32 | items.astype(np.int64), keys)


@dataclass
class _Requests:
    """A parsed batch of request bodies, as arrays (one row per request)."""

    uids: np.ndarray  # int64
    ks: np.ndarray  # int64
    regions: list  # str | None per request
    ages: list  # int | None per request
    seeds: list  # list[int] | None per request (onboarding picks of a user the platform does not know)
    request_ids: list
    deadline_ms: float

    def __len__(self) -> int:
        return len(self.uids)

    def take(self, rows: np.ndarray) -> _Requests:
        pick = [int(r) for r in rows]
        return _Requests(self.uids[rows], self.ks[rows], [self.regions[r] for r in pick],
                         [self.ages[r] for r in pick], [self.seeds[r] for r in pick],
                         [self.request_ids[r] for r in pick], self.deadline_ms)  # fmt: skip


class RecsysEngine:
    """Serves the champion of ``config.service.model_name`` from ``registry_root`` (hot-reloaded), or a
    fixed artifact directory (``model_dir``, no registry: tests and benchmarks). :meth:`from_dirs`
    builds one from a workdir's champion (an InputError with the fix when there is none).

    ``clock`` (seconds since the epoch) decides "now" for licensing windows; by default it follows
    ``config.service.clock`` ("data": the end of the training data; "wall": ``time.time``).

    ``online_store``: live user profiles (region, age, onboarding picks) written between trainings
    (:meth:`record_profile`); read once per batch. ``experiments``: an
    :class:`~mlsd.platform.experiments.client.ExperimentClient`; its recsys experiments route each
    request (see the module docstring); every alias an arm names is loaded at startup (a missing one is
    an InputError naming the arm). ``feature_sample``: an object with ``add(frame)`` (e.g.
    :class:`mlsd.platform.monitoring.sample.ServingSample`) that receives the ranker features
    (+ ``prediction``) of champion-served requests, the "current" window of drift. ``user_state``: an
    online store holding every user's rows of the model's per-user tables (:func:`export_user_state`
    under :func:`user_state_namespace` of the served version, written before the version is promoted);
    the engine then keeps only the item side in memory and reads a request's users per batch (one
    pipelined read), so N processes share one copy of the user side. A user without a row is served as
    cold start; a store outage serves the batch as cold start and says so (``degraded``).
    """

    def __init__(
        self,
        registry_root: str | Path | None = None,
        *,
        model_dir: str | Path | None = None,
        config: RecsysConfig | None = None,
        clock=None,
        seed: int = 0,
        watch: bool = True,
        online_store=None,
        experiments=None,
        feature_sample=None,
        user_state=None,
    ) -> None:
        self.config = config or RecsysConfig()
        self.user_state = user_state
        self._state_takes_timeout = (
            user_state is not None and "timeout_s" in inspect.signature(user_state.get_many).parameters
        )
        self.config.validate()
        self.registry_root = Path(registry_root) if registry_root else None
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self.exposures = ExposureLog(self.config.service.exposure_log_path)
        b = self.config.budgets
        # Learned stage costs (ms = per candidate x candidates), seeded with the configured guesses per 1,000.
        self._costs = {
            "features": StageCost(per_item_ms=b.initial_features_ms / 1000),
            "ranking": StageCost(per_item_ms=b.initial_ranking_ms / 1000),
            "rerank": StageCost(per_item_ms=b.initial_rerank_ms / 1000),
        }
        self._watcher = None
        self.reloads = 0
        self.store = online_store
        # A store with a serving path takes the request's remaining budget (RedisStore: bounded waits).
        self._store_takes_timeout = (
            online_store is not None and "timeout_s" in inspect.signature(online_store.get_many).parameters
        )
        limit_threads(self.config.service.threads)
        self.experiments = experiments
        self.feature_sample = feature_sample
        self._watchers: list = []
        # Snapshots of the other aliases experiment arms name ("challenger", ...), by alias.
        self._others: dict[str, _Loaded] = {}
        polling = watch and self.config.service.reload_poll_s > 0
        if model_dir is not None:
            self._state = self._load(Path(model_dir), None)
        elif self.registry_root is not None:
            self._state = self._load_champion()
            if polling:
                self._watcher = self._registry().watch(
                    self.config.service.model_name, self.config.service.alias, self._on_promotion,
                    interval_s=self.config.service.reload_poll_s,
                )  # fmt: skip
        else:
            raise InputError("registry", None, "no model source", "pass registry_root or model_dir")
        self._router = ArmRouter(self.experiments, SYSTEM, self._variant_of_arm)
        for alias in sorted(
            {v.alias for arms in self._router.variants_.values() for v in arms} - {self.config.service.alias}
        ):
            self._others[alias] = self._load_alias(alias)
            if self.registry_root is not None and polling:
                self._watchers.append(self._registry().watch(
                    self.config.service.model_name, alias, functools.partial(self._on_alias_move, alias),
                    interval_s=self.config.service.reload_poll_s,
                ))  # fmt: skip

    @classmethod
    def from_dirs(cls, dirs: SystemDir, **options: Any) -> RecsysEngine:
        """The engine over a workdir's champion; no champion is an InputError naming the commands that
        make one (and nothing is created)."""
        config = options.get("config") or RecsysConfig()
        dirs.require_champion(config.service.model_name, alias=config.service.alias)
        return cls(dirs.registry, **options)

    # -- model loading ---------------------------------------------------------------------------------
    def _load(self, path: Path, version: int | None) -> _Loaded:
        return load_snapshot(path, version, self.config, user_state_in_store=self.user_state is not None,
                             state_store=self.user_state)  # fmt: skip

    def _registry(self):
        from mlsd.platform.registry import ModelRegistry

        return ModelRegistry(self.registry_root)

    def _load_champion(self) -> _Loaded:
        reg, svc = self._registry(), self.config.service
        version = reg.current_version(svc.model_name, svc.alias)
        if version is None:
            raise InputError(
                "registry", str(self.registry_root), f"has no {svc.alias} for model {svc.model_name!r}",
                "train one first: mlsd recsys simulate --workdir W && mlsd recsys train --workdir W",
            )  # fmt: skip
        path = reg.artifact_path(svc.model_name, version)  # checksums verified here
        return self._load(path, version)

    def _on_promotion(self, new_version) -> None:
        if new_version is None:
            return
        snapshot = self._load(self._registry().artifact_path(new_version.name, new_version.version),
                              new_version.version)  # fmt: skip
        self._state = snapshot  # one attribute assignment: requests see the old or the new, never a mix
        self.reloads += 1
        logger.info("recsys: now serving %s v%s", new_version.name, new_version.version)

    def _load_alias(self, alias: str, where: str = "experiments") -> _Loaded:
        svc = self.config.service
        if self.registry_root is None:
            raise InputError(where, alias, "an arm names a registry alias but the engine has no registry",
                             "serve from a registry (registry_root) or drop the alias")  # fmt: skip
        reg = self._registry()
        version = reg.current_version(svc.model_name, alias)
        if version is None:
            raise InputError(where, alias, f"the registry has no {alias!r} for model {svc.model_name!r}",
                             "train one (mlsd pipeline run daily) or pick another arm")  # fmt: skip
        return self._load(reg.artifact_path(svc.model_name, version), version)

    def _variant_of_arm(self, name: str, index: int, arm: Any) -> Variant:
        """The Variant an experiment arm runs (validated at startup: a bad knob is an InputError here)."""
        return variant_from_params(
            arm.alias, dict(arm.params), self.config, where=f"experiments.{name}.arms[{index}].params"
        )

    def _on_alias_move(self, alias: str, new_version) -> None:
        if new_version is None:
            return
        self._others[alias] = self._load(
            self._registry().artifact_path(new_version.name, new_version.version), new_version.version
        )
        self.reloads += 1
        logger.info("recsys: %s now %s v%s", alias, new_version.name, new_version.version)

    @property
    def watchers(self) -> list:
        """The registry alias watchers (champion, experiment arms): each has ``check()`` for ``/ready``."""
        return [w for w in [self._watcher, *self._watchers] if w is not None]

    def check_reload(self) -> bool:
        """Poll the registry once (the watcher threads do this every ``reload_poll_s``)."""
        return any([w.poll() for w in self.watchers])

    def close(self) -> None:
        for w in self.watchers:
            w.stop()

    def snapshot(self, alias: str | None = None) -> _Loaded:
        """The serving snapshot of ``alias`` (default: the champion); other aliases only when an
        experiment arm names them."""
        if alias is None or alias == self.config.service.alias:
            return self._state
        found = self._others.get(alias)
        if found is None:
            raise InputError("alias", alias, "not loaded by this engine",
                             f"use one of {[self.config.service.alias, *sorted(self._others)]}")  # fmt: skip
        return found

    @property
    def model_version(self) -> int | None:
        """The champion's registry version (None for an engine over a bare ``model_dir``)."""
        return self._state.version

    def now(self) -> int:
        if self._clock is not None:
            return int(self._clock())
        if self.config.service.clock == "data" and self._state.now_ts is not None:
            return int(self._state.now_ts)
        return int(time.time())

    # -- experiments -------------------------------------------------------------------------------------
    def _combine(self, arm_of: dict[str, int]) -> tuple[Variant, dict[str, str]]:
        """The variant of a user with arm ``arm_of[experiment]`` (-1: outside) in each experiment: a user
        in several recsys experiments (different layers) gets the later experiment's alias and the union
        of the arms' knobs; one outside every experiment gets the champion path."""
        alias, ranker, rerank = self.config.service.alias, "lightgbm", None
        names: dict[str, str] = {}
        for name, idx in arm_of.items():
            v = self._router.variant(name, idx)
            alias = v.alias
            ranker = v.ranker if v.ranker != "lightgbm" else ranker
            rerank = v.rerank if v.rerank is not None else rerank
            names[name] = self._router.arm_name(name, idx)
        return Variant(alias=alias, ranker=ranker, rerank=rerank), names

    # -- live profiles (online store) ------------------------------------------------------------------
    def record_profile(
        self,
        user_id: int | str,
        *,
        region: str | None = None,
        age: int | None = None,
        picks: list[int] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """Store a user's live profile (e.g. a sign-up with onboarding picks) in the online store, so
        the next request personalises a user no trained model has seen."""
        if self.store is None:
            raise InputError("online_store", None, "this engine has no online store", "pass online_store=...")
        uid = _user_id(user_id)
        row: dict[str, Any] = {}
        if region is not None:
            _region_bits(region)
            row["region"] = region
        if age is not None:
            row["age"] = int(age)
        if picks:
            row["picks"] = "|".join(str(int(i)) for i in picks)
        if not row:
            return
        if not self._store_takes_timeout:
            self.store.put_many(USER_NAMESPACE, {str(uid): row}, ttl_s=ttl_s)
            return
        from mlsd.platform.features.online import StoreUnavailable

        try:  # an HTTP request: bounded like the reads, and a clear 503 rather than a slow 500
            self.store.put_many(
                USER_NAMESPACE, {str(uid): row}, ttl_s=ttl_s, timeout_s=PROFILE_WRITE_TIMEOUT_S
            )
        except StoreUnavailable as err:
            raise InputError("online_store", None, f"the profile was not stored: {err}",
                             "retry in a few seconds", status=503) from None  # fmt: skip

    # -- the serving path ----------------------------------------------------------------------------------
    def handle(self, requests: Any) -> list[dict[str, Any]]:
        """Answer a batch of request bodies (``{"user_id": "42", "k": 10}``, see :data:`REQUEST_KEYS`), in
        order: top ``k`` titles per request with scores, sources, reasons, timings and skipped stages.

        ``region``/``age``/``seed_items`` describe a user the platform does not know yet (onboarding
        picks); for known users they override the stored attributes. With experiments, each user's arm
        decides the model and knobs (one sub-batch per variant), the exposures are logged after the
        answers were built, and ``"experiment"`` names ``{experiment: arm}`` (empty outside every one).
        """
        batch = self._parse(requests)
        deadline = Deadline(batch.deadline_ms)
        out: list[dict[str, Any] | None] = [None] * len(batch)
        assignment = self._router.assign(batch.uids)
        for arm_of, rows in assignment.groups():  # one sub-batch per combination of arms
            variant, names = self._combine(arm_of)
            for r, answer in zip(rows, self._serve(batch.take(rows), variant, deadline, served=True),
                                 strict=True):  # fmt: skip
                answer["experiment"] = names
                out[r] = answer
        self._router.expose(assignment, batch.uids)  # only now was the batch really served
        outage = self.experiments.outage() if self.experiments is not None else None
        if outage is not None:  # the exposure log is down: experiments are paused (the default path)
            for answer in out:
                reasons = [r for r in (answer["degraded_reason"], outage) if r]  # type: ignore[index]
                answer.update(degraded=True, degraded_reason="; ".join(reasons))  # type: ignore[union-attr]
        return out  # type: ignore[return-value]

    def preview(
        self, requests: Any, *, alias: str | None = None, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """What each request would get under a given arm (``alias`` + ``params``), on the same path as
        :meth:`handle`, without assignment, exposure logging or metrics: counterfactual evaluation in the
        simulated world, replays, debugging."""
        batch = self._parse(requests)
        variant = variant_from_params(alias, params, self.config)
        self.snapshot(variant.alias)  # an alias the engine did not load is an InputError here
        answers = self._serve(batch, variant, Deadline(batch.deadline_ms), served=False)
        for answer in answers:
            answer["experiment"] = {}
        return answers

    def recommend(self, user_id: int | str, k: int | None = None, **options: Any) -> dict[str, Any]:
        """:meth:`handle` for one request: ``recommend(42, 10, region="EU")`` is ``handle([{"user_id": 42,
        "k": 10, "region": "EU"}])[0]``."""
        body = {"user_id": user_id, **({} if k is None else {"k": k}), **options}
        return self.handle([body])[0]

    def _parse(self, requests: Any) -> _Requests:
        """Validate request bodies into arrays; a bad field is an InputError naming it (``requests[i].k``
        in a batch of several, ``k`` in a batch of one: the HTTP API's message)."""
        if isinstance(requests, dict) or not isinstance(requests, list | tuple):
            raise InputError("requests", type(requests).__name__, "must be a list of request bodies",
                             'pass e.g. [{"user_id": "42", "k": 10}]')  # fmt: skip
        svc = self.config.service
        uids, ks, regions, ages, seeds, ids, budgets = [], [], [], [], [], [], []
        for i, body in enumerate(requests):
            where = "" if len(requests) == 1 else f"requests[{i}]."
            try:
                if not isinstance(body, dict):
                    raise InputError(
                        "", type(body).__name__, "must be a JSON object", '{"user_id": "42", "k": 10}'
                    )
                unknown = sorted(set(body) - set(REQUEST_KEYS))
                if unknown:
                    raise InputError(unknown[0], body[unknown[0]], "unknown request field",
                                     f"use {', '.join(REQUEST_KEYS)}")  # fmt: skip
                if "user_id" not in body:
                    raise InputError("user_id", None, "is required", 'pass e.g. {"user_id": "42"}')
                uids.append(_user_id(body["user_id"]))
                k = body.get("k")
                k = svc.k_default if k is None else k
                if (
                    isinstance(k, bool)
                    or not isinstance(k, int | np.integer)
                    or not svc.k_min <= k <= svc.k_max
                ):
                    raise InputError("k", k, f"must be an integer in {svc.k_min}..{svc.k_max}",
                                     f"ask for e.g. k={svc.k_default}")  # fmt: skip
                ks.append(int(k))
                region = body.get("region")
                if region is not None:
                    _region_bits(region)
                regions.append(region)
                age = body.get("age")
                if age is not None and (isinstance(age, bool) or not isinstance(age, int | np.integer)
                                        or not 0 < age < 130):  # fmt: skip
                    raise InputError(
                        "age", age, "must be between 1 and 129", "pass the viewer's age in years"
                    )
                ages.append(None if age is None else int(age))
                picks = body.get("seed_items")
                if picks is not None:
                    if (
                        isinstance(picks, str | bytes)
                        or len(picks) > 100
                        or not all(
                            isinstance(p, int | np.integer) and not isinstance(p, bool) and 0 <= p < 10**18
                            for p in picks
                        )  # fmt: skip
                    ):
                        raise InputError("seed_items", picks, "must be up to 100 item ids (0..10^18-1)",
                                         "pass e.g. [12, 40, 7]")  # fmt: skip
                    picks = [int(p) for p in picks]
                seeds.append(picks)
                ids.append(str(body.get("request_id") or uuid.uuid4().hex))
                budget = body.get("deadline_ms")
                if budget is not None:
                    if (
                        isinstance(budget, bool)
                        or not isinstance(budget, int | float)
                        or not 0 < budget <= MAX_DEADLINE_MS
                    ):
                        raise InputError(
                            "deadline_ms", budget, f"must be in (0, {MAX_DEADLINE_MS}]", "use e.g. 200"
                        )
                    budgets.append(float(budget))
            except InputError as err:
                raise InputError(f"{where}{err.field}".rstrip("."), err.value, err.problem, err.fix) from None
        return _Requests(
            uids=np.asarray(uids, np.int64), ks=np.asarray(ks, np.int64), regions=regions, ages=ages,
            seeds=seeds, request_ids=ids, deadline_ms=max(budgets) if budgets else self.config.budgets.deadline_ms,
        )  # fmt: skip

    def _user_state_rows(self, state: _Loaded, uids: np.ndarray, deadline: Deadline):
        """The batch's rows of the model's per-user tables from the online store (one pipelined read),
        and the outage text when the store did not answer (every user then served as cold start)."""
        from mlsd.platform.features.online import StoreUnavailable

        keys = [str(int(u)) for u in uids]
        try:
            if self._state_takes_timeout:
                budget = max(deadline.remaining_ms(), 0) / 1000
                return self.user_state.get_many(state.state_namespace, keys, timeout_s=budget), None
            return self.user_state.get_many(state.state_namespace, keys), None
        except StoreUnavailable as err:
            return [None] * len(keys), f"user state not read: {err}; served as cold start"

    def _live_profiles(self, uids: np.ndarray, deadline: Deadline) -> tuple[list[dict[str, Any]], str | None]:
        """Live profiles of the batch's users, and why they are missing when the store failed (None:
        read, or no store). A store with a serving path (:class:`~mlsd.platform.features.online.RedisStore`)
        gets the deadline's remaining budget and waits at most ``min(remaining, its serving timeout)``;
        on an outage the batch is served without live profiles: the request's and the training
        snapshot's region and age, else the defaults (see :data:`UNKNOWN_AGE_POLICY`)."""
        from mlsd.platform.features.online import StoreUnavailable

        empty = [{} for _ in range(len(uids))]
        if self.store is None or len(uids) == 0:
            return empty, None
        keys = [str(int(u)) for u in uids]
        try:
            if self._store_takes_timeout:
                rows = self.store.get_many(
                    USER_NAMESPACE, keys, timeout_s=max(deadline.remaining_ms(), 0) / 1000
                )
            else:
                rows = self.store.get_many(USER_NAMESPACE, keys)
        except StoreUnavailable as err:
            return empty, f"live profiles not read: {err}; served from the model with region/age from the " \
                          "request or the training data, else the defaults"  # fmt: skip
        return [row or {} for row in rows], None

    def _users(self, state: _Loaded, batch: _Requests, live: list[dict[str, Any]]):
        """Region bits, age and the policy text per request: the request's own, else the live profile's,
        else the snapshot's user attributes, else the defaults (vectorised over the batch)."""
        pos = np.minimum(np.searchsorted(state.user_ids, batch.uids), max(len(state.user_ids) - 1, 0))
        known = state.user_ids[pos] == batch.uids if len(state.user_ids) else np.zeros(len(batch), bool)
        bits = np.where(known, state.user_region[pos] if len(state.user_ids) else 0,
                        region_bits(self.config.service.default_region)).astype(np.int64)  # fmt: skip
        unknown_age = self.config.rules.unknown_age
        ages = np.where(known, state.user_age[pos] if len(state.user_ids) else 0, unknown_age).astype(
            np.int64
        )
        # The snapshot stores unknown ages as unknown_age too: a known user without an age is unknown.
        age_from = np.where(known & (ages != unknown_age), "training data", "").astype(object)
        region_from = np.where(known, "training data", "").astype(object)
        for j in range(len(batch)):
            region, source = (batch.regions[j], "request") if batch.regions[j] is not None else (
                live[j].get("region"), "profile")  # fmt: skip
            if region is not None:
                bits[j], region_from[j] = _region_bits(region), source
            age, source = (
                (batch.ages[j], "request") if batch.ages[j] is not None else (live[j].get("age"), "profile")
            )
            if _is_age(age):
                ages[j], age_from[j] = int(age), source
        policies = [self._policy(int(ages[j]), age_from[j], region_from[j]) for j in range(len(batch))]
        return bits, ages, policies

    def _policy(self, age: int, age_from: str, region_from: str) -> str:
        """The policy line of an answer: where its age and region came from (see UNKNOWN_AGE_POLICY)."""
        text = f"age {age} from the {age_from}" if age_from else UNKNOWN_AGE_POLICY.format(age=age)
        if not region_from:
            return f"{text}; unknown region: {self.config.service.default_region} (the service default)"
        return text

    def _seeds(self, state: _Loaded, batch: _Requests, live: list[dict[str, Any]], cold: np.ndarray):
        """Seed titles of the users the model has no history for: the request's picks, the live
        profile's picks, then the titles the snapshot stored for them (None: no cold user)."""
        if not cold.any():
            return None
        out: list[list[int]] = []
        for j, uid in enumerate(batch.uids):
            if not cold[j]:
                out.append([])
                continue
            given = list(batch.seeds[j] or [])
            if live[j].get("picks"):
                given += [int(i) for i in str(live[j]["picks"]).split("|")]
            p = np.searchsorted(state.seed_users, uid)
            if p < len(state.seed_users) and state.seed_users[p] == uid:
                given += state.seed_items[state.seed_starts[p] : state.seed_starts[p + 1]].tolist()
            out.append(given)
        return out

    def _serve(
        self, batch: _Requests, variant: Variant, deadline: Deadline, *, served: bool
    ) -> list[dict[str, Any]]:
        """THE serving path: one variant, a batch of requests (a single request is a batch of one)."""
        from mlsd.recsys.model import fallback_scores

        started = time.perf_counter()
        state = self.snapshot(variant.alias)  # one snapshot for the whole batch (hot reload safe)
        model = state.model
        n_req = len(batch)
        live, store_outage = self._live_profiles(batch.uids, deadline)
        timer = StageTimer(SYSTEM)
        if state.user_tables is not None:  # the user side lives in the online store
            with timer.stage("user_state"):
                rows, state_outage = self._user_state_rows(state, batch.uids, deadline)
                model = bind_user_state(model, state.user_tables, batch.uids, rows)
            if state_outage is not None:
                store_outage = state_outage if store_outage is None else f"{store_outage}; {state_outage}"
        bits, ages, policies = self._users(state, batch, live)
        cold = model.users_.index(batch.uids) < 0
        seeds = self._seeds(state, batch, live, cold)
        now = self.now()
        safety = self.config.budgets.safety
        costs = self._costs

        with timer.stage("candidates"):
            frame = _complete(model.candidates(batch.uids, seed_items=seeds), model)
        with timer.stage("rules"):
            row = frame["batch_row"].to_numpy(np.int64)
            item_ids = frame["item_id"].to_numpy(np.int64)
            known, failed = state.rules.failures(item_ids, now=now, user_region=bits[row], user_age=ages[row])
            ok = known.copy()
            for mask in failed.values():
                ok &= ~mask
            # How many candidates each rule removed, per request (a title may fail several rules).
            filtered = {rule: np.bincount(row[mask], minlength=n_req) for rule, mask in failed.items()}
            if seeds is not None and any(seeds):  # titles a new user picked already are not news
                pick_rows = np.repeat(np.arange(n_req), [len(s) for s in seeds])
                pick_items = np.concatenate([np.asarray(s, np.int64) for s in seeds])
                ok &= ~_pairs_in(row, item_ids, pick_rows, pick_items)
            if not ok.all():
                frame = frame[ok]
            if not np.all(np.diff(frame["batch_row"].to_numpy()) >= 0):
                frame = frame.iloc[np.argsort(frame["batch_row"].to_numpy(), kind="stable")]
            frame = frame.reset_index(drop=True)
        n = len(frame)
        row = frame["batch_row"].to_numpy(np.int64)
        cold_row = cold[row]
        warm = ~cold_row
        n_warm = int(warm.sum())
        scores = np.zeros(n)
        # The model's own scoring path for users without history (TwoStageRecommender.score): candidate
        # order with the trending/new weights, as in offline evaluation; the ranker never trained on
        # history-less rows. No features are needed, so none are computed.
        if cold_row.any():
            scores[cold_row] = fallback_scores(frame[cold_row])
        warm_by = "ranker"
        warm_rows = frame[warm] if n_warm < n else frame  # no copy in the usual all-warm batch
        expected = costs["features"].expect(n_warm) + costs["ranking"].expect(n_warm)
        if n_warm and variant.ranker == "none":
            # The arm without a ranker: candidate order, no features, no LightGBM (documented knob).
            scores[warm], warm_by = fallback_scores(warm_rows), "candidate_order"
        elif n_warm and deadline.allows(expected * safety):
            with timer.stage("features"):
                X = model.rank_features(warm_rows)
            costs["features"].observe(timer.timings_ms["features"], n_warm)
            if deadline.allows(costs["ranking"].expect(n_warm) * safety):
                with timer.stage("ranking"):
                    ranked = _predict(model.ranker_, X)
                costs["ranking"].observe(timer.timings_ms["ranking"], n_warm)
                scores[warm] = ranked
                if served:
                    self._observe(variant, model, X, ranked)
            else:
                timer.skip("ranking", f"expected {costs['ranking'].expect(n_warm):.1f} ms, "
                           f"{deadline.remaining_ms():.1f} ms left")  # fmt: skip
                costs["ranking"].skipped()
                scores[warm], warm_by = fallback_scores(warm_rows), "candidate_order"
        elif n_warm:
            for stage in ("features", "ranking"):
                timer.skip(
                    stage, f"expected {expected:.1f} ms for both, {deadline.remaining_ms():.1f} ms left"
                )
                costs[stage].skipped()
            scores[warm], warm_by = fallback_scores(warm_rows), "candidate_order"

        # Re-ranking and the answers: per request, over its slice of the batch's sorted frame.
        starts = np.searchsorted(row, np.arange(n_req + 1))
        frame_items = frame["item_id"].to_numpy(np.int64)
        rerank = bool(n) and deadline.allows(costs["rerank"].expect(n) * safety)
        if n and not rerank:
            timer.skip("rerank", f"{deadline.remaining_ms():.1f} ms left")
            costs["rerank"].skipped()
        shared = {stage: ms / max(n_req, 1) for stage, ms in timer.timings_ms.items()}
        shared_ms = (time.perf_counter() - started) * 1000.0 / max(n_req, 1)
        reranker = state.reranker_for(variant.rerank)
        out: list[dict[str, Any]] = []
        rerank_ms = 0.0
        for j in range(n_req):
            t0 = time.perf_counter()
            a, b = starts[j], starts[j + 1]
            uid, k = int(batch.uids[j]), int(batch.ks[j])
            user_timer = StageTimer(SYSTEM)
            user_timer.timings_ms.update(shared)
            user_timer.skipped = list(timer.skipped)
            if b > a and rerank:  # the request's own stage (timed and observed per request)
                with user_timer.stage("rerank"), self._rng_lock:
                    result = reranker.rerank(frame_items[a:b], scores[a:b], k, now=now, rng=self._rng)
                shown, shown_scores, propensity, explored = (
                    result.item_ids, result.scores, result.propensity, result.explored,
                )  # fmt: skip
                rerank_ms += user_timer.timings_ms["rerank"]
            else:
                top = a + np.argsort(-scores[a:b], kind="stable")[:k]
                shown, shown_scores = frame_items[top], scores[top]
                propensity, explored = np.ones(len(top)), np.zeros(len(top), dtype=bool)
            if served:
                self.exposures.log(batch.request_ids[j], str(uid), shown, propensity, explored, now)
            answer = self._response(state, frame.iloc[a:b], uid, k, shown, shown_scores, propensity, explored,
                                    bool(cold[j]), now, batch.request_ids[j], user_timer, deadline)  # fmt: skip
            answer["total_ms"] = round(shared_ms + (time.perf_counter() - t0) * 1000.0, 3)
            answer["scored_by"] = "none" if b == a else ("cold_start_fallback" if cold[j] else warm_by)
            answer["model_alias"] = variant.alias
            answer["filtered"] = {rule: int(counts[j]) for rule, counts in filtered.items()}
            answer["policy"] = policies[j]
            answer["degraded"] = store_outage is not None
            answer["degraded_reason"] = store_outage
            out.append(answer)
        if rerank:
            costs["rerank"].observe(rerank_ms, n)
        return out

    def _observe(self, variant: Variant, model, X: pd.DataFrame, scores: np.ndarray) -> None:
        """Ranker scores of every scored candidate into the score histogram of the arm's alias (a binary
        ranker's scores are probabilities: ``mlsd_score``; a lambdarank margin is unbounded:
        ``mlsd_rank_score``); champion-served feature rows into the drift sample (when kept)."""
        from mlsd.platform.monitoring.metrics import observe_scores

        bounded = getattr(model.ranker_, "objective", "binary") == "binary"
        observe_scores(SYSTEM, scores, model=variant.alias, bounded=bounded)
        if self.feature_sample is not None and variant.alias == self.config.service.alias:
            self.feature_sample.add(X.assign(prediction=scores))

    def _response(
        self,
        state,
        frame,
        uid,
        k,
        shown,
        scores,
        propensity,
        explored,
        cold,
        now,
        request_id,
        timer,
        deadline,
    ):
        names = [c[3:] for c in frame.columns if c.startswith("in_")]
        # Rows of the shown titles: a sorted search over the (unique) candidate ids, then only those
        # rows' source flags (a hash index and a 1,000-row column selection cost more than the rest).
        ids = frame["item_id"].to_numpy()
        order = np.argsort(ids, kind="stable")
        row_of = order[np.searchsorted(ids, shown, sorter=order)] if len(shown) else np.zeros(0, np.int64)
        flags = (
            np.column_stack([frame[f"in_{s}"].to_numpy(bool)[row_of] for s in names])
            if names
            else np.zeros((len(shown), 0), bool)
        )
        release = state.reranker.release_ts_[state.reranker._positions(shown)] if len(shown) else np.zeros(0)
        fresh = (now - release >= 0) & (now - release < 30 * DAY_S)
        titles = state.titles[state.reranker._positions(shown)] if len(shown) else []
        items = []
        for pos in range(len(shown)):  # k <= 500 response rows: building the JSON is per item anyway
            sources = [s for s, f in zip(names, flags[pos], strict=True) if f]
            reasons = [REASONS.get(s) or f"recommended by the {s} model" for s in sources]
            if fresh[pos]:
                reasons.append("released in the last 30 days")
            if explored[pos]:
                reasons.append("something different for you (exploration)")
            items.append(
                {
                    "item_id": int(shown[pos]),
                    "title": titles[pos],
                    "score": round(float(scores[pos]), 6),
                    "sources": sources,
                    "reasons": reasons,
                    "propensity": float(propensity[pos]),  # exact: off-policy estimates divide by it
                    "explored": bool(explored[pos]),
                }
            )
        out = timer.to_dict()
        return {
            "user_id": str(uid),
            "request_id": request_id,
            "model_version": state.version,
            "cold_start": cold,
            "k": k,
            "n_candidates": int(len(frame)),
            "items": items,
            "timings_ms": out["timings_ms"],
            "skipped": out["skipped"],
            "deadline_ms": deadline.budget_ms,
            "total_ms": round(deadline.elapsed_ms(), 3),
            "now": now,
        }
