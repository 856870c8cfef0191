"""Coalesce profile reads of concurrent requests into few Redis calls.

Under load many decide requests are in flight at once; each would pay redis-py's per-command
overhead (pool checkout, packing, parsing, a syscall each way, an event-loop wake-up for the
reply). :class:`ProfileBatcher` collects profile reads and sends them as one multi-key script
call (``RedisFeatureStore.get_profiles``), resolving each request's future from the reply.

When reads are sent is what makes batches under real traffic. Requests arrive spread out (one
per connection read), not in bursts, so "everything issued in this loop iteration" is mostly a
batch of one. Instead, at most ``max_inflight`` calls are outstanding: a read that finds a call
in flight waits for it to return and goes with everyone else who arrived meanwhile. An idle
server sends a read at once (one extra loop hop, as before); a busy one sends about one call per
Redis round trip, however many requests that covers — the batch grows with the load, and the
wait is bounded by one round trip. A full batch (``max_batch``) is sent at once regardless.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from decision_api.profiles.store import FeatureStore, UnitProfile

_Waiting = list[tuple[str, "asyncio.Future[UnitProfile]"]]


class ProfileBatcher:
    """``get(unit_id)`` that shares Redis round trips with concurrent callers."""

    def __init__(self, store: FeatureStore, max_batch: int = 256, max_inflight: int = 1) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._waiting: _Waiting = []
        self._now = 0.0
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    async def get(self, unit_id: str, now: float) -> UnitProfile:
        """The unit's profile; raises ``RedisError`` when Redis fails (for every waiter)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[UnitProfile] = loop.create_future()
        if not self._waiting:
            self._now = now  # a batch is decoded at the time of its first read
        self._waiting.append((unit_id, future))
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
        task = asyncio.ensure_future(self._fetch(batch, self._now))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._waiting and not self._scheduled and len(self._inflight) < self._max_inflight:
            self._dispatch()  # the reads that arrived while this call was out

    async def _fetch(self, batch: _Waiting, now: float) -> None:
        self.round_trips += 1
        try:
            profiles = await self._store.get_profiles([u for u, _ in batch], now)
        except RedisError as exc:
            self._fail(batch, exc)
            return
        except BaseException as exc:
            # Unexpected: every waiter sees it too (no request may hang), and it propagates.
            self._fail(batch, exc)
            raise
        for (_, future), profile in zip(batch, profiles, strict=True):
            if not future.done():
                future.set_result(profile)

    @staticmethod
    def _fail(batch: _Waiting, exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
