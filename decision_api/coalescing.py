"""Coalesce the Redis calls of concurrent requests into shared round trips.

Under load many requests are in flight at once; each call of its own would pay redis-py's
per-command overhead (pool checkout, packing, parsing, a syscall each way, an event-loop
wake-up for the reply) for work Redis does in microseconds. A :class:`Coalescer` collects the
items of concurrent callers and runs them as one batch, resolving each caller's future with its
own result.

When batches are sent is what makes them under real traffic. Requests arrive spread out (one
per connection read), not in bursts, so "everything issued in this loop iteration" is mostly a
batch of one. Instead, at most ``max_inflight`` batches are outstanding: an item that finds a
batch in flight waits for it to return and goes with everyone else who arrived meanwhile. An
idle server sends at once (one extra loop hop); a busy one sends about one batch per Redis round
trip, however many requests that covers — the batch grows with the load, and the wait is bounded
by one round trip. A full batch (``max_batch``) is sent at once regardless.

A batch runs with the ``state`` given with its first item (a clock reading, the rules of the
moment): the others arrived at most one round trip later. Used by
:class:`~decision_api.profiles.batcher.ProfileBatcher` and
:class:`~decision_api.learning.outcome_batcher.OutcomeBatcher`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


class Coalescer(Generic[T, R, S]):
    """``submit(item, state)`` that shares one ``run(items, state)`` call with concurrent callers.

    ``run`` returns one result per item, in order. If it raises, every caller of that batch sees
    the exception (none hangs) and later batches run as usual.
    """

    def __init__(
        self,
        run: Callable[[list[T], S], Awaitable[Sequence[R]]],
        *,
        initial: S,
        max_batch: int = 256,
        max_inflight: int = 1,
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._state = initial
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        """How many batches have been sent."""

    async def submit(self, item: T, state: S) -> R:
        """The item's result, from the batch it joins."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._waiting:
            self._state = state
        self._waiting.append((item, future))
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
        task = asyncio.ensure_future(self._send(batch, self._state))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._waiting and not self._scheduled and len(self._inflight) < self._max_inflight:
            self._dispatch()  # the items that arrived while this batch was out

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]], state: S) -> None:
        self.round_trips += 1
        try:
            results = await self._run([item for item, _ in batch], state)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise  # cancellation and the like still propagate
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
