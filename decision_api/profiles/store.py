"""Unit profiles in Redis: typed features plus behavioural counters kept by events.

Key layout (one hash per unit, so a decision reads a profile in one round trip; the unit id is
wrapped in a Redis Cluster hash tag so all of a unit's keys live on one shard):

``{prefix}:u:{<unit_id>}`` — HASH, TTL ``redis.profile_ttl_s`` (refreshed on every write)

====================  ======================================================================
field                 value
====================  ======================================================================
``f:<name>``          typed feature: ``s:<str>``, ``n:<number>``, ``b:0|1``, ``l:<json list>``,
                      ``t:<epoch seconds>`` (timestamp)
``e:<type>:<day>``    count of events of ``type`` on UTC day number ``day`` (epoch // 86400)
``v:<type>:<day>``    sum of event values (e.g. purchase revenue) on that day
``l:<type>``          epoch seconds of the latest event of ``type``
``cat``               JSON list of the 5 most recent categories seen in events
``h:<type>:<how>``    email_open / email_click count by UTC hour of week (0 = Monday 00h)
``x:optout``          ``1`` when the unit withdrew consent (no profile read, default experience)
``c:<exp>[|<var>]``   frequency cap: comma-separated epoch ms of the unit's recent exposures to
                      the experiment (or one variant of it), at most the cap's ``max_exposures``
====================  ======================================================================

Day buckets older than ``WINDOW_DAYS`` are pruned by the event script once the hash grows past
``PRUNE_AT`` fields, so a profile's size is bounded by event types x 90 days.

Consent and erasure are checked inside the write scripts, atomically with the write: events and
feature writes leave the profile of a unit that withdrew consent (``x:optout``) untouched, and
so do they, and queued frequency-cap hits, for a unit erased within the tombstone TTL (see
:class:`decision_api.privacy.data_rights.Tombstones`), so a write racing an erasure cannot bring the
unit's key back. The scripts read the tombstones of the unit's own hash slot
(:func:`tombstone_key`), so on a Redis Cluster each touches one slot.

On a Redis Cluster, reads of many profiles (batches, the per-tick coalescing of single
decisions) are a cluster pipeline of ``HGETALL``: the keys spread over every slot, and the
client sends each node its share in parallel. On a single server they are a few script calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bandits.scripts import run_script
from decision_api.redis_client import is_cluster, key_slot, queue_script, slot_tag

if TYPE_CHECKING:
    from decision_api.privacy.data_rights import Tombstones

FeatureValue = str | int | float | bool | list[str]

WINDOW_DAYS = 90
COUNT_WINDOWS = (7, 30, 90)
PRUNE_AT = 400
MAX_CATEGORIES = 5
HOURS_OF_WEEK = 168
HISTOGRAM_TYPES = frozenset({"email_open", "email_click"})
OPTOUT_FIELD = "x:optout"

Written = Literal["stored", "opted_out", "erased"]
"""What a profile write did: stored, or left out (consent withdrawn, unit just erased)."""
_WRITTEN: dict[int, Written] = {1: "stored", -1: "opted_out", -2: "erased"}

# Shared head of the write scripts: KEYS[1] the profile, KEYS[2] the tombstone set, ARGV[1] the
# unit's tombstone token ('' = no check), ARGV[2] now (ms). -1: opted out, -2: just erased.
_GUARD = """
if redis.call('HGET', KEYS[1], 'x:optout') == '1' then return -1 end
if ARGV[1] ~= '' then
  local until_ms = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if until_ms and tonumber(until_ms) > tonumber(ARGV[2]) then return -2 end
end
"""


class Timestamp(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A timestamp feature on the wire: ``{"ts": "2026-11-01T10:00:00Z"}`` or epoch seconds."""

    ts: float


class UnitEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A behavioural event as the feature store applies it."""

    type: str
    ts: float
    value: float = 0.0
    category: str = ""


class UnitProfile(msgspec.Struct, kw_only=True, gc=False):
    """What Redis holds about a unit, decoded.

    ``attributes`` are the features targeting rules and models see (stored features and derived
    counters); ``hours`` maps ``email_open``/``email_click`` to a 168-bin UTC hour-of-week
    histogram.
    """

    attributes: dict[str, FeatureValue]
    hours: dict[str, list[int]]
    caps: dict[str, list[int]] = msgspec.field(default_factory=dict)
    opted_out: bool = False
    found: bool = False
    hour_cells: list[tuple[str, int, int]] = msgspec.field(default_factory=list)
    """The stored cells of ``hours`` as (type, hour of week, count), as decoded: the bulk
    path's sparse view (a few cells, not 168 bins per type). Empty for a profile built
    without :func:`decode_profile`; readers then use ``hours``."""


EMPTY_PROFILE = UnitProfile(attributes={}, hours={})


class FeatureStore(Protocol):
    """Where unit profiles live."""

    async def get_profiles(self, unit_ids: Sequence[str], now: float) -> list[UnitProfile]:
        """Profiles for the units, in order, in one round trip; unknown units are empty."""
        ...

    async def upsert_features(
        self, unit_id: str, features: Mapping[str, FeatureValue | Timestamp]
    ) -> Written:
        """Set (overwrite) the named features of a unit, unless it opted out or was erased."""
        ...

    async def record_events(
        self, unit_id: str, events: Sequence[UnitEvent], now: float
    ) -> list[Written]:
        """Apply behavioural events to the unit's derived counters atomically (what each did)."""
        ...

    def queue_cap_hit(self, hit: CapHit) -> None:
        """Count an exposure against a frequency cap (asynchronously)."""
        ...


_RECORD_EVENT = (
    _GUARD
    + """
local key = KEYS[1]
local typ, day, value, ts, cat, how = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), ARGV[7], ARGV[8]
local ttl, window, prune_at, max_cats = tonumber(ARGV[9]), tonumber(ARGV[10]),
  tonumber(ARGV[11]), tonumber(ARGV[12])
local today = tonumber(ARGV[13])
if day > today - window then
  redis.call('HINCRBY', key, 'e:' .. typ .. ':' .. day, 1)
  if value ~= 0 then
    redis.call('HINCRBYFLOAT', key, 'v:' .. typ .. ':' .. day, value)
  end
end
local last = tonumber(redis.call('HGET', key, 'l:' .. typ) or '0')
if ts > last then redis.call('HSET', key, 'l:' .. typ, ARGV[6]) end
if cat ~= '' then
  local cur = redis.call('HGET', key, 'cat')
  local cats = {}
  if cur then cats = cjson.decode(cur) end
  local out = {cat}
  for _, c in ipairs(cats) do
    if c ~= cat and #out < max_cats then table.insert(out, c) end
  end
  redis.call('HSET', key, 'cat', cjson.encode(out))
end
if how ~= '' then redis.call('HINCRBY', key, 'h:' .. typ .. ':' .. how, 1) end
if redis.call('HLEN', key) > prune_at then
  for _, f in ipairs(redis.call('HKEYS', key)) do
    local p = string.sub(f, 1, 2)
    if p == 'e:' or p == 'v:' then
      local d = tonumber(string.match(f, ':(%d+)$'))
      if d and d <= today - window then redis.call('HDEL', key, f) end
    end
  end
end
redis.call('EXPIRE', key, ttl)
return 1
"""
)


_UPSERT = (
    _GUARD
    + """
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)


_RECORD_CAP = """
local key, field = KEYS[1], ARGV[1]
local now, window, keep, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5])
local out = {}
local cur = redis.call('HGET', key, field)
if cur then
  for t in string.gmatch(cur, '[^,]+') do
    if tonumber(t) > now - window then table.insert(out, t) end
  end
end
table.insert(out, ARGV[2])
while #out > keep do table.remove(out, 1) end
redis.call('HSET', key, field, table.concat(out, ','))
if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
return #out
"""


_OPTED_OUT = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'x:optout') or '' end
return out
"""

_MGETALL = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""
MGET_BATCH = 1000


class CapHit(msgspec.Struct, frozen=True):
    """One capped exposure to record: unit, cap field (``<exp>`` or ``<exp>|<variant>``)."""

    unit_id: str
    field: str
    ts_ms: int
    window_ms: int
    keep: int


def unit_key(prefix: str, unit_id: str) -> str:
    """The Redis key of a unit's profile hash."""
    return f"{prefix}:u:{{{unit_id}}}"


def tombstone_key(prefix: str, unit_id: str) -> str:
    """The erasure tombstones of the unit's hash slot: ``{p}:erased:{<slot tag>}``, a ZSET in
    the slot of the unit's profile (see :class:`decision_api.privacy.data_rights.Tombstones`)."""
    return f"{prefix}:erased:{{{slot_tag(key_slot(unit_id))}}}"


def encode_feature(value: FeatureValue | Timestamp) -> str:
    """Encode one typed feature for its hash field."""
    match value:
        case bool():
            return "b:1" if value else "b:0"
        case int() | float():
            return f"n:{value!r}"
        case str():
            return "s:" + value
        case list():
            return "l:" + msgspec.json.encode(value).decode()
        case Timestamp():
            return f"t:{value.ts!r}"
    raise TypeError(f"unsupported feature type {type(value).__name__}")


def decode_feature(raw: str) -> FeatureValue:
    """Decode a stored feature; timestamps come back as epoch seconds (float)."""
    tag, body = raw[:2], raw[2:]
    if tag == "s:":
        return body
    if tag in ("n:", "t:"):
        number = float(body)
        return int(number) if tag == "n:" and number.is_integer() and "." not in body else number
    if tag == "b:":
        return body == "1"
    if tag == "l:":
        items = msgspec.json.decode(body)
        return [str(i) for i in items]
    raise ValueError(f"corrupt feature value {raw[:20]!r}")


def decode_profile(raw: Mapping[str, str], now: float) -> UnitProfile:
    """Turn a profile hash into attributes: stored features plus derived behaviour features.

    Derived: ``<type>_7d``/``_30d``/``_90d`` counts, ``<type>_days_since``, for purchases
    ``purchase_value_90d`` and ``aov_90d``, ``last_categories``, and for timestamp features
    ``<name>_age_days``.
    """
    if not raw:
        return UnitProfile(attributes={}, hours={})
    attributes: dict[str, FeatureValue] = {}
    today = int(now // 86400)
    counts: dict[str, list[int]] = {}
    values: dict[str, float] = {}
    hours: dict[str, list[int]] = {}
    cells: list[tuple[str, int, int]] = []
    caps: dict[str, list[int]] = {}
    for field, raw_value in raw.items():
        kind = field[:2]
        if kind == "f:":
            name = field[2:]
            value = decode_feature(raw_value)
            attributes[name] = value
            if raw_value.startswith("t:") and isinstance(value, float):
                attributes[name + "_age_days"] = round((now - value) / 86400, 3)
        elif kind in ("e:", "v:"):
            typ, _, day_text = field[2:].rpartition(":")
            age = today - int(day_text)
            if age < 0 or age >= WINDOW_DAYS:
                continue
            if kind == "e:":
                per_window = counts.setdefault(typ, [0] * len(COUNT_WINDOWS))
                for i, window in enumerate(COUNT_WINDOWS):
                    if age < window:
                        per_window[i] += int(raw_value)
            else:
                values[typ] = values.get(typ, 0.0) + float(raw_value)
        elif kind == "l:":
            attributes[field[2:] + "_days_since"] = round((now - float(raw_value)) / 86400, 3)
        elif kind == "h:":
            typ, _, how = field[2:].rpartition(":")
            hour, count = int(how), int(raw_value)
            hours.setdefault(typ, [0] * HOURS_OF_WEEK)[hour] = count
            cells.append((typ, hour, count))
        elif kind == "c:":
            caps[field[2:]] = [int(t) for t in raw_value.split(",") if t]
        elif field == "cat":
            attributes["last_categories"] = [str(c) for c in msgspec.json.decode(raw_value)]
    for typ, per_window in counts.items():
        for window, count in zip(COUNT_WINDOWS, per_window, strict=True):
            attributes[f"{typ}_{window}d"] = count
    for typ, total in values.items():
        attributes[f"{typ}_value_90d"] = round(total, 6)
        if typ == "purchase" and counts.get(typ, [0, 0, 0])[-1]:
            attributes["aov_90d"] = round(total / counts[typ][-1], 6)
    return UnitProfile(
        attributes=attributes,
        hours=hours,
        caps=caps,
        opted_out=raw.get(OPTOUT_FIELD) == "1",
        found=True,
        hour_cells=cells,
    )


class RedisFeatureStore:
    """The feature store on a real Redis (``redis.asyncio`` with hiredis)."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._record = redis.register_script(_RECORD_EVENT)
        self._record_cap = redis.register_script(_RECORD_CAP)
        self._mget = redis.register_script(_MGETALL)
        self._upsert = redis.register_script(_UPSERT)
        self._opted_out = redis.register_script(_OPTED_OUT)
        self._cluster = is_cluster(redis)
        self._cap_hits: list[CapHit] = []
        self._cap_lock = asyncio.Lock()
        self.tombstones: Tombstones | None = None
        """Recently erased units (set by the app): writes for them are dropped."""

    def key(self, unit_id: str) -> str:
        """The profile key of a unit."""
        return unit_key(self._prefix, unit_id)

    async def get_profiles(self, unit_ids: Sequence[str], now: float) -> list[UnitProfile]:
        """Profiles for the units, in order, in one pipelined round trip."""
        if len(unit_ids) == 1:
            raw: dict[str, str] = await self._redis.hgetall(self.key(unit_ids[0]))  # type: ignore[assignment]
            return [decode_profile(raw, now)]
        # Many units: a few script calls returning many hashes each. Per-command client overhead
        # (packing, parsing, timeouts), not Redis, is what a pipeline of HGETALLs spends on.
        profiles: list[UnitProfile] = []
        prefix = self._prefix + ":u:{"
        for start in range(0, len(unit_ids), MGET_BATCH):
            keys = [prefix + u + "}" for u in unit_ids[start : start + MGET_BATCH]]
            if self._cluster:  # keys of many slots: one HGETALL each, per node in parallel
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hgetall(key)
                    hashes: list[dict[str, str]] = await pipe.execute()
                profiles += [decode_profile(h, now) for h in hashes]
                continue
            flat_hashes = await run_script(self._mget, keys)
            for flat in flat_hashes:
                if not flat:  # an unknown unit (most of a campaign's, often): no dict to build
                    profiles.append(UnitProfile(attributes={}, hours={}))
                    continue
                it = iter(flat)
                profiles.append(decode_profile(dict(zip(it, it, strict=True)), now))
        return profiles

    def _guard(self, unit_id: str, now: float) -> tuple[list[str], list[str | int]]:
        """KEYS and the first ARGV of a guarded write script (see ``_GUARD``)."""
        keys = [self.key(unit_id), tombstone_key(self._prefix, unit_id)]
        tombstones = self.tombstones
        if tombstones is None:
            return keys, ["", 0]
        return keys, [tombstones.token(unit_id), int(now * 1000)]

    async def upsert_features(
        self, unit_id: str, features: Mapping[str, FeatureValue | Timestamp]
    ) -> Written:
        """Overwrite the given features and refresh the profile's TTL, atomically; nothing is
        written for a unit that withdrew consent (``opted_out``) or was just erased."""
        keys, args = self._guard(unit_id, time.time())
        args.append(self._ttl_s)
        for name, value in features.items():
            args += ["f:" + name, encode_feature(value)]
        return _WRITTEN[int(await self._upsert(keys=keys, args=args))]

    async def opted_out(self, unit_ids: Iterable[str]) -> set[str]:
        """Which of the units withdrew consent (one script call per ``MGET_BATCH`` units)."""
        ids = list(dict.fromkeys(unit_ids))
        found: set[str] = set()
        for start in range(0, len(ids), MGET_BATCH):
            part = ids[start : start + MGET_BATCH]
            if self._cluster:  # keys of many slots: one HGET each, per node in parallel
                async with self._redis.pipeline(transaction=False) as pipe:
                    for unit in part:
                        pipe.hget(self.key(unit), OPTOUT_FIELD)
                    flags = await pipe.execute()
                found.update(u for u, flag in zip(part, flags, strict=True) if flag == "1")
                continue
            flags = await self._opted_out(keys=[self.key(u) for u in part])
            found.update(u for u, flag in zip(part, flags, strict=True) if flag == "1")
        return found

    async def delete_features(self, unit_id: str, names: Iterable[str]) -> None:
        """Remove named features from a unit's profile."""
        fields = ["f:" + n for n in names]
        if fields:
            await self._redis.hdel(self.key(unit_id), *fields)

    async def record_events(
        self, unit_id: str, events: Sequence[UnitEvent], now: float
    ) -> list[Written]:
        """Apply events through one Lua script call each, pipelined (atomic per event); an
        event for a unit that withdrew consent or was just erased is left out."""
        keys, guard = self._guard(unit_id, now)
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                how = ""
                if event.type in HISTOGRAM_TYPES:
                    how = str(hour_of_week(event.ts))
                queue_script(
                    self._record,
                    pipe,
                    keys,
                    [
                        *guard,
                        event.type,
                        int(event.ts // 86400),
                        repr(float(event.value)),
                        repr(float(event.ts)),
                        event.category,
                        how,
                        self._ttl_s,
                        WINDOW_DAYS,
                        PRUNE_AT,
                        MAX_CATEGORIES,
                        int(now // 86400),
                    ],
                )
            return [_WRITTEN[int(code)] for code in await pipe.execute()]

    def queue_cap_hit(self, hit: CapHit) -> None:
        """Queue an exposure that counts against a frequency cap (written by ``flush_caps``)."""
        self._cap_hits.append(hit)

    async def flush_caps(self) -> int:
        """Record queued cap hits atomically per unit, in one pipelined round trip; hits of a
        unit erased within the tombstone TTL are dropped. Waits for a flush in flight first, so
        on return every hit queued before the call is in Redis (or dropped)."""
        if not self._cap_hits and not self._cap_lock.locked():
            return 0
        async with self._cap_lock:
            return await self._flush_caps()

    async def _flush_caps(self) -> int:
        if not self._cap_hits:
            return 0
        hits, self._cap_hits = self._cap_hits, []
        try:
            if self.tombstones is not None:
                hits = await self.tombstones.screen(hits, _unit_of_hit)
            async with self._redis.pipeline(transaction=False) as pipe:
                for hit in hits:
                    queue_script(
                        self._record_cap,
                        pipe,
                        [self.key(hit.unit_id)],
                        ["c:" + hit.field, hit.ts_ms, hit.window_ms, hit.keep, self._ttl_s],
                    )
                await pipe.execute()
        except RedisError:
            self._cap_hits = (hits + self._cap_hits)[-100_000:]
            raise
        return len(hits)

    async def set_opt_out(self, unit_id: str, opted_out: bool) -> None:
        """Store (or clear) the unit's consent withdrawal."""
        key = self.key(unit_id)
        if opted_out:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, OPTOUT_FIELD, "1")
                pipe.expire(key, self._ttl_s)
                await pipe.execute()
        else:
            await self._redis.hdel(key, OPTOUT_FIELD)

    async def raw(self, unit_id: str) -> dict[str, str]:
        """The profile hash as stored (for the data-export right)."""
        result: dict[str, str] = await self._redis.hgetall(self.key(unit_id))  # type: ignore[assignment]
        return result

    async def delete(self, unit_id: str) -> int:
        """Erase the unit's profile; returns the number of keys removed."""
        removed: int = await self._redis.delete(self.key(unit_id))
        return removed


def _unit_of_hit(hit: CapHit) -> str:
    return hit.unit_id


def hour_of_week(ts: float) -> int:
    """UTC hour of week for an epoch timestamp, Monday 00h = 0."""
    # 1970-01-01 was a Thursday: shift by three days so Monday starts the week.
    return int(((ts // 3600) + 72) % HOURS_OF_WEEK)
