"""Saved model versions in Redis: kept on request and when a model is replaced, bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bandits.snapshots import MAX_SAVED, Snapshot, SnapshotStore


@pytest.fixture
async def snapshots(redis_url: str, namespace: str) -> AsyncIterator[SnapshotStore]:
    """The model snapshots of this test's namespace, on the test's own Redis client."""
    binary = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield SnapshotStore(binary, namespace)
    finally:
        await binary.aclose()


async def _publish(store: SnapshotStore, version: int, data: bytes) -> None:
    async with store._redis.pipeline(transaction=True) as pipe:
        store.stage_publish(
            pipe,
            Snapshot(
                experiment="e",
                version=version,
                gen=0,
                kind="thompson",
                data=data,
                examples=version * 10,
                updated_ms=version,
            ),
        )
        await pipe.execute()


async def test_save_keeps_the_published_model_and_a_replace_saves_the_old_one(
    snapshots: SnapshotStore,
) -> None:
    """``save`` copies the published model under its version; ``replace`` (reset, warm start,
    takeover) saves the model it replaces; an untrained model is not saved."""
    assert await snapshots.save("e") is None  # nothing published
    await _publish(snapshots, 3, b"model-3")
    saved = await snapshots.save("e")
    assert saved is not None and saved.version == 3
    await _publish(snapshots, 4, b"model-4")
    fresh = await snapshots.replace("e", 99)  # a reset
    assert fresh.data == b"" and fresh.version == 5
    assert await snapshots.saved_versions("e") == [3, 4]
    four = await snapshots.saved("e", 4)
    assert four is not None and (four.data, four.examples, four.kind) == (
        b"model-4",
        40,
        "thompson",
    )
    assert await snapshots.saved("e", 5) is None
    assert await snapshots.save("e") is None  # the fresh model has learned nothing


async def test_only_the_latest_versions_are_kept(snapshots: SnapshotStore) -> None:
    """Beyond ``MAX_SAVED`` versions the oldest are dropped, hash and index entry alike."""
    for version in range(1, MAX_SAVED + 4):
        await _publish(snapshots, version, f"m{version}".encode())
        await snapshots.save("e")
    kept = await snapshots.saved_versions("e")
    assert kept == list(range(4, MAX_SAVED + 4))
    assert await snapshots.saved("e", 3) is None
    assert await snapshots._redis.exists(snapshots.saved_key("e", 3)) == 0
