"""Coalesce profile reads of concurrent requests into one Redis call per event-loop tick.

Under load many decide requests are in flight at once; each would pay redis-py's per-command
overhead (pool checkout, packing, parsing, a syscall each way). :class:`ProfileBatcher` collects
the profile reads issued during one loop iteration and sends them as a single multi-key script
call (``RedisFeatureStore.get_profiles``), resolving each request's future from the reply. A lone
request costs one extra loop hop; a burst of N costs one round trip instead of N.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from decision_api.feature_store import FeatureStore, UnitProfile


class ProfileBatcher:
    """``get(unit_id)`` that shares Redis round trips with concurrent callers."""

    def __init__(self, store: FeatureStore, max_batch: int = 256) -> None:
        self._store = store
        self._max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[UnitProfile]]] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    async def get(self, unit_id: str, now: float) -> UnitProfile:
        """The unit's profile; raises ``RedisError`` when Redis fails (for every waiter)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[UnitProfile] = loop.create_future()
        self._waiting.append((unit_id, future))
        if len(self._waiting) >= self._max_batch:
            self._dispatch(now)
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch, now)
        return await future

    def _dispatch(self, now: float) -> None:
        self._scheduled = False
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._fetch(batch, now))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _fetch(
        self, batch: list[tuple[str, asyncio.Future[UnitProfile]]], now: float
    ) -> None:
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
    def _fail(batch: list[tuple[str, asyncio.Future[UnitProfile]]], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
