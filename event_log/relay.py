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

Durability of an added entry. Redis replicates asynchronously: an ``XADD`` its primary
acknowledged can still be lost with that primary, when the replica that takes over never got it,
and the worker has dropped the batch by then. So when the stream's primary has replicas (``ROLE``,
counted again every ``REPLICAS_TTL_S``), the insert sends ``WAIT 1 REPLICA_ACK_TIMEOUT_MS`` after
its ``XADD`` on the same connection and succeeds only once a replica holds the entry; otherwise it
raises :class:`EventLogUnreachable` and the writer keeps the batch in its disk spool, to add it
again later with the same deduplication token (the owner's insert drops the copy if the first
entry survived). A primary without replicas cannot fail over to one, so there is nothing to wait
for and the entry is added as it is.

If Redis itself is down (or refuses the write: full, a cluster slot without a primary), an
insert raises :class:`EventLogUnreachable`, so the worker's batching writer spools the batch to
its disk spool and replays it later, as with any event log; it never takes such a batch for one
the log rejects, whatever :meth:`RelayEventLog.ping` says (on a cluster the heartbeat may live on
a node that answers while the stream's does not).

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

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis
import structlog
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from event_log import sql as event_sql
from event_log.rows import Table
from event_log.store import ClickHouseEventLog
from tailor_contract.errors import EventLogUnavailable, EventLogUnreachable

log = structlog.get_logger("tailor.event_relay")

STREAM_MAXLEN = 100_000
RESPONSE_TTL_S = 120
OWNER_GROUP = "owner"
HEARTBEAT_S = 5
REPLICA_ACK_TIMEOUT_MS = 1000
"""How long an insert waits for a replica of the stream's primary to acknowledge its entry
before the batch goes to the worker's spool."""
REPLICAS_TTL_S = 10.0
"""How long an insert trusts its count of the stream primary's connected replicas."""
STOP_RETRY_S = 30.0
"""How long a stopping owner retries Redis or chdb to drain the stream (``tailor serve`` waits
60 s for it); what is left stays in the stream for the next owner."""


class _Request(msgspec.Struct, frozen=True, array_like=True):
    id: str
    kind: str  # "query" | "command"
    sql: str
    parameters: dict[str, Any]


class _Response(msgspec.Struct, frozen=True, array_like=True):
    ok: bool
    rows: list[list[Any]]
    error: str = ""


REDIS_ERRORS = (RedisError, RedisClusterException)
"""What a Redis call may raise when Redis is down or failing over: redis-py's cluster client
raises ``RedisClusterException``, not a ``RedisError``, when no node serves a slot."""

Connect = Callable[..., redis.Redis]
"""Makes the blocking Redis client from connection options (``socket_timeout``...)."""


def _client(redis_url: str, connect: Connect | None, **options: Any) -> redis.Redis:
    if connect is not None:
        return connect(**options)
    return redis.Redis.from_url(redis_url, **options)


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(_Request)
_response_decoder = msgspec.msgpack.Decoder(_Response)


def _refresh_topology(client: redis.Redis) -> None:
    """On a cluster client, learn the slots' primaries again (after a node failed a command
    that does not refresh by itself: a pipeline, a command sent to one node)."""
    if isinstance(client, redis.RedisCluster):
        with contextlib.suppress(*REDIS_ERRORS):
            client.nodes_manager.initialize()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id as a comparable (milliseconds, sequence)."""
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


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
        # Connected replicas of the stream's primary, by node name: (count, when counted).
        self._replicas: dict[str, tuple[int, float]] = {}

    def migrate(self) -> list[int]:
        """The owner migrates; nothing to do here."""
        return []

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Hand a batch to the owner (one stream entry), held by a replica too when the stream's
        primary has any; raises :class:`EventLogUnreachable` when Redis does not take it or no
        replica acknowledged it within ``REPLICA_ACK_TIMEOUT_MS`` (see the module docstring)."""
        if not rows:
            return
        fields = {"t": table, "k": token, "n": len(rows), "b": event_sql.encode_rows(table, rows)}
        stream = self._keys.stream
        name = ""
        try:
            name, node = self._stream_node()
            if self._replica_count(name, node) == 0:
                self._redis.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
                return
            with node.pipeline(transaction=False) as pipe:  # one connection: WAIT covers the XADD
                pipe.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
                pipe.wait(1, REPLICA_ACK_TIMEOUT_MS)
                acked = int(pipe.execute()[1])
        except REDIS_ERRORS as exc:
            self._replicas.pop(name, None)
            self._refresh_topology()
            # The exception's text names Redis's address: it stays out of API answers.
            raise EventLogUnreachable(f"event relay unreachable ({type(exc).__name__})") from exc
        if acked < 1:
            self._replicas.pop(name, None)  # counted again next time: the replica may be gone
            raise EventLogUnreachable(
                f"no replica acknowledged the event relay's entry within {REPLICA_ACK_TIMEOUT_MS}"
                " ms; the batch stays in the spool"
            )

    def _stream_node(self) -> tuple[str, redis.Redis]:
        """The name of the stream's primary and a client of that node alone (on a single
        server: the client itself)."""
        if isinstance(self._redis, redis.RedisCluster):
            node: Any = self._redis.get_node_from_key(self._keys.stream)
            client: redis.Redis = self._redis.get_redis_connection(node)
            return str(node.name), client
        return "", self._redis

    def _replica_count(self, name: str, node: redis.Redis) -> int:
        """Replicas connected to the stream's primary (``ROLE``), counted every
        ``REPLICAS_TTL_S``."""
        counted = self._replicas.get(name)
        now = time.monotonic()
        if counted is not None and now - counted[1] < REPLICAS_TTL_S:
            return counted[0]
        role: Any = node.role()
        count = len(role[2]) if _text(role[0]) == "master" else 0
        self._replicas[name] = (count, now)
        return count

    def _refresh_topology(self) -> None:
        """After a failed insert on a cluster: learn the slots' primaries again (the insert
        talks to the stream's node directly, which follows no ``MOVED``)."""
        _refresh_topology(self._redis)

    def _call(self, kind: str, sql: str, parameters: Mapping[str, Any] | None) -> _Response:
        request = _Request(
            id=uuid.uuid4().hex, kind=kind, sql=sql, parameters=dict(parameters or {})
        )
        try:
            self._redis.lpush(self._keys.requests, _encoder.encode(request))
            reply: Any = self._redis.brpop(
                [self._keys.response_prefix + request.id], self._timeout_s
            )
        except REDIS_ERRORS as exc:
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
        except REDIS_ERRORS:
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
        # Answers Redis has not taken yet: (response key, body, when answered). A query request
        # is popped before it is answered, so an answer that cannot be pushed (a failover moved
        # the response key's slot) is kept and pushed again, not lost with its request.
        self._unsent: list[tuple[str, bytes, float]] = []

    def start(self) -> None:
        """Create the consumer group (from the stream's start) unless it exists.

        Called again whenever Redis answers ``NOGROUP``: a Redis restarted without its data (the
        private one keeps nothing on disk) has lost the group, and the entries workers add
        since then must still be read.
        """
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
        """Answer up to ``limit`` waiting query requests.

        An answer Redis does not take is kept (the error propagates, the caller retries later)
        and pushed first on the next call, so a request popped just before a failover is still
        answered, within its caller's wait if the retry comes soon enough.
        """
        self._push_answers()
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
            self._unsent.append((key, _encoder.encode(response), time.monotonic()))
            answered += 1
            self._push_answers()
        return answered

    def _push_answers(self) -> None:
        """Push the kept answers in order; one Redis refuses stays, with those after it (an
        answer older than ``RESPONSE_TTL_S`` is dropped: nobody waits for it any more)."""
        while self._unsent:
            key, body, at = self._unsent[0]
            if time.monotonic() - at < RESPONSE_TTL_S:
                try:  # two commands, not a pipeline: a cluster pipeline that meets a dead
                    # primary does not learn the new one, and every retry went to the dead node
                    self._redis.lpush(key, body)
                    self._redis.expire(key, RESPONSE_TTL_S)
                except REDIS_ERRORS:
                    _refresh_topology(self._redis)
                    raise
            self._unsent.pop(0)

    def heartbeat(self) -> None:
        """Tell workers the owner is alive."""
        self._redis.set(self._keys.heartbeat, str(os.getpid()), ex=HEARTBEAT_S)

    def _group(self) -> dict[str, Any] | None:
        """The owner group's ``XINFO GROUPS`` entry (None: the group is gone)."""
        groups: Any = self._redis.xinfo_groups(self._keys.stream)
        return next((g for g in groups if _text(g["name"]) == OWNER_GROUP), None)

    def backlog(self) -> int:
        """Stream entries not yet inserted: read but not acknowledged, or not yet read.

        Not the stream's length: an entry acknowledged but not deleted (Redis restarted from an
        append-only file that kept the ``XACK`` but not the ``XDEL``) is inserted already, and
        counting it kept a stopping owner waiting for ever.
        """
        group = self._group()
        if group is None:
            return int(self._redis.xlen(self._keys.stream))
        after = "(" + _text(group["last-delivered-id"])
        unread: Any = self._redis.xrange(self._keys.stream, min=after, count=1)
        return int(group["pending"]) + len(unread)

    def tidy(self, limit: int = 10_000) -> int:
        """Delete up to ``limit`` entries inserted already (read and acknowledged, left behind
        by a Redis restart); returns how many."""
        group = self._group()
        if group is None:
            return 0
        last = _stream_id(group["last-delivered-id"])
        pending: Any = self._redis.xpending_range(self._keys.stream, OWNER_GROUP, "-", "+", limit)
        unacked = {p["message_id"] for p in pending}
        entries: Any = self._redis.xrange(self._keys.stream, count=limit)
        done = [
            entry_id
            for entry_id, _ in entries
            if entry_id not in unacked and _stream_id(entry_id) <= last
        ]
        if done:
            self._redis.xdel(self._keys.stream, *done)
        return len(done)

    def close(self) -> None:
        """Close the Redis connection."""
        self._redis.close()


def run_owner(
    event_log_url: str, redis_url: str, prefix: str, stop: Any, connect: Connect | None = None
) -> Owner:
    """Own the event log until ``stop.is_set()``; then drain what is left and return.

    A failing insert (chdb error) leaves its entry unacknowledged in the stream: it is retried
    (with the same token) after a pause, so nothing is lost while the store recovers. Redis
    errors are retried the same way, the consumer group is created again if Redis lost it, and a
    stopping owner keeps retrying for up to ``STOP_RETRY_S`` before it leaves what is left in
    the stream for the next owner.
    """
    from event_log.store import open_event_log

    event_log = open_event_log(event_log_url)
    event_log.migrate()
    owner = Owner(event_log, redis_url, prefix, connect)
    log.info("event_log_owner_started", pid=os.getpid())
    grouped = False  # the consumer group exists (as far as the owner knows)
    retry_pending = True
    give_up_at: float | None = None
    try:
        while True:
            stopping = stop.is_set()
            if stopping and give_up_at is None:
                give_up_at = time.monotonic() + STOP_RETRY_S
            try:
                if not grouped:
                    owner.start()
                    if tidied := owner.tidy():
                        log.info("event_log_owner_tidied", entries=tidied)
                    grouped = True
                owner.heartbeat()
                if retry_pending:
                    while owner.drain(pending=True):
                        pass
                    retry_pending = False
                drained = owner.drain(block_ms=0 if stopping else 50)
                owner.answer()
                if stopping and not drained and owner.backlog() == 0:
                    break
            except (EventLogUnavailable, *REDIS_ERRORS) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    grouped = False
                retry_pending = True
                if give_up_at is not None and time.monotonic() >= give_up_at:
                    log.error("event_log_owner_left_backlog", error=str(exc))
                    break
                log.warning("event_log_owner_retrying", error=str(exc))
                time.sleep(0.5 if stopping else 1.0)
    finally:
        owner.close()
        event_log.close()
        log.info("event_log_owner_stopped", inserted=owner.inserted)
    return owner
