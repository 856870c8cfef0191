"""Per-API-key rate limits: a token bucket in Redis, leased to workers in small batches.

Key layout (``{p}`` is ``redis.key_prefix``):

``{p}:rl:{<key_id>}`` — HASH ``tokens`` (float), ``ts`` (Redis server time, seconds); TTL the
time the bucket takes to refill from empty plus one second, so idle keys disappear.

One Lua script refills the bucket from Redis' own clock (``TIME``, so worker clocks never
matter), takes up to ``want`` whole tokens and answers ``{granted, wait_seconds}`` in one round
trip. A worker does not call it per request: it leases ``lease`` tokens at once and spends them
locally, so the decide hot path touches Redis about once every ``lease`` requests (about
``rate / lease`` calls per second per key in all). Leased tokens are already taken from the
shared bucket, so the cluster never admits more than the bucket allows; the price is that up to
``lease - 1`` tokens per worker may sit unused. When the bucket is empty the worker remembers
the wait and refuses locally until then (429 with ``Retry-After``).

If Redis is down the limiter fails open (decisions must keep answering): it admits requests
without Redis for ``OUTAGE_BACKOFF_S`` before trying again, and logs the outage once.
"""

from __future__ import annotations

import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from decision_api.logging import WARN_INTERVAL_S
from event_log.throttle import Throttle

log = structlog.get_logger("tailor.rate_limit")

OUTAGE_BACKOFF_S = 1.0
LEASE_WINDOW_S = 0.02
MAX_LEASE = 100

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if granted == 0 then wait = (1 - tokens) / rate end
return {granted, tostring(wait)}
"""


class _Local:
    """A worker's lease on one key's bucket."""

    __slots__ = ("blocked_until", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.blocked_until = 0.0


def lease_size(rate_per_s: float, burst: int) -> int:
    """Tokens a worker takes per Redis call: about ``LEASE_WINDOW_S`` of traffic, at least 1."""
    return max(1, min(MAX_LEASE, burst, int(rate_per_s * LEASE_WINDOW_S)))


class RateLimiter:
    """Token buckets per key id, shared through Redis, spent locally in leases."""

    def __init__(self, redis: Redis, prefix: str, *, rate_per_s: float, burst: int) -> None:
        self._redis = redis
        # Met by every request while Redis is down: logged once per interval, with a count.
        self._warn = Throttle(log, every_s=WARN_INTERVAL_S)
        self._prefix = prefix
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._take = redis.register_script(_TAKE)
        self._local: dict[str, _Local] = {}
        self._outage_until = 0.0
        self.redis_calls = 0

    def bucket_key(self, key_id: str) -> str:
        """The Redis key of a key id's bucket."""
        return f"{self._prefix}:rl:{{{key_id}}}"

    async def acquire(
        self, key_id: str, rate_per_s: float | None = None, burst: int | None = None
    ) -> float | None:
        """Take one token for ``key_id``: None when admitted, else the seconds to wait."""
        local = self._local.get(key_id)
        if local is None:
            local = self._local[key_id] = _Local()
        if local.tokens > 0:
            local.tokens -= 1
            return None
        now = time.monotonic()
        if now < local.blocked_until:
            return local.blocked_until - now
        if now < self._outage_until:
            return None
        rate = rate_per_s or self.rate_per_s
        size = burst or self.burst
        want = lease_size(rate, size)
        try:
            self.redis_calls += 1
            granted, wait = await self._take(
                keys=[self.bucket_key(key_id)], args=[repr(float(rate)), size, want]
            )
        except RedisError as exc:
            self._outage_until = now + OUTAGE_BACKOFF_S
            self._warn.warning("rate_limit_unavailable", error=str(exc), fail_open=True)
            return None
        granted = int(granted)
        if granted > 0:
            local.tokens += granted - 1
            return None
        seconds = max(float(wait), 1.0 / rate)
        local.blocked_until = now + seconds
        return seconds
