"""Erasure tombstones: one reading serves every flusher's screen for a moment."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from decision_api.privacy import data_rights
from decision_api.privacy.data_rights import Tombstones


async def test_one_reading_serves_screens_until_it_ages(redis: Redis, namespace: str) -> None:
    """Screens within ``SCREEN_MAX_AGE_S`` share one Redis read; the next one reads again."""
    tombstones = Tombstones(redis, namespace, lambda unit: "anon:" + unit)
    for _ in range(5):
        assert await tombstones.screen(["a", "b"], str) == ["a", "b"]
    assert tombstones.reads == 1
    await asyncio.sleep(data_rights.SCREEN_MAX_AGE_S * 1.5)
    assert await tombstones.screen(["a"], str) == ["a"]
    assert tombstones.reads == 2


async def test_an_erasure_here_drops_the_reading(redis: Redis, namespace: str) -> None:
    """A unit erased on this worker is screened out by the very next flush, whatever the age
    of the reading; another worker's reading catches up within ``SCREEN_MAX_AGE_S``."""
    here = Tombstones(redis, namespace, lambda unit: "anon:" + unit)
    there = Tombstones(redis, namespace, lambda unit: "anon:" + unit)
    assert await here.screen(["a", "b"], str) == ["a", "b"]
    assert await there.screen(["a", "b"], str) == ["a", "b"]
    await here.add("a")
    assert await here.screen(["a", "b"], str) == ["b"]
    await asyncio.sleep(data_rights.SCREEN_MAX_AGE_S * 1.5)
    assert await there.screen(["a", "b"], str) == ["b"]
