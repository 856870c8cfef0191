"""Experiment definitions in Redis, and the lifecycle rules that change them.

Key layout (``{p}`` is ``redis.key_prefix``):

=========================  ========  ====================================================  =====
key                        type      holds                                                  TTL
=========================  ========  ====================================================  =====
``{p}:exp:defs``           HASH      experiment key -> current definition (JSON)            none
``{p}:exp:hist:{key}``     HASH      version -> definition as it was (JSON)                 none
``{p}:exp:version``        STRING    config version, incremented by every change            none
``{p}:exp:lock``           STRING    admin lock serialising changes (layer allocation)      5 s
=========================  ========  ====================================================  =====

None of these grows with traffic: one entry per experiment and per change to it. Workers poll
``{p}:exp:version`` (one GET) and reload the definitions when it moves; see
:mod:`experiments.cache`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Literal

import msgspec
from redis.asyncio import Redis

from experiments.errors import ExperimentConflict, ExperimentNotFound
from tailor_contract.assignment import allocate_slice
from tailor_contract.definitions import Experiment, ExperimentSpec, Status

Action = Literal["create", "update", "start", "pause", "stop"]
AuditHook = Callable[[Action, Experiment], None]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Experiment)

_TRANSITIONS: dict[str, tuple[frozenset[Status], Status]] = {
    "start": (frozenset({Status.DRAFT, Status.PAUSED}), Status.RUNNING),
    "pause": (frozenset({Status.RUNNING}), Status.PAUSED),
    "stop": (frozenset({Status.RUNNING, Status.PAUSED}), Status.STOPPED),
}
_FROZEN_WHILE_LIVE = ("placement", "layer", "traffic")


def decode_experiment(raw: bytes | str) -> Experiment:
    """Decode a stored definition."""
    return _decoder.decode(raw)


class ExperimentStore:
    """Create, read, update and move experiments through their lifecycle."""

    def __init__(self, redis: Redis, prefix: str, audit: AuditHook | None = None) -> None:
        self._redis = redis
        self._defs = f"{prefix}:exp:defs"
        self._version = f"{prefix}:exp:version"
        self._lock = f"{prefix}:exp:lock"
        self._hist = f"{prefix}:exp:hist:"
        self._audit = audit

    async def config_version(self) -> int:
        """The current config version (0 before any change)."""
        raw = await self._redis.get(self._version)
        return int(raw or 0)

    async def get(self, key: str) -> Experiment:
        """The current definition of ``key``."""
        raw = await self._redis.hget(self._defs, key)
        if raw is None:
            raise ExperimentNotFound(f"no experiment {key!r}")
        return decode_experiment(raw)

    async def list(self) -> builtins.list[Experiment]:
        """Every experiment, sorted by key."""
        raw = await self._redis.hgetall(self._defs)
        return sorted((decode_experiment(v) for v in raw.values()), key=lambda e: e.key)

    async def history(self, key: str) -> builtins.list[Experiment]:
        """Every stored version of ``key``, oldest first; raises when there is no such key."""
        raw = await self._redis.hgetall(self._hist + key)
        if not raw:
            raise ExperimentNotFound(f"no experiment {key!r}")
        return sorted((decode_experiment(v) for v in raw.values()), key=lambda e: e.version)

    async def create(self, spec: ExperimentSpec, now: float) -> Experiment:
        """Store a new experiment as a draft at version 1."""
        spec = spec.normalised()
        fields = {f: getattr(spec, f) for f in ExperimentSpec.__struct_fields__}
        experiment = Experiment(
            **fields, status=Status.DRAFT, version=1, created_at=now, updated_at=now
        )
        async with self._redis.lock(self._lock, timeout=5, blocking_timeout=5):
            if await self._redis.hexists(self._defs, spec.key):
                raise ExperimentConflict(f"experiment {spec.key!r} exists already", field="key")
            await self._save(experiment)
        self._emit("create", experiment)
        return experiment

    async def update(self, key: str, spec: ExperimentSpec, now: float) -> Experiment:
        """Replace the definition of ``key`` with a new version; status and slice carry over."""
        spec = spec.normalised()
        if spec.key != key:
            raise ExperimentConflict(
                f"body key {spec.key!r} does not match the path {key!r}", field="key"
            )
        async with self._redis.lock(self._lock, timeout=5, blocking_timeout=5):
            current = await self.get(key)
            if current.status is Status.STOPPED:
                raise ExperimentConflict(f"experiment {key!r} is stopped; create a new one")
            if current.status is not Status.DRAFT:
                for name in _FROZEN_WHILE_LIVE:
                    if getattr(current, name) != getattr(spec, name):
                        raise ExperimentConflict(
                            f"{name} cannot change once the experiment has started", field=name
                        )
            fields = {f: getattr(spec, f) for f in ExperimentSpec.__struct_fields__}
            experiment = Experiment(
                **fields,
                status=current.status,
                version=current.version + 1,
                created_at=current.created_at,
                updated_at=now,
                layer_slice=current.layer_slice,
            )
            await self._save(experiment)
        self._emit("update", experiment)
        return experiment

    async def transition(
        self, key: str, action: Literal["start", "pause", "stop"], now: float
    ) -> Experiment:
        """Move ``key`` through its lifecycle; starting in a layer claims a free slice of it."""
        allowed, target = _TRANSITIONS[action]
        async with self._redis.lock(self._lock, timeout=5, blocking_timeout=5):
            current = await self.get(key)
            if current.status not in allowed:
                raise ExperimentConflict(
                    f"cannot {action} experiment {key!r}: it is {current.status.value}"
                )
            layer_slice = current.layer_slice
            if target is Status.RUNNING and current.layer is not None and layer_slice is None:
                taken = [
                    e.layer_slice
                    for e in await self.list()
                    if e.layer == current.layer and e.layer_slice is not None and e.key != key
                ]
                layer_slice = allocate_slice(taken, current.traffic)
                if layer_slice is None:
                    raise ExperimentConflict(
                        f"layer {current.layer!r} has no free {current.traffic:.0%} slice",
                        field="traffic",
                    )
            if target is Status.STOPPED:
                layer_slice = None
            experiment = msgspec.structs.replace(
                current,
                status=target,
                version=current.version + 1,
                updated_at=now,
                layer_slice=layer_slice,
            )
            await self._save(experiment)
        self._emit(action, experiment)
        return experiment

    async def _save(self, experiment: Experiment) -> None:
        raw = _encoder.encode(experiment)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._defs, experiment.key, raw)
            pipe.hset(self._hist + experiment.key, str(experiment.version), raw)
            pipe.incr(self._version)
            await pipe.execute()

    def _emit(self, action: Action, experiment: Experiment) -> None:
        if self._audit is not None:
            self._audit(action, experiment)
