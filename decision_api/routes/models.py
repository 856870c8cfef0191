"""Admin API for the models behind learning experiments: inspect, reset, warm-start."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from bandits.spec import is_learning
from decision_api.learning.warm_start import history_examples, warm_policy
from decision_api.routes.guards import require
from decision_api.services import Services
from event_log.writer import now_ms
from tailor_contract.definitions import Experiment
from tailor_contract.errors import Conflict, NotFound


class ModelInfo(msgspec.Struct, kw_only=True):
    """A published model: version (what decisions log), generation, size, examples learned."""

    experiment: str
    version: int
    generation: int
    kind: str
    examples: int
    bytes: int
    updated_ms: int


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
        await _learning(key, services)
        snap = await services.learning.snapshots.get(key)
        if snap is None:
            raise NotFound(f"experiment {key!r} has no published model yet")
        return ModelInfo(
            experiment=key,
            version=snap.version,
            generation=snap.gen,
            kind=snap.kind,
            examples=snap.examples,
            bytes=len(snap.data),
            updated_ms=snap.updated_ms,
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
        examples = await asyncio.to_thread(history_examples, services.event_log, experiment)
        policy = await asyncio.to_thread(warm_policy, experiment, examples)
        data = await asyncio.to_thread(policy.snapshot)
        snap = await services.learning.snapshots.replace(
            key, now_ms(), kind=policy.name, data=data, examples=len(examples)
        )
        services.audit("model_warm_start", "model", key, snap.version, f"examples={len(examples)}")
        return ModelInfo(
            experiment=key,
            version=snap.version,
            generation=snap.gen,
            kind=snap.kind,
            examples=len(examples),
            bytes=len(data),
            updated_ms=snap.updated_ms,
        )
