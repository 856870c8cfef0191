"""Client options: timeouts, retries with backoff, the event buffer and local evaluation.

Defaults suit a web server calling Tailor on every page: decide answers within 100 ms or the
caller's defaults are used; outcomes are sent in the background in batches of up to 500, at
least every second, and kept (up to 100,000) while the API is unreachable.
"""

from __future__ import annotations

import math
import random

import msgspec

__all__ = ["ClientOptions", "RetryPolicy"]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with full jitter: attempt ``k`` waits ``U(0, min(cap, base * 2**k))``.

    Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter", 2015) spreads the
    retries of many clients that failed together, so a recovering API is not hit in lockstep.
    ``attempts`` counts tries, the first included.
    """

    attempts: int = 3
    base_s: float = 0.05
    cap_s: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts == {self.attempts}, must be >= 1")
        if not (self.base_s > 0 and math.isfinite(self.base_s)):
            raise ValueError(f"base_s == {self.base_s}, must be > 0")
        if not self.cap_s >= self.base_s:
            raise ValueError(f"cap_s == {self.cap_s}, must be >= base_s ({self.base_s})")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 60))
        return float(rng.uniform(0.0, ceiling))


class ClientOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Everything tunable about a client; every field has a production-worthy default.

    Timeouts apply to each phase of a request (connect, write, read, pool wait), so a decide
    with an unreachable or silent API returns its defaults after about ``decide_timeout_s``.
    """

    decide_timeout_s: float = 0.1
    """``decide``: then the caller's defaults are returned (``fallback=True``)."""
    decide_attempts: int = 1
    """``decide`` is not retried by default: it logs an exposure, and a retry costs latency."""
    timeout_s: float = 2.0
    """Every other call (features, events, definitions, batches of outcomes)."""
    batch_timeout_s: float = 60.0
    """``decide_batch``: the longest wait for the next line of the stream."""
    retry: RetryPolicy = RetryPolicy()
    """Retries of idempotent calls (``upsert_features``, ``definitions``)."""
    buffer_capacity: int = 100_000
    """Outcomes (and local exposures) kept while unsent; beyond it the oldest are dropped."""
    flush_size: int = 500
    """A batch is sent as soon as this many events are waiting (max 10,000)."""
    flush_interval_s: float = 1.0
    """... and at least this often when any are waiting."""
    flush_retry: RetryPolicy = RetryPolicy(attempts=1, base_s=0.1, cap_s=2.0)
    """Backoff between failed flushes (flushes retry until sent or dropped by capacity)."""
    close_timeout_s: float = 5.0
    """``close()`` keeps trying to send what is buffered for at most this long."""
    max_connections: int = 100
    max_keepalive_connections: int = 20
    local_evaluation: bool = False
    """Assign ``fixed`` experiments in-process from fetched definitions (no network hop)."""
    definitions_refresh_s: float = 30.0
    """How often local definitions are re-fetched (a ``304`` when nothing changed)."""
    fallback_warning_interval_s: float = 60.0
    """Decisions on defaults (bad key, API down) log a warning at most this often per cause."""

    def __post_init__(self) -> None:
        positive = {
            "decide_timeout_s": self.decide_timeout_s,
            "timeout_s": self.timeout_s,
            "batch_timeout_s": self.batch_timeout_s,
            "flush_interval_s": self.flush_interval_s,
            "close_timeout_s": self.close_timeout_s,
            "definitions_refresh_s": self.definitions_refresh_s,
            "fallback_warning_interval_s": self.fallback_warning_interval_s,
        }
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} == {value}, must be a positive number of seconds")
        if self.decide_attempts < 1:
            raise ValueError(f"decide_attempts == {self.decide_attempts}, must be >= 1")
        if self.buffer_capacity < 1:
            raise ValueError(f"buffer_capacity == {self.buffer_capacity}, must be >= 1")
        if not 1 <= self.flush_size <= 10_000:
            raise ValueError(f"flush_size == {self.flush_size}, must be in [1, 10000]")
        if self.max_connections < 1 or self.max_keepalive_connections < 0:
            raise ValueError("max_connections must be >= 1, max_keepalive_connections >= 0")
