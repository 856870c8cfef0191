"""Each worker's in-memory view of the experiment definitions, refreshed when the config moves.

The decision path reads only this cache (no Redis round trip for definitions). A background task
calls :meth:`ExperimentCache.refresh` every ``decisions.config_poll_interval_s``: one GET of the
config version, and a reload of all definitions when it changed. If Redis is unreachable the last
good view stays in force, so decisions keep answering.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from experiments.store import ExperimentStore, ScheduledAction, due_action
from tailor_contract.assignment import cumulative_shares
from tailor_contract.definitions import ContactCap, Experiment, Status
from tailor_contract.placement import Gate


class Compiled(msgspec.Struct, frozen=True, kw_only=True):
    """An experiment prepared for the hot path."""

    experiment: Experiment
    cumulative: list[float]
    default_index: int
    gate: Gate
    conditional: bool = False
    """Whether a variant has an ``eligible`` condition (decisions then check eligibility)."""


def gate_of(exp: Experiment) -> Gate:
    """What the placement walk reads of an experiment."""
    return Gate(
        paused=exp.status is Status.PAUSED,
        salt=exp.hash_salt,
        holdout=exp.holdout,
        layer=exp.layer,
        layer_slice=exp.layer_slice,
        targeting=exp.targeting,
        send_time=exp.kind == "send_time",
    )


def compile_experiment(exp: Experiment) -> Compiled:
    """An experiment prepared for the hot path."""
    return Compiled(
        experiment=exp,
        cumulative=cumulative_shares([v.weight for v in exp.variants]),
        default_index=[v.key for v in exp.variants].index(exp.default_variant),
        gate=gate_of(exp),
        conditional=any(v.eligible is not None for v in exp.variants),
    )


class ExperimentCache:
    """Placement -> live experiments (running or paused), highest priority first."""

    def __init__(self, store: ExperimentStore) -> None:
        self._store = store
        self.version = -1
        self._by_placement: dict[str, tuple[Compiled, ...]] = {}
        self._by_key: dict[str, Compiled] = {}
        self._scheduled: tuple[Experiment, ...] = ()
        self.contact_caps: dict[str, ContactCap] = {}
        self._capped_priority: dict[str, int] = {}
        """Contact caps by name (replaced, never mutated, on a reload)."""

    def due(self, now: float) -> list[tuple[str, ScheduledAction]]:
        """Experiments the schedule moves at ``now``: ``(key, "start" | "stop")`` (in memory)."""
        found = []
        for exp in self._scheduled:
            action = due_action(exp, now)
            if action is not None:
                found.append((exp.key, action))
        return found

    def for_placement(self, placement: str) -> tuple[Compiled, ...]:
        """Live experiments serving ``placement``, in the order they are considered."""
        return self._by_placement.get(placement, ())

    def get(self, key: str) -> Compiled | None:
        """A live experiment by key."""
        return self._by_key.get(key)

    def experiments(self) -> list[Experiment]:
        """Every live experiment."""
        return [c.experiment for c in self._by_key.values()]

    async def refresh(self, force: bool = False) -> bool:
        """Reload when the config version moved; returns True when the view changed."""
        version = await self._store.config_version()
        if version == self.version and not force:
            return False
        experiments = await self._store.list()
        self.install(experiments, version, await self._store.contact_caps())
        return True

    def install(
        self,
        experiments: Sequence[Experiment],
        version: int,
        contact_caps: dict[str, ContactCap] | None = None,
    ) -> None:
        """Replace the view atomically (one reference swap per dict)."""
        self.contact_caps = dict(contact_caps or {})
        by_placement: dict[str, list[Compiled]] = {}
        by_key: dict[str, Compiled] = {}
        self._scheduled = tuple(
            e
            for e in experiments
            if (e.status is Status.DRAFT and e.start_at is not None)
            or (e.status in (Status.RUNNING, Status.PAUSED) and e.end_at is not None)
        )
        for exp in experiments:
            if exp.status not in (Status.RUNNING, Status.PAUSED):
                continue
            compiled = compile_experiment(exp)
            by_key[exp.key] = compiled
            by_placement.setdefault(exp.placement, []).append(compiled)
        self._by_placement = {
            p: tuple(sorted(cs, key=lambda c: (-c.experiment.priority, c.experiment.key)))
            for p, cs in by_placement.items()
        }
        self._by_key = by_key
        self._capped_priority = {
            p: max(c.experiment.priority for c in cs if c.experiment.contact_cap is not None)
            for p, cs in by_placement.items()
            if any(c.experiment.contact_cap is not None for c in cs)
        }
        self.version = version

    def capped_priority(self, placement: str) -> int | None:
        """The highest priority of an experiment with a contact cap on ``placement``, if any:
        placements are decided in this order so that a cap goes to the most important one."""
        return self._capped_priority.get(placement)
