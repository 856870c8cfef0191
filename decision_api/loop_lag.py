"""Event-loop lag: how long a ready timer waited because the loop's thread was busy elsewhere.

A worker serves every request on one event-loop thread, so anything that holds it — a slow
callback, a C extension holding the GIL in another thread (a model being loaded), a long garbage
collection — delays every request in flight by the same amount. :class:`LoopLagMonitor` sleeps
``interval_s`` (10 ms) in a loop and records each overshoot: the time between when the timer was
due and when the loop got to it. Under load the overshoot also includes the callbacks queued
ahead of the timer (one loop iteration's work), which is latency every request pays too.

The figures go to ``tailor_event_loop_lag_seconds`` (histogram) and
``tailor_event_loop_lag_max_seconds`` (gauge, the maximum since start); :attr:`max_s` holds the
maximum for in-process callers (tests, benchmarks), :meth:`reset` starts a new maximum.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 0.01


class LoopLagMonitor:
    """Measure the event loop's lag every ``interval_s`` until cancelled (see the module doc)."""

    def __init__(
        self,
        observe: Callable[[float], None] | None = None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._observe = observe
        self.interval_s = interval_s
        self.max_s = 0.0
        self.samples = 0

    def reset(self) -> float:
        """Start a new maximum; returns the previous one."""
        previous, self.max_s = self.max_s, 0.0
        return previous

    def record(self, lag_s: float) -> None:
        """Count one measured lag (seconds, >= 0)."""
        self.samples += 1
        self.max_s = max(self.max_s, lag_s)
        if self._observe is not None:
            self._observe(lag_s)

    async def run(self) -> None:
        """Sleep, measure the overshoot, record it; forever (cancel to stop)."""
        clock = time.perf_counter
        interval = self.interval_s
        while True:
            due = clock() + interval
            await asyncio.sleep(interval)
            self.record(max(0.0, clock() - due))
