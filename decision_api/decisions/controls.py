"""Runtime controls shared by every worker: the global kill switch.

Key layout (``{p}`` is ``redis.key_prefix``):

``{p}:ctl:kill_switch`` — STRING ``1`` (engaged) or absent; no TTL (one key).

The admin API sets it (:meth:`Controls.set_kill_switch`); every worker polls it every
``decisions.config_poll_interval_s`` (one GET, :meth:`Controls.poll`) and sets
``engine.kill_switch``. Engaged means every placement gets its experiment's default variant with
reason ``kill_switch`` and no profile is read. ``decisions.kill_switch`` in the settings engages
it for the process regardless of Redis. While Redis is unreachable the last value read stays in
force. A poll whose GET was in flight while this worker switched discards what it read: the
switch applied here is newer.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis


class Switchable(Protocol):
    """What the kill switch acts on (the decision engine)."""

    kill_switch: bool


class Controls:
    """Read and write the shared kill switch; apply it to the local engine."""

    def __init__(self, redis: Redis, prefix: str, engine: Switchable, *, forced: bool) -> None:
        self._redis = redis
        self._key = f"{prefix}:ctl:kill_switch"
        self._engine = engine
        self._forced = forced
        self.shared = False
        self._switches = 0  # switches made here; a poll spanning one discards its read
        engine.kill_switch = forced

    @property
    def engaged(self) -> bool:
        """Whether this worker currently serves defaults only."""
        return self._forced or self.shared

    @property
    def forced(self) -> bool:
        """Whether the settings engage the switch (the admin API cannot release it then)."""
        return self._forced

    def _apply(self, shared: bool) -> None:
        self.shared = shared
        self._engine.kill_switch = self._forced or shared

    async def poll(self) -> None:
        """Read the shared switch (one GET) and apply it, unless this worker switched meanwhile."""
        switches = self._switches
        shared = await self._redis.get(self._key) == "1"
        if switches == self._switches:
            self._apply(shared)

    async def set_kill_switch(self, engaged: bool) -> None:
        """Engage or release the switch for every worker (applied here at once)."""
        if engaged:
            await self._redis.set(self._key, "1")
        else:
            await self._redis.delete(self._key)
        self._switches += 1
        self._apply(engaged)
