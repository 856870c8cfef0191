"""Model snapshots in Redis: what the learner publishes and every worker hot-swaps to.

Key layout (``{p}`` = key prefix), one hash per experiment with a learning policy, hash-tagged
``{<p>}`` like the training stream so that a publish and its stream acks commit in one ``MULTI``
on a Redis Cluster too:

=================================  =====  ==================================================  ====
key                                type   fields                                              TTL
=================================  =====  ==================================================  ====
``{{p}}:model:<experiment>``        HASH  ``version`` (int, +1 per publish), ``gen`` (reset     none
                                          generation), ``data`` (``Policy.snapshot()``
                                          bytes; empty = fresh model), ``kind``,
                                          ``examples`` (learned so far), ``updated_ms``
``{{p}}:model:<experiment>:saved``  ZSET  saved versions (score = version), at most            none
                                          ``MAX_SAVED``: the oldest is dropped beyond
``{{p}}:model:<experiment>:v:<n>``  HASH  saved version ``n``: the fields of the model hash    none
=================================  =====  ==================================================  ====

A version is saved by :meth:`SnapshotStore.save` (``POST .../model/save``) and automatically
when a model is replaced (a reset, a warm start, an apprentice's takeover), so the model that
served before can still be evaluated off-policy (``{"kind": "saved", "version": n}``).

Workers poll ``version`` for every learning experiment once per ``learner.model_poll_interval_s``
(one pipelined round trip) and fetch ``data`` only when it moved. The model version logged with a
decision is ``<version>`` of the snapshot that chose it (``0`` = never trained).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

MAX_SAVED = 20
"""Saved versions kept per experiment."""


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A published model."""

    experiment: str
    version: int
    gen: int
    kind: str
    data: bytes
    examples: int
    updated_ms: int


class SnapshotStore:
    """Read and write model snapshots (needs a Redis client with ``decode_responses=False``)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._shared = "{" + prefix + "}"  # the training stream's slot (see above)

    def key(self, experiment: str) -> str:
        """The model hash of an experiment."""
        return f"{self._shared}:model:{experiment}"

    async def versions(self, experiments: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``(version, gen)`` of each experiment's published model (absent ones omitted)."""
        if not experiments:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in experiments:
                pipe.hmget(self.key(name), ["version", "gen"])
            rows = await pipe.execute()
        out = {}
        for name, (version, gen) in zip(experiments, rows, strict=True):
            if version is not None:
                out[name] = (int(version), int(gen or 0))
        return out

    async def get(self, experiment: str) -> Snapshot | None:
        """The published snapshot of an experiment, or None."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(self.key(experiment))  # type: ignore[assignment]
        return _decode(experiment, raw)

    def stage_publish(self, pipe: Pipeline, snapshot: Snapshot) -> None:
        """Queue a publish on a (MULTI) pipeline, so it can commit together with stream acks."""
        pipe.hset(
            self.key(snapshot.experiment),
            mapping={
                "version": snapshot.version,
                "gen": snapshot.gen,
                "kind": snapshot.kind,
                "data": snapshot.data,
                "examples": snapshot.examples,
                "updated_ms": snapshot.updated_ms,
            },
        )

    def saved_key(self, experiment: str, version: int) -> str:
        """The hash of one saved version."""
        return f"{self._shared}:model:{experiment}:v:{version}"

    def _index(self, experiment: str) -> str:
        return f"{self._shared}:model:{experiment}:saved"

    async def save(self, experiment: str, snapshot: Snapshot | None = None) -> Snapshot | None:
        """Keep ``snapshot`` (default: the published model) as a saved version; None when there
        is no trained model to save. Beyond ``MAX_SAVED`` versions the oldest is dropped."""
        snap = snapshot if snapshot is not None else await self.get(experiment)
        if snap is None or not snap.data:
            return None
        index = self._index(experiment)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.saved_key(experiment, snap.version),
                mapping={
                    "version": snap.version,
                    "gen": snap.gen,
                    "kind": snap.kind,
                    "data": snap.data,
                    "examples": snap.examples,
                    "updated_ms": snap.updated_ms,
                },
            )
            pipe.zadd(index, {str(snap.version): snap.version})
            await pipe.execute()
        dropped: list[bytes] = await self._redis.zrange(index, 0, -(MAX_SAVED + 1))  # type: ignore[assignment]
        if dropped:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(index, *dropped)
                pipe.delete(*(self.saved_key(experiment, int(v)) for v in dropped))
                await pipe.execute()
        return snap

    async def saved(self, experiment: str, version: int) -> Snapshot | None:
        """A saved version, or None."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(self.saved_key(experiment, version))  # type: ignore[assignment]
        return _decode(experiment, raw)

    async def saved_versions(self, experiment: str) -> list[int]:
        """The saved versions, oldest first."""
        found: list[bytes] = await self._redis.zrange(self._index(experiment), 0, -1)  # type: ignore[assignment]
        return [int(v) for v in found]

    async def replace(
        self, experiment: str, now_ms: int, *, kind: str = "", data: bytes = b"", examples: int = 0
    ) -> Snapshot:
        """Replace the model (a new generation): fresh when ``data`` is empty (a reset), or a
        warm-started model. Learners drop what they hold and continue from it. The replaced
        model is saved first (:meth:`save`), so it can still be evaluated."""
        current = await self.get(experiment)
        if current is not None:
            await self.save(experiment, current)
        fresh = Snapshot(
            experiment=experiment,
            version=(current.version + 1) if current else 1,
            gen=(current.gen + 1) if current else 1,
            kind=kind or (current.kind if current else ""),
            data=data,
            examples=examples,
            updated_ms=now_ms,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            self.stage_publish(pipe, fresh)
            await pipe.execute()
        return fresh


def _decode(experiment: str, raw: dict[bytes, bytes]) -> Snapshot | None:
    """A model hash (published or saved) as a Snapshot, or None when it holds none."""
    if not raw or b"version" not in raw:
        return None
    return Snapshot(
        experiment=experiment,
        version=int(raw[b"version"]),
        gen=int(raw.get(b"gen", b"0")),
        kind=raw.get(b"kind", b"").decode(),
        data=raw.get(b"data", b""),
        examples=int(raw.get(b"examples", b"0")),
        updated_ms=int(raw.get(b"updated_ms", b"0")),
    )
