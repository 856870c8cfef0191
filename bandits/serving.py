"""The serving side of learning policies: each worker's current model per experiment.

Decisions read a plain dict of ready :class:`~bandits.base.Policy` objects — no lock, no I/O.
:meth:`ServingPolicies.poll` (a background task) checks the published versions in one pipelined
round trip and, for each that moved, builds the new policy off the event loop and swaps the
reference. A policy that can take the snapshot in place (:class:`~bandits.base.Incremental`: a
weights-only VW model, or the ``vw_cb`` ensemble whose VW member is one) gets the new weights
copied into it on the loop instead (about 1 ms; a Thompson snapshot carries the win
probabilities the learner drew, so its rebuild draws nothing):
building a VW workspace holds the GIL for 10-20 ms, which stalls the event loop even from
another thread. A snapshot that fails to load leaves the previous model serving and is reported
through ``on_load_failure`` (a metric and a log line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import structlog

from bandits.base import Candidate, Choice, Context, Incremental, Policy, PolicyError
from bandits.registry import build_policy
from bandits.slates import Slate, SlatePolicy
from bandits.snapshots import SnapshotStore
from bandits.spec import PolicySpec
from tailor_contract.wire import Factor

log = structlog.get_logger("tailor.serving")


class _Serving:
    def __init__(self, spec: PolicySpec, policy: Policy, version: int) -> None:
        self.spec = spec
        self.policy = policy
        self.version = version


class ServingPolicies:
    """Hot-swappable policies for the learning experiments a worker serves."""

    def __init__(
        self,
        snapshots: SnapshotStore,
        *,
        on_load_failure: Callable[[str, str], None] | None = None,
        on_loaded: Callable[[str, int], None] | None = None,
    ) -> None:
        self._snapshots = snapshots
        self._serving: dict[str, _Serving] = {}
        self._specs: dict[str, PolicySpec] = {}
        self._attempted: dict[str, tuple[int, PolicySpec]] = {}
        self._on_load_failure = on_load_failure
        self._on_loaded = on_loaded

    def set_specs(self, specs: Mapping[str, PolicySpec]) -> None:
        """Install the current learning experiments; new ones start on a fresh model."""
        self._specs = dict(specs)
        serving = {}
        for name, spec in specs.items():
            current = self._serving.get(name)
            if current is not None:
                # A changed definition keeps serving the old model until the poll rebuilds it.
                serving[name] = current
            else:
                serving[name] = _Serving(spec, build_policy(spec.config, spec.arms), version=0)
        self._serving = serving

    def version_of(self, experiment: str) -> int:
        """The snapshot version serving an experiment (0 = untrained)."""
        current = self._serving.get(experiment)
        return current.version if current else -1

    def policy(self, experiment: str) -> Policy | None:
        """The policy serving an experiment right now."""
        current = self._serving.get(experiment)
        return current.policy if current is not None else None

    def choose(self, experiment: str, context: Context, rng: np.random.Generator) -> Choice | None:
        """The current model's choice, or None when the experiment has no model here."""
        current = self._serving.get(experiment)
        if current is None:
            return None
        return current.policy.choose(context, current.spec.candidates, rng)

    def choose_among(
        self,
        experiment: str,
        context: Context,
        eligible: Sequence[int],
        rng: np.random.Generator,
    ) -> Choice | None:
        """The current model's choice among some candidates (``eligible``: indexes into the
        spec's candidates); the choice's index and propensity refer to that subset."""
        current = self._serving.get(experiment)
        if current is None:
            return None
        candidates = current.spec.candidates
        return current.policy.choose(context, [candidates[i] for i in eligible], rng)

    def choose_slate(
        self,
        experiment: str,
        context: Context,
        slots: int,
        rng: np.random.Generator,
        *,
        candidates: Sequence[Candidate] | None = None,
        eligible: Sequence[int] | None = None,
    ) -> tuple[Slate, Sequence[Candidate]] | None:
        """The current model's ranked slate and the candidates it ranked (its indexes point
        there): ``candidates`` from the request, else the experiment's (``eligible``: indexes
        into them, when only some may be shown). None when the experiment has no model here or
        its policy does not rank."""
        current = self._serving.get(experiment)
        if current is None or not isinstance(current.policy, SlatePolicy):
            return None
        if candidates is None:
            candidates = current.spec.candidates
            if eligible is not None:
                candidates = [candidates[i] for i in eligible]
        return current.policy.choose_slate(context, candidates, slots, rng), candidates

    def explain(self, experiment: str, context: Context, chosen: str) -> list[Factor]:
        """Why the serving model chose ``chosen`` for ``context`` (plain feature names), or
        nothing when the experiment has no model here or its policy cannot say."""
        current = self._serving.get(experiment)
        if current is None:
            return []
        explain = getattr(current.policy, "explain", None)
        if explain is None:
            return []
        factors: list[Factor] = explain(context, current.spec.candidates, chosen)
        return factors

    def choose_many(
        self, experiment: str, contexts: Sequence[Context], rng: np.random.Generator
    ) -> list[Choice] | None:
        """The current model's choices for many contexts (one ``choose_many`` call), or None."""
        current = self._serving.get(experiment)
        if current is None:
            return None
        return current.policy.choose_many(contexts, current.spec.candidates, rng)

    async def poll(self) -> int:
        """Swap in every newer snapshot (or rebuilt definition); returns how many swapped."""
        versions = await self._snapshots.versions(list(self._specs))
        swapped = 0
        for name, spec in self._specs.items():
            published = versions.get(name, (0, 0))[0]
            if self._attempted.get(name) == (published, spec):
                continue  # serving it already, or it failed to load: wait for the next one
            self._attempted[name] = (published, spec)
            snapshot = await self._snapshots.get(name) if published else None
            data = snapshot.data if snapshot is not None and snapshot.data else None
            version = snapshot.version if snapshot is not None else 0
            if data is not None and self._patch(name, spec, data, version):
                swapped += 1
                continue
            try:
                policy = await asyncio.to_thread(
                    build_policy, spec.config, spec.arms, snapshot=data, version=str(version)
                )
            except (PolicyError, ValueError) as exc:
                current = self._serving.get(name)
                if data is not None and current is not None and current.spec.config != spec.config:
                    # The new definition changed the model's structure (policy kind, VW
                    # arguments): the snapshot cannot fit it, so serve a fresh model, as the
                    # learner does, instead of the old definition's.
                    log.warning("model_restarted", experiment=name, reason=str(exc))
                    policy = build_policy(spec.config, spec.arms, version=str(version))
                else:
                    log.error("model_load_failed", experiment=name, version=version, error=str(exc))
                    if self._on_load_failure is not None:
                        self._on_load_failure(name, str(exc))
                    continue
            self._serving = {**self._serving, name: _Serving(spec, policy, version)}
            swapped += 1
            if self._on_loaded is not None:
                self._on_loaded(name, version)
        return swapped

    def _patch(self, name: str, spec: PolicySpec, data: bytes, version: int) -> bool:
        """Take a newer snapshot into the serving model in place, if it can (on the loop: a
        memory copy of its weights, no rebuild); False when it must be rebuilt."""
        current = self._serving.get(name)
        if current is None or current.spec != spec or not isinstance(current.policy, Incremental):
            return False
        if not current.policy.patch(data, version=str(version)):
            return False
        self._serving = {**self._serving, name: _Serving(spec, current.policy, version)}
        if self._on_loaded is not None:
            self._on_loaded(name, version)
        return True
