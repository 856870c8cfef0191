"""Learned examples leave the training stream once their snapshot is published."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest
from redis.asyncio import Redis

from bandits.learner import Learner
from bandits.spec import PolicySpec
from tests.support.training import bernoulli_examples, feed, spec_of

EXP = "hero"


@pytest.fixture
async def redis_bin(redis_url: str) -> AsyncIterator[Redis]:
    """A binary-safe client, as the learner uses."""
    client = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


async def _specs() -> Mapping[str, PolicySpec]:
    return {EXP: spec_of(EXP)}


async def test_published_examples_are_trimmed_and_pending_ones_kept(
    redis_bin: Redis, namespace: str
) -> None:
    """After a publish the stream holds only what is not yet in a snapshot: records carry raw
    unit ids and context, so they must not linger until MAXLEN trimming."""
    stream = f"{{{namespace}}}:train"
    await feed(redis_bin, namespace, bernoulli_examples(EXP, 600, np.random.default_rng(3)))
    learner = Learner(redis_bin, namespace, _specs, batch_size=200)
    await learner.start()
    await learner.step(block_ms=10)
    await learner.step(block_ms=10)
    assert await redis_bin.xlen(stream) == 600
    await learner.publish()
    assert await redis_bin.xlen(stream) == 200  # the unread third stays
    await learner.step(block_ms=10)
    assert await redis_bin.xlen(stream) == 200  # read, learned, not yet published: kept
    await learner.publish()
    assert await redis_bin.xlen(stream) == 0
