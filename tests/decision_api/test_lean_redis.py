"""The serving worker's lean Redis client on a real ``redis-server``: the same replies and errors
as redis-py, one pipelined connection for any number of concurrent callers, and the failure
semantics a worker relies on (a Redis that stops answering or goes away fails the calls in
flight with ``RedisError``s, and the next call reconnects)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bandits.scripts import run_script
from decision_api.app import create_app
from decision_api.lean_redis import LeanRedis
from decision_api.redis_client import connect
from decision_api.redis_server import RedisServer, free_port
from decision_api.settings import RedisSettings, Settings
from tests.support.polling import eventually

LEARNING = {
    "key": "hero",
    "placement": "home",
    "variants": [{"key": "a"}, {"key": "b"}],
    "default_variant": "a",
    "policy": {"kind": "thompson"},
    "primary_metric": "click",
}
SCRIPT = "return {redis.call('HGETALL', KEYS[1]), ARGV[1], tonumber(ARGV[2]) * 2}"


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[LeanRedis, Redis, str]]:
    """A lean client and a redis-py client on the session's server, and a fresh key prefix."""
    lean = LeanRedis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    plain = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield lean, plain, "lean-" + uuid.uuid4().hex[:10]
    finally:
        await lean.aclose()
        await plain.aclose()


async def test_replies_are_redis_pys(pair: tuple[LeanRedis, Redis, str]) -> None:
    """Hot commands answer exactly what redis-py answers (response callbacks included), and go
    over the lean connection."""
    lean, plain, p = pair
    await plain.hset(f"{p}:h", mapping={"a": "1", "é": "ü"})
    await plain.set(f"{p}:s", "v")
    await plain.zadd(f"{p}:z", {"m1": 1.5, "m2": 3})
    for client in (lean, plain):
        assert await client.hgetall(f"{p}:h") == {"a": "1", "é": "ü"}
        assert await client.hgetall(f"{p}:missing") == {}
        assert await client.get(f"{p}:s") == "v"
        assert await client.get(f"{p}:missing") is None
        assert await client.hmget(f"{p}:h", ["a", "x"]) == ["1", None]
        assert await client.exists(f"{p}:h", f"{p}:missing") == 1
        assert await client.zrangebyscore(f"{p}:z", 0, "+inf", withscores=True) == [
            ("m1", 1.5),
            ("m2", 3.0),
        ]
        assert await client.set(f"{p}:t", 0.25, ex=60) is True
        assert await client.get(f"{p}:t") == "0.25"
        assert await client.ping() is True
    assert lean.lean is not None and lean.lean.connects == 1


async def test_scripts_and_binary_replies(redis_url: str) -> None:
    """A script's nested reply, binary replies without decoding, a script the server does not
    know (``NoScriptError``, which ``run_script`` answers by loading it) and error replies."""
    lean = LeanRedis.from_url(redis_url, socket_timeout=2)
    try:
        p = "lean-" + uuid.uuid4().hex[:10]
        await lean.hset(f"{p}:h", mapping={"k": b"\x00\xff"})
        script = lean.register_script(SCRIPT + " -- " + p)  # a script new to the server
        with pytest.raises(NoScriptError):
            await lean.evalsha(script.sha, 1, f"{p}:h", "x", 21)
        assert await run_script(script, [f"{p}:h"], ["x", 21]) == [[b"k", b"\x00\xff"], b"x", 42]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await lean.get(f"{p}:h")
        with pytest.raises(ResponseError):
            await lean.eval("return redis.error_reply('boom')", 0)
        assert await lean.get(f"{p}:h2") is None  # the connection goes on after errors
    finally:
        await lean.aclose()


async def test_other_commands_and_bad_arguments_keep_redis_pys_path(
    pair: tuple[LeanRedis, Redis, str],
) -> None:
    """Pipelines, transactions and commands outside the lean set work as before; arguments
    hiredis cannot pack raise redis-py's ``DataError``."""
    lean, _plain, p = pair
    async with lean.pipeline(transaction=True) as pipe:
        pipe.set(f"{p}:a", "1")
        pipe.incr(f"{p}:a")
        assert await pipe.execute() == [True, 2]
    assert await lean.getrange(f"{p}:a", 0, 0) == "2"  # not a lean command
    with pytest.raises(DataError):
        await lean.set(f"{p}:b", True)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        await lean.get(None)  # type: ignore[arg-type]


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
    pair: tuple[LeanRedis, Redis, str],
) -> None:
    """Many concurrent calls (some cancelled while waiting) are answered in order over one
    connection: every caller gets its own key's value."""
    lean, plain, p = pair
    await plain.mset({f"{p}:{i}": str(i) for i in range(500)})

    async def read(i: int) -> str | None:
        return await lean.get(f"{p}:{i}")

    tasks = [asyncio.create_task(read(i)) for i in range(500)]
    await asyncio.sleep(0)  # every call is written now
    for i in range(0, 500, 7):
        tasks[i].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 7:
            assert result == str(i)
        else:
            assert isinstance(result, asyncio.CancelledError)
    assert await lean.get(f"{p}:499") == "499"  # nothing left out of step
    assert lean.lean is not None and lean.lean.connects == 1


async def test_a_redis_that_stops_answering_times_out_the_calls_and_reconnects(
    tmp_path: Path,
) -> None:
    """A stopped server (SIGSTOP): every call in flight fails with ``TimeoutError`` after the
    socket timeout, reads after one more try on a new connection, writes at once; once it runs
    again the next call reconnects and is answered."""
    server = RedisServer(tmp_path / "redis", persist=False).start()
    lean = LeanRedis.from_url(server.url, decode_responses=True, socket_timeout=0.2)
    assert lean.lean is not None
    try:
        await lean.set("k", "v")
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            reads = await asyncio.gather(*(lean.get("k") for _ in range(5)), return_exceptions=True)
            tried = lean.lean.connects
            writes = await asyncio.gather(
                *(lean.set("k", "w") for _ in range(3)), return_exceptions=True
            )
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert [type(r) for r in reads] == [RedisTimeoutError] * 5
        assert [type(r) for r in writes] == [RedisTimeoutError] * 3
        assert await lean.get("k") in ("v", "w")  # the writes may have run once Redis did
        # The second tries found no server to finish a handshake; the call after SIGCONT did.
        assert (tried, lean.lean.connects) == (1, 2)
    finally:
        await lean.aclose()
        server.stop()


async def test_a_redis_that_goes_away_fails_fast_and_is_found_again(tmp_path: Path) -> None:
    """Nothing listening: ``ConnectionError``; a server killed with calls in flight fails them
    with ``ConnectionError``; the same client works again once a server listens there."""
    port = free_port()
    lean = LeanRedis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=2)
    try:
        with pytest.raises(RedisConnectionError):
            await lean.get("k")
        server = RedisServer(tmp_path / "redis", port=port, persist=False).start()
        try:
            await lean.set("k", "1")
            spin = "local n = 0 while n < 3e8 do n = n + 1 end return n"  # keeps the call open
            call = asyncio.create_task(lean.eval(spin, 0))
            await asyncio.sleep(0.05)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            with pytest.raises(RedisConnectionError):
                await call
        finally:
            server.stop()
        server = RedisServer(tmp_path / "redis2", port=port, persist=False).start()
        try:
            await eventually(lambda: _answers(lean), "the restarted server answers")
        finally:
            server.stop()
    finally:
        await lean.aclose()


async def _answers(lean: LeanRedis) -> bool:
    try:
        return bool(await lean.ping())
    except RedisError:
        return False


async def test_a_database_number_and_a_password_are_used(tmp_path: Path) -> None:
    """``/<db>`` in the URL selects that database on the lean connection, as redis-py does; a
    wrong password is an error, not a silent fallback."""
    server = RedisServer(tmp_path / "redis", persist=False).start()
    plain = Redis.from_url(server.url)
    try:
        base = server.url.rsplit("/", 1)[0]
        lean = LeanRedis.from_url(base + "/3", decode_responses=True, socket_timeout=2)
        await lean.set("k", "in-3")
        assert await Redis.from_url(base + "/3", decode_responses=True).get("k") == "in-3"
        assert await plain.get("k") is None
        await lean.aclose()
        await plain.config_set("requirepass", "s3cret")
        host = base.split("://", 1)[1]
        lean = LeanRedis.from_url(f"redis://:s3cret@{host}/0", decode_responses=True)
        assert await lean.get("k") is None
        await lean.aclose()
        wrong = LeanRedis.from_url(f"redis://:nope@{host}/0", decode_responses=True)
        with pytest.raises(RedisError):
            await wrong.get("k")
        await wrong.aclose()
    finally:
        server.stop()


def test_connect_uses_the_lean_client_only_where_asked() -> None:
    """A serving worker's clients on a single server are lean; other callers, a cluster and
    ``lean_client=false`` keep redis-py's."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert isinstance(connect(RedisSettings(url=url), lean=True), LeanRedis)
    assert not isinstance(connect(RedisSettings(url=url)), LeanRedis)
    off = RedisSettings(url=url, lean_client=False)
    assert not isinstance(connect(off, lean=True), LeanRedis)
    assert not isinstance(connect(RedisSettings(url=url, cluster=True), lean=True), LeanRedis)


async def test_a_worker_whose_redis_stops_answering_serves_degraded_and_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    """Through the app: while its Redis is stopped a decision answers ``degraded`` within the
    socket timeout's reach and a click for a learning decision is accepted, flagged ``degraded``
    (the join could not be reached); then decisions recover."""
    server = RedisServer(tmp_path / "redis", persist=False).start()
    redis = RedisSettings(url=server.url, key_prefix="lean", socket_timeout_s=0.2)
    own = msgspec.structs.replace(settings, redis=redis)
    body = {"unit_id": "u-1", "placements": ["home"], "consent": True}
    try:
        async with AsyncTestClient(app=create_app(own)) as client:
            services = client.app.state.services
            assert isinstance(services.redis, LeanRedis)
            created = await client.post("/v1/experiments", json=LEARNING)
            assert created.status_code == 201, created.text
            started = await client.post("/v1/experiments/hero/start")
            assert started.status_code in (200, 201), started.text

            async def served() -> dict[str, Any] | None:
                got = (await client.post("/v1/decide", json=body)).json()
                return got if got["decisions"][0].get("experiment") == "hero" else None

            ok = await eventually(served, "the experiment is served")
            assert ok["degraded"] is False
            plain = Redis.from_url(server.url)
            remembered = "{lean}:dec:" + ok["decision_id"] + ":exps"
            await eventually(lambda: plain.exists(remembered), "the decision is in the join")
            await plain.aclose()
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            try:
                stalled = await client.post("/v1/decide", json=body)
                outcome = await client.post(
                    "/v1/outcomes", json={"decision_id": ok["decision_id"], "type": "click"}
                )
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert stalled.status_code == 200, stalled.text
            assert stalled.json()["degraded"] is True
            assert outcome.status_code == 202, outcome.text
            assert outcome.json()["degraded"] is True

            async def recovered() -> bool:
                again = await client.post("/v1/decide", json=body)
                return again.status_code == 200 and again.json()["degraded"] is False

            await eventually(recovered, "decisions are no longer degraded")
    finally:
        server.stop()


async def test_pipelines_answer_as_redis_pys(pair: tuple[LeanRedis, Redis, str]) -> None:
    """A pipeline without a transaction goes over the lean connection in one write: the same
    replies as redis-py's pipeline, an error reply in place (or raised, annotated, by
    default)."""
    lean, plain, p = pair
    await plain.hset(f"{p}:h", mapping={"a": "1"})
    await plain.set(f"{p}:s", "v")
    answers = []
    for client in (lean, plain):
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{p}:h")
            pipe.get(f"{p}:h")  # WRONGTYPE
            pipe.get(f"{p}:s")
            pipe.zrangebyscore(f"{p}:none", 0, 1, withscores=True)
            got = await pipe.execute(raise_on_error=False)
        answers.append([type(r).__name__ if isinstance(r, Exception) else r for r in got])
        async with client.pipeline(transaction=False) as pipe:
            pipe.get(f"{p}:s")
            pipe.get(f"{p}:h")
            with pytest.raises(ResponseError, match="Command # 2"):
                await pipe.execute()
    assert answers[0] == answers[1] == [{"a": "1"}, "ResponseError", "v", []]
    assert lean.lean is not None and lean.lean.connects == 1


async def test_a_pipelines_unknown_scripts_are_loaded_and_run_once(tmp_path: Path) -> None:
    """Script calls in a pipeline are sent without asking whether the server knows them; after
    a ``SCRIPT FLUSH`` the calls answered ``NOSCRIPT`` are loaded and run again, once each."""
    server = RedisServer(tmp_path / "redis", persist=False).start()
    lean = LeanRedis.from_url(server.url, decode_responses=True, socket_timeout=2)
    try:
        count = lean.register_script("return redis.call('INCR', KEYS[1])")
        other = lean.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        for _ in range(2):
            await lean.script_flush()
            async with lean.pipeline(transaction=False) as pipe:
                await count(keys=["n"], client=pipe)
                pipe.set("plain", "x")
                await other(keys=["m"], args=[5], client=pipe)
                await count(keys=["n"], client=pipe)
                replies = await pipe.execute()
            assert replies[1] is True
        assert (await lean.get("n"), await lean.get("m")) == ("4", "10")
        assert replies == [3, True, 10, 4]
    finally:
        await lean.aclose()
        server.stop()
