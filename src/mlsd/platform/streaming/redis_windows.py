"""Window state on a real Redis: per key one hash holding the key's events, their ids and labels.

A micro-batch is **one** Lua script call per store (``batched=True``, the default): atomic -
concurrent workers never interleave half a batch - and idempotent (an id already stored is skipped:
at-least-once delivery counts nothing twice). The client groups the batch by key (numpy), so the
script visits each key once, with two commands: one ``HMGET`` (the key's state, its members and
whether each id is stored) and one ``HSET`` (new members, state). Each key's members come back
once per batch, as one string, however many of the batch's events share the key; the script
returns per key the state before the batch and per event only whether it was stored, and the
client derives each event's view from these with numpy: the cells with ``ts > cut`` and ``seq <=
bound``, where ``cut = max(t, the key's latest time then) - horizon`` (what had been trimmed by then)
and ``bound`` = the key's last sequence number then - exactly what the event saw when applied in
arrival order, as with the per-event script (see :class:`~mlsd.platform.streaming.windows.WindowView`).
The cells feed the same window maths as the in-process store, so both backends give identical
features. :meth:`RedisWindowStore.update_many_begin` sends a batch without waiting for the reply, so
a caller with several stores (the feature engine) parses one reply while Redis applies the next.

Why this shape: profiled, the cost of the earlier path (one script per event, members in a sorted
set) was on the Redis side - per event ~20-30 us of Lua overhead and one reply element per member
converted into Lua - not in the round trips. ``batched=False`` keeps a per-event script on the same
layout as the reference the batched path is tested against (same state, same views).

Layout: ``<prefix><key>:h`` HASH with ``__blob`` = the key's live members ``ts,seq,value,attr...#id``
one a line (arrival order; ids must not contain line breaks), ``__min`` (lowest ts in it: trimming
parses the blob only when something has left the horizon), ``e:<id>`` = the member (``x`` once
reverted: replays stay ignored), ``l:<seq>`` = label time and ``__labs`` (the same as
``seq,label_ts`` lines), ``__seq`` (next sequence number), ``__max`` (latest ts), ``__lab`` (some
label set). ``<prefix><key>:z`` is the earlier layout's sorted set: a key still holding one is moved
into the blob on first touch. Every key a script touches is passed in ``KEYS``.

Redis Cluster (a ``redis+cluster://`` URL, :mod:`mlsd.platform.redis_cluster`): the keys are
``<prefix>{<key>}:h`` and ``:z`` - the entity is the hash tag, so a key's two Redis keys share a slot
and move together when the cluster is resharded. A script may touch one slot only, so a micro-batch
is split by slot: one call per slot (each atomic and idempotent as above; the batch as a whole is
not atomic across slots), all sent at once, one write per node. A call refused before it ran
(NOSCRIPT after a restart or failover, MOVED / ASK while a slot moves) is sent again through the
cluster client, which follows the redirect. A single Redis keeps the untagged layout and one call
per batch (``hash_tags=True`` forces the tagged layout there).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from mlsd.platform.errors import InputError
from mlsd.platform.streaming.windows import (
    NOT_STORED,
    PAD_TS,
    UNKNOWN,
    WindowView,
    _check_batch,
    _group_cummax,
    _Scalar,
)

_ID_TAIL = re.compile(rb"#[^\n]*\n")  # a member's '#id' tail and its line break
_SEQ_BITS = 40  # (key index, sequence number) packed in one int64 to match labels to cells

# Shared by the scripts: a key's members live in one string (``__blob``, one member a line, arrival
# order), so reading a window is one field, not one reply element per member; ``__min`` is the lowest
# time in it, so trimming parses the blob only when something has left the horizon.
_BLOB_LUA = r"""
local function blob_min(blob)
  local lo = nil
  for line in string.gmatch(blob, '([^\n]*)\n') do
    local t = tonumber(string.match(line, '^[^,]*'))
    if (not lo) or t < lo then lo = t end
  end
  return lo
end
local function fmt_min(lo) if lo then return string.format('%d', lo) end return '' end
local function load_blob(z, h, blob, seq)
  -- a key written by the earlier sorted-set layout (state, no blob): move its members over once
  if blob then return blob end
  if not seq then return '' end
  local members = redis.call('ZRANGE', z, 0, -1)
  if #members == 0 then return '' end
  redis.call('DEL', z)
  return table.concat(members, '\n') .. '\n'
end
local function trim(h, blob, labs, cutoff)
  -- drop the members at or below cutoff (and their ids, labels); returns blob, labs, min
  local keep, dead, dseqs, lo = {}, {}, {}, nil
  for line in string.gmatch(blob, '([^\n]*)\n') do
    local t = tonumber(string.match(line, '^[^,]*'))
    if t <= cutoff then
      local dseq = string.match(line, '^[^,]*,([^,]*)')
      dead[#dead + 1] = 'e:' .. string.sub(line, string.find(line, '#', 1, true) + 1)
      dead[#dead + 1] = 'l:' .. dseq
      dseqs[dseq] = true
    else
      keep[#keep + 1] = line .. '\n'
      if (not lo) or t < lo then lo = t end
    end
  end
  if #dead > 0 then
    for s = 1, #dead, 1000 do redis.call('HDEL', h, unpack(dead, s, math.min(s + 999, #dead))) end
    if labs ~= '' then
      local kept = {}
      for line in string.gmatch(labs, '[^\n]+') do
        if not dseqs[string.match(line, '^[^,]*')] then kept[#kept + 1] = line .. '\n' end
      end
      labs = table.concat(kept)
    end
  end
  return table.concat(keep), labs, lo, dead
end
"""

# KEYS: z1, h1, z2, h2, ... one pair per distinct key. The events come grouped by key (arrival order
# within a key). ARGV: horizon, mode ('1' store, '0' view only; see below), per-key event counts
# 'c1,c2,...', the events' times 'ts,ts,...', their payloads 'value,attr...' each followed by a line
# break, their ids likewise. Returns, as one string after a line of the parts' lengths: per key
# 'seq,latest' before the batch, per event (mode 1) -1 stored / -2 not stored / the original's sequence
# number for a replay, per key member counts, the keys' blobs one after the other, label lines
# 'k,seq,label_ts': the client derives each event's view from these.
_APPEND_BATCH = (
    _BLOB_LUA
    + r"""
local horizon = tonumber(ARGV[1])
-- mode 'write:retain:idle_ttl:key_offset': store or view only, cells kept past the horizon, an idle
-- key's expiry, and the index of this call's first key in the client's batch (a cluster splits a batch
-- into one call per slot; label lines carry batch-wide key numbers)
local mode = {}
for x in string.gmatch(ARGV[2] .. ':', '([^:]*):') do mode[#mode + 1] = x end
local write = mode[1] == '1'
local retain = tonumber(mode[2] or '') or 0
local idle_ttl = tonumber(mode[3] or '') or 0
local key_offset = tonumber(mode[4] or '') or 0
local counts, tss, pays, ids = {}, {}, {}, {}
for c in string.gmatch(ARGV[3], '[^,]+') do counts[#counts + 1] = tonumber(c) end
for x in string.gmatch(ARGV[4], '[^,]+') do tss[#tss + 1] = x end
if write then
  for x in string.gmatch(ARGV[5], '([^\n]*)\n') do pays[#pays + 1] = x end
  for x in string.gmatch(ARGV[6], '([^\n]*)\n') do ids[#ids + 1] = x end
end
local CHUNK = 1000
local NHEAD = 6
local function seq_of(member) return string.match(member, '^[^,]*,([^,]*)') end
local function hmget(h, fields)
  if #fields <= CHUNK then return redis.call('HMGET', h, unpack(fields)) end
  local out = {}
  for s = 1, #fields, CHUNK do
    local r = redis.call('HMGET', h, unpack(fields, s, math.min(s + CHUNK - 1, #fields)))
    for i = 1, #r do out[#out + 1] = r[i] end
  end
  return out
end
local function send(cmd, key, args)
  for s = 1, #args, CHUNK do
    redis.call(cmd, key, unpack(args, s, math.min(s + CHUNK - 1, #args)))
  end
end
local heads, info, kcounts, cells, labels = {}, {}, {}, {}, {}
local e = 0
for k = 1, #counts do
  local z, h, a, b = KEYS[2 * k - 1], KEYS[2 * k], e + 1, e + counts[k]
  e = b
  -- the key's state, its members and whether each id is stored already: one read
  local fields = {'__seq', '__max', '__lab', '__blob', '__labs', '__min'}
  if write then
    for i = a, b do fields[NHEAD + i - a + 1] = 'e:' .. ids[i] end
  end
  local got = hmget(h, fields)
  local seq = tonumber(got[1]) or 0
  local maxts = tonumber(got[2] or '')
  heads[k] = seq .. ',' .. (got[2] or '-2305843009213693952')
  local maxstr = nil
  local blob = load_blob(z, h, got[4] or nil, got[1] or nil)
  local labs = got[5] or ''
  local lo = tonumber(got[6] or '')
  if (not got[4]) and blob ~= '' then lo = blob_min(blob) end
  local fresh, fresh_ts, hargs, added = {}, {}, {}, {}
  if write then
    for i = a, b do
      local tstr, id = tss[i], ids[i]
      local t = tonumber(tstr)
      local stored = got[NHEAD + i - a + 1]
      local code = -2
      if fresh[id] then
        -- stored earlier in this batch; gone if a later event of the batch has trimmed it since
        if fresh_ts[id] > maxts - horizon then code = fresh[id] end
      elseif stored then
        if stored ~= 'x' and tonumber(string.match(stored, '^[^,]*')) > maxts - horizon then
          code = seq_of(stored)
        end
      elseif (not maxts) or t > maxts - horizon then
        code = -1
        fresh[id] = seq
        fresh_ts[id] = t
        local member = tstr .. ',' .. seq .. ',' .. pays[i] .. '#' .. id
        seq = seq + 1
        hargs[#hargs + 1] = fields[NHEAD + i - a + 1]
        hargs[#hargs + 1] = member
        added[#added + 1] = member
        if (not lo) or t < lo then lo = t end
        if (not maxts) or t > maxts then
          maxts = t
          maxstr = tstr
        end
      end
      info[i] = code
    end
  end
  if #added > 0 then blob = blob .. table.concat(added, '\n') .. '\n' end
  -- the key's members as the batch saw them (before trimming: an earlier event may still see what a
  -- later one trims) go back as one string; the client filters each event's cells
  cells[k] = blob
  local _, lines = string.gsub(blob, '\n', '')
  kcounts[k] = lines
  if labs ~= '' then
    labels[#labels + 1] = string.gsub(labs, '([^\n]+)\n', (k + key_offset) .. ',%1\n')
  end
  if #added > 0 then
    if lo and lo <= maxts - horizon - retain then  -- something left the horizon: trim once, at the end
      local dead
      blob, labs, lo, dead = trim(h, blob, labs, maxts - horizon - retain)
      -- events of this batch that a later one trimmed are not written at all
      local gone, kept = {}, {}
      for j = 1, #dead, 2 do gone[dead[j]] = true end
      for j = 1, #hargs, 2 do
        if not gone[hargs[j]] then
          kept[#kept + 1] = hargs[j]
          kept[#kept + 1] = hargs[j + 1]
        end
      end
      hargs = kept
      hargs[#hargs + 1] = '__labs'
      hargs[#hargs + 1] = labs
    end
    hargs[#hargs + 1] = '__seq'
    hargs[#hargs + 1] = seq
    hargs[#hargs + 1] = '__blob'
    hargs[#hargs + 1] = blob
    hargs[#hargs + 1] = '__min'
    hargs[#hargs + 1] = fmt_min(lo)
    if maxstr then
      hargs[#hargs + 1] = '__max'
      hargs[#hargs + 1] = maxstr
    end
    send('HSET', h, hargs)
    if idle_ttl > 0 then redis.call('EXPIRE', h, idle_ttl) end
  end
end
-- one string, the five parts' lengths first: a client reads one bulk reply per call, not five
local parts = {table.concat(heads, ';'), table.concat(info, ','), table.concat(kcounts, ','),
               table.concat(cells), table.concat(labels)}
return #parts[1] .. ',' .. #parts[2] .. ',' .. #parts[3] .. ',' .. #parts[4] .. ',' .. #parts[5] .. '\n'
       .. table.concat(parts)
"""
)

# The per-event script (``batched=False``): one call per event, the reference for the batched one.
_APPEND = (
    _BLOB_LUA
    + r"""
local z, h = KEYS[1], KEYS[2]
local id = ARGV[1]
local ts = tonumber(ARGV[2])
local horizon = tonumber(ARGV[4])
local retain = tonumber(ARGV[6] or '0')
local idle_ttl = tonumber(ARGV[7] or '0')
local inserted = 0
local own = ''
local st = redis.call('HMGET', h, '__seq', '__max', '__blob', '__min', '__lab', '__labs')
local blob = load_blob(z, h, st[3] or nil, st[1] or nil)
if (not st[3]) and blob ~= '' then
  redis.call('HSET', h, '__blob', blob, '__min', fmt_min(blob_min(blob)))
end
if ARGV[5] == '1' then
  local stored = redis.call('HGET', h, 'e:' .. id)
  if stored then
    if stored ~= 'x' then own = string.match(stored, '^[^,]*,([^,]*)') end
  else
    local maxts = tonumber(st[2] or '')
    if (not maxts) or ts > maxts - horizon then
      local seq = redis.call('HINCRBY', h, '__seq', 1) - 1
      own = tostring(seq)
      local member = ARGV[2] .. ',' .. seq .. ',' .. ARGV[3] .. '#' .. id
      blob = blob .. member .. '\n'
      local lo = tonumber(redis.call('HGET', h, '__min') or '')
      if (not lo) or ts < lo then lo = ts end
      redis.call('HSET', h, 'e:' .. id, member)
      inserted = 1
      if (not maxts) or ts > maxts then
        maxts = ts
        redis.call('HSET', h, '__max', ARGV[2])
      end
      if lo <= maxts - horizon - retain then
        local labs
        blob, labs, lo = trim(h, blob, st[6] or '', maxts - horizon - retain)
        redis.call('HSET', h, '__labs', labs)
      end
      redis.call('HSET', h, '__blob', blob, '__min', fmt_min(lo))
      if idle_ttl > 0 then redis.call('EXPIRE', h, idle_ttl) end
    end
  end
end
-- the key's events in (max(t, latest) - horizon, +inf) as one flat 'ts,seq,value,attr...,label'
-- string (the cells kept past the horizon for replays are not shown)
local labelled = redis.call('HEXISTS', h, '__lab') == 1
local floor = ts - horizon
local latest = tonumber(redis.call('HGET', h, '__max') or '')
if latest and latest - horizon > floor then floor = latest - horizon end
local parts = {}
for line in string.gmatch(blob, '([^\n]*)\n') do
  if tonumber(string.match(line, '^[^,]*')) > floor then
    local body = string.sub(line, 1, string.find(line, '#', 1, true) - 1)
    local label = 'nan'  -- no label (any number may be a label time, negative ones too)
    if labelled then
      label = redis.call('HGET', h, 'l:' .. string.match(body, '^[^,]*,([^,]*)')) or 'nan'
    end
    parts[#parts + 1] = body .. ',' .. label
  end
end
return {inserted, own, #parts, table.concat(parts, ',')}
"""
)

_LABEL = r"""
local e = redis.call('HGET', KEYS[1], 'e:' .. ARGV[1])
if (not e) or e == 'x' then return 0 end
local seq = string.match(e, '^[^,]*,([^,]*)')
local old = tonumber(redis.call('HGET', KEYS[1], 'l:' .. seq) or '')
if (not old) or tonumber(ARGV[2]) < old then
  redis.call('HSET', KEYS[1], 'l:' .. seq, ARGV[2])
  -- the batched path reads a key's labels as one list of 'seq,label_ts' lines (the last one wins)
  local labs = redis.call('HGET', KEYS[1], '__labs') or ''
  redis.call('HSET', KEYS[1], '__labs', labs .. seq .. ',' .. ARGV[2] .. '\n')
end
redis.call('HSET', KEYS[1], '__lab', 1)
return 1
"""

_REVERT = (
    _BLOB_LUA
    + r"""
local e = redis.call('HGET', KEYS[2], 'e:' .. ARGV[1])
if (not e) or e == 'x' then return 0 end
redis.call('HSET', KEYS[2], 'e:' .. ARGV[1], 'x')
redis.call('ZREM', KEYS[1], e)  -- a key still in the earlier sorted-set layout
local blob = redis.call('HGET', KEYS[2], '__blob')
if blob then
  local s = '\n' .. blob
  local a, b = string.find(s, '\n' .. e .. '\n', 1, true)
  if a then blob = string.sub(s, 2, a) .. string.sub(s, b + 1) end
  redis.call('HSET', KEYS[2], '__blob', blob, '__min', fmt_min(blob_min(blob)))
end
return 1
"""
)


class RedisWindowStore(_Scalar):
    """:class:`~mlsd.platform.streaming.windows.WindowStore` on Redis (see the module docstring).

    ``batched=True`` sends a micro-batch as one Lua call (the default); ``False`` as one call per
    event in a pipeline (the earlier path, kept as the reference). Both give the same state and views.
    """

    def __init__(
        self,
        horizon_s: int,
        n_attrs: int = 0,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "mlsd:win:",
        client: Any = None,
        batched: bool = True,
        retain_s: int = 0,
        idle_ttl_s: int = 0,
        hash_tags: bool | None = None,
    ) -> None:
        from mlsd.platform.redis_cluster import check_untagged, connect, is_cluster

        self.horizon_s = int(horizon_s)
        # cells stay this long past the horizon (no view shows them): an event applied once before a
        # crash and replayed after later events of its batch still finds every cell it saw
        self.retain_s = int(retain_s)
        # bounded state: a key no event has touched for idle_ttl_s (wall clock, Redis EXPIRE) is
        # dropped, as the in-memory store evicts keys idle past the longest window; 0 = never
        self.idle_ttl_s = int(idle_ttl_s)
        self.n_attrs = int(n_attrs)
        self.batched = bool(batched)
        self.client = client if client is not None else connect(url)
        self.cluster = is_cluster(self.client)
        # on a cluster a key's two Redis keys must share a slot: the entity is their hash tag
        self.hash_tags = self.cluster if hash_tags is None else bool(hash_tags)
        self.prefix = check_untagged("prefix", prefix) if self.hash_tags else prefix
        self._batch_sha = self.client.script_load(_APPEND_BATCH) if self.batched else ""
        self._stale_slots = False  # the batched path's raw node connections need a fresh slot map

    def _keys(self, key: Any) -> list[str]:
        if self.hash_tags:
            return [f"{self.prefix}{{{key}}}:z", f"{self.prefix}{{{key}}}:h"]
        return [f"{self.prefix}{key}:z", f"{self.prefix}{key}:h"]

    def _begin_batch(self, keys: list, ids: list[str] | None, ts: np.ndarray, values, attrs):
        """Send the batch's script call now; the returned function reads the reply into a WindowView.

        The call goes out on a connection of its own, so a caller can send every store's batch first
        and parse one reply while Redis still works on the next (the feature engine does).
        ``ids is None`` = views only (nothing stored). On a cluster the batch's keys are ordered by
        slot and each slot gets its own call (a script may touch one slot only), sent to its node.
        """
        codes, uniques = pd.factorize(np.asarray(keys, dtype=object), use_na_sentinel=False)
        codes = codes.astype(np.int64, copy=False)
        uniques = uniques.tolist()
        bounds = [0, len(uniques)]  # key ranges, one script call each
        if self.cluster:
            codes, uniques, bounds = self._by_slot(codes, uniques)
        order = np.argsort(codes, kind="stable")  # grouped by key, arrival order within a key
        counts = np.bincount(codes, minlength=len(uniques))
        first_event = np.r_[0, np.cumsum(counts)]
        # the batch's per-key and per-event arguments are built once, for the whole batch, and each
        # call (one per slot on a cluster) gets its byte range of them: no per-call string building
        count_parts = _Parts(",".join(map(str, counts.tolist())), b",")
        ts_parts = _Parts(",".join(map(str, ts[order].tolist())), b",")
        if ids is not None:
            grouped = itemgetter(*order.tolist())(ids) if len(keys) > 1 else ids  # C speed, no Python loop
            payload_parts = _Parts(_payloads(values[order], attrs[order]), b"\n", ends_with_sep=True)
            id_parts = _Parts("\n".join(grouped) + "\n", b"\n", ends_with_sep=True)
        p = self.prefix
        if self.hash_tags:
            names = [f"{p}{{{k}}}:{s}" for k in uniques for s in "zh"]
        else:
            names = [f"{p}{k}:{s}" for k in uniques for s in "zh"]
        mode = f"{1 if ids is not None else 0}:{self.retain_s}:{self.idle_ttl_s}"
        calls = []  # (a key of the call: its slot on a cluster, packed EVALSHA, its arguments)
        for a, b in pairwise(bounds):
            e0, e1 = int(first_event[a]), int(first_event[b])
            args = [
                *names[2 * a : 2 * b],
                str(self.horizon_s),
                f"{mode}:{a}",
                count_parts[a:b],
                ts_parts[e0:e1],
            ]
            if ids is not None:
                args += [payload_parts[e0:e1], id_parts[e0:e1]]
            call = ["EVALSHA", self._batch_sha, str(2 * (b - a)), *args]
            calls.append((args[0] if self.cluster else None, _pack(call), call))
        if self._stale_slots:  # a node failed under an earlier batch: read the slot map again first
            self.client.nodes_manager.initialize()
            self._stale_slots = False
        sent = self._send(calls)

        def finish() -> WindowView:
            reply = self._join(self._receive(sent, calls), ids is not None)
            return self._batch_view(reply, ids is not None, codes, order, len(uniques), ts)

        return finish

    def _by_slot(self, codes: np.ndarray, uniques: list) -> tuple[np.ndarray, list, list[int]]:
        """Renumber the batch's keys so that keys of one slot are consecutive; the slots' key ranges."""
        from redis.crc import key_slot

        slots = np.fromiter(
            (key_slot(self._keys(k)[1].encode()) for k in uniques), dtype=np.int64, count=len(uniques)
        )
        rank = np.argsort(slots, kind="stable")
        renumber = np.empty_like(rank)
        renumber[rank] = np.arange(rank.size)
        slots = slots[rank]
        starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]]).tolist()
        return renumber[codes], [uniques[i] for i in rank.tolist()], [*starts, len(uniques)]

    def _send(self, calls: list) -> list:
        """Send every call now, each on the connection of the node that holds its slot (one connection
        and one write per node); returns what :meth:`_receive` needs to read the replies."""
        sent = []  # (pool, connection, indices of the calls sent on it)
        by_pool: dict[int, tuple[Any, list[int]]] = {}
        for i, (key, _packed, _call) in enumerate(calls):
            if key is None:
                pool = self.client.connection_pool
            else:
                node = self.client.get_node_from_key(key)
                pool = self.client.get_redis_connection(node).connection_pool
            by_pool.setdefault(id(pool), (pool, []))[1].append(i)
        try:
            for pool, indices in by_pool.values():
                conn = pool.get_connection()
                sent.append((pool, conn, indices))
                conn.send_packed_command([b"".join([calls[i][1] for i in indices])])  # one write per node
        except BaseException:
            for pool, conn, _ in sent:
                conn.disconnect()
                pool.release(conn)
            self._stale_slots = self.cluster  # the node may be gone (failover): re-read the map next time
            raise
        return sent

    def _receive(self, sent: list, calls: list) -> list:
        """Every call's reply in call order. A call refused before it ran - NOSCRIPT (the server lost its
        script cache: restart, failover, a node added by resharding) or MOVED / ASK (its slot moved
        while the batch was in flight) - is sent again through the client, which follows redirects."""
        from redis.exceptions import AskError, NoScriptError, ResponseError, TryAgainError

        replies: list[Any] = [None] * len(calls)
        again: list[int] = []
        failure: BaseException | None = None
        for pool, conn, indices in sent:
            try:
                for i in indices:
                    try:
                        replies[i] = conn.read_response()
                    except ResponseError as err:  # an error reply: the connection stays in step
                        if isinstance(err, NoScriptError | AskError | TryAgainError):  # MovedError too
                            again.append(i)
                        else:
                            failure = failure or err
            except BaseException as err:
                conn.disconnect()  # a reply may still be on its way: never reuse this socket
                failure = failure or err
                # the node may be gone (a failover promotes its replica): re-read the slot map next time
                self._stale_slots = self.cluster
            finally:
                pool.release(conn)
        if failure is not None:
            raise failure
        if again:
            self._batch_sha = self.client.script_load(_APPEND_BATCH)  # on every primary of a cluster
            for i in again:
                call = calls[i][2]
                replies[i] = self.client.execute_command("EVALSHA", self._batch_sha, *call[2:])
        return replies

    @staticmethod
    def _join(replies: list, write: bool) -> list:
        """The replies of a batch's per-slot calls as the one reply of a single call (keys numbered
        across the batch: each call was told its first key's number), split into its five parts."""
        split = [_split_reply(r) for r in replies]
        if len(split) == 1:
            return split[0]
        heads, info, counts, cells, labels = zip(*split, strict=True)
        return [b";".join(heads), b",".join(info) if write else b"", b",".join(counts), b"".join(cells),
                b"".join(labels)]  # fmt: skip

    def _batch_view(self, reply, write: bool, codes, order, nk, ts) -> WindowView:
        heads_raw, info_raw, counts_raw, cells_raw, labels_raw = reply
        n = len(codes)
        # per key before the batch: next sequence number and latest time (PAD_TS: none yet)
        head = np.fromstring(heads_raw.replace(b";", b","), dtype=np.int64, sep=",").reshape(nk, 2)
        key_g = codes[order]  # grouped order: each key's events together, in arrival order
        ts_g = ts[order]
        seq0, latest0 = head[key_g, 0], head[key_g, 1]
        if write:
            code = np.fromstring(info_raw, dtype=np.int64, sep=",")
            ins = code == -1
            # sequence numbers handed out so far in the key, counting this event if it was stored
            stored_upto = _group_cumsum(key_g, ins.astype(np.int64))
            own = np.where(ins, seq0 + stored_upto - 1, np.where(code >= 0, code, NOT_STORED))
            bound = seq0 + stored_upto - 1
            # the key's latest time when each event was applied (stored events only move it)
            latest = np.maximum(_group_cummax(key_g, np.where(ins, ts_g, PAD_TS)), latest0)
            cut = np.maximum(ts_g, latest) - self.horizon_s
        else:
            ins = np.zeros(n, dtype=bool)
            own = np.full(n, NOT_STORED, dtype=np.int64)
            bound = seq0 - 1
            cut = np.maximum(ts_g, latest0) - self.horizon_s  # cells kept past the horizon stay hidden
        back = np.empty_like(order)
        back[order] = np.arange(n)  # grouped position of each event in the caller's order
        ins, own, bound, cut = ins[back], own[back], bound[back], cut[back]
        kcounts = np.fromstring(counts_raw, dtype=np.int64, sep=",") if nk else np.zeros(0, np.int64)
        a = self.n_attrs
        kw = int(kcounts.max(initial=0))
        k_ts = np.full((nk, kw), PAD_TS, dtype=np.int64)
        k_seq = np.full((nk, kw), -1, dtype=np.int64)
        k_val = np.zeros((nk, kw), dtype=np.int64)
        k_attr = np.zeros((nk, kw, a), dtype=np.float64)
        k_lab = np.full((nk, kw), UNKNOWN, dtype=np.int64)
        if kcounts.sum():
            # members 'ts,seq,value,attr...#id' one a line: drop the id tails (one C-level regex pass);
            # every number is < 2**53 (seconds, sequence numbers, cents, 52-bit hashes): exact in float64
            flat = _ID_TAIL.sub(b",", cells_raw)[:-1]
            if a:
                cells = np.fromstring(flat, dtype=np.float64, sep=",").reshape(-1, 3 + a)
            else:  # integers only: parse as such (faster, and no float detour)
                cells = np.fromstring(flat, dtype=np.int64, sep=",").reshape(-1, 3)
            row = np.repeat(np.arange(nk), kcounts)
            col = np.arange(row.size) - np.repeat(np.cumsum(kcounts) - kcounts, kcounts)
            k_ts[row, col] = cells[:, 0]
            k_seq[row, col] = cells[:, 1]
            k_val[row, col] = cells[:, 2]
            k_attr[row, col] = cells[:, 3 : 3 + a]
            if labels_raw:  # lines 'key (1-based), seq, label time'; the earliest time of a cell wins
                lab = np.fromstring(labels_raw.replace(b"\n", b","), dtype=np.int64, sep=",").reshape(-1, 3)
                lab_key = (lab[:, 0] - 1) << _SEQ_BITS | lab[:, 1]
                order_l = np.argsort(lab_key, kind="stable")
                lab_key, lab_ts = lab_key[order_l], lab[order_l, 2]
                first = np.r_[0, np.flatnonzero(np.diff(lab_key)) + 1]
                lab_key, lab_ts = lab_key[first], np.minimum.reduceat(lab_ts, first)
                cell_key = row << _SEQ_BITS | k_seq[row, col]
                at = np.minimum(np.searchsorted(lab_key, cell_key), lab_key.size - 1)
                hit = lab_key[at] == cell_key
                k_lab[row[hit], col[hit]] = lab_ts[at[hit]]
        # each event gets its key's cells; cut and bound limit it to what it saw when it was applied
        return WindowView(
            t=ts,
            own_seq=own,
            inserted=ins,
            ts=k_ts[codes],
            seq=k_seq[codes],
            value=k_val[codes],
            attrs=k_attr[codes],
            label_ts=k_lab[codes],
            cut=cut,
            bound=bound,
        )

    def _run(self, keys, ids, ts, payloads, mode: str) -> WindowView:
        from mlsd.platform.redis_cluster import run_script

        calls = [
            (self._keys(key), [event_id, t, payload, self.horizon_s, mode, self.retain_s, self.idle_ttl_s])
            for key, event_id, t, payload in zip(keys, ids, ts.tolist(), payloads, strict=True)
        ]
        return self._parse(run_script(self.client, _APPEND, calls), ts)

    def _parse(self, replies: list, ts: np.ndarray) -> WindowView:
        n = len(replies)
        a = self.n_attrs
        inserted = np.array([int(r[0]) == 1 for r in replies], dtype=bool)
        own = np.full(n, NOT_STORED, dtype=np.int64)
        for i, r in enumerate(replies):
            mine = r[1].decode() if isinstance(r[1], bytes) else str(r[1])
            if mine:
                own[i] = int(mine)
        counts = np.array([int(r[2]) for r in replies], dtype=np.int64)
        k = int(counts.max(initial=0))
        v_ts = np.full((n, k), PAD_TS, dtype=np.int64)
        v_seq = np.full((n, k), -1, dtype=np.int64)
        v_val = np.zeros((n, k), dtype=np.int64)
        v_attr = np.zeros((n, k, a), dtype=np.float64)
        v_lab = np.full((n, k), UNKNOWN, dtype=np.int64)
        if counts.sum():
            # every number is < 2**53 (seconds, sequence numbers, cents, 52-bit hashes): exact in float64
            flat = b",".join(r[3] for r in replies if int(r[2])).decode()
            cells = np.array(flat.split(","), dtype=np.float64).reshape(-1, 4 + a)
            row = np.repeat(np.arange(n), counts)
            col = np.arange(row.size) - np.repeat(np.cumsum(counts) - counts, counts)
            v_ts[row, col] = cells[:, 0].astype(np.int64)
            v_seq[row, col] = cells[:, 1].astype(np.int64)
            v_val[row, col] = cells[:, 2].astype(np.int64)
            v_attr[row, col] = cells[:, 3 : 3 + a]
            label = cells[:, 3 + a]
            known = ~np.isnan(label)
            v_lab[row[known], col[known]] = label[known].astype(np.int64)
        return WindowView(
            t=ts,
            own_seq=own,
            inserted=inserted,
            ts=v_ts,
            seq=v_seq,
            value=v_val,
            attrs=v_attr,
            label_ts=v_lab,
        )

    def update_many(self, keys, ids, ts, values, attrs=None) -> WindowView:
        """Store a micro-batch: one atomic script call (``batched``) or one per event, pipelined."""
        return self.update_many_begin(keys, ids, ts, values, attrs)()

    def update_many_begin(self, keys, ids, ts, values, attrs=None) -> Callable[[], WindowView]:
        """:meth:`update_many` in two halves: send now, and a function that returns the views.

        Lets a caller with several stores send all their batches before reading any reply, so that
        parsing one reply overlaps Redis applying the next. Call the function exactly once.
        """
        ts, values, attrs = _check_batch(keys, ids, ts, values, attrs, self.n_attrs)
        keys, ids = list(keys), [str(i) for i in ids]
        if "\n" in "".join(ids):  # a key's members are stored one a line
            bad = next(i for i in ids if "\n" in i)
            raise InputError("ids", bad, "contains a line break", "use event ids without line breaks")
        if self.batched and keys:
            return self._begin_batch(keys, ids, ts, values, attrs)
        payloads = [
            ",".join([str(v), *map(repr, row)])
            for v, row in zip(values.tolist(), attrs.tolist(), strict=True)
        ]
        view = self._run(keys, ids, ts, payloads, "1")
        return lambda: view

    def view_many(self, keys, ts) -> WindowView:
        keys = list(keys)
        ts = np.asarray(ts, dtype=np.int64)
        if self.batched and keys:
            return self._begin_batch(keys, None, ts, None, None)()
        return self._run(keys, [""] * len(ts), ts, [""] * len(ts), "0")

    def revert_many(self, keys, ids) -> int:
        from mlsd.platform.redis_cluster import run_script

        calls = [(self._keys(key), [str(event_id)]) for key, event_id in zip(keys, ids, strict=True)]
        return int(sum(run_script(self.client, _REVERT, calls)))

    def set_labels(self, keys, ids, label_ts) -> int:
        from mlsd.platform.redis_cluster import run_script

        label_ts = np.asarray(label_ts, dtype=np.int64).tolist()
        calls = [
            ([self._keys(key)[1]], [str(event_id), t])
            for key, event_id, t in zip(keys, ids, label_ts, strict=True)
        ]
        return int(sum(run_script(self.client, _LABEL, calls)))

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests, re-replays)."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            self.client.delete(*keys[i : i + 1000])


def _payloads(values: np.ndarray, attrs: np.ndarray) -> str:
    """Per event ``value,attr...`` and a line break, as one string (the member format of the per-event
    path: ints as ``str``, floats as ``repr`` - shortest round-trip, so attrs come back bit for bit)."""
    n, a = attrs.shape
    m = 1 + a
    fields: list[str] = [""] * (n * m)
    fields[0::m] = map(str, values.tolist())
    for j in range(a):
        fields[1 + j :: m] = map(repr, attrs[:, j].tolist())
    out: list[str] = [""] * (2 * n * m)
    out[0::2] = fields
    out[1::2] = ([","] * a + ["\n"]) * n
    return "".join(out)


def _group_cumsum(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running sum of ``values`` within each run of equal ``group`` (``group`` sorted)."""
    total = np.cumsum(values)
    start = np.r_[True, group[1:] != group[:-1]]
    offset = np.maximum.accumulate(np.where(start, np.arange(len(group)), 0))
    return total - (total - values)[offset]


def _split_reply(reply: bytes) -> list[bytes]:
    """The batch script's reply - a line of the five parts' lengths, then the parts - as five parts."""
    head, _, body = reply.partition(b"\n")
    out, at = [], 0
    for n in map(int, head.split(b",")):
        out.append(body[at : at + n])
        at += n
    return out


class _Parts:
    """A separated string (``"1,2,3"``, or lines each ending with the separator) as bytes, sliced by
    item: ``parts[i:j]`` is items i..j-1 as they appear in it (separators between them kept)."""

    def __init__(self, text: str, sep: bytes, ends_with_sep: bool = False) -> None:
        self.data = text.encode()
        at = np.flatnonzero(np.frombuffer(self.data, dtype=np.uint8) == sep[0])
        self.starts = np.r_[0, at + 1]
        # an item's end: its separator, kept after the item when every item ends with one
        self.ends = at + 1 if ends_with_sep else np.r_[at, len(self.data)]

    def __getitem__(self, items: slice) -> bytes:
        if items.start == 0 and items.stop == len(self.ends):
            return self.data
        return self.data[int(self.starts[items.start]) : int(self.ends[items.stop - 1])]


def _pack(args: list[str | bytes]) -> bytes:
    """One RESP command from str / bytes arguments (redis-py's packer costs microseconds per argument,
    and a batch sends a few thousand keys)."""
    enc = [x if isinstance(x, bytes) else x.encode() for x in args]
    return b"".join([b"*%d\r\n" % len(enc), *(b"$%d\r\n%s\r\n" % (len(x), x) for x in enc)])
