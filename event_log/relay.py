"""The event log through Redis, for several API workers sharing one embedded chdb.

A chdb data directory can be open in one process only. With ``tailor serve --workers N`` on the
embedded default, one *owner* process (:func:`run_owner`, started by the CLI) holds chdb; every
API worker talks to it through Redis with :class:`RelayEventLog`, an :class:`EventLog` like the
others:

- inserts become entries of a Redis Stream, consumed by the owner through a consumer group and
  inserted with the batch's original deduplication token, then acknowledged and deleted — a
  redelivered entry cannot double count, and while chdb is slow or down the stream is the
  buffer (DESIGN: "a Redis-backed buffer when ClickHouse is slow or down");
- queries and commands (reports, warm start, data rights) travel as request/response messages.

If Redis itself is down, an insert raises :class:`EventLogUnavailable`, so the worker's batching
writer spools the batch to its disk spool and replays it later, as with any event log.

Key layout (``{p}`` = key prefix):

- ``{p}:evlog:events`` STREAM — ``t`` (table), ``k`` (dedup token), ``n`` (row count) and ``b``
  (the rows as the insert body, :func:`event_log.sql.encode_rows`: the worker encodes
  them and the owner passes them to chdb untouched), or ``r`` (msgpack rows, written by earlier
  versions and still read); entries are deleted once inserted; trimmed to ``STREAM_MAXLEN``
  entries as a last-resort bound;
- ``{p}:evlog:req`` LIST — pending query requests (msgpack), consumed by the owner;
- ``{p}:evlog:resp:<id>`` LIST — one response, expires after ``RESPONSE_TTL_S``;
- ``{p}:evlog:owner`` STRING — owner heartbeat (owner pid), expires after 5 s.

Every command touches one key, so the relay works on a Redis Cluster as it is: the server passes
``connect`` (its cluster-aware client factory, ``decision_api.redis_client.connect_sync``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis
import structlog
from redis.exceptions import RedisError, ResponseError

from event_log import sql as event_sql
from event_log.rows import Table
from event_log.store import ClickHouseEventLog
from tailor_contract.errors import EventLogUnavailable

log = structlog.get_logger("tailor.event_relay")

STREAM_MAXLEN = 100_000
RESPONSE_TTL_S = 120
OWNER_GROUP = "owner"
HEARTBEAT_S = 5


class _Request(msgspec.Struct, frozen=True, array_like=True):
    id: str
    kind: str  # "query" | "command"
    sql: str
    parameters: dict[str, Any]


class _Response(msgspec.Struct, frozen=True, array_like=True):
    ok: bool
    rows: list[list[Any]]
    error: str = ""


Connect = Callable[..., redis.Redis]
"""Makes the blocking Redis client from connection options (``socket_timeout``...)."""


def _client(redis_url: str, connect: Connect | None, **options: Any) -> redis.Redis:
    if connect is not None:
        return connect(**options)
    return redis.Redis.from_url(redis_url, **options)


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(_Request)
_response_decoder = msgspec.msgpack.Decoder(_Response)


class RelayKeys:
    """The Redis keys of one Tailor namespace's relay."""

    def __init__(self, prefix: str) -> None:
        self.stream = f"{prefix}:evlog:events"
        self.requests = f"{prefix}:evlog:req"
        self.response_prefix = f"{prefix}:evlog:resp:"
        self.heartbeat = f"{prefix}:evlog:owner"


class RelayEventLog:
    """An :class:`EventLog` whose owner is another process, reached through Redis."""

    embedded = False

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        timeout_s: float = 60.0,
        connect: Connect | None = None,
    ) -> None:
        """``connect`` (if given) makes the client instead of ``redis_url``."""
        self._redis = _client(
            redis_url, connect, socket_timeout=timeout_s + 5, socket_connect_timeout=2
        )
        self._keys = RelayKeys(prefix)
        self._timeout_s = timeout_s

    def migrate(self) -> list[int]:
        """The owner migrates; nothing to do here."""
        return []

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Hand a batch to the owner (one stream entry)."""
        if not rows:
            return
        try:
            self._redis.xadd(
                self._keys.stream,
                {"t": table, "k": token, "n": len(rows), "b": event_sql.encode_rows(table, rows)},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        except RedisError as exc:
            # The exception's text names Redis's address: it stays out of API answers.
            raise EventLogUnavailable(f"event relay unreachable ({type(exc).__name__})") from exc

    def _call(self, kind: str, sql: str, parameters: Mapping[str, Any] | None) -> _Response:
        request = _Request(
            id=uuid.uuid4().hex, kind=kind, sql=sql, parameters=dict(parameters or {})
        )
        try:
            self._redis.lpush(self._keys.requests, _encoder.encode(request))
            reply: Any = self._redis.brpop(
                [self._keys.response_prefix + request.id], self._timeout_s
            )
        except RedisError as exc:
            # The exception's text names Redis's address: it stays out of API answers.
            raise EventLogUnavailable(f"event relay unreachable ({type(exc).__name__})") from exc
        if reply is None:
            raise EventLogUnavailable(
                f"the event-log owner did not answer within {self._timeout_s:.0f} s"
            )
        response = _response_decoder.decode(reply[1])
        if not response.ok:
            raise EventLogUnavailable(response.error)
        return response

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query in the owner process."""
        return [tuple(row) for row in self._call("query", sql, parameters).rows]

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement in the owner process."""
        self._call("command", sql, parameters)

    def ping(self) -> bool:
        """Whether the owner is alive (its heartbeat is fresh) and Redis answers."""
        try:
            return bool(self._redis.exists(self._keys.heartbeat))
        except RedisError:
            return False

    def close(self) -> None:
        """Close the Redis connections."""
        self._redis.close()


class Owner:
    """Holds the real event log; drains the stream into it and answers queries."""

    def __init__(
        self,
        event_log: ClickHouseEventLog,
        redis_url: str,
        prefix: str,
        connect: Connect | None = None,
    ) -> None:
        self._log = event_log
        self._redis = _client(redis_url, connect, socket_timeout=10, socket_connect_timeout=2)
        self._keys = RelayKeys(prefix)
        self.inserted = 0

    def start(self) -> None:
        """Create the consumer group (from the stream's start)."""
        try:
            self._redis.xgroup_create(self._keys.stream, OWNER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def drain(self, block_ms: int = 100, *, pending: bool = False) -> int:
        """Insert one read of stream entries; returns how many entries were inserted."""
        reply: Any = self._redis.xreadgroup(
            OWNER_GROUP,
            "owner",
            {self._keys.stream: "0" if pending else ">"},
            count=20,
            block=block_ms if block_ms > 0 and not pending else None,  # 0 would block forever
        )
        done = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:
                    table: Any = fields[b"t"].decode()
                    token = fields[b"k"].decode()
                    body = fields.get(b"b")
                    if body is not None:
                        self._log.insert_encoded(table, body, token)
                        self.inserted += int(fields[b"n"])
                    else:  # an entry in the earlier format (msgpack rows)
                        rows = msgspec.msgpack.decode(fields[b"r"])
                        self._log.insert(table, [tuple(r) for r in rows], token)
                        self.inserted += len(rows)
                self._redis.xack(self._keys.stream, OWNER_GROUP, entry_id)
                self._redis.xdel(self._keys.stream, entry_id)
                done += 1
        return done

    def answer(self, limit: int = 20) -> int:
        """Answer up to ``limit`` waiting query requests."""
        answered = 0
        while answered < limit:
            raw: Any = self._redis.rpop(self._keys.requests)
            if raw is None:
                break
            request = _request_decoder.decode(raw)
            try:
                if request.kind == "command":
                    self._log.command(request.sql, request.parameters)
                    response = _Response(ok=True, rows=[])
                else:
                    rows = self._log.query(request.sql, request.parameters)
                    response = _Response(ok=True, rows=[list(r) for r in rows])
            except EventLogUnavailable as exc:
                response = _Response(ok=False, rows=[], error=str(exc))
            key = self._keys.response_prefix + request.id
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, _encoder.encode(response))
                pipe.expire(key, RESPONSE_TTL_S)
                pipe.execute()
            answered += 1
        return answered

    def heartbeat(self) -> None:
        """Tell workers the owner is alive."""
        self._redis.set(self._keys.heartbeat, str(os.getpid()), ex=HEARTBEAT_S)

    def backlog(self) -> int:
        """Stream entries not yet inserted."""
        return int(self._redis.xlen(self._keys.stream))

    def close(self) -> None:
        """Close the Redis connection."""
        self._redis.close()


def run_owner(
    event_log_url: str, redis_url: str, prefix: str, stop: Any, connect: Connect | None = None
) -> Owner:
    """Own the event log until ``stop.is_set()``; then drain what is left and return.

    A failing insert (chdb error) leaves its entry unacknowledged in the stream: it is retried
    (with the same token) after a pause, so nothing is lost while the store recovers.
    """
    from event_log.store import open_event_log

    event_log = open_event_log(event_log_url)
    event_log.migrate()
    owner = Owner(event_log, redis_url, prefix, connect)
    owner.start()
    log.info("event_log_owner_started", pid=os.getpid())
    retry_pending = True
    try:
        while True:
            stopping = stop.is_set()
            try:
                owner.heartbeat()
                if retry_pending:
                    while owner.drain(pending=True):
                        pass
                    retry_pending = False
                drained = owner.drain(block_ms=0 if stopping else 50)
                owner.answer()
                if stopping and not drained and owner.backlog() == 0:
                    break
            except (EventLogUnavailable, RedisError) as exc:
                log.warning("event_log_owner_retrying", error=str(exc))
                retry_pending = True
                if stopping and isinstance(exc, RedisError):
                    break
                time.sleep(1.0)
    finally:
        owner.close()
        event_log.close()
        log.info("event_log_owner_stopped", inserted=owner.inserted)
    return owner
