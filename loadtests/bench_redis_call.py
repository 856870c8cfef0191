"""Benchmark: client CPU per Redis script round trip, redis-py against a bare RESP protocol.

Run: ``.venv/bin/python loadtests/bench_redis_call.py [--calls 5000] [--rounds 3]``

Every decision reads its profile through one script call (shared by concurrent decisions), and
every outcome applies to the reward join through another: how much CPU a round trip costs the
worker's event loop bounds what a learning decision can cost. On a private ``redis-server``
(TCP on 127.0.0.1), one ``EVALSHA`` of a script reading a 2-field hash, awaited one at a time,
``--calls`` times per round, rounds alternating between the ways of calling (uvloop):

- ``AsyncScript``: ``script(keys=..., args=...)``, redis-py's script object (what the server did);
- ``run_script``: :func:`bandits.scripts.run_script` (``client.evalsha`` without the script
  object's per-call type checks; what the server does for its hot calls);
- ``LeanRedis``: :func:`~bandits.scripts.run_script` on a
  :class:`decision_api.lean_redis.LeanRedis` (what a serving worker does on a single server: the
  same call over one pipelined ``hiredis`` connection, with timeouts and reconnects);
- ``bare RESP``: ``hiredis.pack_command`` written to an asyncio transport, replies parsed by a
  ``hiredis.Reader`` in ``data_received`` — no connection pool, no retry wrapper; not a client
  the server uses (no reconnects, timeouts or errors), the floor a leaner client could reach.

Prints the median CPU microseconds per call of this process (``time.process_time``: the client
side only, sockets included) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hiredis
import uvloop
from redis.asyncio import Redis

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bandits.scripts import run_script
from decision_api.lean_redis import LeanRedis
from decision_api.redis_server import RedisServer

SCRIPT = "return redis.call('HGETALL', KEYS[1])"


class BareResp(asyncio.Protocol):
    """Pipelined RESP over one connection: replies resolve the waiting futures in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: list[asyncio.Future[Any]] = []
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's TCPTransport is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.pop(0).set_result(reply)

    def call(self, *args: str | bytes) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        assert self.transport is not None
        self.transport.write(hiredis.pack_command(args))
        return future


async def measure(url: str, port: int, calls: int, rounds: int) -> dict[str, list[float]]:
    """CPU microseconds per call, per way of calling and round."""
    redis = Redis.from_url(url)
    script = redis.register_script(SCRIPT)
    await redis.hset("k", mapping={"a": "1", "b": "2"})
    await script(keys=["k"])
    lean = LeanRedis.from_url(url, socket_timeout=0.5)
    lean_script = lean.register_script(SCRIPT)
    _, bare = await asyncio.get_running_loop().create_connection(BareResp, "127.0.0.1", port)
    ways = {
        "AsyncScript": lambda: script(keys=["k"]),
        "run_script": lambda: run_script(script, ["k"]),
        "LeanRedis": lambda: run_script(lean_script, ["k"]),
        "bare RESP": lambda: bare.call("EVALSHA", script.sha, "1", "k"),
    }
    out: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, call in ways.items():
            started = time.process_time()
            for _ in range(calls):
                await call()
            out[name].append((time.process_time() - started) / calls * 1e6)
    await redis.aclose()
    await lean.aclose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-call-"))
    server = RedisServer(workdir / "redis", persist=False).start()
    try:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        figures = uvloop.run(measure(server.url, port, args.calls, args.rounds))
    finally:
        server.stop()
    for name, rounds in figures.items():
        print(f"{name:<12} {statistics.median(rounds):6.1f} us CPU per call (rounds "
              f"{', '.join(f'{r:.1f}' for r in rounds)})")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
