"""The event-loop lag monitor: a blocked loop is measured, counted and exported."""

from __future__ import annotations

import asyncio
import time

from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.loop_lag import LoopLagMonitor
from tests.support.polling import sample


async def test_a_blocked_loop_shows_as_lag() -> None:
    """A callback holding the loop for 30 ms is measured as at least 25 ms of lag; an idle loop
    keeps recording samples; reset() returns the maximum and starts a new one."""
    seen: list[float] = []
    monitor = LoopLagMonitor(seen.append, interval_s=0.005)
    task = asyncio.create_task(monitor.run())
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.03)  # the blocking call a model load in this thread would be
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert monitor.samples == len(seen) >= 5
    assert monitor.max_s >= 0.025 and max(seen) == monitor.max_s
    assert monitor.reset() >= 0.025 and monitor.max_s == 0.0


async def test_the_worker_exports_its_loop_lag(
    app: Litestar, client: AsyncTestClient[Litestar]
) -> None:
    """Every worker runs the monitor from start-up: ``tailor_event_loop_lag_seconds`` counts
    samples and ``tailor_event_loop_lag_max_seconds`` is the largest lag seen."""
    await asyncio.sleep(0.1)
    text = (await client.get("/metrics")).text
    assert sample(text, "tailor_event_loop_lag_seconds_count") >= 3
    assert "tailor_event_loop_lag_max_seconds " in text
    exported = sample(text, "tailor_event_loop_lag_max_seconds")
    assert 0 < exported <= app.state.services.loop_lag.max_s
