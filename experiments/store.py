"""Experiment definitions in Redis, and the lifecycle rules that change them.

Key layout (``{p}`` is ``redis.key_prefix``; every key is hash-tagged ``{<p>}`` so that one
``MULTI`` can change definitions, history and version together on a Redis Cluster):

===========================  ========  ==================================================  =====
key                          type      holds                                               TTL
===========================  ========  ==================================================  =====
``{{p}}:exp:defs``           HASH      experiment key -> current definition (JSON)         none
``{{p}}:exp:hist:<key>``     HASH      version -> definition as it was (JSON)              none
``{{p}}:exp:version``        STRING    config version, incremented by every change         none
``{{p}}:exp:lock``           STRING    admin lock serialising changes (layer allocation)   5 s
``{{p}}:exp:contact_caps``   HASH      contact-cap name -> ``ContactCap`` (JSON)           none
===========================  ========  ==================================================  =====

None of these grows with traffic: one entry per experiment and per change to it. Workers poll
``{{p}}:exp:version`` (one GET) and reload the definitions when it moves; see
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
from tailor_contract.definitions import ContactCap, Experiment, ExperimentSpec, Status

Action = Literal["create", "update", "start", "pause", "stop"]
AuditHook = Callable[[Action, Experiment], None]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Experiment)
_cap_decoder = msgspec.json.Decoder(ContactCap)

_TRANSITIONS: dict[str, tuple[frozenset[Status], Status]] = {
    "start": (frozenset({Status.DRAFT, Status.PAUSED}), Status.RUNNING),
    "pause": (frozenset({Status.RUNNING}), Status.PAUSED),
    "stop": (frozenset({Status.RUNNING, Status.PAUSED}), Status.STOPPED),
}
_FROZEN_WHILE_LIVE = ("placement", "layer", "traffic")


ScheduledAction = Literal["start", "stop"]


def due_action(exp: Experiment, now: float) -> ScheduledAction | None:
    """What the schedule asks of ``exp`` at ``now`` (epoch seconds), if anything.

    A draft whose ``start_at`` has come (and whose ``end_at`` has not) starts; a running or paused
    experiment whose ``end_at`` has come stops. A draft whose whole window has passed stays a
    draft (nothing to run), and an experiment paused by hand after its start is not resumed.
    """
    ended = exp.end_at is not None and exp.end_at.timestamp() <= now
    if exp.status is Status.DRAFT:
        if exp.start_at is not None and exp.start_at.timestamp() <= now and not ended:
            return "start"
        return None
    if exp.status in (Status.RUNNING, Status.PAUSED) and ended:
        return "stop"
    return None


class _NotDue(Exception):
    """A scheduled transition found the experiment changed since it was seen due."""


def decode_experiment(raw: bytes | str) -> Experiment:
    """Decode a stored definition."""
    return _decoder.decode(raw)


class ExperimentStore:
    """Create, read, update and move experiments through their lifecycle."""

    def __init__(self, redis: Redis, prefix: str, audit: AuditHook | None = None) -> None:
        self._redis = redis
        shared = "{" + prefix + "}"  # one hash slot: changes commit in one MULTI
        self._defs = f"{shared}:exp:defs"
        self._version = f"{shared}:exp:version"
        self._lock = f"{shared}:exp:lock"
        self._hist = f"{shared}:exp:hist:"
        self._caps = f"{shared}:exp:contact_caps"
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
                paused_reason=current.paused_reason,
            )
            await self._save(experiment)
        self._emit("update", experiment)
        return experiment

    async def transition(
        self,
        key: str,
        action: Literal["start", "pause", "stop"],
        now: float,
        *,
        expect: int | None = None,
    ) -> Experiment:
        """Move ``key`` through its lifecycle; starting in a layer claims a free slice of it.

        With ``expect`` the move applies only if the stored version is still ``expect``
        (raises the private ``_NotDue`` otherwise; see :meth:`follow_schedule`).
        """
        allowed, target = _TRANSITIONS[action]
        async with self._redis.lock(self._lock, timeout=5, blocking_timeout=5):
            current = await self.get(key)
            if expect is not None and current.version != expect:
                raise _NotDue(key)
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
                # A (re)start clears the guard-rail pause; a pause or stop keeps its reason.
                paused_reason=None if target is Status.RUNNING else current.paused_reason,
            )
            await self._save(experiment)
        self._emit(action, experiment)
        return experiment

    async def follow_schedule(
        self, key: str, action: Literal["start", "stop"], now: float
    ) -> Experiment | None:
        """Apply a scheduled start or stop, idempotently: ``None`` when the experiment is no
        longer due (another worker moved it first, or it was edited meanwhile).

        Several workers see the same due experiment in the same poll; the admin lock serialises
        them and the first one's transition makes the others' a no-op, so exactly one
        ``start``/``stop`` is stored and audited. A layer with no free slice still raises
        :class:`ExperimentConflict` (the experiment stays a draft and the caller logs it).
        """
        current = await self.get(key)
        if due_action(current, now) != action:
            return None
        try:
            return await self.transition(key, action, now, expect=current.version)
        except _NotDue:
            return None

    async def pause_for_harm(
        self, key: str, version: int, reason: str, now: float
    ) -> Experiment | None:
        """Pause ``key`` because a guard-rail metric shows harm, at most once across workers.

        Applies only while the experiment is still running at ``version`` (the definition the
        harm was measured on) with ``auto_pause_on_harm`` set; under the admin lock, so of
        several workers finding the same harm exactly one pause is stored and audited. Returns
        the paused experiment, or ``None`` when it no longer applies.
        """
        async with self._redis.lock(self._lock, timeout=5, blocking_timeout=5):
            try:
                current = await self.get(key)
            except ExperimentNotFound:
                return None
            if (
                current.status is not Status.RUNNING
                or current.version != version
                or not current.auto_pause_on_harm
            ):
                return None
            experiment = msgspec.structs.replace(
                current,
                status=Status.PAUSED,
                version=current.version + 1,
                updated_at=now,
                paused_reason=reason,
            )
            await self._save(experiment)
        self._emit("pause", experiment)
        return experiment

    async def contact_caps(self) -> dict[str, ContactCap]:
        """Every contact cap, by name."""
        raw = await self._redis.hgetall(self._caps)
        return {str(name): _cap_decoder.decode(value) for name, value in sorted(raw.items())}

    async def contact_cap(self, name: str) -> ContactCap:
        """The contact cap called ``name``; raises ExperimentNotFound when there is none."""
        raw = await self._redis.hget(self._caps, name)
        if raw is None:
            raise ExperimentNotFound(f"no contact cap {name!r}")
        return _cap_decoder.decode(raw)

    async def put_contact_cap(self, name: str, cap: ContactCap) -> None:
        """Create or replace a contact cap; every worker follows within a config poll."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._caps, name, _encoder.encode(cap))
            pipe.incr(self._version)
            await pipe.execute()

    async def delete_contact_cap(self, name: str) -> None:
        """Delete a contact cap no draft or live experiment names (409 otherwise)."""
        async with self._redis.lock(self._lock, timeout=5, blocking_timeout=5):
            await self.contact_cap(name)
            users = [
                e.key
                for e in await self.list()
                if e.contact_cap == name and e.status is not Status.STOPPED
            ]
            if users:
                raise ExperimentConflict(
                    f"contact cap {name!r} is used by experiments {users}; stop them or "
                    "change their contact_cap first"
                )
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._caps, name)
                pipe.incr(self._version)
                await pipe.execute()

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
