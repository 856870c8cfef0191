"""A single Redis server's hot commands over one pipelined connection, without redis-py's per-call
machinery.

Every decision reads its profile through a script call and every learning decision and click is
written through another; what a call costs the worker's event loop bounds what a decision costs.
redis-py spends most of a round trip's client CPU outside the protocol: a pool checkout (an
``asyncio`` lock and condition), a retry wrapper, ``wait_for`` timeouts for the write and the read,
observability hooks, and a ``StreamReader`` read per reply (``loadtests/bench_redis_call.py``:
about 130 µs of client CPU per script call against 27 µs for the bare protocol).

:class:`LeanRedis` is ``redis.asyncio.Redis`` (every command, pipeline, script, pub/sub and option
as before) whose plain, non-blocking commands (:data:`LEAN_COMMANDS`: script calls, reads and
simple writes) go over one connection of its own instead: each command is packed with
``hiredis.pack_command`` and written at once, replies are parsed by a ``hiredis.Reader`` in
``data_received`` and resolve the waiting callers in the order the commands were sent (Redis
answers a connection's commands in order), so any number of concurrent callers share the
connection (pipelining), with no lock on the way. Replies go through the client's response
callbacks (``HGETALL`` gives a dict, ...) and error replies become the exceptions redis-py raises
(``NoScriptError``, ``ResponseError``...), so callers cannot tell the difference.

Failures, as callers of the pooled client already handle them (``RedisError``s):

- no connection can be made: ``ConnectionError`` (``TimeoutError`` after
  ``socket_connect_timeout``); the next command tries again;
- the oldest unanswered command has waited ``socket_timeout``: ``TimeoutError`` for every
  command in flight and the connection is dropped (a later reply could no longer be matched to
  its caller); the next command reconnects;
- the connection breaks: ``ConnectionError`` for the commands in flight.

Writes and script calls are not sent again: one that timed out may have run, and running it twice
could count a click twice; callers treat the error as they do today (decisions answer
``degraded``, writes are re-queued or answered 503). Reads (:data:`READS`) are sent once more on
a new connection. A caller cancelled while waiting leaves its reply to be read and
dropped in turn.

Commands with options the fast path does not know (``NEVER_DECODE``, ``EMPTY_RESPONSE``),
arguments ``hiredis`` cannot pack (redis-py raises its ``DataError`` for them), a client on
TLS, or holding a single connection, a server without RESP3 (Redis before 6; redis-py falls back to
RESP2 there), and every other command keep redis-py's path. The lean connection speaks what
redis-py's connections speak (``HELLO 3``, or RESP2 when ``protocol=2``), so the same response
callbacks apply. A
Redis Cluster keeps redis-py's cluster client (:func:`decision_api.redis_client.connect`).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection, DefaultParser, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["LEAN_COMMANDS", "READS", "LeanConnection", "LeanPipeline", "LeanRedis", "Unsupported"]

LEAN_COMMANDS = frozenset(
    {
        "EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO",
        "GET", "MGET", "SET", "SETEX", "PSETEX", "GETDEL", "INCR", "INCRBY", "DECR", "DECRBY",
        "HGET", "HMGET", "HGETALL", "HSET", "HDEL", "HINCRBY", "HEXISTS", "HLEN",
        "EXISTS", "DEL", "UNLINK", "EXPIRE", "PEXPIRE", "TTL", "PTTL", "TYPE",
        "SMEMBERS", "SISMEMBER", "SADD", "SREM", "SCARD",
        "ZRANGEBYSCORE", "ZRANGE", "ZSCORE", "ZADD", "ZREM", "ZCARD",
        "LRANGE", "LLEN", "XADD", "PING",
    }
)  # fmt: skip
"""Commands sent over the lean connection: non-blocking ones that leave no state on the
connection (no ``MULTI``/``WATCH``/``SELECT``/``SUBSCRIBE``, no ``BLPOP`` or ``XREAD BLOCK``:
those would hold every other caller's replies back)."""

READS = frozenset(
    {
        "GET", "MGET", "HGET", "HMGET", "HGETALL", "HEXISTS", "HLEN", "EXISTS", "TTL", "PTTL",
        "TYPE", "SMEMBERS", "SISMEMBER", "SCARD", "ZRANGEBYSCORE", "ZRANGE", "ZSCORE", "ZCARD",
        "LRANGE", "LLEN", "PING",
    }
)  # fmt: skip
"""Lean commands that change nothing: after a timeout or a broken connection they are sent once
more (redis-py retries every command, up to ten times, backing off up to a second: a script
that timed out may have run, so a write is not sent again)."""

_NOT_ENOUGH = object()
_RECHECK_S = 0.005
"""How long after a command's deadline it is checked again (see ``_Protocol._check_timeout``)."""
_FALLBACK_OPTIONS = frozenset({"NEVER_DECODE", "EMPTY_RESPONSE"})
"""Options that change how redis-py reads a reply: commands given them keep its path. The others
(``withscores``, ``keys``...) are for the response callbacks, which both paths apply."""


class _Many:
    """The replies of a batch of commands (a pipeline), collected for one future."""

    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []

    def add(self, reply: Any) -> None:
        self.replies.append(reply)  # error replies stay in place, as in redis-py's pipelines
        self.left -= 1
        if not self.left and not self.future.done():
            self.future.set_result(self.replies)

    def done(self) -> bool:
        return self.future.done()

    def set_exception(self, error: BaseException) -> None:
        self.future.set_exception(error)


class _Protocol(asyncio.Protocol):
    """One connection: commands written in order, replies resolving callers in order."""

    def __init__(self, reader: Any, timeout: float | None, name: str) -> None:
        self._reader = reader
        self._timeout = timeout
        self._name = name
        self._waiting: collections.deque[tuple[asyncio.Future[Any] | _Many, float]] = (
            collections.deque()
        )
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's TCPTransport is no asyncio.Transport subclass

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future gets its reply (or the connection's error)."""
        loop = self._loop
        future: asyncio.Future[Any] = loop.create_future()
        if self._timeout is None:
            self._waiting.append((future, 0.0))
        else:
            self._waiting.append((future, loop.time() + self._timeout))
            if self._timer is None:
                self._timer = loop.call_at(loop.time() + self._timeout, self._check_timeout)
        self._transport.write(packed)
        return future

    def send_many(self, packed: list[bytes]) -> asyncio.Future[list[Any]]:
        """Write several packed commands at once; the future gets their replies, in order."""
        loop = self._loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        many = _Many(future, len(packed))
        deadline = 0.0 if self._timeout is None else loop.time() + self._timeout
        self._waiting.extend([(many, deadline)] * len(packed))
        if self._timeout is not None and self._timer is None:
            self._timer = loop.call_at(deadline, self._check_timeout)
        self._transport.write(b"".join(packed))
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self._waiting
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not _NOT_ENOUGH:
                future = waiting.popleft()[0]
                if isinstance(future, _Many):
                    future.add(reply)
                    continue
                if future.cancelled():
                    continue  # its caller gave up; the reply is read and dropped in turn
                if isinstance(reply, Exception):  # ResponseError, AuthenticationError...
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (InvalidResponse, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(RedisConnectionError(f"Protocol error from {self._name}: {exc}"))

    def _check_timeout(self, overdue: object = None) -> None:
        """Fail the connection when its oldest command is past its deadline, twice in a row.

        An event loop runs due timers before it reads its sockets: after the loop was held up
        (a long callback, a starved thread) the deadline can pass with the reply already
        received and not yet read. So an overdue command is checked once more a few
        milliseconds later, after the loop has read its sockets, and only then failed.
        """
        self._timer = None
        if not self._waiting or self.closed:
            return
        oldest, deadline = self._waiting[0]
        now = self._loop.time()
        if deadline > now:
            self._timer = self._loop.call_at(deadline, self._check_timeout)
        elif overdue is oldest:
            self._fail(RedisTimeoutError(f"Timeout reading from {self._name}"))
        else:
            self._timer = self._loop.call_at(now + _RECHECK_S, self._check_timeout, oldest)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc else ""
        self._fail(RedisConnectionError(f"Connection closed by server ({self._name}){detail}"))

    def _fail(self, error: Exception) -> None:
        """Fail every waiting command with ``error`` and drop the connection."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        waiting, self._waiting = self._waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(type(error)(*error.args))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        """Close the connection (commands in flight fail with ``ConnectionError``)."""
        self._fail(RedisConnectionError(f"Connection to {self._name} closed by the client"))


class Unsupported(RedisConnectionError):
    """The server cannot serve the lean connection (no ``HELLO 3``: Redis before 6)."""


class LeanConnection:
    """One pipelined connection to a single Redis server, (re)connected on demand.

    ``options`` are redis-py's connection options (``host``, ``port`` or ``path``, ``db``,
    ``username``, ``password``, ``socket_timeout``, ``socket_connect_timeout``, ``client_name``,
    ``decode_responses``, ``encoding``, ``encoding_errors``), as the connection pool holds them.
    """

    def __init__(self, options: dict[str, Any], *, unix: bool = False, resp3: bool = True) -> None:
        self._options = options
        self._unix = unix
        self.resp3 = resp3
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        where = options.get("path") if unix else f"{options.get('host')}:{options.get('port')}"
        self.name = str(where)
        self.connects = 0
        """How many connections were made (a test and the benchmarks read it)."""

    def _reader(self) -> Any:
        kwargs: dict[str, Any] = {
            "protocolError": InvalidResponse,
            "replyError": DefaultParser.parse_error,
            "notEnoughData": _NOT_ENOUGH,
        }
        if self._options.get("decode_responses"):
            kwargs["encoding"] = self._options.get("encoding", "utf-8")
            kwargs["errors"] = self._options.get("encoding_errors", "strict")
        return hiredis.Reader(**kwargs)

    async def call(self, packed: bytes) -> Any:
        """The reply to one packed command (an error reply raises)."""
        protocol = self._protocol
        if protocol is None or protocol.closed or self._loop is not asyncio.get_running_loop():
            protocol = await self._connect()
        return await protocol.send(packed)

    async def call_many(self, packed: list[bytes]) -> list[Any]:
        """The replies to several packed commands, sent in one write (error replies are
        returned in place, not raised)."""
        protocol = self._protocol
        if protocol is None or protocol.closed or self._loop is not asyncio.get_running_loop():
            protocol = await self._connect()
        return await protocol.send_many(packed)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests, CLI): the old connection is dead
            self._protocol, self._connecting, self._loop = None, None, loop
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:  # one connection attempt, shared by concurrent callers
            self._connecting = loop.create_future()
            task = loop.create_task(self._open())
            task.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task[_Protocol]) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is None or connecting.done():
            return
        if task.cancelled():
            connecting.set_exception(RedisConnectionError(f"Connecting to {self.name} cancelled"))
        elif (exc := task.exception()) is not None:
            connecting.set_exception(exc)
        else:
            self._protocol = task.result()
            connecting.set_result(self._protocol)
        if connecting.exception() is not None:
            # Every caller gets the exception; none may be left to log it as unretrieved.
            connecting.exception()

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        timeout = options.get("socket_timeout")
        connect_timeout = options.get("socket_connect_timeout") or timeout
        protocol = _Protocol(self._reader(), timeout, self.name)
        try:
            async with asyncio.timeout(connect_timeout):
                if self._unix:
                    await loop.create_unix_connection(lambda: protocol, options["path"])
                else:
                    await loop.create_connection(
                        lambda: protocol,
                        options.get("host", "localhost"),
                        options.get("port", 6379),
                    )
                setup: list[tuple[Any, ...]] = []
                password, username = options.get("password"), options.get("username")
                hello: tuple[Any, ...] | None = None
                if self.resp3:  # as redis-py: its response callbacks expect RESP3 replies
                    hello = ("HELLO", 3)
                    if password is not None:
                        hello += ("AUTH", username or "default", password)
                    setup.append(hello)
                elif password is not None:
                    setup.append(("AUTH", username, password) if username else ("AUTH", password))
                if options.get("db"):
                    setup.append(("SELECT", options["db"]))
                if options.get("client_name"):
                    setup.append(("CLIENT", "SETNAME", options["client_name"]))
                replies = [protocol.send(hiredis.pack_command(c)) for c in setup]
                for command, reply in zip(setup, replies, strict=True):
                    try:
                        await reply
                    except ResponseError as exc:
                        if command is hello and "unknown command" in str(exc).lower():
                            raise Unsupported(f"{self.name} does not speak RESP3") from exc
                        raise
        except TimeoutError:
            protocol.close()
            raise RedisTimeoutError(f"Timeout connecting to {self.name}") from None
        except OSError as exc:
            protocol.close()
            raise RedisConnectionError(f"Error connecting to {self.name}: {exc}") from exc
        except BaseException:
            protocol.close()
            raise
        self.connects += 1
        return protocol

    def close(self) -> None:
        """Drop the connection (a later call reconnects)."""
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


class LeanRedis(Redis):
    """``redis.asyncio.Redis`` whose :data:`LEAN_COMMANDS` use a :class:`LeanConnection`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool = self.connection_pool
        options = dict(pool.connection_kwargs)
        cls = pool.connection_class
        usable = (
            cls in (Connection, UnixDomainSocketConnection)
            and not self.single_connection_client
            and options.get("protocol") in (None, 2, "2", 3, "3")
            and options.get("credential_provider") is None
        )
        resp3 = options.get("protocol") not in (2, "2")
        self.lean: LeanConnection | None = (
            LeanConnection(options, unix=cls is UnixDomainSocketConnection, resp3=resp3)
            if usable
            else None
        )
        self._callbacks: dict[Any, Callable[..., Any]] = self.response_callbacks  # type: ignore[assignment]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        lean = self.lean
        name = args[0]
        if (
            lean is None
            or name not in LEAN_COMMANDS
            or (options and not _FALLBACK_OPTIONS.isdisjoint(options))
        ):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        try:
            packed = hiredis.pack_command(args)
        except TypeError:  # None, bool, a dict...: redis-py raises its own DataError for them
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        try:
            reply = await lean.call(packed)
        except Unsupported:  # an old server (redis-py falls back to RESP2 its own way)
            self.lean = None
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError):
            if name not in READS:
                raise
            reply = await lean.call(packed)  # a read is tried once more, on a new connection
        callback = self._callbacks.get(name)
        if callback is None:
            return reply
        options.pop("keys", None)
        result = callback(reply, **options)
        return await result if inspect.isawaitable(result) else result

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        """A pipeline; without a transaction its lean commands go over the lean connection."""
        if self.lean is None:
            return super().pipeline(transaction, shard_hint)
        return LeanPipeline(self, self.lean, transaction, shard_hint)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.lean is not None:
            self.lean.close()
        await super().aclose(close_connection_pool)


class LeanPipeline(Pipeline):
    """redis-py's pipeline whose non-transactional batches of :data:`LEAN_COMMANDS` are written to
    the lean connection in one write (a transaction, ``WATCH`` or any other command keeps
    redis-py's path).

    redis-py asks the server whether the pipeline's scripts exist (``SCRIPT EXISTS``, a round
    trip of its own) before every pipeline holding script calls; this one sends the calls at
    once, and only when the server answers ``NOSCRIPT`` (a restarted or flushed Redis) loads
    those scripts and sends those calls again, after the others (which already ran).
    """

    def __init__(
        self, client: LeanRedis, lean: LeanConnection, transaction: bool, shard_hint: str | None
    ) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._client = client
        self._lean = lean

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if (
            not stack
            or self.is_transaction
            or self.explicit_transaction
            or self.watching
            or any(
                args[0] not in LEAN_COMMANDS or not _FALLBACK_OPTIONS.isdisjoint(options)
                for args, options in stack
            )
        ):
            return await super().execute(raise_on_error)
        try:
            packed = [hiredis.pack_command(cast(Any, args)) for args, _ in stack]
        except TypeError:  # redis-py raises its own DataError
            return await super().execute(raise_on_error)
        try:
            replies = await self._lean.call_many(packed)
            if self.scripts:
                await self._rerun_unknown_scripts(replies)
        finally:
            await self.reset()  # type: ignore[no-untyped-call]
        callbacks = self.response_callbacks
        response: list[Any] = []
        for (args, options), reply in zip(stack, replies, strict=True):
            if isinstance(reply, Exception):
                response.append(reply)
                continue
            callback = callbacks.get(cast(str, args[0]))
            if callback is None:
                response.append(reply)
                continue
            result = callback(reply, **{k: v for k, v in options.items() if k != "keys"})
            response.append(await result if inspect.isawaitable(result) else result)
        if raise_on_error:
            self.raise_first_error(stack, response)
        return response

    async def _rerun_unknown_scripts(self, replies: list[Any]) -> None:
        """Load the scripts the server did not know and run their calls again (in place)."""
        failed = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if not failed:
            return
        stack = self.command_stack
        by_sha: dict[Any, Any] = {script.sha: script for script in self.scripts}
        for sha in {stack[i][0][1] for i in failed}:
            script = by_sha.get(sha)
            if script is not None:
                script.sha = await self._client.script_load(script.script)
        again = await self._lean.call_many(
            [hiredis.pack_command(cast(Any, stack[i][0])) for i in failed]
        )
        for i, reply in zip(failed, again, strict=True):
            replies[i] = reply
