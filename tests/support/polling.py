"""Waiting for asynchronous effects in tests, and reading Prometheus samples.

One home for polling: :func:`eventually` (async probes) and :func:`eventually_sync` (blocking
probes, for tests that drive a server from threads) both return the probe's first truthy
result and fail the test, naming what was awaited and the last result, after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    what: str = "condition",
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
) -> T:
    """Poll ``probe`` until it returns something truthy and return that; fail the test after
    ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout_s} s (last: {result!r})")
        await asyncio.sleep(interval_s)


def eventually_sync(
    probe: Callable[[], T],
    what: str = "condition",
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
) -> T:
    """:func:`eventually` for a blocking probe."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout_s} s (last: {result!r})")
        time.sleep(interval_s)


def sample(text: str, line_start: str) -> float:
    """The value of the first Prometheus sample whose line starts with ``line_start`` (or 0)."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
