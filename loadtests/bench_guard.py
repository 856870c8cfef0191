"""Benchmark: what the API-key guard and the per-key rate limiter cost per request.

Run: ``.venv/bin/python loadtests/bench_guard.py [--calls 100000]``

Calls the real ``require("decide")`` guard in-process (no HTTP) against a private
``redis-server``, in four set-ups, and prints CPU and wall time per call:

- ``open``: no key configured (development mode), the guard returns at once;
- ``key, no limit hit``: a Bearer key looked up (sha256 + dict + constant-time compare) and one
  token taken from the worker's local lease; the lease is refilled from Redis every
  ``lease_size`` calls (100 at the default 5,000/s), so Redis is touched about once per 100;
- ``key, lease 1``: a key whose rate is so low that every call goes to Redis (the Lua script's
  round trip) — the worst case, for comparison;
- ``429s``: a key over its limit, refused locally until its wait is over (no Redis call).

The decide path costs roughly 300-600 µs of server CPU per request over HTTP, so the guard's share
is what this prints divided by that.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from decision_api.access.keys import KeyRing, parse_bootstrap_keys
from decision_api.access.rate_limit import RateLimiter, lease_size
from decision_api.metrics import Metrics
from decision_api.redis_server import RedisServer
from decision_api.routes.guards import require


class _State:
    def __init__(self, services: Any) -> None:
        self.services = services


class _App:
    def __init__(self, services: Any) -> None:
        self.state = _State(services)


class _Services:
    def __init__(self, ring: KeyRing, limiter: RateLimiter) -> None:
        self.keys = ring
        self.rate_limiter = limiter
        self.metrics = Metrics()


class _Connection:
    """Just what the guard reads from a Litestar connection."""

    def __init__(self, services: Any, secret: str | None) -> None:
        self.app = _App(services)
        self.headers = {"authorization": f"Bearer {secret}"} if secret else {}
        self.query_params: dict[str, str] = {}
        self.scope: dict[str, Any] = {"state": {}}


async def measure(label: str, calls: int, conn: Any, refused_ok: bool = False) -> None:
    """Run the guard ``calls`` times and print the cost per call."""
    guard = require("decide")
    cpu, wall = time.process_time(), time.perf_counter()
    refused = 0
    for _ in range(calls):
        try:
            await guard(conn, None)  # type: ignore[arg-type]
        except Exception:
            if not refused_ok:
                raise
            refused += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    limiter = conn.app.state.services.rate_limiter
    print(
        f"{label:<22} {cpu / calls * 1e6:7.2f} µs CPU/call  {wall / calls * 1e6:7.2f} µs wall/call"
        f"  redis calls {limiter.redis_calls:>7,}  refused {refused:,}"
    )


async def main(calls: int) -> None:
    """Measure every set-up against a private redis-server."""
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persist=False).start()
        redis = Redis.from_url(server.url, decode_responses=True)
        try:
            keyed = KeyRing(parse_bootstrap_keys("secret-decide:decide"))
            keyed.replace_stored([], 0)
            open_ring = KeyRing([])
            open_ring.replace_stored([], 0)

            def services(ring: KeyRing, rate: float, burst: int) -> _Services:
                limiter = RateLimiter(redis, "bench", rate_per_s=rate, burst=burst)
                return _Services(ring, limiter)

            print(f"lease at the default 5,000/s: {lease_size(5000.0, 10_000)} tokens")
            await measure("open", calls, _Connection(services(open_ring, 5000.0, 10_000), None))
            await measure(
                "key, no limit hit",
                calls,
                _Connection(services(keyed, 1e9, 10**9), "secret-decide"),
            )
            await measure(
                "key, lease 1",
                calls // 10,
                _Connection(services(keyed, 1e9, 1), "secret-decide"),
                refused_ok=True,
            )
            await measure(
                "429s",
                calls,
                _Connection(services(keyed, 0.001, 1), "secret-decide"),
                refused_ok=True,
            )
        finally:
            await redis.aclose()
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().calls))
