"""Data rights: export everything stored about a unit, and erase it.

What is "about a unit" (see the key layouts in :mod:`decision_api.profiles.store` and
:mod:`bandits.join`):

- Redis keys whose Cluster hash tag is the unit id or its pseudonym (``{p}:u:{<unit>}`` profile
  and any ``{p}:u:{<unit>}:...`` key beside it), and keys tagged with one of the unit's decision
  ids (``{p}:dec:{<decision>}:...`` records awaiting their reward). Found with one ``SCAN`` over
  the prefix, so an erasure costs a pass over the keyspace: an admin operation, not a hot path.
- Event-log rows in every table with a ``unit_id`` column (exposures, outcomes, ...) under the
  unit id or its pseudonym (``anon:...``, what units without consent are logged as), removed with
  ``ALTER TABLE ... DELETE`` and ``mutations_sync = 2`` (the rows are rewritten away, not
  masked, before the call returns).
- Events not yet written: the writer's buffers and its disk spool are filtered first, so nothing
  about the unit reaches the event log after the erasure; queued Redis writes (frequency-cap hits,
  decision records) are flushed before the keys are deleted.

The erasure is recorded in the audit table under the unit's pseudonym (a keyed hash), never the
raw id. It is idempotent: when the event log is down it fails with 503 before touching Redis, and
can simply be repeated. Known limits: a decision for the unit being served on another worker at
the same moment can still be logged after the erasure (within one flush interval); training
examples already finalised into the learner's stream (``{p}:train``, trimmed by length) are not
searched.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import structlog
from redis.asyncio import Redis

from decision_api.logging import unit_ref
from decision_api.profiles.store import OPTOUT_FIELD, decode_feature, decode_profile, unit_key
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
R = TypeVar("R", ExposureRecord, OutcomeRecord)
_GLOB = re.compile(r"([*?\[\]\\])")

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
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._log = event_log
        self._writer = writer
        self._pseudonymise = pseudonymise
        self._audit = audit
        self._flushers = tuple(flushers)

    async def unit_keys(self, tags: frozenset[str]) -> list[str]:
        """Every key under the prefix whose hash tag is one of ``tags`` (one SCAN pass)."""
        found = []
        async for key in self._redis.scan_iter(
            match=_escape(self._prefix) + ":*", count=SCAN_COUNT
        ):
            name = _text(key)
            if hash_tag(name) in tags:
                found.append(name)
        return found

    async def erase(self, unit_id: str) -> ErasureReport:
        """Remove everything stored about ``unit_id``; raises EventLogUnavailable (503) if down."""
        pseudonym = self._pseudonymise(unit_id)
        ids = frozenset({unit_id, pseudonym})
        for flush in self._flushers:  # queued Redis writes (caps, join records) land first
            await flush()
        unwritten = await self._writer.forget(ids)
        decisions = {e.decision_id for e in unwritten if isinstance(e, Exposure)}
        rows = await asyncio.to_thread(self._erase_rows, sorted(ids), decisions)
        keys = await self.unit_keys(ids | frozenset(decisions))
        for start in range(0, len(keys), 500):
            await self._redis.unlink(*keys[start : start + 500])
        report = ErasureReport(
            pseudonym=pseudonym,
            redis_keys=len(keys),
            event_log_rows=rows,
            unwritten_events=len(unwritten),
        )
        detail = msgspec.json.encode(
            {"redis_keys": len(keys), "rows": rows, "unwritten": len(unwritten)}
        ).decode()
        self._audit("erase", "unit", pseudonym, 0, detail)
        log.info("unit_erased", unit=unit_ref(unit_id), redis_keys=len(keys), rows=rows)
        return report

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
        await self._writer.flush()
        exposures, outcomes = await asyncio.to_thread(self._rows, sorted(ids))
        others = [k for k in await self.unit_keys(ids) if k != profile_key]
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

    def _rows(self, ids: Sequence[str]) -> tuple[list[ExposureRecord], list[OutcomeRecord]]:
        params: dict[str, object] = {"units": list(ids), "limit": EXPORT_LIMIT}
        exposures = [
            _record(ExposureRecord, event_sql.EXPOSURE_COLUMNS, row)
            for row in self._log.query(event_sql.UNIT_EXPOSURES, params)
        ]
        params["decisions"] = sorted({e.decision_id for e in exposures})
        outcomes = [
            _record(OutcomeRecord, event_sql.OUTCOME_COLUMNS, row)
            for row in self._log.query(event_sql.UNIT_OUTCOMES, params)
        ]
        return exposures, outcomes

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
