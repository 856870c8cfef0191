"""The outcome batcher: single outcomes arriving while the join is busy share its next call."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bandits.join import Applied, DecisionRecord, JoinRules, OutcomeRef, RewardJoin, rules_for
from decision_api.learning.outcome_batcher import OutcomeBatcher

T0 = 1_700_000_000_000
RULES = {"hero": rules_for(60, "first", 0.0, 0.0, 1.0, [("click", 1.0, False)])}


class SlowJoin(RewardJoin):
    """The real join on Redis, each batch call slowed by ``delay`` s and recorded."""

    def __init__(self, redis: Redis, prefix: str, delay: float, fail: bool = False) -> None:
        super().__init__(redis, prefix)
        self.delay = delay
        self.fail = fail
        self.calls: list[list[str]] = []

    async def apply_outcomes(
        self, outcomes: Sequence[OutcomeRef], *, now_ms: int, rules_of: Mapping[str, JoinRules]
    ) -> list[list[tuple[str, Applied]]]:
        self.calls.append([o.event_id for o in outcomes])
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RedisConnectionError("down")
        return await super().apply_outcomes(outcomes, now_ms=now_ms, rules_of=rules_of)


def _record(i: int) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{i}", experiment="hero", experiment_version=1, unit_id=f"u{i}",
        candidates=["a", "b"], chosen=0, propensity=0.5, model_version="0", context={},
        decided_ms=T0,
    )  # fmt: skip


def _click(i: int) -> OutcomeRef:
    return OutcomeRef(event_id=f"e{i}", type="click", value=0.0, ts_ms=T0 + 1000,
                      decision_id=f"d{i}")  # fmt: skip


async def test_outcomes_arriving_during_a_call_share_the_next_one(
    redis: Redis, namespace: str
) -> None:
    """Spread-out single outcomes go as a few join calls, not one each; each caller gets its
    own decision's result (a click on an unknown decision: nothing)."""
    join = SlowJoin(redis, namespace, 0.02)
    for i in range(30):
        join.remember(_record(i), RULES["hero"])
    await join.flush()
    batcher = OutcomeBatcher(join)

    async def spread(i: int) -> list[tuple[str, Applied]]:
        await asyncio.sleep(0.001 * i)
        return await batcher.apply(_click(i), T0 + 2000, RULES)

    results = await asyncio.gather(*(spread(i) for i in range(40)))
    assert results[:30] == [[("hero", "joined")]] * 30
    assert results[30:] == [[]] * 10
    assert sorted(e for call in join.calls for e in call) == sorted(f"e{i}" for i in range(40))
    assert len(join.calls) < 10 and batcher.round_trips == len(join.calls)
    again = await batcher.apply(_click(3), T0 + 2000, RULES)
    assert again == [("hero", "duplicate")]


async def test_a_redis_failure_reaches_every_waiter_and_the_next_batch_goes(
    redis: Redis, namespace: str
) -> None:
    """When the join's call fails, every outcome of that batch raises the Redis error (each
    request answers degraded); the batcher keeps working afterwards."""
    join = SlowJoin(redis, namespace, 0.01, fail=True)
    join.remember(_record(1), RULES["hero"])
    await join.flush()
    batcher = OutcomeBatcher(join)
    failed = await asyncio.gather(
        *(batcher.apply(_click(i), T0 + 2000, RULES) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(f, RedisConnectionError) for f in failed)
    join.fail = False
    assert await batcher.apply(_click(1), T0 + 2000, RULES) == [("hero", "joined")]


@pytest.mark.parametrize("size", [1, 3])
async def test_a_full_batch_goes_without_waiting(redis: Redis, namespace: str, size: int) -> None:
    """``max_batch`` waiting outcomes are sent even while a call is out."""
    join = SlowJoin(redis, namespace, 0.05)
    batcher = OutcomeBatcher(join, max_batch=size)
    first = asyncio.ensure_future(batcher.apply(_click(0), T0, RULES))
    await asyncio.sleep(0.01)  # the first call is out
    rest = [asyncio.ensure_future(batcher.apply(_click(i), T0, RULES)) for i in range(1, 1 + size)]
    await asyncio.sleep(0.01)
    assert join.calls == [["e0"], [f"e{i}" for i in range(1, 1 + size)]]
    await asyncio.gather(first, *rest)
