"""The profile batcher: reads that arrive while a Redis call is out share the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from decision_api.profiles.batcher import ProfileBatcher
from decision_api.profiles.store import CapHit, FeatureValue, Timestamp, UnitEvent, UnitProfile


class SlowStore:
    """A feature store whose reads take ``delay`` seconds; records each call's units."""

    def __init__(self, delay: float, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls: list[list[str]] = []

    async def get_profiles(self, unit_ids: Sequence[str], now: float) -> list[UnitProfile]:
        self.calls.append(list(unit_ids))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RedisConnectionError("down")
        return [UnitProfile(attributes={"unit": u, "now": now}, hours={}) for u in unit_ids]

    async def upsert_features(
        self, unit_id: str, features: Mapping[str, FeatureValue | Timestamp]
    ) -> None:
        raise NotImplementedError

    async def record_events(self, unit_id: str, events: Sequence[UnitEvent], now: float) -> None:
        raise NotImplementedError

    def queue_cap_hit(self, hit: CapHit) -> None:
        raise NotImplementedError


async def test_a_lone_read_goes_at_once() -> None:
    """An idle batcher sends a read in the next loop iteration, alone."""
    store = SlowStore(0.0)
    batcher = ProfileBatcher(store)
    profile = await asyncio.wait_for(batcher.get("u-1", 100.0), timeout=1)
    assert profile.attributes == {"unit": "u-1", "now": 100.0}
    assert store.calls == [["u-1"]]


async def test_reads_arriving_during_a_call_share_the_next_one() -> None:
    """Spread-out reads (one per loop iteration) go as one call per round trip, not one each,
    and every reader gets its own unit's profile."""
    store = SlowStore(0.02)
    batcher = ProfileBatcher(store)

    async def spread(i: int) -> UnitProfile:
        await asyncio.sleep(0.001 * i)
        return await batcher.get(f"u-{i}", float(i))

    profiles = await asyncio.gather(*(spread(i) for i in range(40)))
    assert [p.attributes["unit"] for p in profiles] == [f"u-{i}" for i in range(40)]
    assert sorted(u for call in store.calls for u in call) == sorted(f"u-{i}" for i in range(40))
    assert len(store.calls) < 10
    assert batcher.round_trips == len(store.calls)
    for call in store.calls:  # a batch is decoded at the time of its first read
        first = int(call[0].removeprefix("u-"))
        assert all(profiles[int(u.removeprefix("u-"))].attributes["now"] == first for u in call)


async def test_a_full_batch_goes_without_waiting() -> None:
    """``max_batch`` waiting reads are sent even while a call is out."""
    store = SlowStore(0.05)
    batcher = ProfileBatcher(store, max_batch=4)
    first = asyncio.ensure_future(batcher.get("u-0", 0.0))
    await asyncio.sleep(0.01)  # the first call is out
    rest = [asyncio.ensure_future(batcher.get(f"u-{i}", 0.0)) for i in range(1, 5)]
    await asyncio.sleep(0.01)
    assert store.calls == [["u-0"], ["u-1", "u-2", "u-3", "u-4"]]
    await asyncio.gather(first, *rest)


async def test_a_failed_call_fails_its_readers_and_the_next_batch_still_goes() -> None:
    """A Redis error reaches every reader of that call; reads queued behind it are still sent."""
    store = SlowStore(0.02, fail=True)
    batcher = ProfileBatcher(store)
    first = asyncio.ensure_future(batcher.get("u-0", 0.0))
    await asyncio.sleep(0.005)
    second = asyncio.ensure_future(batcher.get("u-1", 0.0))
    with pytest.raises(RedisConnectionError):
        await first
    store.fail = False
    assert (await asyncio.wait_for(second, timeout=1)).attributes["unit"] == "u-1"
    assert store.calls == [["u-0"], ["u-1"]]
