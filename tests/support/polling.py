"""Waiting for asynchronous effects in tests, and reading Prometheus samples."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` every 20 ms until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout_s} s")
        await asyncio.sleep(0.02)


def sample(text: str, line_start: str) -> float:
    """The value of the first Prometheus sample whose line starts with ``line_start`` (or 0)."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
