"""Coalesce profile reads of concurrent requests into few Redis calls.

:class:`ProfileBatcher` collects profile reads and sends them as one multi-key script call
(``RedisFeatureStore.get_profiles``), resolving each request's future from the reply; when
batches are sent (at most one outstanding, the next one holding everything that arrived
meanwhile) is :class:`~decision_api.coalescing.Coalescer`'s policy.
"""

from __future__ import annotations

from decision_api.coalescing import Coalescer
from decision_api.profiles.store import FeatureStore, UnitProfile


class ProfileBatcher(Coalescer[str, UnitProfile, float]):
    """``get(unit_id)`` that shares Redis round trips with concurrent callers."""

    def __init__(self, store: FeatureStore, max_batch: int = 256, max_inflight: int = 1) -> None:
        # A batch is decoded at the time of its first read.
        super().__init__(
            store.get_profiles, initial=0.0, max_batch=max_batch, max_inflight=max_inflight
        )

    async def get(self, unit_id: str, now: float) -> UnitProfile:
        """The unit's profile; raises ``RedisError`` when Redis fails (for every waiter)."""
        return await self.submit(unit_id, now)
