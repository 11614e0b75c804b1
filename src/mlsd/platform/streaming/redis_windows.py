"""Window state on a real Redis: per key a sorted set (event ids by ts) and a hash (event payloads).

Each event goes through one Lua script - atomic, so concurrent workers never interleave half an
update - that skips an id already stored (idempotent: at-least-once delivery counts nothing twice),
skips an event older than the key's horizon, assigns the key's next sequence number, trims events
that left the horizon and returns the key's events as the new event saw them. A micro-batch is one
pipelined round trip. The returned cells feed the same :class:`~mlsd.platform.streaming.windows.WindowView`
maths as the in-process store, so both backends give identical features.

Layout under ``prefix``: ``<key>:z`` ZSET of members ``ts,seq,value,attr...#id`` scored by ts (the
payload rides in the member, so reading a window is one ZRANGEBYSCORE); ``<key>:h`` HASH with
``e:<id>`` = the member (``x`` once reverted: replays stay ignored), ``l:<seq>`` = label time,
``__seq`` (next sequence number), ``__max`` (latest ts), ``__lab`` (some label set).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlsd.platform.streaming.windows import NOT_STORED, PAD_TS, UNKNOWN, WindowView, _check_batch, _Scalar

_APPEND = """
local id = ARGV[1]
local ts = tonumber(ARGV[2])
local horizon = tonumber(ARGV[4])
local inserted = 0
local own = ''
if ARGV[5] == '1' then
  local stored = redis.call('HGET', KEYS[2], 'e:' .. id)
  if stored then
    if stored ~= 'x' then own = string.match(stored, '^[^,]*,([^,]*)') end
  else
    local maxts = tonumber(redis.call('HGET', KEYS[2], '__max') or '')
    if (not maxts) or ts > maxts - horizon then
      local seq = redis.call('HINCRBY', KEYS[2], '__seq', 1) - 1
      own = tostring(seq)
      local member = ARGV[2] .. ',' .. seq .. ',' .. ARGV[3] .. '#' .. id
      redis.call('HSET', KEYS[2], 'e:' .. id, member)
      redis.call('ZADD', KEYS[1], ts, member)
      inserted = 1
      if (not maxts) or ts > maxts then
        maxts = ts
        redis.call('HSET', KEYS[2], '__max', ARGV[2])
      end
      local cutoff = string.format('%d', maxts - horizon)
      local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
      for _, m in ipairs(dead) do
        local p = string.find(m, '#', 1, true)
        local dseq = string.match(m, '^[^,]*,([^,]*)')
        redis.call('HDEL', KEYS[2], 'e:' .. string.sub(m, p + 1), 'l:' .. dseq)
      end
      if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff) end
    end
  end
end
-- the key's events in the horizon as one flat 'ts,seq,value,attr...,label' string: the client parses a
-- whole micro-batch with numpy; members carry their payload, so no per-event hash look-ups
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', ts - horizon), '+inf')
local labelled = redis.call('HEXISTS', KEYS[2], '__lab') == 1
local parts = {}
for i, m in ipairs(members) do
  local body = string.sub(m, 1, string.find(m, '#', 1, true) - 1)
  local label = '-1'
  if labelled then
    label = redis.call('HGET', KEYS[2], 'l:' .. string.match(body, '^[^,]*,([^,]*)')) or '-1'
  end
  parts[i] = body .. ',' .. label
end
return {inserted, own, #parts, table.concat(parts, ',')}
"""

_LABEL = """
local e = redis.call('HGET', KEYS[1], 'e:' .. ARGV[1])
if (not e) or e == 'x' then return 0 end
local seq = string.match(e, '^[^,]*,([^,]*)')
local old = tonumber(redis.call('HGET', KEYS[1], 'l:' .. seq) or '')
if (not old) or tonumber(ARGV[2]) < old then redis.call('HSET', KEYS[1], 'l:' .. seq, ARGV[2]) end
redis.call('HSET', KEYS[1], '__lab', 1)
return 1
"""

_REVERT = """
local e = redis.call('HGET', KEYS[2], 'e:' .. ARGV[1])
if (not e) or e == 'x' then return 0 end
redis.call('HSET', KEYS[2], 'e:' .. ARGV[1], 'x')
redis.call('ZREM', KEYS[1], e)
return 1
"""


class RedisWindowStore(_Scalar):
    """:class:`~mlsd.platform.streaming.windows.WindowStore` on Redis (see the module docstring)."""

    def __init__(
        self,
        horizon_s: int,
        n_attrs: int = 0,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "mlsd:win:",
        client: Any = None,
    ) -> None:
        import redis

        self.horizon_s = int(horizon_s)
        self.n_attrs = int(n_attrs)
        self.prefix = prefix
        self.client = client if client is not None else redis.Redis.from_url(url)
        self._append = self.client.register_script(_APPEND)
        self._label = self.client.register_script(_LABEL)
        self._revert = self.client.register_script(_REVERT)

    def _keys(self, key: Any) -> list[str]:
        return [f"{self.prefix}{key}:z", f"{self.prefix}{key}:h"]

    def _run(self, keys, ids, ts, payloads, mode: str) -> WindowView:
        pipe = self.client.pipeline(transaction=False)
        for key, event_id, t, payload in zip(keys, ids, ts.tolist(), payloads, strict=True):
            self._append(keys=self._keys(key), args=[event_id, t, payload, self.horizon_s, mode], client=pipe)
        replies = pipe.execute() if len(keys) else []
        return self._parse(replies, ts)

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
            v_lab[row, col] = np.where(label < 0, UNKNOWN, label.astype(np.int64))
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
        """Store a micro-batch (one pipelined round trip; one atomic script per event)."""
        ts, values, attrs = _check_batch(keys, ids, ts, values, attrs, self.n_attrs)
        payloads = [
            ",".join([str(v), *map(repr, row)])
            for v, row in zip(values.tolist(), attrs.tolist(), strict=True)
        ]
        return self._run(list(keys), [str(i) for i in ids], ts, payloads, "1")

    def view_many(self, keys, ts) -> WindowView:
        ts = np.asarray(ts, dtype=np.int64)
        return self._run(list(keys), [""] * len(ts), ts, [""] * len(ts), "0")

    def revert_many(self, keys, ids) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key, event_id in zip(keys, ids, strict=True):
            self._revert(keys=self._keys(key), args=[str(event_id)], client=pipe)
        return int(sum(pipe.execute()))

    def set_labels(self, keys, ids, label_ts) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key, event_id, t in zip(keys, ids, np.asarray(label_ts, dtype=np.int64).tolist(), strict=True):
            self._label(keys=[self._keys(key)[1]], args=[str(event_id), t], client=pipe)
        return int(sum(pipe.execute()))

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests, re-replays)."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            self.client.delete(*keys[i : i + 1000])
