"""run_script: a Lua script call as redis-py's, without its per-call type checks."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from bandits.scripts import run_script

pytestmark = pytest.mark.redis_cluster


async def test_runs_and_reloads_a_script_the_server_forgot(redis: Redis, namespace: str) -> None:
    """Same answer as calling the script object; after ``SCRIPT FLUSH`` (a restarted or failed
    over server) the script is loaded again and the call still answers."""
    script = redis.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    key = "{" + namespace + "}:n"
    assert await run_script(script, [key], ["x"]) == [key, "x", 1]
    assert await script(keys=[key], args=["y"]) == [key, "y", 2]
    await redis.script_flush()
    assert await run_script(script, [key], ["z"]) == [key, "z", 3]
