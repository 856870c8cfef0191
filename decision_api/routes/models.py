"""Admin API for the models behind learning experiments: inspect, save a version, reset,
warm-start, and the takeover of an apprentice (``POST /v1/experiments/{key}/takeover``)."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from bandits.apprentice import ApprenticeEstimate, ApprenticePolicy, estimate_of, take_over
from bandits.base import Policy, SnapshotError
from bandits.registry import build_policy
from bandits.spec import is_learning
from decision_api.learning.runtime import spec_of
from decision_api.learning.warm_start import (
    history_examples,
    history_slates,
    warm_policy,
    warm_slates_policy,
)
from decision_api.routes.guards import require
from decision_api.services import Services
from event_log.writer import now_ms
from tailor_contract.definitions import Experiment
from tailor_contract.errors import Conflict, NotFound
from tailor_contract.policies import VWSlatesConfig


class ModelInfo(msgspec.Struct, kw_only=True):
    """A published model: version (what decisions log), generation, size, examples learned."""

    experiment: str
    version: int
    generation: int
    kind: str
    examples: int
    bytes: int
    updated_ms: int
    apprentice: ApprenticeEstimate | None = None
    """An apprentice's off-policy estimate against the split and who serves (``serving``)."""
    saved_versions: list[int] = msgspec.field(default_factory=list)
    """Saved versions (oldest first) that off-policy evaluation can name
    (``{"kind": "saved", "version": n}``)."""


async def _learning(key: str, services: Services) -> Experiment:
    experiment = await services.store.get(key)
    if not is_learning(experiment.policy):
        raise Conflict(f"experiment {key!r} uses a fixed split; it has no model", field="$.policy")
    return experiment


class ModelController(Controller):
    """One learning experiment's model."""

    path = "/v1/experiments/{key:str}/model"
    tags = ["models"]
    guards = [require("admin")]

    @get("")
    async def read(self, key: FromPath[str], services: NamedDependency[Services]) -> ModelInfo:
        """The published model (404 before the first snapshot)."""
        experiment = await _learning(key, services)
        snap = await services.learning.snapshots.get(key)
        if snap is None:
            raise NotFound(f"experiment {key!r} has no published model yet")
        apprentice = None
        if getattr(experiment.policy, "apprentice", None) is not None and snap.data:
            try:
                apprentice = estimate_of(snap.data)
            except SnapshotError:
                apprentice = None  # a model of the policy before apprentice mode was set
        return ModelInfo(
            apprentice=apprentice,
            saved_versions=await services.learning.snapshots.saved_versions(key),
            experiment=key,
            version=snap.version,
            generation=snap.gen,
            kind=snap.kind,
            examples=snap.examples,
            bytes=len(snap.data),
            updated_ms=snap.updated_ms,
        )

    @post("/save", status_code=200)
    async def save(self, key: FromPath[str], services: NamedDependency[Services]) -> ModelInfo:
        """Keep the published model as a saved version (the last 20 are kept), so that it can
        be evaluated off-policy later; 409 before a model has learned anything."""
        await _learning(key, services)
        snapshots = services.learning.snapshots
        snap = await snapshots.save(key)
        if snap is None:
            raise Conflict(f"experiment {key!r} has no trained model to save yet")
        services.audit("model_saved", "model", key, snap.version, "")
        return ModelInfo(
            experiment=key,
            version=snap.version,
            generation=snap.gen,
            kind=snap.kind,
            examples=snap.examples,
            bytes=len(snap.data),
            updated_ms=snap.updated_ms,
            saved_versions=await snapshots.saved_versions(key),
        )

    @post("/reset", status_code=200)
    async def reset(self, key: FromPath[str], services: NamedDependency[Services]) -> ModelInfo:
        """Start over from a fresh model (a new generation; learners drop what they hold)."""
        await _learning(key, services)
        snap = await services.learning.snapshots.replace(key, now_ms())
        services.audit("model_reset", "model", key, snap.version, "")
        return ModelInfo(
            experiment=key,
            version=snap.version,
            generation=snap.gen,
            kind=snap.kind,
            examples=0,
            bytes=0,
            updated_ms=snap.updated_ms,
        )

    @post("/warm-start", status_code=200)
    async def warm_start(
        self, key: FromPath[str], services: NamedDependency[Services]
    ) -> ModelInfo:
        """Teach a fresh model the experiment's logged history in the event log, publish it."""
        experiment = await _learning(key, services)
        await services.writer.flush()
        policy: Policy
        if isinstance(experiment.policy, VWSlatesConfig):
            slates = await asyncio.to_thread(history_slates, services.event_log, experiment)
            policy = await asyncio.to_thread(warm_slates_policy, experiment, slates)
            learned = len(slates)
        else:
            examples = await asyncio.to_thread(history_examples, services.event_log, experiment)
            policy = await asyncio.to_thread(warm_policy, experiment, examples)
            learned = len(examples)
        data = await asyncio.to_thread(policy.snapshot)
        snap = await services.learning.snapshots.replace(
            key, now_ms(), kind=policy.name, data=data, examples=learned
        )
        services.audit("model_warm_start", "model", key, snap.version, f"examples={learned}")
        return ModelInfo(
            experiment=key,
            version=snap.version,
            generation=snap.gen,
            kind=snap.kind,
            examples=learned,
            bytes=len(data),
            updated_ms=snap.updated_ms,
        )


class Takeover(msgspec.Struct, kw_only=True):
    """An apprentice after the admin's takeover: the new model and its estimate."""

    model: ModelInfo
    apprentice: ApprenticeEstimate


class TakeoverController(Controller):
    """Let an apprentice policy serve its own choices (``apprentice.takeover: manual``)."""

    path = "/v1/experiments/{key:str}/takeover"
    tags = ["models"]
    guards = [require("admin")]

    @post("", status_code=200)
    async def take_over(self, key: FromPath[str], services: NamedDependency[Services]) -> Takeover:
        """The apprentice serves its own choices from now on (a new model generation)."""
        experiment = await _learning(key, services)
        if getattr(experiment.policy, "apprentice", None) is None:
            raise Conflict(
                f"experiment {key!r} has no apprentice policy", field="$.policy.apprentice"
            )
        snap = await services.learning.snapshots.get(key)
        if snap is None or not snap.data:
            raise Conflict(f"experiment {key!r} has no apprentice model yet (nothing learned)")
        try:
            data = take_over(snap.data)
        except SnapshotError as exc:
            raise Conflict(f"the published model is not an apprentice's: {exc}") from exc
        spec = spec_of(experiment)
        policy = build_policy(spec.config, spec.arms, snapshot=data)
        assert isinstance(policy, ApprenticePolicy)
        new = await services.learning.snapshots.replace(
            key, now_ms(), kind=policy.name, data=data, examples=snap.examples
        )
        services.audit("model_takeover", "model", key, new.version, "by=admin")
        return Takeover(
            model=ModelInfo(
                experiment=key,
                version=new.version,
                generation=new.gen,
                kind=new.kind,
                examples=snap.examples,
                bytes=len(data),
                updated_ms=new.updated_ms,
            ),
            apprentice=policy.estimate(),
        )
