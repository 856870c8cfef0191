"""Data rights: export everything stored about a unit, and erase it.

What is "about a unit" (see the key layouts in :mod:`decision_api.profiles.store` and
:mod:`bandits.join`):

- Redis keys whose Cluster hash tag is the unit id or its pseudonym (``{p}:u:{<unit>}`` profile
  and any ``{p}:u:{<unit>}:...`` key beside it), the unit's reward-join index
  (``{{p}}:u:<unit>:join``), and the records of the unit's decisions awaiting their reward
  (``{{p}}:dec:<decision>:...``): the decisions logged for it, those in its join index, and every
  record whose ``rec`` names the unit (read during the scan: a decision whose exposures never
  reached the event log has no other trace). Found with a ``SCAN`` over the prefix and one over
  the decision records (plus one ``HGET`` per record), on every primary of a Redis Cluster, so an
  erasure costs a pass over the keyspace: an admin operation, not a hot path. The keys are then
  deleted per slot.
- Event-log rows in every table with a ``unit_id`` column (exposures, outcomes, ...) under the
  unit id or its pseudonym (``anon:...``, what units without consent are logged as), removed with
  ``ALTER TABLE ... DELETE`` and ``mutations_sync = 2`` (the rows are rewritten away, not
  masked, before the call returns).
- Events not yet written: the writer's buffers and its disk spool are filtered first, so nothing
  about the unit reaches the event log after the erasure; queued Redis writes (frequency-cap hits,
  decision records) are flushed before the keys are deleted.

Racing writes. Decisions, outcomes and events for the unit may be in flight on any worker while
it is erased. The erasure first sets a *tombstone* (:class:`Tombstones`): the ``{p}:erased`` ZSET
holds, per erased unit, a token (a hash of its pseudonym, never the id) scored by the time it
expires, ``TOMBSTONE_TTL_S`` later; the same token goes to the tombstones of the unit's hash slot
(``{p}:erased:{<slot tag>}``, see :func:`decision_api.profiles.store.tombstone_key`). Every writer
checks them before writing: the event writer (exposures, outcomes), the reward-join and
frequency-cap flushers (one ``ZRANGEBYSCORE`` of ``{p}:erased`` per worker and
``SCREEN_MAX_AGE_S``, shared by every flush, and no per-item work unless an erasure is recent)
and the event and feature scripts (atomically, in the same script call, on the slot's set: one
slot per script on a Redis Cluster). The decision hot path is unchanged. A flush that looked
at the tombstones just before they were set is covered twice: this worker's flushers are waited
for (they hold a lock while they write; its reading is dropped), and the whole sweep runs again
``settle_s`` later for the other workers'. Writes for the unit inside the tombstone TTL are
dropped: a unit that comes back right after its erasure starts afresh two minutes later.

The erasure is recorded in the audit table under the unit's pseudonym (a keyed hash), never the
raw id. It is idempotent: when the event log is down it fails with 503 before touching Redis, and
can simply be repeated. Known limits: a write slower than ``settle_s`` on another worker (an
insert stalled that long), or events another worker spooled to its disk during an event-log
outage and replays after the tombstone expired, can still land; training examples already
finalised into the learner's stream (``{{p}}:train``, trimmed by length) are not searched.

Export returns the same set of keys: the profile, keys tagged with the unit id or pseudonym, its
join index, and the decision records (``{{p}}:dec:<decision>:...``: record JSON with the unit id,
its context and the candidates) of every decision logged for the unit or listed in its join
index.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bandits.join import DecisionRecord
from decision_api.logging import unit_ref
from decision_api.profiles.store import (
    OPTOUT_FIELD,
    decode_feature,
    decode_profile,
    tombstone_key,
    unit_key,
)
from event_log import sql as event_sql
from event_log.rows import Exposure
from event_log.store import EventLog
from event_log.writer import EventWriter
from tailor_contract.wire import (
    ErasureReport,
    ExposureRecord,
    OutcomeRecord,
    RedisEntry,
    UnitExport,
)

log = structlog.get_logger("tailor.data_rights")

EXPORT_LIMIT = 10_000
SCAN_COUNT = 1000
TOMBSTONE_TTL_S = 120
SCREEN_BACKOFF_S = 1.0
SCREEN_MAX_AGE_S = 0.05
"""How long one reading of the tombstones serves every screen of a worker (the join, frequency
cap and event-log flushers each screen every flush, every 20 ms): far below the erasure's second
sweep (``settle_s``, at least 0.25 s), which removes what a screen with an older reading let
through, and an erasure on this worker drops the reading at once."""
R = TypeVar("R", ExposureRecord, OutcomeRecord)
T = TypeVar("T")
_GLOB = re.compile(r"([*?\[\]\\])")
_record_decoder = msgspec.json.Decoder(DecisionRecord)

Auditor = Callable[[str, str, str, int, str], None]
"""``audit(action, entity, key, version, detail)`` (see ``Services.audit``)."""


def hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag of a key (between the first ``{`` and the next ``}``)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1 : end] if end > start + 1 else None


def _escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Tombstones:
    """Units erased a moment ago, so that writers racing an erasure drop their writes.

    ``{p}:erased`` ZSET: member ``token(unit)`` (32 hex chars of SHA-256 over the unit's
    pseudonym: neither the id nor the pseudonym is stored), score the epoch ms at which it
    expires. Expired members are trimmed by the next erasure, so the set holds the erasures of
    the last ``ttl_s`` seconds. An event logged under the pseudonym (no consent) is matched too.
    The same member goes to ``{p}:erased:{<slot tag>}``, the tombstones of the unit's hash slot,
    which the profile write scripts read beside the profile (it expires ``ttl_s`` after the
    slot's last erasure).
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        pseudonymise: Callable[[str], str],
        ttl_s: float = TOMBSTONE_TTL_S,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.key = f"{prefix}:erased"
        self._pseudonymise = pseudonymise
        self._ttl_ms = int(ttl_s * 1000)
        self._skip_until = 0.0
        self._reading: tuple[float, frozenset[str]] | None = None
        self.reads = 0
        """How many times the tombstones were read from Redis."""

    @staticmethod
    def _hash(pseudonym: str) -> str:
        return hashlib.sha256(b"tailor-erased:" + pseudonym.encode()).hexdigest()[:32]

    def token(self, unit_id: str) -> str:
        """The tombstone token of a unit id."""
        return self._hash(self._pseudonymise(unit_id))

    async def add(self, unit_id: str) -> None:
        """Mark the unit erased for the next ``ttl_s`` seconds (and trim expired marks)."""
        now = int(time.time() * 1000)
        token = self.token(unit_id)
        self._reading = None
        for key in (tombstone_key(self._prefix, unit_id), self.key):  # two slots: two MULTIs
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zadd(key, {token: now + self._ttl_ms})
                pipe.pexpire(key, self._ttl_ms + 1000)
                await pipe.execute()

    async def active(self) -> frozenset[str]:
        """The tokens of units erased within the TTL (usually none: one cheap call), read at
        most once per ``SCREEN_MAX_AGE_S`` (the reading is timed from before the call)."""
        started = time.monotonic()
        reading = self._reading
        if reading is not None and started - reading[0] < SCREEN_MAX_AGE_S:
            return reading[1]
        now = int(time.time() * 1000)
        self.reads += 1
        members = await self._redis.zrangebyscore(self.key, now, "+inf")
        active = frozenset(_text(m) for m in members)
        if self._reading is reading:  # no erasure here meanwhile (add() drops the reading)
            self._reading = (started, active)
        return active

    async def screen(self, items: list[T], unit_of: Callable[[T], str]) -> list[T]:
        """``items`` without those whose unit (``unit_of(item)``: an id or a pseudonym) was
        erased within the TTL; ``items`` itself when no erasure is recent.

        Raises ``RedisError`` when Redis fails, then skips the check (returns ``items``) for
        ``SCREEN_BACKOFF_S``, so writers do not wait a timeout per flush while Redis is down
        (erasures need Redis too).
        """
        if not items or time.monotonic() < self._skip_until:
            return items
        try:
            active = await self.active()
        except RedisError:
            self._skip_until = time.monotonic() + SCREEN_BACKOFF_S
            raise
        if not active:
            return items
        seen: dict[str, bool] = {}

        def erased(unit: str) -> bool:
            known = seen.get(unit)
            if known is None:
                known = seen[unit] = bool(unit) and (
                    self._hash(unit) in active or self.token(unit) in active
                )
            return known

        return [item for item in items if not erased(unit_of(item))]


class DataRights:
    """Export and erase one unit's data across Redis, the writer and the event log."""

    def __init__(
        self,
        *,
        redis: Redis,
        prefix: str,
        event_log: EventLog,
        writer: EventWriter,
        pseudonymise: Callable[[str], str],
        audit: Auditor,
        flushers: Sequence[Callable[[], Awaitable[object]]] = (),
        tombstones: Tombstones | None = None,
        settle_s: float = 0.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._log = event_log
        self._writer = writer
        self._pseudonymise = pseudonymise
        self._audit = audit
        self._flushers = tuple(flushers)
        self._tombstones = tombstones
        self._settle_s = settle_s
        self._shared = "{" + prefix + "}"
        self._dec = f"{self._shared}:dec:"

    def _join_index(self, unit: str) -> str:
        return f"{self._shared}:u:{unit}:join"

    async def unit_keys(self, tags: frozenset[str], units: frozenset[str]) -> list[str]:
        """Every key under the prefix whose hash tag is one of ``units``, the units' join
        indexes, and the records of decisions whose id is in ``tags`` or that were made for one
        of ``units`` (found by their content): one SCAN pass over the prefix, one over the
        decision records (each on every primary of a cluster)."""
        found = []
        async for key in self._redis.scan_iter(
            match=_escape(self._prefix) + ":*", count=SCAN_COUNT
        ):
            name = _text(key)
            if hash_tag(name) in units:
                found.append(name)
        indexes = [self._join_index(u) for u in sorted(units)]
        found += [k for k, n in zip(indexes, await self._exist(indexes), strict=True) if n]
        records: list[str] = []
        async for key in self._redis.scan_iter(match=_escape(self._dec) + "*", count=SCAN_COUNT):
            name = _text(key)
            if name.partition(self._dec)[2].partition(":")[0] in tags:
                found.append(name)
            elif not name.endswith(":exps"):
                records.append(name)
                if len(records) >= SCAN_COUNT:
                    found += await self._records_of(records, units)
                    records = []
        found += await self._records_of(records, units)
        return found

    async def _exist(self, keys: Sequence[str]) -> list[int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            replies: list[int] = await pipe.execute()
        return replies

    async def _records_of(self, keys: Sequence[str], units: frozenset[str]) -> list[str]:
        """The keys (with their ``exps`` sets) of the decision records among ``keys`` whose
        unit is one of ``units``: a decision's exposures may never reach the event log (another
        worker dropped them at an erasure), and the join index keeps only the latest one."""
        if not keys:
            return []
        experiments = [key[: key.index(":", len(self._dec)) + 1] + "exps" for key in keys]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, exps in zip(keys, experiments, strict=True):
                pipe.hget(key, "rec")
                pipe.exists(exps)
            replies = await pipe.execute()
        found = []
        for i, key in enumerate(keys):
            body, has_exps = replies[2 * i], replies[2 * i + 1]
            if body is None:
                continue
            try:
                record = _record_decoder.decode(body)
            except msgspec.DecodeError:  # ValidationError too: not a decision record
                continue
            if record.unit_id in units:
                found += [key, experiments[i]] if has_exps else [key]
        return found

    async def erase(self, unit_id: str) -> ErasureReport:
        """Remove everything stored about ``unit_id``; raises EventLogUnavailable (503) if down.

        Sets the unit's tombstone first, sweeps, and sweeps again ``settle_s`` later (see the
        module docstring): on return nothing written before the tombstone is left, and nothing
        written after it lands for the tombstone's TTL.
        """
        pseudonym = self._pseudonymise(unit_id)
        ids = frozenset({unit_id, pseudonym})
        if self._tombstones is not None:
            await self._tombstones.add(unit_id)
        keys, rows, unwritten = await self._sweep(ids)
        if self._settle_s > 0:
            await asyncio.sleep(self._settle_s)
            more_keys, more_rows, more_unwritten = await self._sweep(ids)
            keys += more_keys
            unwritten += more_unwritten
            rows = {t: rows.get(t, 0) + more_rows.get(t, 0) for t in rows | more_rows}
        report = ErasureReport(
            pseudonym=pseudonym,
            redis_keys=keys,
            event_log_rows=rows,
            unwritten_events=unwritten,
        )
        detail = msgspec.json.encode(
            {"redis_keys": keys, "rows": rows, "unwritten": unwritten}
        ).decode()
        self._audit("erase", "unit", pseudonym, 0, detail)
        log.info("unit_erased", unit=unit_ref(unit_id), redis_keys=keys, rows=rows)
        return report

    async def _sweep(self, ids: frozenset[str]) -> tuple[int, dict[str, int], int]:
        """One pass over every store: (Redis keys, event-log rows per table, unwritten events)
        removed."""
        for flush in self._flushers:  # queued Redis writes (caps, join records) land first
            await flush()
        unwritten = await self._writer.forget(ids)
        decisions = {e.decision_id for e in unwritten if isinstance(e, Exposure)}
        rows = await asyncio.to_thread(self._erase_rows, sorted(ids), decisions)
        decisions |= await self._joined_decisions(ids)
        keys = sorted(set(await self.unit_keys(ids | frozenset(decisions), ids)))
        for start in range(0, len(keys), 500):
            await self._redis.unlink(*keys[start : start + 500])
        return len(keys), rows, len(unwritten)

    async def _joined_decisions(self, ids: frozenset[str]) -> set[str]:
        """Decision ids in the units' reward-join indexes (``{{p}}:u:<unit>:join``)."""
        found: set[str] = set()
        for unit in ids:
            index: dict[str, str] = await self._redis.hgetall(  # type: ignore[assignment]
                self._join_index(unit)
            )
            found.update(_text(d) for d in index.values())
        return found

    def _erase_rows(self, ids: Sequence[str], decisions: set[str]) -> dict[str, int]:
        """Delete the units' rows in every unit table (by unit id, and by decision id where the
        table has one); collects the units' decision ids first (``decisions`` grows)."""
        units = {"units": list(ids)}
        decisions.update(str(r[0]) for r in self._log.query(event_sql.UNIT_DECISION_IDS, units))
        by_both = {**units, "decisions": sorted(decisions)}
        removed: dict[str, int] = {}
        for table, by_decision in self._log.query(event_sql.UNIT_TABLES):
            if by_decision:
                count_sql, delete_sql = (
                    event_sql.COUNT_UNIT_OR_DECISION_ROWS,
                    event_sql.DELETE_UNIT_OR_DECISION_ROWS,
                )
                params = {"table": str(table), **by_both}
            else:
                count_sql, delete_sql = event_sql.COUNT_UNIT_ROWS, event_sql.DELETE_UNIT_ROWS
                params = {"table": str(table), **units}
            count = int(self._log.query(count_sql, params)[0][0])
            if count:
                self._log.command(delete_sql, params)
            removed[str(table)] = count
        return removed

    async def export(self, unit_id: str) -> UnitExport:
        """Everything stored about ``unit_id``: profile, other Redis keys, event-log rows."""
        pseudonym = self._pseudonymise(unit_id)
        ids = frozenset({unit_id, pseudonym})
        now = time.time()
        profile_key = unit_key(self._prefix, unit_id)
        raw: dict[str, str] = await self._redis.hgetall(profile_key)  # type: ignore[assignment]
        features = {k[2:]: decode_feature(v) for k, v in raw.items() if k.startswith("f:")}
        profile = decode_profile(raw, now)
        derived = {k: v for k, v in profile.attributes.items() if k not in features}
        for flush in self._flushers:  # queued cap hits and decision records first
            await flush()
        await self._writer.flush()
        exposures, outcomes, decisions = await asyncio.to_thread(self._rows, sorted(ids))
        decisions |= await self._joined_decisions(ids)
        tags = ids | frozenset(decisions)
        others = sorted(set(await self.unit_keys(tags, ids)) - {profile_key})
        return UnitExport(
            unit_id=unit_id,
            pseudonym=pseudonym,
            personalization=raw.get(OPTOUT_FIELD) != "1",
            features=features,
            derived=derived,
            hours=profile.hours,
            frequency_caps=profile.caps,
            redis=[await self._dump(k) for k in others],
            exposures=exposures,
            outcomes=outcomes,
            truncated=len(exposures) >= EXPORT_LIMIT or len(outcomes) >= EXPORT_LIMIT,
        )

    def _rows(
        self, ids: Sequence[str]
    ) -> tuple[list[ExposureRecord], list[OutcomeRecord], set[str]]:
        """The units' exposures and outcomes (at most ``EXPORT_LIMIT`` each) and every decision
        id logged for them."""
        params: dict[str, object] = {"units": list(ids), "limit": EXPORT_LIMIT}
        decisions = {
            str(r[0]) for r in self._log.query(event_sql.UNIT_DECISION_IDS, {"units": list(ids)})
        }
        exposures = [
            _record(ExposureRecord, event_sql.EXPOSURE_COLUMNS, row)
            for row in self._log.query(event_sql.UNIT_EXPOSURES, params)
        ]
        params["decisions"] = sorted({e.decision_id for e in exposures})
        outcomes = [
            _record(OutcomeRecord, event_sql.OUTCOME_COLUMNS, row)
            for row in self._log.query(event_sql.UNIT_OUTCOMES, params)
        ]
        return exposures, outcomes, decisions

    async def _dump(self, key: str) -> RedisEntry:
        kind = _text(await self._redis.type(key))
        ttl = int(await self._redis.ttl(key))
        value: str | list[str] | dict[str, str] | None
        redis: Any = self._redis  # redis-py's asyncio stubs type replies as unions
        match kind:
            case "hash":
                value = {_text(k): _text(v) for k, v in (await redis.hgetall(key)).items()}
            case "string":
                value = _text(await redis.get(key))
            case "set":
                value = sorted(_text(m) for m in await redis.smembers(key))
            case "list":
                value = [_text(m) for m in await redis.lrange(key, 0, -1)]
            case "zset":
                pairs = await redis.zrange(key, 0, -1, withscores=True)
                value = {_text(m): repr(s) for m, s in pairs}
            case _:
                value = None
        return RedisEntry(key=key, type=kind, ttl_s=ttl if ttl >= 0 else None, value=value)


def _record(cls: type[R], columns: Sequence[str], row: Sequence[Any]) -> R:
    values = dict(zip(columns, row, strict=False))
    values["event_id"] = str(values["event_id"])
    if "holdout" in values:
        values["holdout"] = bool(values["holdout"])
    ts = values["ts"]
    if isinstance(ts, datetime) and ts.tzinfo is None:
        values["ts"] = ts.replace(tzinfo=UTC)  # the columns are DateTime64(3, 'UTC')
    return msgspec.convert(values, cls, strict=False)
