"""Coalesce the reward-join work of concurrent single outcomes into shared Redis round trips.

Every click reported on its own (``POST /v1/outcomes``) needs one script call in the reward
join; under load many are in flight at once, and each would pay redis-py's per-command overhead
(pool checkout, packing, parsing, a wake-up for the reply) for a call Redis runs in
microseconds. :class:`OutcomeBatcher` collects them and applies them together with
:meth:`~bandits.join.RewardJoin.apply_outcomes` (one pipeline), resolving each request's future
with its own results — the policy of :class:`~decision_api.profiles.batcher.ProfileBatcher`: at
most ``max_inflight`` batches are out, outcomes arriving meanwhile go with the next one, so an
idle server sends at once and a busy one about one batch per Redis round trip.

A batch is applied at the arrival time of its first outcome (``now_ms``, which decides
lateness): the others arrived at most one round trip later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bandits.join import Applied, JoinRules, OutcomeRef, RewardJoin

_Results = list[tuple[str, Applied]]
_Waiting = list[tuple[OutcomeRef, "asyncio.Future[_Results]"]]


class OutcomeBatcher:
    """``apply(outcome)`` that shares the join's Redis round trips with concurrent callers."""

    def __init__(self, join: RewardJoin, max_batch: int = 256, max_inflight: int = 1) -> None:
        self._join = join
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._waiting: _Waiting = []
        self._now_ms = 0
        self._rules: Mapping[str, JoinRules] = {}
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    async def apply(
        self, outcome: OutcomeRef, now_ms: int, rules_of: Mapping[str, JoinRules]
    ) -> _Results:
        """The outcome's (experiment, result) list; raises ``RedisError`` when Redis fails."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Results] = loop.create_future()
        if not self._waiting:
            self._now_ms, self._rules = now_ms, rules_of
        self._waiting.append((outcome, future))
        if len(self._waiting) >= self._max_batch:
            self._dispatch()
        elif not self._scheduled and len(self._inflight) < self._max_inflight:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._apply(batch, self._now_ms, self._rules))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._waiting and not self._scheduled and len(self._inflight) < self._max_inflight:
            self._dispatch()  # the outcomes that arrived while this batch was out

    async def _apply(
        self, batch: _Waiting, now_ms: int, rules_of: Mapping[str, JoinRules]
    ) -> None:
        self.round_trips += 1
        try:
            results = await self._join.apply_outcomes(
                [o for o, _ in batch], now_ms=now_ms, rules_of=rules_of
            )
        except BaseException as exc:
            # Every waiter sees the failure (a RedisError degrades each answer); none hangs.
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
